/**
 * What happens to a write on its way to a sink is on the write's span: each retry, each breaker
 * transition and each outbox spill an event of the `sink.write` span current when it happens,
 * with the real wrappers (Retry, Breaker, Outbox on a real file) around a scripted downstream.
 * And the JSON log lines written meanwhile carry that span's `trace_id` and `span_id`.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer, Logger, Tracer } from "effect"
import { TestConsole } from "effect/testing"
import * as Path from "node:path"
import { EffectSpan, type FinishedSpan, makeGatewayTracer } from "../../src/observability/GatewayTracer.ts"
import { consoleJson, formatStructuredTraced, type TracedEntry } from "../../src/observability/TraceLog.ts"
import { makeSampler } from "../../src/observability/TraceSampler.ts"
import { type BatchResult, MessageOutcome, type SinkDriver, SinkError } from "../../src/sinks/Contract.ts"
import { withOutbox } from "../../src/sinks/outbox/Outbox.ts"
import { outboxSettings } from "../../src/sinks/outbox/OutboxSettings.ts"
import { withBreaker } from "../../src/sinks/resilience/Breaker.ts"
import { withRetry } from "../../src/sinks/resilience/Retry.ts"
import { telemetryEnvelope } from "../support/envelopes.ts"
import { tempDir } from "../support/gateway.ts"

/** A downstream that fails (retryable) the next `failures` writes, then takes them. */
const scripted = (failures: number) => {
  const s = { failures }
  const ok = (n: number): BatchResult => ({ outcomes: new Uint8Array(n).fill(MessageOutcome.Committed), reasons: new Map() })
  const driver: SinkDriver = {
    name: "test-sink",
    write: (batch) =>
      Effect.suspend(() =>
        s.failures-- > 0
          ? Effect.fail(new SinkError({ sink: "test-sink", reason: "unreachable", message: "connection refused" }))
          : Effect.succeed(ok(batch.length))
      ),
    health: Effect.succeed({ ready: true } as const)
  }
  return { s, driver }
}

/** The gateway's tracer (always on) collecting the spans it ends, and log entries with their trace context. */
const tracing = () => {
  const spans: Array<FinishedSpan> = []
  const logs: Array<TracedEntry> = []
  const { tracer } = makeGatewayTracer(makeSampler("always_on"), { ended: (s) => void spans.push(s) })
  const layer = Layer.mergeAll(
    Layer.succeed(Tracer.Tracer, tracer),
    Logger.layer([Logger.make((o) => void logs.push(formatStructuredTraced.log(o)))])
  )
  const writes = () => spans.filter((s): s is EffectSpan => s instanceof EffectSpan && s.name === "sink.write")
  return { spans, logs, layer, writes }
}

const batch = [telemetryEnvelope("dev-1", 1), telemetryEnvelope("dev-1", 2)]
const asWrite = <A, E, R>(write: Effect.Effect<A, E, R>) => write.pipe(Effect.withSpan("sink.write", { kind: "client" }), Effect.result)

