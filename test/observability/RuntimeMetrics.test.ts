/**
 * The process's own metrics (issue 9: "event-loop delay and GC pauses as metrics so operators
 * see the same thing in production"), from the real layer in this process: a blocked event
 * loop shows in the delay histogram and the per-second gauges, an idle one shows ~0 (the
 * timer's period is not counted as delay), a forced major GC in the GC histogram, CPU time in
 * the CPU counters; and sink queues expose their depth and capacity at scrape time.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer, Queue } from "effect"
import { PrometheusMetrics } from "effect/observability"
import * as V8 from "node:v8"
import * as Vm from "node:vm"
import * as Metrics from "../../src/observability/Metrics.ts"
import * as RuntimeMetrics from "../../src/observability/RuntimeMetrics.ts"
import { parseExposition, sampleValue } from "./support.ts"

const scrape = Effect.map(PrometheusMetrics.format(), parseExposition)

/** Keeps the event loop busy for `ms`. */
const block = (ms: number) => {
  const until = performance.now() + ms
  let x = 0
  while (performance.now() < until) x++
  return x
}

/** A way to call V8's collector without starting Node with --expose-gc. */
const forceGc = (): (() => void) => {
  V8.setFlagsFromString("--expose-gc")
  const gc: unknown = Vm.runInNewContext("gc")
  if (typeof gc !== "function") throw new Error("gc is not exposed")
  return () => {
    gc()
  }
}

describe("RuntimeMetrics", () => {
  it.live("event-loop delay: a 150 ms block is a late tick in the histogram (and CPU time counted); idle ticks are ~0 late", () =>
    Effect.gen(function*() {
      yield* Layer.build(RuntimeMetrics.layer)
      const before = yield* scrape
      expect(before.get("nodejs_eventloop_delay_seconds")?.type).toBe("histogram")
      for (const g of ["min", "max", "mean", "stddev", "p50", "p90", "p99"]) {
        expect(before.get(`nodejs_eventloop_lag_${g}_seconds`)?.type, g).toBe("gauge")
      }
      // idle for a second: most ticks on time (the 10 ms period itself is not delay)
      yield* Effect.sleep("1100 millis")
      const idle = yield* scrape
      const count = (f: typeof idle, le: string) => sampleValue(f, "nodejs_eventloop_delay_seconds_bucket", { le })
      const ticks = count(idle, "+Inf") - count(before, "+Inf")
      expect(ticks).toBeGreaterThanOrEqual(20) // ~100 a second, fewer on a busy machine
      expect(ticks).toBeLessThanOrEqual(120)
      const onTime = count(idle, "0.01") - count(before, "0.01")
      expect(onTime / ticks).toBeGreaterThanOrEqual(0.25) // without the period subtracted: 0

      block(150)
      yield* Effect.sleep("1100 millis") // the late tick, then a publication of the gauges
      const after = yield* scrape
      const lateTicks = (count(after, "+Inf") - count(after, "0.1")) - (count(idle, "+Inf") - count(idle, "0.1"))
      expect(lateTicks).toBeGreaterThanOrEqual(1)
      expect(sampleValue(after, "nodejs_eventloop_delay_seconds_sum") - sampleValue(idle, "nodejs_eventloop_delay_seconds_sum"))
        .toBeGreaterThanOrEqual(0.13)
      // the CPU the block burnt is counted
      expect(sampleValue(after, "process_cpu_seconds_total") - sampleValue(idle, "process_cpu_seconds_total")).toBeGreaterThanOrEqual(0.1)
      expect(sampleValue(after, "process_cpu_seconds_total")).toBeCloseTo(
        sampleValue(after, "process_cpu_user_seconds_total") + sampleValue(after, "process_cpu_system_seconds_total"),
        6
      )
      expect(sampleValue(after, "process_resident_memory_bytes")).toBeGreaterThan(10 * 1024 * 1024)
      expect(sampleValue(after, "nodejs_heap_size_used_bytes")).toBeGreaterThan(0)
      expect(sampleValue(after, "nodejs_heap_size_used_bytes")).toBeLessThanOrEqual(sampleValue(after, "nodejs_heap_size_total_bytes"))
    }).pipe(Effect.scoped), 20_000)

  it.live("the per-second maximum shows the block in the second it ended", () =>
    Effect.gen(function*() {
      yield* Layer.build(RuntimeMetrics.layer)
      yield* Effect.sleep("1050 millis") // right after a publication
      block(200)
      // the next publication (within a second) reports the block; poll for it, then it is replaced
      let seen = 0
      const deadline = Date.now() + 2_500
      while (Date.now() < deadline && seen < 0.15) {
        yield* Effect.sleep("50 millis")
        seen = Math.max(seen, sampleValue(yield* scrape, "nodejs_eventloop_lag_max_seconds"))
      }
      expect(seen).toBeGreaterThanOrEqual(0.15)
      expect(seen).toBeLessThan(1)
    }).pipe(Effect.scoped), 20_000)

  it.live("GC pauses: a forced major collection is counted under kind=\"major\", every kind exists", () =>
    Effect.gen(function*() {
      yield* Layer.build(RuntimeMetrics.layer)
      const gc = forceGc()
      const before = yield* scrape
      for (const kind of ["minor", "major", "incremental", "weakcb"]) {
        expect(before.get("nodejs_gc_duration_seconds")?.samples.some((s) => s.labels["kind"] === kind), kind).toBe(true)
      }
      const majors = (f: typeof before) => sampleValue(f, "nodejs_gc_duration_seconds_count", { kind: "major" })
      gc()
      gc()
      // entries reach the observer asynchronously
      let after = yield* scrape
      const deadline = Date.now() + 2_000
      while (Date.now() < deadline && majors(after) < majors(before) + 2) {
        yield* Effect.sleep("20 millis")
        after = yield* scrape
      }
      expect(majors(after) - majors(before)).toBeGreaterThanOrEqual(2)
      expect(sampleValue(after, "nodejs_gc_duration_seconds_sum", { kind: "major" }))
        .toBeGreaterThan(sampleValue(before, "nodejs_gc_duration_seconds_sum", { kind: "major" }))
    }).pipe(Effect.scoped), 20_000)

  it.live("a sink queue's depth is read at each scrape, its capacity set once; both gone with its scope", () =>
    Effect.gen(function*() {
      const queue = yield* Queue.bounded<number>(4)
      const depth = (f: Awaited<ReturnType<typeof parseExposition>>) => sampleValue(f, "gateway_sink_queue_depth", { sink: "test-sink" })
      yield* Effect.scoped(Effect.gen(function*() {
        yield* Metrics.watchSinkQueue("test-sink", 4, () => Queue.sizeUnsafe(queue))
        const empty = yield* scrape
        expect(empty.get("gateway_sink_queue_depth")?.type).toBe("gauge")
        expect(depth(empty)).toBe(0)
        expect(sampleValue(empty, "gateway_sink_queue_capacity", { sink: "test-sink" })).toBe(4)
        yield* Queue.offerAll(queue, [1, 2, 3])
        expect(depth(yield* scrape)).toBe(3)
      }))
      const gone = yield* scrape
      expect(gone.get("gateway_sink_queue_depth")?.samples.some((s) => s.labels["sink"] === "test-sink") ?? false).toBe(false)
    }))
})
