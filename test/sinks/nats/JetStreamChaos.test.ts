/**
 * The NATS JetStream sink while its server fails (load project: real kills of a private
 * `nats-server -js` with a file store, restarted on the same port and store):
 * - killed (SIGKILL) in the middle of a large pipelined batch: the batch fails retryable or its
 *   untaken messages are Unavailable; every message Committed is in the stream after the
 *   restart (nothing is Committed without a PubAck, and the file store had it);
 * - down: health false (unreachable) at once, writes fail fast and retryable; restarted: the
 *   client reconnects by itself, health true again, writes commit;
 * - hung (SIGSTOP): writes time out within NATS_ACK_TIMEOUT_MS (never wait forever), health
 *   false; resumed: ready again;
 * - killed and restarted three times under a steady load retried as the commit stage would:
 *   every message ends Committed or Duplicate, and the stream holds each exactly once.
 */
import { afterAll, afterEach, describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Fiber, Logger } from "effect"
import type { Envelope } from "../../../src/domain/Envelope.ts"
import { MessageOutcome, messageId, SinkError } from "../../../src/sinks/Contract.ts"
import { makeJetStreamSink } from "../../../src/sinks/nats/JetStreamSink.ts"
import { natsSettings, type NatsSettings } from "../../../src/sinks/nats/NatsSettings.ts"
import { telemetryEnvelope } from "../../support/envelopes.ts"
import { hasNatsServer, type NatsServer, requireNatsServer, startNatsServer, stopAllNatsServers } from "../../support/natsServer.ts"
import { commitAll, healthBecomes, outcomesOf } from "../../support/natsSink.ts"
import { readStream } from "../../support/natsStream.ts"

requireNatsServer("The NATS JetStream chaos tests")

const quiet = Effect.provide(Logger.layer([]))
const servers: Array<NatsServer> = []

afterEach(async () => {
  for (const s of servers.splice(0)) await s.stop()
})
afterAll(stopAllNatsServers)

const freshServer = Effect.promise(async () => {
  const s = await startNatsServer()
  servers.push(s)
  return s
})

const sinkOn = (server: NatsServer, overrides: Partial<NatsSettings> = {}) =>
  makeJetStreamSink(natsSettings({ url: server.url, createStream: true, ackTimeoutMs: 2_000, ...overrides })).pipe(quiet)

const envelopes = (device: string, from: number, count: number): Array<Envelope> => {
  const out: Array<Envelope> = []
  for (let i = 0; i < count; i++) {
    out.push({ ...telemetryEnvelope(device, from + i, { temp: i % 50 }), traceparent: `00-${"a".repeat(32)}-${(from + i).toString(16).padStart(16, "0")}-01` })
  }
  return out
}

/** The stream's message ids, each with how many times it is stored. */
const storedIds = (server: NatsServer) =>
  Effect.promise(async () => {
    const counts = new Map<string, number>()
    for (const m of await readStream(server.url, "DEVICES")) {
      expect(m.traceparent).toMatch(/^00-a{32}-/)
      counts.set(m.msgId ?? "?", (counts.get(m.msgId ?? "?") ?? 0) + 1)
    }
    return counts
  })

