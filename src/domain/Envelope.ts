/**
 * The normalized envelope of PROTOCOL.md: what every stage and sink receives, keyed by
 * (device, epoch, seq). Device time and arrival time are epoch milliseconds. The envelope is a
 * union discriminated by `kind`, so a stage that checks `kind === "telemetry"` sees a telemetry body.
 */
import type { EventBody, Kind, TelemetryBody } from "./Frames.ts"

/** The fields every envelope has, whatever its kind. */
export interface EnvelopeHeader {
  readonly device: string
  readonly epoch: number
  readonly seq: number
  readonly kind: Kind
  readonly deviceTs: number
  readonly receivedAt: number
  readonly gateway: string
  /** The W3C traceparent of this message's ingest span (or the device's, when tracing is off). */
  readonly traceparent: string | null
}

/** A telemetry message: named numeric metrics and optional tags. */
export interface TelemetryEnvelope extends EnvelopeHeader {
  readonly kind: "telemetry"
  readonly body: TelemetryBody
}

/** An event message: a named occurrence. */
export interface EventEnvelope extends EnvelopeHeader {
  readonly kind: "event"
  readonly body: EventBody
}

/** One validated, normalized message on its way to the sinks. */
export type Envelope = TelemetryEnvelope | EventEnvelope

/** The fields of the normalized envelope; any other own field was added by a stage. */
const NORMALIZED_FIELDS = 9

/**
 * The fields that stages added to an envelope (such as `alerts`), as a JSON object text, or
 * null when there are none. Sinks store them next to the normalized fields. Throws when a
 * field cannot be written as JSON (a BigInt, a cycle): the sink refuses that message alone.
 */
export const annotationsOf = (e: Envelope): string | null => {
  // counted without Object.keys (an array per envelope, on the hot path)
  let fields = 0
  for (const key in e) if (Object.hasOwn(e, key)) fields++
  if (fields <= NORMALIZED_FIELDS) return null
  const extra: Record<string, unknown> = {}
  let any = false
  for (const key of Object.keys(e)) {
    if (!NORMALIZED.has(key)) {
      extra[key] = (e as unknown as Record<string, unknown>)[key]
      any = true
    }
  }
  if (!any) return null
  const json = JSON.stringify(extra)
  return json === "{}" ? null : json // fields set to undefined are no annotation
}

const NORMALIZED: ReadonlySet<string> = new Set([
  "device", "epoch", "seq", "kind", "deviceTs", "receivedAt", "gateway", "traceparent", "body"
])
