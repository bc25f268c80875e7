/**
 * The Stage API's contract: verdicts per message, isolation of failures and defects to their
 * message, selection by kind and device, composition order, synchronous runs, and the metrics
 * every stage gets. Real stages and the real runner; no gateway needed.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Fiber, Metric, Schema } from "effect"
import type { Envelope } from "../../src/domain/Envelope.ts"
import { TransientUpstreamError, ValidationError } from "../../src/domain/Errors.ts"
import * as Metrics from "../../src/observability/Metrics.ts"
import * as Stage from "../../src/pipeline/Stage.ts"

const envelope = (seq: number, device = "dev-1", kind: "telemetry" | "event" = "telemetry"): Envelope =>
  kind === "telemetry"
    ? { device, epoch: 0, seq, kind, deviceTs: seq, receivedAt: seq, gateway: "gw", traceparent: null, body: { metrics: { v: seq } } }
    : { device, epoch: 0, seq, kind, deviceTs: seq, receivedAt: seq, gateway: "gw", traceparent: null, body: { name: "door" } }

const seqs = (es: ReadonlyArray<{ readonly seq: number }>) => es.map((e) => e.seq)

/** Where every input went, by input position: "passed", or the stop's description. */
const fates = <Out, E>(n: number, outcome: Stage.Outcome<Out, E>): Array<string> => {
  const out = new Array<string>(n).fill("missing")
  outcome.passed.forEach((_, i) => (out[outcome.passedAt?.[i] ?? i] = "passed"))
  outcome.stops.forEach((stop, j) => {
    const what = stop instanceof Stage.Rejected ? `rejected:${(stop.error as { _tag: string })._tag}` : `settled:${stop.as}`
    out[outcome.stoppedAt[j]!] = `${outcome.stoppedBy[j]}:${what}`
  })
  return out
}

const counter = (metric: Metric.Metric<number, unknown>) =>
  Effect.map(Metric.value(metric as Metric.Metric<number, Metric.CounterState<number>>), (s) => Number(s.count))

