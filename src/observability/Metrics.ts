/**
 * Every metric handle of the gateway, and nothing else (names `gateway_<name>_<unit>`, bounded
 * label values). The hot path updates them synchronously ({@link record}) with counts
 * aggregated per chunk or batch, never one Effect per message.
 */
import { Context, Metric } from "effect"
import type { RefusalReason } from "../admission/Admission.ts"
import type { Kind } from "../domain/Frames.ts"

const empty = Context.empty()

/** Synchronous update for the hot path (counters add, gauges set, histograms observe). */
export const record = <I>(metric: Metric.Metric<I, unknown>, value: I): void => metric.updateUnsafe(value, empty)

/**
 * A family of labelled series: one metric object per label set, made once and cached. (Effect's
 * `Metric.withAttributes` builds a context on every update and, with several series of one
 * metric updated in turn, recomputes the series key each time: garbage on the hot path.)
 */
const family = <M>(make: (attributes: Record<string, string>) => M) => {
  const series = new Map<string, M>()
  return (attributes: Record<string, string>): M => {
    const key = Object.values(attributes).join("\u0000")
    let m = series.get(key)
    if (m === undefined) series.set(key, m = make(attributes))
    return m
  }
}

/** Open device connections (after admission). */
export const connectionsActive = Metric.gauge("gateway_connections_active", {
  description: "device connections currently open"
})

/** Why connections ended or were refused. */
export type ConnectionResult =
  | "accepted"
  | "busy"
  | "auth_failed"
  | "protocol_error"
  | "timeout"
  | "replaced"
  | "closed"
  | "shutdown"

const connectionsTotal = family((attributes) =>
  Metric.counter("gateway_connections_total", {
    description: "connections by result (accepted at welcome; the others when they end or are refused)",
    attributes
  })
)
/** Counter of connections for one result. */
export const connections = (result: ConnectionResult): Metric.Metric<number, unknown> => connectionsTotal({ result })

/** Per-message outcomes (the answer each data frame got). */
export type MessageOutcome =
  | "committed"
  | "duplicate"
  | "dropped"
  | "invalid"
  | "forbidden"
  | "shed"
  | "rate_limited"
  | "unavailable"
  | "rejected"

const messagesTotal = family((attributes) =>
  Metric.counter("gateway_messages_total", { description: "data frames by kind and outcome", attributes })
)
/** Counter of messages of one kind with one outcome. */
export const messages = (kind: Kind, outcome: MessageOutcome): Metric.Metric<number, unknown> =>
  messagesTotal({ kind, outcome })

/** Errors by taxonomy class (DESIGN.md). */
export type ErrorClass =
  | "ProtocolError"
  | "AuthError"
  | "ValidationError"
  | "OverloadError"
  | "TransientUpstreamError"
  | "PermanentPersistenceError"
  | "StageDefect"

const errorsTotal = family((attributes) =>
  Metric.counter("gateway_errors_total", { description: "errors by taxonomy class", attributes })
)
/** Counter of errors of one class. */
export const errors = (errorClass: ErrorClass): Metric.Metric<number, unknown> => errorsTotal({ class: errorClass })

/** The two lanes of DESIGN.md. */
export type LaneName = "critical" | "bulk"

/** Depth gauge of one lane. */
export const laneDepth = (lane: LaneName) =>
  Metric.gauge("gateway_queue_depth", { description: "messages waiting in a lane", attributes: { lane } })
/** Capacity gauge of one lane. */
export const laneCapacity = (lane: LaneName) =>
  Metric.gauge("gateway_queue_capacity", { description: "capacity of a lane", attributes: { lane } })

/** Ingest-to-commit latency: from the frame's arrival to the sink's commit, in milliseconds. */
export const commitLatencyMs = Metric.histogram("gateway_ingest_to_commit_latency_ms", {
  description: "milliseconds from a data frame's arrival to its commit",
  boundaries: [0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000]
})

const sinkBatchSizes = family((attributes) =>
  Metric.histogram("gateway_sink_batch_size", {
    description: "messages per sink batch",
    boundaries: Metric.exponentialBoundaries({ start: 1, factor: 2, count: 14 }),
    attributes
  })
)
/** Messages per batch written to one sink. */
export const sinkBatchSize = (sink: string) => sinkBatchSizes({ sink })

const sinkHealthyGauges = family((attributes) =>
  Metric.gauge("gateway_sink_healthy", { description: "1 while a sink can take writes (readiness), else 0", attributes })
)
/** Whether one sink can take writes now. */
export const sinkHealthy = (sink: string) => sinkHealthyGauges({ sink })

const sinkRetriesTotal = family((attributes) =>
  Metric.counter("gateway_sink_retries_total", {
    description: "sink batch attempts retried after a transient error",
    attributes
  })
)
/** Batch attempts of one sink retried after a transient error. */
export const sinkRetries = (sink: string) => sinkRetriesTotal({ sink })

const sinkBatchDurations = family((attributes) =>
  Metric.histogram("gateway_sink_batch_duration_ms", {
    description: "milliseconds to commit one sink batch (its retries included)",
    boundaries: [0.5, 1, 2, 5, 10, 25, 50, 100, 250, 1000, 5000],
    attributes
  })
)
/** Milliseconds one sink took for a batch, retries included. */
export const sinkBatchMs = (sink: string) => sinkBatchDurations({ sink })

