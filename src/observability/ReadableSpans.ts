/**
 * The gateway's finished spans as OpenTelemetry's `ReadableSpan`, the shape its exporters read:
 * used for `http/json` (OpenTelemetry's JSON exporter, unchanged) and by the tests that check
 * the gateway's own protobuf encoding against OpenTelemetry's.
 */
import type { Attributes, HrTime, Link, SpanContext } from "@opentelemetry/api"
import type { ReadableSpan, TimedEvent } from "@opentelemetry/sdk-trace-base"
import { type Tracer } from "effect"
import {
  attributeValue,
  currentOrigin,
  EffectSpan,
  eventsOf,
  exitOf,
  FAILED_OUTCOMES,
  type FinishedSpan,
  type MessageSpan,
  type SpanEventRecord
} from "./GatewayTracer.ts"

/** OpenTelemetry's span kinds and status codes, as numbers (their values are part of OTLP). */
export const OTEL_KIND: Record<Tracer.SpanKind, number> = { internal: 0, server: 1, client: 2, producer: 3, consumer: 4 }
const STATUS_UNSET = 0
const STATUS_ERROR = 2
const SAMPLED = 1

const BILLION = BigInt(1_000_000_000)
const hrFromNanos = (ns: bigint): HrTime => [Number(ns / BILLION), Number(ns % BILLION)]
const hrFromMs = (ms: number): HrTime => {
  const s = Math.floor(ms / 1_000)
  const ns = Math.round((ms - s * 1_000) * 1e6)
  return ns >= 1e9 ? [s + 1, ns - 1e9] : [s, ns]
}

const contextOf = (traceId: string, spanId: string, flags: number, isRemote: boolean): SpanContext => ({ traceId, spanId, traceFlags: flags, isRemote })

const timedEvents = (events: ReadonlyArray<SpanEventRecord>): Array<TimedEvent> =>
  events.map((e) => ({ name: e.name, time: hrFromNanos(e.timeNanos), attributes: e.attributes }))

const attributesOf = (map: ReadonlyMap<string, unknown> | undefined, into: Attributes): Attributes => {
  if (map !== undefined) for (const [k, v] of map) into[k] = attributeValue(v)
  return into
}

/** Links to the sampled targets of `links` (a target that was not sampled was never exported). */
export const sampledLinks = (links: ReadonlyArray<Tracer.SpanLink>): Array<Link> => {
  const out: Array<Link> = []
  for (const l of links) {
    if (!l.span.sampled) continue
    const attributes: Attributes = {}
    for (const k in l.attributes) attributes[k] = attributeValue(l.attributes[k])
    out.push({ context: contextOf(l.span.traceId, l.span.spanId, SAMPLED, l.span._tag === "ExternalSpan"), attributes })
  }
  return out
}

type Common = Pick<
  ReadableSpan,
  "resource" | "instrumentationScope" | "ended" | "droppedAttributesCount" | "droppedEventsCount" | "droppedLinksCount"
>

const messageSpan = (m: MessageSpan, common: Common): ReadableSpan => {
  const at = currentOrigin()
  const ctx = contextOf(m.traceId, m.spanId, SAMPLED, false)
  const p = m.parentTraceparent
  const attributes: Attributes = { "device.id": m.device, "message.seq": m.seq, "message.kind": m.messageKind }
  if (m.outcome !== undefined) attributes["message.outcome"] = m.outcome
  attributesOf(m.extra, attributes)
  return {
    ...common,
    name: m.name,
    kind: OTEL_KIND.server,
    spanContext: () => ctx,
    ...(p === undefined ? {} : { parentSpanContext: contextOf(p.slice(3, 35), p.slice(36, 52), parseInt(p.slice(53, 55), 16), true) }),
    startTime: hrFromMs(at + m.startAt),
    endTime: hrFromMs(at + m.endAt),
    duration: hrFromMs(m.endAt - m.startAt),
    status: m.outcome !== undefined && FAILED_OUTCOMES.has(m.outcome) ? { code: STATUS_ERROR, message: m.outcome } : { code: STATUS_UNSET },
    attributes,
    links: [],
    events: timedEvents(eventsOf(m))
  }
}

const effectSpan = (s: EffectSpan, common: Common): ReadableSpan => {
  const status = s.status
  const start = status.startTime
  const end = status._tag === "Ended" ? status.endTime : start
  const ctx = contextOf(s.traceId, s.spanId, SAMPLED, false)
  const parent = s.parent._tag === "Some" ? s.parent.value : undefined
  const attributes = attributesOf(s.attributes, {})
  const events = timedEvents(eventsOf(s))
  const exit = exitOf(s)
  if (exit.interrupted) attributes["effect.fiber.interrupted"] = true
  if (exit.error !== undefined) {
    events.push({ name: "exception", time: hrFromNanos(end), attributes: { "exception.type": exit.errorType, "exception.message": exit.error } })
  }
  return {
    ...common,
    name: s.name,
    kind: OTEL_KIND[s.kind],
    spanContext: () => ctx,
    ...(parent === undefined
      ? {}
      : { parentSpanContext: contextOf(parent.traceId, parent.spanId, parent.sampled ? SAMPLED : 0, parent._tag === "ExternalSpan") }),
    startTime: hrFromNanos(start),
    endTime: hrFromNanos(end),
    duration: hrFromNanos(end - start),
    status: exit.error === undefined ? { code: STATUS_UNSET } : { code: STATUS_ERROR, message: exit.error },
    attributes,
    links: sampledLinks(s.links),
    events
  }
}

/** `span` as a `ReadableSpan` reported under `resource` and `scope`. */
export const toReadableSpan = (
  span: FinishedSpan,
  resource: ReadableSpan["resource"],
  scope: ReadableSpan["instrumentationScope"]
): ReadableSpan => {
  const common: Common = {
    resource,
    instrumentationScope: scope,
    ended: true,
    droppedAttributesCount: 0,
    droppedEventsCount: 0,
    droppedLinksCount: 0
  }
  return span instanceof EffectSpan ? effectSpan(span, common) : messageSpan(span, common)
}
