/**
 * The outbox's metric handles, one set per sink it wraps (label `sink`, a driver name), and
 * nothing else. Updated synchronously ({@link record}) once per batch or writer reply.
 */
import { Metric } from "effect"
import { present, record } from "../../observability/Metrics.ts"

/** Why the outbox refused messages (they were answered Unavailable). */
export type RefusalReason = "full" | "store_error"

/** The handles of one sink's outbox. */
export interface OutboxMetrics {
  /** Messages stored (gauge). */
  readonly messages: Metric.Metric<number, unknown>
  /** Bytes of stored envelopes (gauge). */
  readonly bytes: Metric.Metric<number, unknown>
  /** Age of the oldest stored message, seconds (gauge; 0 when empty). */
  readonly oldestAgeSeconds: Metric.Metric<number, unknown>
  /** Messages committed into the outbox (counter). */
  readonly appended: Metric.Metric<number, unknown>
  /** Messages the sink took from the outbox, Committed or Duplicate (counter). */
  readonly forwarded: Metric.Metric<number, unknown>
  /** Messages the sink refused for good while forwarded, handed to the dead letters (counter). */
  readonly deadLettered: Metric.Metric<number, unknown>
  /** Messages the outbox could not take, by reason (counter). */
  readonly refused: (reason: RefusalReason) => Metric.Metric<number, unknown>
}

const made = new Map<string, OutboxMetrics>()

/** The handles for the outbox of `sink` (made once per sink name). */
export const outboxMetrics = (sink: string): OutboxMetrics => {
  const known = made.get(sink)
  if (known !== undefined) return known
  const attributes = { sink }
  const refusedBy = new Map<RefusalReason, Metric.Metric<number, unknown>>()
  const m: OutboxMetrics = {
    messages: Metric.gauge("gateway_outbox_messages", { description: "messages in the local outbox, waiting to be forwarded", attributes }),
    bytes: Metric.gauge("gateway_outbox_bytes", { description: "bytes of envelopes (JSON) in the local outbox", attributes }),
    oldestAgeSeconds: Metric.gauge("gateway_outbox_oldest_age_seconds", {
      description: "age of the oldest message in the local outbox (0 when empty)",
      attributes
    }),
    appended: Metric.counter("gateway_outbox_appended_total", { description: "messages committed into the local outbox", attributes }),
    forwarded: Metric.counter("gateway_outbox_forwarded_total", {
      description: "messages forwarded from the outbox and taken by the sink (committed or duplicate)",
      attributes
    }),
    deadLettered: Metric.counter("gateway_outbox_dead_lettered_total", {
      description: "messages the sink refused for good while forwarded from the outbox (dead letters)",
      attributes
    }),
    refused: (reason) => {
      let r = refusedBy.get(reason)
      if (r === undefined) {
        refusedBy.set(
          reason,
          r = Metric.counter("gateway_outbox_refused_total", {
            description: "messages the outbox could not take (full, or its store failing): answered unavailable",
            attributes: { sink, reason }
          })
        )
      }
      return r
    }
  }
  made.set(sink, m)
  // every series at 0 from the start, so that rate() sees the first refusal
  const refused = [m.refused("full"), m.refused("store_error")]
  for (const metric of [m.messages, m.bytes, m.oldestAgeSeconds, m.appended, m.forwarded, m.deadLettered, ...refused]) present(metric)
  return m
}

/** Sets the depth gauges. */
export const recordDepth = (m: OutboxMetrics, messages: number, bytes: number, oldestAgeMs: number | undefined): void => {
  record(m.messages, messages)
  record(m.bytes, bytes)
  record(m.oldestAgeSeconds, oldestAgeMs === undefined ? 0 : oldestAgeMs / 1000)
}
