/**
 * The outbox around the real JetStream driver while its server is killed (load project: SIGKILL
 * of a private `nats-server -js` with a file store, restarted on the same port and store), under a
 * steady load written as the commit stage writes (one batch at a time, each device's messages in
 * seq order):
 * - every write is answered Committed, through both outages (the outbox takes what the sink
 *   cannot), and the outbox stays ready throughout;
 * - the second kill lands while the outbox is draining (a forwarded batch cut in the middle); the
 *   backlog is forwarded from the file and, within a small memory budget, from memory;
 * - afterwards the outbox drains, and the stream holds every message answered Committed exactly
 *   once, each device's in seq order: what arrived during the drain did not overtake what was
 *   stored before it, and the overlaps (a batch stored but not acked before the kill, forwarded
 *   again) were deduplicated by the message id;
 * - it is emptied while the load goes on (handed back to the sink), and from then on the load's
 *   writes go straight to the sink; one log line when the outbox started taking the traffic and
 *   one when it had drained, per spell.
 */
import { afterAll, afterEach, describe, expect, it } from "@effect/vitest"
import { Effect, Fiber } from "effect"
import type { Envelope } from "../../../src/domain/Envelope.ts"
import { MessageOutcome } from "../../../src/sinks/Contract.ts"
import { makeJetStreamSink } from "../../../src/sinks/nats/JetStreamSink.ts"
import { natsSettings } from "../../../src/sinks/nats/NatsSettings.ts"
import { type OutboxedDriver, withOutbox } from "../../../src/sinks/outbox/Outbox.ts"
import { outboxSettings } from "../../../src/sinks/outbox/OutboxSettings.ts"
import { telemetryEnvelope } from "../../support/envelopes.ts"
import { tempDir } from "../../support/gateway.ts"
import { hasNatsServer, type NatsServer, requireNatsServer, startNatsServer, stopAllNatsServers } from "../../support/natsServer.ts"
import { readStream } from "../../support/natsStream.ts"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { auditStream, captureLogs, drained, type LogLine } from "./outboxSupport.ts"

requireNatsServer("The outbox chaos tests")

const servers: Array<NatsServer> = []
const dirs: Array<string> = []
afterEach(async () => {
  for (const s of servers.splice(0)) await s.stop()
  for (const d of dirs.splice(0)) Fs.rmSync(d, { recursive: true, force: true })
})
afterAll(stopAllNatsServers)

const DEVICES = 20
const PER_DEVICE = 10

/** What the load saw. */
interface Load {
  readonly committed: Array<Envelope>
  readonly notCommitted: Array<string>
  readonly errors: Array<string>
  readonly unready: Array<string>
  writes: number
}

/**
 * Writes batches of DEVICES × PER_DEVICE messages (each device's in seq order) one at a time,
 * every `everyMs`, until `stop` is set; checks the outbox's health between writes.
 */
const steadyLoad = (outbox: OutboxedDriver, everyMs: number, stop: { done: boolean }) =>
  Effect.gen(function*() {
    const load: Load = { committed: [], notCommitted: [], errors: [], unready: [], writes: 0 }
    let seq = 0
    while (!stop.done) {
      const batch: Array<Envelope> = []
      for (let k = 0; k < PER_DEVICE; k++) {
        seq++
        for (let d = 0; d < DEVICES; d++) batch.push(telemetryEnvelope(`dev-${d}`, seq, { temp: seq % 40 }))
      }
      const result = yield* Effect.result(outbox.write(batch))
      load.writes++
      if (result._tag === "Failure") load.errors.push(`${result.failure.reason}: ${result.failure.message}`)
      else {
        for (let i = 0; i < batch.length; i++) {
          if (result.success.outcomes[i] === MessageOutcome.Committed) load.committed.push(batch[i]!)
          else load.notCommitted.push(`${batch[i]!.device}:${batch[i]!.seq} ${result.success.reasons.get(i) ?? "?"}`)
        }
      }
      const h = yield* outbox.health
      if (!h.ready) load.unready.push(h.message)
      yield* Effect.sleep(everyMs)
    }
    return load
  })

describe.runIf(hasNatsServer)("the outbox while the sink's server is killed", () => {
  it.live("killed twice under load (once mid-drain): all Committed, ready throughout; the stream holds each once, each device in order", () => {
    const logs: Array<LogLine> = []
    return Effect.gen(function*() {
      const server = yield* Effect.promise(async () => {
        const s = await startNatsServer()
        servers.push(s)
        return s
      })
      const dir = tempDir("gw-outbox-chaos-")
      dirs.push(dir)
      const driver = yield* makeJetStreamSink(natsSettings({ url: server.url, createStream: true, ackTimeoutMs: 2_000 }))
      // a small memory budget: most of the backlog is read back from the file, the rest sent from memory
      const settings = outboxSettings(Path.join(dir, "outbox-nats.db"), { drainBatch: 500, memoryBytes: 256 * 1024 })
      const outbox = yield* withOutbox(driver, settings, () => Effect.void)
      const stop = { done: false }
      // 200 messages every ~20 ms: ~10,000 msgs/s offered while the server runs, the outages and the drains
      const loading = yield* Effect.forkChild(steadyLoad(outbox, 20, stop))

      yield* Effect.sleep("1 second")
      yield* Effect.promise(() => server.kill())
      yield* Effect.sleep("2 seconds")
      const backlog = (yield* outbox.depth).messages
      yield* Effect.promise(() => server.restart())
      // the second kill while the backlog is being forwarded
      const deadline = Date.now() + 15_000
      while ((yield* outbox.depth).messages > backlog / 2 && Date.now() < deadline) yield* Effect.sleep("5 millis")
      yield* Effect.promise(() => server.kill())
      const cutAt = (yield* outbox.depth).messages
      yield* Effect.sleep("1 second")
      yield* Effect.promise(() => server.restart())
      // emptied while the load goes on (handed back), and from then on the load meets the sink directly
      yield* drained(outbox, 30_000)
      let after = 0
      for (let k = 0; k < 25; k++) {
        after = Math.max(after, (yield* outbox.depth).messages)
        yield* Effect.sleep("20 millis")
      }
      stop.done = true
      const load = yield* Fiber.join(loading)
      yield* drained(outbox, 10_000)

      expect(backlog).toBeGreaterThan(1_000)
      expect(cutAt).toBeGreaterThan(0)
      expect(after).toBe(0)
      expect(load.errors).toEqual([])
      expect(load.notCommitted.slice(0, 5)).toEqual([])
      expect(load.unready.slice(0, 5)).toEqual([])
      expect(load.committed.length).toBe(load.writes * DEVICES * PER_DEVICE)
      const stored = yield* Effect.promise(() => readStream(server.url, "DEVICES"))
      expect(stored.length).toBe(load.committed.length)
      auditStream(stored, load.committed)

      const taking = logs.filter((l) => l.message.startsWith("outbox takes nats's traffic"))
      const drainedLines = logs.filter((l) => l.message.startsWith("outbox drained"))
      expect(taking.length).toBeGreaterThanOrEqual(1)
      expect(taking.length).toBeLessThanOrEqual(2)
      expect(drainedLines.length).toBe(taking.length)
    }).pipe(Effect.provide(captureLogs(logs)))
  }, 90_000)
})