/** Devices with dedup state (bounded by GATEWAY_DEDUP_DEVICES). */
export const dedupDevices = Metric.gauge("gateway_dedup_devices", { description: "devices with dedup window state" })

/** What happened to the messages a stage saw. */
export type StageResult = "passed" | "settled" | "rejected"

const STAGE_DURATION_BOUNDARIES = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 25, 50, 100, 250, 1000]

/** Per-chunk duration histogram of one stage. */
export const stageDuration = (stage: string) =>
  Metric.histogram("gateway_stage_duration_ms", {
    description: "milliseconds a stage took for one chunk",
    boundaries: STAGE_DURATION_BOUNDARIES,
    attributes: { stage }
  })
const stageMessagesTotal = family((attributes) =>
  Metric.counter("gateway_stage_messages_total", {
    description: "messages by stage and result (passed on, settled with an ack, rejected with a nack)",
    attributes
  })
)
/** Message counter of one stage and result. */
export const stageMessages = (stage: string, result: StageResult): Metric.Metric<number, unknown> =>
  stageMessagesTotal({ stage, result })
const stageErrorsTotal = family((attributes) =>
  Metric.counter("gateway_stage_errors_total", { description: "messages a stage rejected, by stage and error class", attributes })
)
/** Rejection counter of one stage and error class. */
export const stageErrors = (stage: string, errorClass: string): Metric.Metric<number, unknown> =>
  stageErrorsTotal({ stage, class: errorClass })

/** The node's memory budget, bytes (GATEWAY_MEMORY_BUDGET). */
export const memoryBudgetBytes = Metric.gauge("gateway_memory_budget_bytes", {
  description: "bytes frames may hold node-wide (GATEWAY_MEMORY_BUDGET)"
})

/** What the memory budget counts: messages in flight, connection buffers. */
export type MemoryPart = "messages" | "buffers"

/** Bytes counted against the memory budget, by part. */
export const memoryUsed = (part: MemoryPart) =>
  Metric.gauge("gateway_memory_used_bytes", {
    description: "bytes counted against the memory budget: messages in flight (estimated heap cost), connection buffers",
    attributes: { part }
  })

/** Event-loop delay over the last sampling period, seconds (prom-client's `nodejs_eventloop_lag_*` family). */
export const eventLoopDelay = (stat: "p50" | "p99" | "max") =>
  Metric.gauge(`nodejs_eventloop_lag_${stat}_seconds`, {
    description: `event-loop delay ${stat} over the last second (perf_hooks.monitorEventLoopDelay)`
  })

/** Resident set size of the process (Node's conventional name). */
export const processRssBytes = Metric.gauge("process_resident_memory_bytes", {
  description: "resident memory size in bytes"
})

const admissionRefusalsTotal = family((attributes) =>
  Metric.counter("gateway_admission_refusals_total", {
    description: "connections refused with error busy, by reason",
    attributes
  })
)
/** Counter of admission refusals for one reason. */
export const admissionRefusals = (reason: RefusalReason): Metric.Metric<number, unknown> => admissionRefusalsTotal({ reason })

/** Failed authentications (wrong token, unknown device, a certificate that does not name the device). */
export const authFailures = Metric.counter("gateway_auth_failures_total", {
  description: "hellos that failed authentication"
})

/** Source addresses refused for a while after too many failed authentications. */
export const authBlocks = Metric.counter("gateway_auth_source_blocks_total", {
  description: "source addresses blocked for too many failed authentications"
})

/** Devices banned for flapping. */
export const flapBans = Metric.counter("gateway_flap_bans_total", {
  description: "devices banned for reconnecting too often"
})

/** Accept errors of the device listener, by errno class. */
export type AcceptErrorCode = "EMFILE" | "ENFILE" | "ENOBUFS" | "ENOMEM" | "other"

const acceptErrorsTotal = family((attributes) =>
  Metric.counter("gateway_accept_errors_total", { description: "failed accepts on the device port, by error", attributes })
)
/** Counter of accept errors of one code. */
export const acceptErrors = (code: AcceptErrorCode): Metric.Metric<number, unknown> => acceptErrorsTotal({ code })

/** Why a TLS handshake on the device port failed. */
export type TlsFailure = "certificate" | "not_tls" | "reset" | "other"

const tlsHandshakeFailuresTotal = family((attributes) =>
  Metric.counter("gateway_tls_handshake_failures_total", { description: "TLS handshakes on the device port that failed, by reason", attributes })
)
/** Counter of failed TLS handshakes of one reason. */
export const tlsHandshakeFailures = (reason: TlsFailure): Metric.Metric<number, unknown> => tlsHandshakeFailuresTotal({ reason })

const tlsReloadsTotal = family((attributes) =>
  Metric.counter("gateway_tls_reloads_total", { description: "TLS certificate reloads, by result", attributes })
)
/** Counter of TLS certificate reloads with one result. */
export const tlsReloads = (result: "ok" | "failed"): Metric.Metric<number, unknown> => tlsReloadsTotal({ result })
