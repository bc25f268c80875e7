/**
 * The normalized envelope of PROTOCOL.md: what every sink receives, keyed by
 * (device, epoch, seq). Device time and arrival time are epoch milliseconds.
 */
import type { EventBody, Kind, TelemetryBody } from "./Frames.ts"

/** One validated, normalized message on its way to the sinks. */
export interface Envelope {
  readonly device: string
  readonly epoch: number
  readonly seq: number
  readonly kind: Kind
  readonly deviceTs: number
  readonly receivedAt: number
  readonly gateway: string
  /** The W3C traceparent of this message's ingest span (or the device's, when tracing is off). */
  readonly traceparent: string | null
  readonly body: TelemetryBody | EventBody
}
