/**
 * Every metric handle of the gateway, and nothing else (names `gateway_<name>_<unit>` in base
 * units: seconds, bytes; bounded label values, never a device id). The README's "Metrics" table
 * is the contract (a test holds the two together). The hot path updates them synchronously
 * ({@link record}) with counts aggregated per chunk or batch, never one Effect per message.
 *
 * Series whose label values are known at start exist from the first scrape at 0
 * ({@link initialize}, families made by {@link family}): Prometheus's `rate()` and `increase()`
 * miss the first increment of a series that appears at 1, which would hide the first burst of
 * an error class from an alert.
 */
import { Context, Effect, Metric, type Scope } from "effect"
import type { RefusalReason } from "../admission/Admission.ts"
import type { Kind } from "../domain/Frames.ts"

const empty = Context.empty()

/** Synchronous update for the hot path (counters add, gauges set, histograms observe). */
export const record = <I>(metric: Metric.Metric<I, unknown>, value: I): void => metric.updateUnsafe(value, empty)

/** Makes a series exist (at 0, or empty for a histogram) without changing it. */
export const present = <I, S>(metric: Metric.Metric<I, S>): void => {
  metric.valueUnsafe(empty)
}

/** A histogram in seconds that takes milliseconds (what `performance.now()` differences give). */
const fromMs = (histogram: Metric.Metric<number, Metric.HistogramState>): Metric.Metric<number, Metric.HistogramState> =>
  Metric.mapInput(histogram, (ms: number) => ms / 1000)

/** The keys of a record whose type lists every member of a union: the compiler keeps the list complete. */
const all = <K extends string>(members: Record<K, true>): ReadonlyArray<K> => Object.keys(members) as Array<K>

/**
 * A family of labelled series: one metric object per label set, made once and cached. (Effect's
 * `Metric.withAttributes` builds a context on every update and, with several series of one
 * metric updated in turn, recomputes the series key each time: garbage on the hot path.)
 */
const family = <I, S>(make: (attributes: Record<string, string>) => Metric.Metric<I, S>) => {
  const series = new Map<string, Metric.Metric<I, S>>()
  return (attributes: Record<string, string>): Metric.Metric<I, S> => {
    const key = Object.values(attributes).join("\u0000")
    let m = series.get(key)
    if (m === undefined) {
      series.set(key, m = make(attributes))
      present(m) // exported from the moment it is made (at start, for sinks and known label values)
    }
    return m
  }
}

/** Open device connections (after admission). */
export const connectionsActive = Metric.gauge("gateway_connections_active", {
  description: "device connections currently open"
})

const connectionResults = {
  accepted: true,
  busy: true,
  auth_failed: true,
  protocol_error: true,
  timeout: true,
  replaced: true,
  closed: true,
  shutdown: true
} as const
/** Why connections ended or were refused. */
export type ConnectionResult = keyof typeof connectionResults

const connectionsTotal = family((attributes) =>
  Metric.counter("gateway_connections_total", {
    description: "connections by result (accepted at welcome; the others when they end or are refused)",
    attributes
  })
)
/** Counter of connections for one result. */
export const connections = (result: ConnectionResult): Metric.Metric<number, unknown> => connectionsTotal({ result })

const messageOutcomes = {
  committed: true,
  duplicate: true,
  dropped: true,
  invalid: true,
  forbidden: true,
  shed: true,
  rate_limited: true,
  unavailable: true,
  rejected: true
} as const
/** Per-message outcomes (the answer each data frame got; all but committed and duplicate are drops, by reason). */
export type MessageOutcome = keyof typeof messageOutcomes

const kinds: Record<Kind, true> = { telemetry: true, event: true }

const messagesTotal = family((attributes) =>
  Metric.counter("gateway_messages_total", { description: "data frames by kind and outcome", attributes })
)
/** Counter of messages of one kind with one outcome. */
export const messages = (kind: Kind, outcome: MessageOutcome): Metric.Metric<number, unknown> =>
  messagesTotal({ kind, outcome })

const errorClasses = {
  ProtocolError: true,
  AuthError: true,
  ValidationError: true,
  OverloadError: true,
  TransientUpstreamError: true,
  PermanentPersistenceError: true,
  StageDefect: true
} as const
/** Errors by taxonomy class (DESIGN.md). */
export type ErrorClass = keyof typeof errorClasses

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

/**
 * Ingest-to-commit latency: from the frame's arrival to the sink's commit (acked committed or
 * duplicate). Exported in seconds, buckets from 0.25 ms to 10 s; updated in milliseconds.
 */