describe.runIf(hasNatsServer)("JetStreamSink under server failures", () => {
  it.live("killed mid-batch: the batch fails retryable or its untaken messages are Unavailable; every Committed one is stored", () =>
    Effect.gen(function*() {
      const server = yield* freshServer
      const sink = yield* sinkOn(server)
      const batch = envelopes("dev-kill", 1, 40_000)
      // the server frozen (SIGSTOP) while the whole batch is sent, then let run for 40 ms (a part
      // of the batch stored and acked), frozen again right there and killed: the rest of the
      // batch is never answered
      yield* Effect.promise(() => server.pause())
      const writing = yield* Effect.forkChild(Effect.exit(sink.write(batch)))
      yield* Effect.sleep("300 millis")
      server.resume()
      yield* Effect.sleep("40 millis")
      yield* Effect.promise(() => server.pause())
      yield* Effect.promise(() => server.kill())
      const exit = yield* Fiber.join(writing)
      yield* Effect.promise(() => server.restart())
      const stored = yield* storedIds(server)
      if (Exit.isFailure(exit)) {
        const error = yield* Effect.flip(exit)
        expect(error).toBeInstanceOf(SinkError)
        expect(error.retryable).toBe(true)
      } else {
        const { outcomes, reasons } = exit.value
        let committed = 0
        for (let i = 0; i < batch.length; i++) {
          const o = outcomes[i]
          const id = messageId(batch[i] as Envelope)
          if (o === MessageOutcome.Committed) {
            committed++
            expect(stored.get(id), `Committed ${id} is not in the stream`).toBe(1)
          } else {
            expect(o).toBe(MessageOutcome.Unavailable)
            expect(reasons.get(i)).toBeTypeOf("string")
          }
        }
        // the kill landed inside the batch: neither nothing nor everything was taken
        expect(committed).toBeGreaterThan(0)
        expect(committed).toBeLessThan(batch.length)
      }
      for (const count of stored.values()) expect(count).toBe(1)
    }), 60_000)

  it.live("down: not ready at once and writes fail fast (retryable); restarted: reconnects by itself, ready, writes commit", () =>
    Effect.gen(function*() {
      const server = yield* freshServer
      const sink = yield* sinkOn(server)
      expect((yield* outcomesOf(sink, envelopes("dev-r", 1, 100))).outcomes.every((o) => o === MessageOutcome.Committed)).toBe(true)
      expect(yield* sink.health).toEqual({ ready: true })

      yield* Effect.promise(() => server.kill())
      const down = yield* healthBecomes(sink, false, 2_000)
      expect(down).toMatchObject({ ready: false, reason: "unreachable" })
      const started = Date.now()
      const failed = yield* Effect.flip(sink.write(envelopes("dev-r", 101, 100)))
      expect(Date.now() - started).toBeLessThan(500)
      expect(failed.reason).toBe("unreachable")
      expect(failed.retryable).toBe(true)
      // still down a second later (the cached answer does not turn ready by itself)
      yield* Effect.sleep("1200 millis")
      expect((yield* sink.health).ready).toBe(false)

      yield* Effect.promise(() => server.restart())
      yield* healthBecomes(sink, true, 10_000)
      const after = yield* outcomesOf(sink, envelopes("dev-r", 101, 100))
      expect(after.outcomes.every((o) => o === MessageOutcome.Committed)).toBe(true)
      const stored = yield* storedIds(server)
      expect(stored.size).toBe(200)
    }), 60_000)

  it.live("hung (SIGSTOP): writes time out within the ack timeout, not ready; resumed: ready and writing again", () =>
    Effect.gen(function*() {
      const server = yield* freshServer
      const sink = yield* sinkOn(server, { ackTimeoutMs: 1_000 })
      expect((yield* outcomesOf(sink, envelopes("dev-h", 1, 10))).outcomes).toEqual(new Array(10).fill(MessageOutcome.Committed))
      yield* Effect.promise(() => server.pause())
      const started = Date.now()
      const failed = yield* Effect.flip(sink.write(envelopes("dev-h", 11, 10)))
      const took = Date.now() - started
      expect(failed.reason).toBe("timeout")
      expect(failed.retryable).toBe(true)
      expect(took).toBeGreaterThanOrEqual(900)
      expect(took).toBeLessThan(2_500)
      expect(yield* sink.health).toMatchObject({ ready: false, reason: "timeout" })
      server.resume()
      yield* healthBecomes(sink, true, 15_000)
      const again = yield* commitAll(sink, envelopes("dev-h", 11, 10), { batchSize: 10, retryMs: 100, deadlineMs: 15_000, idOf: messageId })
      expect(again.settled.size).toBe(10)
      const stored = yield* storedIds(server)
      expect(stored.size).toBe(20)
      for (const count of stored.values()) expect(count).toBe(1)
    }), 60_000)

  it.live("killed and restarted three times under load: every message acked once settled, each stored exactly once", () =>
    Effect.gen(function*() {
      const server = yield* freshServer
      const sink = yield* sinkOn(server)
      // enough that the first kill (150 ms in) lands inside it on a fast, quiet machine (12,000 did not, once on CI)
      const all = [...envelopes("dev-a", 1, 25_000), ...envelopes("dev-b", 1, 25_000)]
      const load = yield* Effect.forkChild(commitAll(sink, all, { batchSize: 200, retryMs: 100, deadlineMs: 60_000, idOf: messageId }).pipe(
        // pace the load so that the kills land in the middle of it
        Effect.withSpan("load")
      ))
      for (let round = 0; round < 3; round++) {
        yield* Effect.sleep(round === 0 ? "150 millis" : "300 millis")
        yield* Effect.promise(() => server.kill())
        yield* Effect.sleep("400 millis")
        yield* Effect.promise(() => server.restart())
      }
      const run = yield* Fiber.join(load)
      expect(run.rejected).toEqual([])
      expect(run.settled.size).toBe(all.length)
      for (const times of run.committedTimes.values()) expect(times).toBe(1)
      const stored = yield* storedIds(server)
      expect(stored.size).toBe(all.length)
      for (const e of all) expect(stored.get(messageId(e)), messageId(e)).toBe(1)
      // the load did meet the outages
      expect(run.sinkErrors.length + run.unavailable).toBeGreaterThan(0)
    }), 90_000)
})
