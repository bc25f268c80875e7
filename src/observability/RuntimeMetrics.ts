/**
 * The process's own health, under the names Node exporters (prom-client) give it: resident
 * memory, CPU time, V8 heap, event-loop delay and garbage-collection pauses. A gateway whose
 * event loop stalls answers pings, hellos and `/readyz` late whatever its queues say, so these
 * are the first figures to look at when control traffic is slow.
 *
 * Nothing here is on the hot path: a 10 ms timer measures how late it runs (the event-loop
 * delay: one histogram observation per tick, ~100 a second), a PerformanceObserver records
 * each GC pause as V8 reports it, and once a second the gauges are published. The timer's own
 * period is subtracted, so an idle loop shows ~0 (Node's `monitorEventLoopDelay`, which
 * prom-client reports as is, includes its 10 ms resolution in every figure).
 */
import { Effect, Layer, Schedule } from "effect"
import { constants, type PerformanceEntry, PerformanceObserver } from "node:perf_hooks"
import * as Metrics from "./Metrics.ts"

/** How often the gauges are published (and the delay statistics restarted). */
const SAMPLE_EVERY = "1 second"

/** Period of the event-loop delay timer, milliseconds. */
export const DELAY_RESOLUTION_MS = 10

/** Delay samples kept between two publications at most (100 a second at 10 ms). */
const MAX_SAMPLES = 1_000

/** The lateness of a timer ticking every {@link DELAY_RESOLUTION_MS}, in seconds, while the scope lives. */
const delaySampler = Effect.acquireRelease(
  Effect.sync(() => {
    const samples: Array<number> = []
    let last = performance.now()
    const timer = setInterval(() => {
      const now = performance.now()
      const late = Math.max(0, now - last - DELAY_RESOLUTION_MS) / 1000
      last = now
      Metrics.record(Metrics.eventLoopDelayHistogram, late)
      if (samples.length < MAX_SAMPLES) samples.push(late)
    }, DELAY_RESOLUTION_MS)
    timer.unref()
    return { samples, timer }
  }),
  ({ timer }) => Effect.sync(() => clearInterval(timer))
)

/** Nearest-rank percentile `p` (0..100) of sorted `xs`. */
const percentile = (xs: ReadonlyArray<number>, p: number): number => xs[Math.max(0, Math.ceil((p / 100) * xs.length) - 1)]!

/** Publishes the statistics of the delays since the last call and forgets them. */
const publishDelays = (samples: Array<number>): void => {
  if (samples.length === 0) return // the loop was blocked the whole period: its sample comes with the next
  const xs = samples.splice(0).sort((a, b) => a - b)
  let sum = 0
  for (const x of xs) sum += x
  const mean = sum / xs.length
  let squares = 0
  for (const x of xs) squares += (x - mean) ** 2
  const d = Metrics.eventLoopDelay
  Metrics.record(d.min, xs[0]!)
  Metrics.record(d.max, xs[xs.length - 1]!)
  Metrics.record(d.mean, mean)
  Metrics.record(d.stddev, Math.sqrt(squares / xs.length))
  Metrics.record(d.p50, percentile(xs, 50))
  Metrics.record(d.p90, percentile(xs, 90))
  Metrics.record(d.p99, percentile(xs, 99))
}

const gcKindOf: Record<number, Metrics.GcKind> = {
  [constants.NODE_PERFORMANCE_GC_MINOR]: "minor",
  [constants.NODE_PERFORMANCE_GC_MAJOR]: "major",
  [constants.NODE_PERFORMANCE_GC_INCREMENTAL]: "incremental",
  [constants.NODE_PERFORMANCE_GC_WEAKCB]: "weakcb"
}

/** The GC kind of a `gc` performance entry (V8 reports it in `detail.kind`). */
const gcKind = (entry: PerformanceEntry): Metrics.GcKind | undefined => {
  const detail: unknown = "detail" in entry ? entry.detail : undefined
  if (typeof detail !== "object" || detail === null || !("kind" in detail) || typeof detail.kind !== "number") return undefined
  return gcKindOf[detail.kind]
}

/** Every GC pause of this thread into `nodejs_gc_duration_seconds{kind}`, while the scope lives. */
const gcObserver = Effect.acquireRelease(
  Effect.sync(() => {
    const observer = new PerformanceObserver((list) => {
      for (const entry of list.getEntries()) {
        const kind = gcKind(entry)
        if (kind !== undefined) Metrics.record(Metrics.gcDuration(kind), entry.duration / 1000)
      }
    })
    observer.observe({ entryTypes: ["gc"] })
    return observer
  }),
  (observer) => Effect.sync(() => observer.disconnect())
)

/** Samples the process's health for as long as the gateway runs. */
export const layer = Layer.effectDiscard(Effect.gen(function*() {
  const { samples } = yield* delaySampler
  yield* gcObserver
  // exported from the first scrape (the delay statistics are published after the first second)
  for (const gauge of Object.values(Metrics.eventLoopDelay)) Metrics.present(gauge)
  Metrics.present(Metrics.eventLoopLag)
  Metrics.present(Metrics.eventLoopDelayHistogram)
  for (const kind of Metrics.GC_KINDS) Metrics.present(Metrics.gcDuration(kind))
  let cpu: NodeJS.CpuUsage = { user: 0, system: 0 } // the first sample counts everything since the process started
  yield* Effect.sync(() => {
    const memory = process.memoryUsage()
    Metrics.record(Metrics.processRssBytes, memory.rss)
    Metrics.record(Metrics.heap.total, memory.heapTotal)
    Metrics.record(Metrics.heap.used, memory.heapUsed)
    Metrics.record(Metrics.heap.external, memory.external)
    const now = process.cpuUsage()
    const user = (now.user - cpu.user) / 1e6
    const system = (now.system - cpu.system) / 1e6
    cpu = now
    Metrics.record(Metrics.processCpu.user, user)
    Metrics.record(Metrics.processCpu.system, system)
    Metrics.record(Metrics.processCpu.total, user + system)
    publishDelays(samples)
    const start = performance.now()
    setImmediate(() => Metrics.record(Metrics.eventLoopLag, (performance.now() - start) / 1000))
  }).pipe(Effect.repeat(Schedule.spaced(SAMPLE_EVERY)), Effect.forkScoped)
}))