describe("span events of a sink write", () => {
  it("records each retry on the write's span", async () => {
    const t = tracing()
    const { driver } = scripted(2)
    const retried = withRetry(driver, { retries: 3, baseMs: 1, maxMs: 2 })
    await Effect.runPromise(asWrite(retried.write(batch)).pipe(Effect.provide(t.layer)))
    const [write] = t.writes()
    expect(write?.events?.map((e) => [e.name, e.attributes["retry.attempt"], e.attributes["error.reason"]])).toEqual([
      ["sink.retry", 1, "unreachable"],
      ["sink.retry", 2, "unreachable"]
    ])
    expect(write?.status._tag === "Ended" && write.status.exit._tag).toBe("Success")
  })

  it("records a breaker's transitions on the write that made them, and its log lines carry that span's ids", async () => {
    const t = tracing()
    const { driver, s } = scripted(100)
    const breaker = withBreaker(withRetry(driver, { retries: 0, baseMs: 1, maxMs: 1 }), { failures: 2, openMs: 30 })
    await Effect.runPromise(Effect.gen(function*() {
      yield* Effect.logInfo("before any write")
      yield* asWrite(breaker.write(batch)) // 1st failure: still closed
      yield* asWrite(breaker.write(batch)) // 2nd: opens
      yield* asWrite(breaker.write(batch)) // refused while open: no transition
      yield* Effect.sleep(40)
      s.failures = 0
      yield* asWrite(breaker.write(batch)) // the trial: half-open, then closed
    }).pipe(Effect.provide(t.layer)))
    const events = t.writes().map((w) => (w.events ?? []).map((e) => `${e.attributes["breaker.from"]}→${e.attributes["breaker.to"]}`))
    expect(events).toEqual([[], ["closed→open"], [], ["open→half-open", "half-open→closed"]])
    const opened = t.writes()[1]!
    const line = t.logs.find((l) => String(l.message).includes("circuit open"))
    expect(line).toMatchObject({ trace_id: opened.traceId, span_id: opened.spanId, trace_flags: "01" })
    // a line outside any span has no trace context
    expect(t.logs.find((l) => l.message === "before any write")).not.toHaveProperty("trace_id")
  })

  it("records an outbox spill on the write's span", async () => {
    const t = tracing()
    const { driver } = scripted(1_000)
    const file = Path.join(tempDir("gw-trace-outbox-"), "outbox.db")
    await Effect.runPromise(Effect.scoped(Effect.gen(function*() {
      const outbox = yield* withOutbox(withRetry(driver, { retries: 0, baseMs: 1, maxMs: 1 }), outboxSettings(file), () => Effect.void)
      const r = yield* asWrite(outbox.write(batch))
      expect(r._tag === "Success" && Array.from(r.success.outcomes)).toEqual([MessageOutcome.Committed, MessageOutcome.Committed])
    })).pipe(Effect.provide(t.layer)))
    const spill = t.writes()[0]?.events?.find((e) => e.name === "outbox.spill")
    expect(spill?.attributes).toMatchObject({ "sink.name": "test-sink", "outbox.stored": 2, "outbox.refused": 0 })
    expect(String(spill?.attributes["outbox.reason"])).toMatch(/unreachable: connection refused/)
  })
})

describe("JSON log lines", () => {
  it("carry trace_id, span_id and trace_flags at the top level inside a span, nothing of it outside or with tracing off", async () => {
    const spans: Array<FinishedSpan> = []
    const sampled = makeGatewayTracer(makeSampler("always_on"), { ended: (s) => void spans.push(s) }).tracer
    const unsampled = makeGatewayTracer(makeSampler("traceidratio", 0), { ended: (s) => void spans.push(s) }).tracer
    const lines = await Effect.runPromise(Effect.gen(function*() {
      yield* Effect.logInfo("outside")
      yield* Effect.logInfo("tracing off").pipe(Effect.withSpan("native")) // Effect's own tracer: nothing exported, no ids
      yield* Effect.logInfo("inside").pipe(Effect.withSpan("work"), Effect.provideService(Tracer.Tracer, sampled))
      yield* Effect.logInfo("unsampled").pipe(Effect.withSpan("quiet"), Effect.provideService(Tracer.Tracer, unsampled))
      return yield* TestConsole.logLines
    }).pipe(Effect.provide(Layer.mergeAll(TestConsole.layer, Logger.layer([consoleJson])))))
    const parsed = lines.map((l) => JSON.parse(String(l)) as Record<string, unknown>)
    expect(parsed.map((p) => p["message"])).toEqual(["outside", "tracing off", "inside", "unsampled"])
    expect(parsed[0]).not.toHaveProperty("trace_id")
    expect(parsed[1]).not.toHaveProperty("trace_id")
    const work = spans.find((s) => s.name === "work")!
    expect(parsed[2]).toMatchObject({ trace_id: work.traceId, span_id: work.spanId, trace_flags: "01", level: "INFO" })
    expect(parsed[3]!["trace_id"]).toMatch(/^[0-9a-f]{32}$/)
    expect(parsed[3]).toMatchObject({ trace_flags: "00" })
    expect(spans.map((s) => s.name)).toEqual(["work"]) // the unsampled span was not exported
  })
})
