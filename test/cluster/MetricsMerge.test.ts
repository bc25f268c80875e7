/**
 * The node's metrics from its workers': samples summed per series (histograms included), one
 * HELP/TYPE per family, the event-loop lag as the worst worker's, counters of gone workers kept.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Metric, Schema } from "effect"
import { PrometheusMetrics } from "effect/observability"
import * as MetricsMerge from "../../src/cluster/MetricsMerge.ts"

const worker = (committed: number, active: number, latencies: ReadonlyArray<number>, lag: number) => {
  const buckets = [1, 10, 100]
  const le = (b: number) => latencies.filter((l) => l <= b).length
  return [
    "# HELP gateway_messages_total data frames by kind and outcome",
    "# TYPE gateway_messages_total counter",
    `gateway_messages_total{kind="telemetry",outcome="committed"} ${committed}`,
    `gateway_messages_total{kind="event",outcome="committed"} ${committed * 2}`,
    "# HELP gateway_connections_active device connections currently open",
    "# TYPE gateway_connections_active gauge",
    `gateway_connections_active ${active}`,
    "# HELP gateway_latency_ms latency",
    "# TYPE gateway_latency_ms histogram",
    ...buckets.map((b) => `gateway_latency_ms_bucket{le="${b}"} ${le(b)}`),
    `gateway_latency_ms_bucket{le="+Inf"} ${latencies.length}`,
    `gateway_latency_ms_sum ${latencies.reduce((a, b) => a + b, 0)}`,
    `gateway_latency_ms_count ${latencies.length}`,
    "# HELP nodejs_eventloop_lag_p99_seconds lag",
    "# TYPE nodejs_eventloop_lag_p99_seconds gauge",
    `nodejs_eventloop_lag_p99_seconds ${lag}`,
    ""
  ].join("\n")
}

describe("MetricsMerge", () => {
  it("sums every series across workers, keeps one HELP and TYPE per family, takes the worst lag", () => {
    const a = MetricsMerge.parse(worker(10, 3, [0.5, 5, 50], 0.002))
    const b = MetricsMerge.parse(worker(7, 4, [2, 200], 0.03))
    const text = MetricsMerge.render(MetricsMerge.merge([a, b]))
    expect(text).toBe(worker(17, 7, [0.5, 5, 50, 2, 200], 0.03))
    expect(text.match(/# TYPE gateway_latency_ms /g)).toHaveLength(1)
  })

  it("parses label values holding spaces, braces, quotes and backslashes; drops timestamps", () => {
    const text = [
      "# TYPE x_total counter",
      'x_total{stage="a b}",why="say \\"hi\\" \\\\"} 2 1700000000000',
      'x_total{stage="a b}",why="say \\"hi\\" \\\\"} 3',
      "x_total 1"
    ].join("\n")
    const merged = MetricsMerge.parse(text)
    expect(MetricsMerge.render(merged)).toBe(
      ["# TYPE x_total counter", 'x_total{stage="a b}",why="say \\"hi\\" \\\\"} 5', "x_total 1", ""].join("\n")
    )
  })

  it("cumulative keeps counters and histograms, not gauges", () => {
    const kept = MetricsMerge.cumulative(MetricsMerge.parse(worker(1, 5, [3], 0.5)))
    expect([...kept.keys()]).toEqual(["gateway_messages_total", "gateway_latency_ms"])
  })

  it("round-trips what Effect's Prometheus formatter writes", async () => {
    const text = await Effect.runPromise(Effect.gen(function*() {
      const counter = Metric.counter("mm_test_total", { description: "a counter", attributes: { kind: "event" } })
      const histogram = Metric.histogram("mm_test_ms", { description: "a histogram", boundaries: [1, 5, 25] })
      yield* Metric.update(counter, 3)
      for (const v of [0.5, 4, 30]) yield* Metric.update(histogram, v)
      return yield* PrometheusMetrics.format()
    }))
    const parsed = MetricsMerge.parse(text)
    expect(parsed.get("mm_test_total")?.samples).toEqual(new Map([['mm_test_total{kind="event"}', 3]]))
    expect(parsed.get("mm_test_ms")?.samples.get('mm_test_ms_bucket{le="5"}')).toBe(2)
    expect(parsed.get("mm_test_ms")?.samples.get("mm_test_ms_count")).toBe(3)
    expect(MetricsMerge.parse(MetricsMerge.render(parsed))).toEqual(parsed)
  })

  it.prop("merging k copies multiplies every summed sample by k", { k: Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 8 })) }, ({ k }) => {
    const one = MetricsMerge.parse(worker(5, 2, [1, 20], 0.01))
    const merged = MetricsMerge.merge(Array.from({ length: k }, () => one))
    for (const family of one.values()) {
      for (const [series, value] of family.samples) {
        const expected = family.name.startsWith("nodejs_eventloop_lag_") ? value : value * k
        expect(merged.get(family.name)?.samples.get(series)).toBeCloseTo(expected, 9)
      }
    }
  })
})
