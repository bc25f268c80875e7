/**
 * The process's own health, as Node exporters name it: resident memory and event-loop delay
 * (from `perf_hooks.monitorEventLoopDelay`, p50/p99/max over each sampling period). A gateway
 * whose event loop stalls answers pings, hellos and `/readyz` late whatever its queues say, so
 * this is the first figure to look at when control traffic is slow.
 */
import { Effect, Layer, Schedule } from "effect"
import { monitorEventLoopDelay } from "node:perf_hooks"
import * as Metrics from "./Metrics.ts"

/** How often the gauges are published (and the delay histogram reset). */
const SAMPLE_EVERY = "1 second"

/** Samples RSS and event-loop delay for as long as the gateway runs. */
export const layer = Layer.effectDiscard(Effect.gen(function*() {
  const delay = yield* Effect.acquireRelease(
    Effect.sync(() => {
      const h = monitorEventLoopDelay({ resolution: 10 })
      h.enable()
      return h
    }),
    (h) => Effect.sync(() => h.disable())
  )
  yield* Effect.sync(() => {
    Metrics.record(Metrics.processRssBytes, process.memoryUsage.rss())
    if (delay.count > 0) {
      Metrics.record(Metrics.eventLoopDelay("p50"), delay.percentile(50) / 1e9)
      Metrics.record(Metrics.eventLoopDelay("p99"), delay.percentile(99) / 1e9)
      Metrics.record(Metrics.eventLoopDelay("max"), delay.max / 1e9)
    }
    delay.reset()
  }).pipe(Effect.repeat(Schedule.spaced(SAMPLE_EVERY)), Effect.forkScoped)
}))