describe("Stage", () => {
  it.effect("map: each message passes, is rejected, or is settled, by its own verdict", () =>
    Effect.gen(function*() {
      const stage = Stage.map("t-map", (e: Envelope) =>
        e.seq % 3 === 0 ? Stage.reject(new ValidationError({ message: "no multiples of 3" }))
        : e.seq % 3 === 1 ? Stage.duplicate
        : { ...e, tagged: true })
      const runner = yield* Stage.build(stage)
      const outcome = yield* runner.run([0, 1, 2, 3, 4, 5].map((s) => envelope(s)))
      expect(fates(6, outcome)).toEqual([
        "t-map:rejected:ValidationError", "t-map:settled:duplicate", "passed",
        "t-map:rejected:ValidationError", "t-map:settled:duplicate", "passed"
      ])
      expect(outcome.passed.map((e) => [e.seq, e.tagged])).toEqual([[2, true], [5, true]])
    }))

  it.effect("map: a throw rejects only that message, as a StageDefect naming the stage", () =>
    Effect.gen(function*() {
      const stage = Stage.map("t-throw", (e: Envelope) => {
        if (e.seq === 2) throw new Error("boom")
        return e
      })
      const outcome = yield* Effect.flatMap(Stage.build(stage), (r) => r.run([1, 2, 3].map((s) => envelope(s))))
      expect(fates(3, outcome)).toEqual(["passed", "t-throw:rejected:StageDefect", "passed"])
      const stop = outcome.stops[0]
      expect(stop instanceof Stage.Rejected && stop.error._tag === "StageDefect" ? stop.error.message : "").toContain("boom")
    }))

  it.effect("chunk: a typed failure rejects every message of the chunk with that error", () =>
    Effect.gen(function*() {
      const stage = Stage.chunk("t-down", (_: ReadonlyArray<Envelope>) =>
        Effect.fail(new TransientUpstreamError({ sink: "inventory", message: "down" })))
      const outcome = yield* Effect.flatMap(Stage.build(stage), (r) => r.run([1, 2].map((s) => envelope(s))))
      expect(fates(2, outcome)).toEqual(["t-down:rejected:TransientUpstreamError", "t-down:rejected:TransientUpstreamError"])
    }))

  it.effect("chunk: a defect is retried on halves, so only the poison message is rejected, in few runs", () =>
    Effect.gen(function*() {
      let calls = 0
      const stage = Stage.chunk("t-poison", (chunk: ReadonlyArray<Envelope>) =>
        Effect.sync(() => {
          calls++
          if (chunk.some((e) => e.seq === 700)) throw new Error("poison")
          return chunk
        }))
      const outcome = yield* Effect.flatMap(Stage.build(stage), (r) => r.run(Array.from({ length: 1024 }, (_, i) => envelope(i))))
      const ends = fates(1024, outcome)
      expect(ends[700]).toBe("t-poison:rejected:StageDefect")
      expect(ends.filter((f) => f === "passed")).toHaveLength(1023)
      expect(calls).toBeLessThanOrEqual(1 + 2 * Math.log2(1024)) // not one run per message
    }))

  it.effect("chunk: a stage that fails on everything is not run once per message", () =>
    Effect.gen(function*() {
      let calls = 0
      const stage = Stage.chunk("t-broken", (_: ReadonlyArray<Envelope>) =>
        Effect.sync((): ReadonlyArray<Envelope> => {
          calls++
          throw new Error("always")
        }), { timeoutMs: Infinity })
      const outcome = yield* Effect.flatMap(Stage.build(stage), (r) => r.run(Array.from({ length: 1024 }, (_, i) => envelope(i))))
      expect(fates(1024, outcome).every((f) => f === "t-broken:rejected:StageDefect")).toBe(true)
      expect(calls).toBeLessThanOrEqual(1 + 8 * Math.ceil(Math.log2(1025)) + 8)
    }))

  it.live("chunk: a stage slower than its timeout rejects its chunk with TransientUpstreamError", () =>
    Effect.gen(function*() {
      const stage = Stage.chunk("t-slow", (chunk: ReadonlyArray<Envelope>) =>
        Effect.as(Effect.sleep(chunk.length > 1 ? "1 second" : "1 millis"), chunk), { timeoutMs: 50 })
      const runner = yield* Stage.build(stage)
      const started = Date.now()
      const slow = yield* runner.run([envelope(1), envelope(2)])
      expect(Date.now() - started).toBeLessThan(900)
      expect(fates(2, slow)).toEqual(["t-slow:rejected:TransientUpstreamError", "t-slow:rejected:TransientUpstreamError"])
      const fast = yield* runner.run([envelope(3)])
      expect(fates(1, fast)).toEqual(["passed"])
    }))

  it.effect("chunk: returning the wrong number of verdicts is a defect, isolated the same way", () =>
    Effect.gen(function*() {
      const stage = Stage.chunk("t-short", (chunk: ReadonlyArray<Envelope>) =>
        Effect.succeed(chunk.filter((e) => e.seq !== 2)))
      const outcome = yield* Effect.flatMap(Stage.build(stage), (r) => r.run([1, 2, 3].map((s) => envelope(s))))
      expect(fates(3, outcome)).toEqual(["passed", "t-short:rejected:StageDefect", "passed"])
    }))

  it.effect("mapEffect: a failure rejects that message only", () =>
    Effect.gen(function*() {
      const stage = Stage.mapEffect("t-each", (e: Envelope) =>
        e.seq === 1 ? Effect.fail(new ValidationError({ message: "one" })) : Effect.succeed(e), { concurrency: 4 })
      const outcome = yield* Effect.flatMap(Stage.build(stage), (r) => r.run([0, 1, 2].map((s) => envelope(s))))
      expect(fates(3, outcome)).toEqual(["passed", "t-each:rejected:ValidationError", "passed"])
    }))

  it.effect("andThen: stages run in order, each on what the previous passed on; stops name their stage", () =>
    Effect.gen(function*() {
      const order: Array<string> = []
      const first = Stage.map("t-first", (e: Envelope) => {
        order.push(`first ${e.seq}`)
        return e.seq === 1 ? Stage.dropped : e
      })
      const second = Stage.map("t-second", (e: Envelope) => {
        order.push(`second ${e.seq}`)
        return e.seq === 2 ? Stage.reject(new ValidationError({ message: "two" })) : e
      })
      const runner = yield* Stage.build(first.pipe(Stage.andThen(second)))
      expect(runner.names).toEqual(["t-first", "t-second"])
      const outcome = yield* runner.run([1, 2, 3].map((s) => envelope(s)))
      expect(order).toEqual(["first 1", "first 2", "first 3", "second 2", "second 3"])
      expect(fates(3, outcome)).toEqual(["t-first:settled:dropped", "t-second:rejected:ValidationError", "passed"])
      expect(seqs(outcome.passed)).toEqual([3])
    }))

  it.effect("when: only the selected kinds and devices (exact or prefix*) go through the stage", () =>
    Effect.gen(function*() {
      const seen: Array<number> = []
      const stage = Stage.map("t-when", (e: Envelope) => {
        seen.push(e.seq)
        return { ...e, marked: true }
      }).pipe(Stage.when({ kinds: ["telemetry"], devices: ["boiler-*", "pump-7"] }))
      const inputs = [
        envelope(1, "boiler-1"),
        envelope(2, "boiler-2", "event"),
        envelope(3, "pump-7"),
        envelope(4, "pump-77"),
        envelope(5, "fan-1")
      ]
      const outcome = yield* Effect.flatMap(Stage.build(stage), (r) => r.run(inputs))
      expect(seen).toEqual([1, 3])
      // every message is passed on, in input order; the unselected ones unchanged
      expect(outcome.passed.map((e) => "marked" in e)).toEqual([true, false, true, false, false])
      expect(outcome.passed[1]).toBe(inputs[1])
    }))

  it.effect("when: restrictions applied one after the other combine (all must match)", () =>
    Effect.gen(function*() {
      const stage = Stage.map("t-when2", (e: Envelope) => ({ ...e, marked: true })).pipe(
        Stage.when({ kinds: ["telemetry"] }),
        Stage.when({ devices: ["a*"] })
      )
      const inputs = [envelope(1, "a1"), envelope(2, "a1", "event"), envelope(3, "b1")]
      const outcome = yield* Effect.flatMap(Stage.build(stage), (r) => r.run(inputs))
      expect(outcome.passed.map((e) => "marked" in e)).toEqual([true, false, false])
    }))

  it.effect("chunk: an interruption inside the stage is that message's defect, not the batch's silence", () =>
    Effect.gen(function*() {
      const stage = Stage.chunk("t-joins", (chunk: ReadonlyArray<Envelope>) =>
        Effect.gen(function*() {
          if (chunk.some((e) => e.seq === 2)) {
            const helper = yield* Effect.forkChild(Effect.never)
            yield* Fiber.interrupt(helper)
            yield* Fiber.join(helper) // fails with the helper's interruption
          }
          return chunk
        }))
      const outcome = yield* Effect.flatMap(Stage.build(stage), (r) => r.run([1, 2, 3].map((s) => envelope(s))))
      expect(fates(3, outcome)).toEqual(["passed", "t-joins:rejected:StageDefect", "passed"])
    }))

  it("runSync runs synchronous pipelines and refuses asynchronous ones", () => {
    const sync = Effect.runSync(Stage.build(Stage.map("t-sync", (e: Envelope) => (e.seq > 1 ? Stage.duplicate : e))))
    expect(sync.isSync).toBe(true)
    expect(fates(2, sync.runSync([envelope(1), envelope(2)]))).toEqual(["passed", "t-sync:settled:duplicate"])
    const async = Effect.runSync(Stage.build(Stage.chunk("t-async", (c: ReadonlyArray<Envelope>) => Effect.succeed(c))))
    expect(async.isSync).toBe(false)
    expect(() => async.runSync([envelope(1)])).toThrow(/asynchronous/)
  })

  it.effect("unwrap resolves the stage's services once, when the pipeline is built", () =>
    Effect.gen(function*() {
      let builds = 0
      const stage = Stage.unwrap(
        Effect.sync(() => {
          builds++
          const offset = 100
          return Stage.map("t-unwrap", (e: Envelope) => ({ ...e, seq: e.seq + offset }))
        })
      )
      const runner = yield* Stage.build(stage)
      yield* runner.run([envelope(1)])
      const outcome = yield* runner.run([envelope(2)])
      expect(builds).toBe(1)
      expect(seqs(outcome.passed)).toEqual([102])
    }))

  it.effect("unwrap of a composed pipeline keeps each stage's name; an outer when applies to all of them", () =>
    Effect.gen(function*() {
      const seen: Array<string> = []
      const inner = Stage.map("t-u1", (e: Envelope) => (seen.push(`u1 ${e.seq}`), e)).pipe(
        Stage.andThen(Stage.map("t-u2", (e: Envelope) => (seen.push(`u2 ${e.seq}`), e.seq === 3 ? Stage.dropped : e)))
      )
      const stage = Stage.unwrap(Effect.succeed(inner)).pipe(Stage.when({ devices: ["a-*"] }))
      const runner = yield* Stage.build(stage)
      expect(runner.names).toEqual(["t-u1", "t-u2"])
      const outcome = yield* runner.run([envelope(1, "a-1"), envelope(2, "b-1"), envelope(3, "a-2")])
      expect(seen).toEqual(["u1 1", "u1 3", "u2 1", "u2 3"])
      expect(fates(3, outcome)).toEqual(["passed", "passed", "t-u2:settled:dropped"])
    }))

  it.effect("every stage gets message and error counters labelled with its name", () =>
    Effect.gen(function*() {
      const stage = Stage.map("t-metrics", (e: Envelope) =>
        e.seq === 0 ? Stage.reject(new ValidationError({ message: "zero" })) : e.seq === 1 ? Stage.duplicate : e)
      const runner = yield* Stage.build(stage)
      yield* runner.run([0, 1, 2, 3].map((s) => envelope(s)))
      expect(yield* counter(Metrics.stageMessages("t-metrics", "passed"))).toBe(2)
      expect(yield* counter(Metrics.stageMessages("t-metrics", "settled"))).toBe(1)
      expect(yield* counter(Metrics.stageMessages("t-metrics", "rejected"))).toBe(1)
      expect(yield* counter(Metrics.stageErrors("t-metrics", "ValidationError"))).toBe(1)
      const duration = yield* Metric.value(Metrics.stageDuration("t-metrics"))
      expect(duration.count).toBe(1)
    }))

  it.prop(
    "every input ends exactly once: passed on or stopped, whatever the verdicts and selections",
    {
      verdicts: Schema.Array(Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 4 }))),
      selectEvents: Schema.Boolean
    },
    ({ selectEvents, verdicts }) => {
      const first = Stage.map("t-prop-1", (e: Envelope) => {
        const v = verdicts[e.seq]
        return v === 0 ? Stage.reject(new ValidationError({ message: "x" })) : v === 1 ? Stage.dropped : e
      })
      const second = Stage.map("t-prop-2", (e: Envelope) => (verdicts[e.seq] === 2 ? Stage.duplicate : e))
        .pipe(Stage.when({ kinds: [selectEvents ? "event" : "telemetry"] }))
      const runner = Effect.runSync(Stage.build(first.pipe(Stage.andThen(second))))
      const inputs = verdicts.map((_, i) => envelope(i, `d${i % 3}`, i % 2 === 0 ? "telemetry" : "event"))
      const outcome = runner.runSync(inputs)
      const ends = fates(inputs.length, outcome)
      expect(ends.filter((f) => f === "missing")).toEqual([])
      expect(outcome.passed.length + outcome.stops.length).toBe(inputs.length)
      // what passes on keeps input order
      const passedAt = outcome.passedAt ?? outcome.passed.map((_, i) => i)
      expect([...passedAt].sort((a, b) => a - b)).toEqual(passedAt)
      for (let i = 0; i < passedAt.length; i++) expect(outcome.passed[i]!.seq).toBe(passedAt[i])
    },
    { arbitrary: { runs: 300 } }
  )
})