export const commitLatencyMs = fromMs(Metric.histogram("gateway_ingest_to_commit_latency_seconds", {
  description: "seconds from a data frame's arrival to its commit",
  boundaries: [
    0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10
  ]
}))

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
  fromMs(Metric.histogram("gateway_sink_batch_duration_seconds", {
    description: "seconds to commit one sink batch (its retries included)",
    boundaries: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    attributes
  }))
)
/** Time one sink took for a batch, retries included (updated in milliseconds, exported in seconds). */
export const sinkBatchMs = (sink: string) => sinkBatchDurations({ sink })

/**
 * The depth (shares of batches waiting, read at each scrape) and capacity gauges of one sink's
 * own queue, for the life of the scope.
 */
export const watchSinkQueue = (sink: string, capacity: number, depth: () => number): Effect.Effect<void, never, Scope.Scope> =>
  Effect.gen(function*() {
    record(Metric.gauge("gateway_sink_queue_capacity", {
      description: "capacity of a sink's own queue, in shares of batches",
      attributes: { sink }
    }), capacity)
    yield* readAtScrape(Metric.gauge("gateway_sink_queue_depth", {
      description: "shares of batches waiting in a sink's own queue (not yet with its driver)",
      attributes: { sink }
    }), depth)
  })

/**
 * The size of the embedded store's write-ahead log file in bytes (read at each scrape), for the
 * life of the scope: what the checkpointer keeps bounded (README, The store).
 */
export const watchStoreWal = (bytes: () => number): Effect.Effect<void, never, Scope.Scope> =>
  readAtScrape(Metric.gauge("gateway_sqlite_wal_bytes", {
    description: "bytes of the SQLite store's write-ahead log file (gateway.db-wal), read at each scrape"
  }), bytes)

/** A gauge whose value `get` gives whenever it is read, for the life of the scope. */
const readAtScrape = (gauge: Metric.Metric<number, Metric.GaugeState<number>>, get: () => number) =>
  Effect.asVoid(Effect.acquireRelease(
    Effect.sync(() => Metric.registerUnsafe(gauge, empty, { get: () => ({ value: get() }), update: () => {}, modify: () => {} })),
    (registration) => Effect.sync(() => registration.remove())
  ))

/** Devices with dedup state (bounded by GATEWAY_DEDUP_DEVICES). */
export const dedupDevices = Metric.gauge("gateway_dedup_devices", { description: "devices with dedup window state" })

/** What happened to the messages a stage saw. */
export type StageResult = "passed" | "settled" | "rejected"

const STAGE_DURATION_BOUNDARIES = [
  0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1
]

/** Per-chunk duration histogram of one stage (updated in milliseconds, exported in seconds). */
export const stageDuration = (stage: string) =>
  fromMs(Metric.histogram("gateway_stage_duration_seconds", {
    description: "seconds a stage took for one chunk",
    boundaries: STAGE_DURATION_BOUNDARIES,
    attributes: { stage }
  }))
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

// ---- the process, under the names of prom-client's default metrics (RuntimeMetrics.ts samples them) ----

/** A statistic of the event-loop delay over the last second. */
export type DelayStat = "min" | "max" | "mean" | "stddev" | "p50" | "p90" | "p99"

const delay = (what: string) => ({ description: `event-loop delay over the last second: ${what} (a 10 ms timer's lateness)` })
/** Event-loop delay statistics over the last second, seconds (prom-client's `nodejs_eventloop_lag_*` gauges). */
export const eventLoopDelay: Record<DelayStat, Metric.Metric<number, unknown>> = {
  min: Metric.gauge("nodejs_eventloop_lag_min_seconds", delay("minimum")),
  max: Metric.gauge("nodejs_eventloop_lag_max_seconds", delay("maximum")),
  mean: Metric.gauge("nodejs_eventloop_lag_mean_seconds", delay("mean")),
  stddev: Metric.gauge("nodejs_eventloop_lag_stddev_seconds", delay("standard deviation")),
  p50: Metric.gauge("nodejs_eventloop_lag_p50_seconds", delay("median")),
  p90: Metric.gauge("nodejs_eventloop_lag_p90_seconds", delay("90th percentile")),
  p99: Metric.gauge("nodejs_eventloop_lag_p99_seconds", delay("99th percentile"))
}

/** How late a `setImmediate` ran at the last sample, seconds (prom-client's `nodejs_eventloop_lag_seconds`). */
export const eventLoopLag = Metric.gauge("nodejs_eventloop_lag_seconds", {
  description: "lag of the event loop in seconds (setImmediate delay at the last sample)"
})

