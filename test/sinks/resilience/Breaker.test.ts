/**
 * The circuit breaker's state machine (the downstream's side here is a scripted driver: what is
 * tested is the breaker; the breaker against a real NATS server that dies is in
 * test/integration/sinkRouting.test.ts): opens after N failed batches in a row, fails fast while
 * open without touching the sink, lets one trial through when the wait is over, closes on its
 * success, opens again for twice as long on its failure; its state is a gauge and its health.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Fiber } from "effect"
import { type BatchResult, MessageOutcome, type SinkDriver, SinkError } from "../../../src/sinks/Contract.ts"
import { withBreaker } from "../../../src/sinks/resilience/Breaker.ts"
import { telemetryEnvelope } from "../../support/envelopes.ts"

/** A downstream that fails while `down` is set and counts the writes that reached it. */
const scripted = () => {
  const s = { down: true, calls: 0, hold: undefined as Promise<void> | undefined }
  const ok = (n: number): BatchResult => ({ outcomes: new Uint8Array(n).fill(MessageOutcome.Committed), reasons: new Map() })
  const driver: SinkDriver = {
    name: "test-sink",
    write: (batch) =>
      Effect.gen(function*() {
        s.calls++
        if (s.hold !== undefined) yield* Effect.promise(() => s.hold!)
        if (s.down) return yield* new SinkError({ sink: "test-sink", reason: "unreachable", message: "connection refused" })
        return ok(batch.length)
      }),
    health: Effect.sync(() => s.down ? { ready: false, reason: "unreachable", message: "connection refused" } as const : { ready: true } as const)
  }
  return { s, driver }
}

const batch = [telemetryEnvelope("dev-1", 1)]

describe("Breaker", () => {
  it("opens after N failures in a row, fails fast while open, one trial when the wait is over, closes on success", async () => {
    const { driver, s } = scripted()
    const b = withBreaker(driver, { failures: 3, openMs: 40 })
    const attempt = () => Effect.runPromise(Effect.result(b.write(batch)))
    for (let i = 0; i < 3; i++) expect((await attempt())._tag).toBe("Failure")
    expect(b.state()).toBe("open")
    expect(s.calls).toBe(3)
    // open: refused at once, the sink not touched, not ready with why
    const refused = await attempt()
    expect(refused._tag === "Failure" && refused.failure.reason).toBe("unavailable")
    expect(refused._tag === "Failure" && refused.failure.message).toMatch(/circuit open after 3 failed batches \(last: connection refused\)/)
    expect(s.calls).toBe(3)
    const health = await Effect.runPromise(b.health)
    expect(health.ready).toBe(false)
    s.down = false
    expect((await Effect.runPromise(b.health)).ready).toBe(false) // still waiting: not ready, even with the sink back
    s.down = true
    // the wait over: a failed trial opens it again, for twice as long
    await new Promise((r) => setTimeout(r, 50))
    expect((await attempt())._tag).toBe("Failure")
    expect(s.calls).toBe(4)
    expect(b.state()).toBe("open")
    await new Promise((r) => setTimeout(r, 50))
    expect((await attempt())._tag).toBe("Failure") // still open: it waits 80 ms now
    expect(s.calls).toBe(4)
    await new Promise((r) => setTimeout(r, 40))
    s.down = false
    // the wait over, readiness is the sink's own (an idle gateway needs no traffic to become ready)
    expect((await Effect.runPromise(b.health)).ready).toBe(true)
    expect(b.state()).toBe("open")
    expect((await attempt())._tag).toBe("Success")
    expect(b.state()).toBe("closed")
    expect((await Effect.runPromise(b.health)).ready).toBe(true)
  })

  it("half-open lets one trial through at a time; the others fail fast meanwhile", async () => {
    const { driver, s } = scripted()
    const b = withBreaker(driver, { failures: 1, openMs: 10 })
    await Effect.runPromise(Effect.result(b.write(batch)))
    expect(b.state()).toBe("open")
    await new Promise((r) => setTimeout(r, 20))
    s.down = false
    let release!: () => void
    s.hold = new Promise((r) => (release = r))
    const trial = Effect.runFork(Effect.result(b.write(batch)))
    await new Promise((r) => setTimeout(r, 5))
    expect(b.state()).toBe("half-open")
    const meanwhile = await Effect.runPromise(Effect.result(b.write(batch)))
    expect(meanwhile._tag).toBe("Failure")
    expect(s.calls).toBe(2)
    s.hold = undefined
    release()
    expect((await Effect.runPromise(Fiber.join(trial)))._tag).toBe("Success")
    expect(b.state()).toBe("closed")
  })

  it("two batches arriving together when the wait is over make one trial, not two (attack finding)", async () => {
    const { driver, s } = scripted()
    const b = withBreaker(driver, { failures: 1, openMs: 10 })
    await Effect.runPromise(Effect.result(b.write(batch)))
    await new Promise((r) => setTimeout(r, 20))
    s.down = false
    let release!: () => void
    s.hold = new Promise((r) => (release = r)) // the trial is still running when the second arrives
    setTimeout(() => release(), 20)
    const both = await Effect.runPromise(Effect.all([Effect.result(b.write(batch)), Effect.result(b.write(batch))], { concurrency: 2 }))
    expect(both.map((r) => r._tag).sort()).toEqual(["Failure", "Success"])
    expect(s.calls).toBe(2)
    expect(b.state()).toBe("closed")
  })

  it("failures that are not in a row do not open it", async () => {
    const { driver, s } = scripted()
    const b = withBreaker(driver, { failures: 2, openMs: 1_000 })
    for (let i = 0; i < 5; i++) {
      s.down = true
      await Effect.runPromise(Effect.result(b.write(batch)))
      s.down = false
      await Effect.runPromise(Effect.result(b.write(batch)))
    }
    expect(b.state()).toBe("closed")
    expect(s.calls).toBe(10)
  })
})

