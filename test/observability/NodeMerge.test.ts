/**
 * How a node merges its workers' new series (src/cluster/MetricsMerge.ts): a breaker state is
 * the worst worker's (two half-open workers are not one open breaker), the event-loop gauges
 * too, and the GC and event-loop histograms add up bucket by bucket, as Effect formats them.
 */
import { describe, expect, it } from "@effect/vitest"
import * as MetricsMerge from "../../src/cluster/MetricsMerge.ts"

const worker = (breaker: number, lagMax: number, gcBuckets: ReadonlyArray<number>, gcSum: number) =>
  [
    "# HELP gateway_sink_breaker_state circuit breaker of a sink",
    "# TYPE gateway_sink_breaker_state gauge",
    `gateway_sink_breaker_state{sink="nats"} ${breaker}`,
    "# HELP nodejs_eventloop_lag_max_seconds event-loop delay over the last second: maximum",
    "# TYPE nodejs_eventloop_lag_max_seconds gauge",
    `nodejs_eventloop_lag_max_seconds ${lagMax}`,
    "# HELP nodejs_gc_duration_seconds garbage collection pauses",
    "# TYPE nodejs_gc_duration_seconds histogram",
    `nodejs_gc_duration_seconds_bucket{kind="minor",le="0.001"} ${gcBuckets[0]}`,
    `nodejs_gc_duration_seconds_bucket{kind="minor",le="0.01"} ${gcBuckets[1]}`,
    `nodejs_gc_duration_seconds_bucket{kind="minor",le="+Inf"} ${gcBuckets[2]}`,
    `nodejs_gc_duration_seconds_sum{kind="minor"} ${gcSum}`,
    `nodejs_gc_duration_seconds_count{kind="minor"} ${gcBuckets[2]}`,
    "# HELP process_cpu_seconds_total total user and system CPU time spent in seconds",
    "# TYPE process_cpu_seconds_total counter",
    `process_cpu_seconds_total ${gcSum * 100}`,
    ""
  ].join("\n")

const node = (...workers: ReadonlyArray<string>) => MetricsMerge.merge(workers.map(MetricsMerge.parse))
const value = (e: MetricsMerge.Exposition, family: string, series: string) => e.get(family)?.samples.get(series)

describe("a node's merge of the runtime and breaker series", () => {
  it("the breaker state is the worst worker's: 1 + 1 half-open is half-open, 0 and 2 is open", () => {
    expect(value(node(worker(1, 0, [0, 0, 0], 0), worker(1, 0, [0, 0, 0], 0)), "gateway_sink_breaker_state", 'gateway_sink_breaker_state{sink="nats"}')).toBe(1)
    expect(value(node(worker(0, 0, [0, 0, 0], 0), worker(2, 0, [0, 0, 0], 0)), "gateway_sink_breaker_state", 'gateway_sink_breaker_state{sink="nats"}')).toBe(2)
  })

  it("the event-loop maximum is the worst worker's; GC histograms and CPU counters add up", () => {
    const merged = node(worker(0, 0.004, [5, 9, 10], 0.02), worker(0, 0.25, [1, 3, 4], 0.5))
    expect(value(merged, "nodejs_eventloop_lag_max_seconds", "nodejs_eventloop_lag_max_seconds")).toBe(0.25)
    const gc = (series: string) => value(merged, "nodejs_gc_duration_seconds", series)
    expect(gc('nodejs_gc_duration_seconds_bucket{kind="minor",le="0.001"}')).toBe(6)
    expect(gc('nodejs_gc_duration_seconds_bucket{kind="minor",le="0.01"}')).toBe(12)
    expect(gc('nodejs_gc_duration_seconds_bucket{kind="minor",le="+Inf"}')).toBe(14)
    expect(gc('nodejs_gc_duration_seconds_count{kind="minor"}')).toBe(14)
    expect(gc('nodejs_gc_duration_seconds_sum{kind="minor"}')).toBeCloseTo(0.52, 12)
    expect(value(merged, "process_cpu_seconds_total", "process_cpu_seconds_total")).toBeCloseTo(52, 9)
    // one HELP and TYPE per family in the node's text
    const text = MetricsMerge.render(merged)
    expect(text.match(/^# TYPE nodejs_gc_duration_seconds histogram$/gm)).toHaveLength(1)
  })
})