/** Every lateness of the 10 ms sampling timer, seconds: quantiles over any window, summed across workers. */
export const eventLoopDelayHistogram = Metric.histogram("nodejs_eventloop_delay_seconds", {
  description: "event-loop delay: how late each tick of a 10 ms timer ran, seconds",
  boundaries: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
})

const gcKinds = { minor: true, major: true, incremental: true, weakcb: true } as const
/** The kinds of garbage collection V8 reports (perf_hooks `entry.detail.kind`). */
export type GcKind = keyof typeof gcKinds

const gcDurations = family((attributes) =>
  Metric.histogram("nodejs_gc_duration_seconds", {
    description: "garbage collection pauses of the main thread, seconds, by kind (minor, major, incremental, weakcb)",
    boundaries: [0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    attributes
  })
)
/** Pause histogram of one kind of garbage collection, seconds. */
export const gcDuration = (kind: GcKind): Metric.Metric<number, Metric.HistogramState> => gcDurations({ kind })
/** Every kind of garbage collection. */
export const GC_KINDS: ReadonlyArray<GcKind> = all(gcKinds)

/** Resident set size of the process (Node's conventional name). */
export const processRssBytes = Metric.gauge("process_resident_memory_bytes", {
  description: "resident memory size in bytes"
})

/** CPU time of the process, seconds: user, system, and both. */
export const processCpu = {
  user: Metric.counter("process_cpu_user_seconds_total", { description: "user CPU time spent in seconds" }),
  system: Metric.counter("process_cpu_system_seconds_total", { description: "system CPU time spent in seconds" }),
  total: Metric.counter("process_cpu_seconds_total", { description: "total user and system CPU time spent in seconds" })
}

/** V8's heap and the memory held by C++ objects bound to JavaScript ones (buffers), bytes. */
export const heap = {
  total: Metric.gauge("nodejs_heap_size_total_bytes", { description: "process heap size from Node.js in bytes" }),
  used: Metric.gauge("nodejs_heap_size_used_bytes", { description: "process heap size used from Node.js in bytes" }),
  external: Metric.gauge("nodejs_external_memory_bytes", { description: "Node.js external memory size in bytes" })
}

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

const acceptErrorCodes = { EMFILE: true, ENFILE: true, ENOBUFS: true, ENOMEM: true, other: true } as const
/** Accept errors of the device listener, by errno class. */
export type AcceptErrorCode = keyof typeof acceptErrorCodes

const acceptErrorsTotal = family((attributes) =>
  Metric.counter("gateway_accept_errors_total", { description: "failed accepts on the device port, by error", attributes })
)
/** Counter of accept errors of one code. */
export const acceptErrors = (code: AcceptErrorCode): Metric.Metric<number, unknown> => acceptErrorsTotal({ code })

const tlsFailures = { certificate: true, not_tls: true, reset: true, other: true } as const
/** Why a TLS handshake on the device port failed. */
export type TlsFailure = keyof typeof tlsFailures

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

const refusalReasons: Record<RefusalReason, true> = {
  connections: true,
  descriptors: true,
  draining: true,
  memory: true,
  saturated: true,
  rate: true,
  flapping: true,
  unauthenticated: true,
  evicted: true,
  source: true,
  auth_failures: true
}

/**
 * Makes every series whose labels are known at start exist at 0 (the rest appear with their
 * sink, stage or first event): connections by result, messages by kind and outcome, errors by
 * class, refusals by reason, accept errors by code, the authentication counters, and with TLS on
 * the device port its handshake failures and reloads (RuntimeMetrics.ts does the process's).
 */
export const initialize = (options: { readonly tls: boolean }): void => {
  present(connectionsActive)
  for (const result of all(connectionResults)) present(connections(result))
  for (const kind of all(kinds)) for (const outcome of all(messageOutcomes)) present(messages(kind, outcome))
  for (const errorClass of all(errorClasses)) present(errors(errorClass))
  present(commitLatencyMs)
  present(dedupDevices)
  for (const reason of all(refusalReasons)) present(admissionRefusals(reason))
  for (const code of all(acceptErrorCodes)) present(acceptErrors(code))
  present(authFailures)
  present(authBlocks)
  present(flapBans)
  if (options.tls) {
    for (const reason of all(tlsFailures)) present(tlsHandshakeFailures(reason))
    for (const result of ["ok", "failed"] as const) present(tlsReloads(result))
  }
}
