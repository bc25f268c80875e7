/**
 * Attacks on `welcome.lastSeq` as computed since 2026-12-03 (SQLite alone: max of `device_state` and
 * the highest seq in `messages` for (device, epoch); other sinks in the routes: `device_state`
 * only). The rule: lastSeq never names a seq that some sink of the message's route does not hold
 * (lower is harmless). Real sinks, real SQLite, real threads; a real `nats-server` for the
 * end-to-end routes cases (skipped without one).
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Logger } from "effect"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { DatabaseSync } from "node:sqlite"
import type { Envelope } from "../../../src/domain/Envelope.ts"
import { Outcome } from "../../../src/sinks/Outcome.ts"
import { openDatabase } from "../../../src/sinks/sqlite/SqliteStore.ts"
import { Device, event, telemetry } from "../../support/client.ts"
import { telemetryEnvelope, telemetryIn as envelopes } from "../../support/envelopes.ts"
import { startGateway, tempDir } from "../../support/gateway.ts"
import { hasNatsServer, requireNatsServer, startNatsServer } from "../../support/natsServer.ts"
import { withSink } from "../../support/sqliteSink.ts"
import { countIn } from "../../support/store.ts"

const one = (device: string, epoch: number, seq: number): Envelope => ({ ...telemetryEnvelope(device, seq), epoch })

const quiet = Logger.layer([])

requireNatsServer("the lastSeq attacks with NATS in the routes")

describe("lastSeq attacks (SQLite alone)", () => {
  it.live("rows the store rejects (NOT NULL) or refuses (JSON cannot hold them) never count, even above the stored ones", () =>
    Effect.gen(function*() {
      const dir = tempDir("gw-lsa-")
      const seen = yield* withSink(dir, {}, (sink) =>
        Effect.gen(function*() {
          yield* sink.write(envelopes("dev-r", 3, 0, 5))
          const result = yield* sink.write([
            one("dev-r", 3, 5),
            // the store refuses it: device_ts NULL (a NaN binds as NULL) → rejected, dead-lettered
            { ...one("dev-r", 3, 90), deviceTs: Number.NaN },
            // JSON cannot hold a stage's BigInt: refused before the writer, dead-lettered
            { ...one("dev-r", 3, 91), extra: 10n } as unknown as Envelope
          ])
          return { outcomes: [...result.outcomes], last: yield* sink.lastSeq("dev-r", 3) }
        }))
      expect(seen.outcomes).toEqual([Outcome.Committed, Outcome.Rejected, Outcome.Rejected])
      expect(seen.last).toBe(5)
      expect(countIn(dir, "SELECT count(*) AS n FROM dead_letters WHERE device = 'dev-r'")).toBe(2)
      Fs.rmSync(dir, { recursive: true, force: true })
    }).pipe(Effect.provide(quiet)), 10_000)

  it.live("a batch that fails (write lock held past its budget) is rolled back and raises nothing", () =>
    Effect.gen(function*() {
      const dir = tempDir("gw-lsa-")
      const seen = yield* withSink(dir, { probeEveryMs: 60_000 }, (sink) =>
        Effect.gen(function*() {
          yield* sink.write(envelopes("dev-b", 0, 0, 3))
          const other = new DatabaseSync(Path.join(dir, "gateway.db"))
          other.exec("PRAGMA busy_timeout = 0; BEGIN IMMEDIATE")
          const failed = yield* Effect.exit(sink.write(envelopes("dev-b", 0, 50, 3)))
          const during = yield* sink.lastSeq("dev-b", 0)
          other.exec("ROLLBACK")
          other.close()
          return { failed: Exit.isFailure(failed), during, after: yield* sink.lastSeq("dev-b", 0) }
        }))
      expect(seen).toEqual({ failed: true, during: 2, after: 2 })
      expect(countIn(dir, "SELECT count(*) AS n FROM messages WHERE device = 'dev-b'")).toBe(3)
      Fs.rmSync(dir, { recursive: true, force: true })
    }).pipe(Effect.provide(quiet)), 10_000)

  it.live("probe rows, other devices, other epochs, case and prefixes never count; extreme safe integers exact", () =>
    Effect.gen(function*() {
      const dir = tempDir("gw-lsa-")
      const MAX = Number.MAX_SAFE_INTEGER
      const seen = yield* withSink(dir, { probeEveryMs: 20 }, (sink) =>
        Effect.gen(function*() {
          yield* sink.write([
            one("dev-x", 0, 7),
            one("dev-X", 0, 1_000),
            one("dev-x2", 0, 2_000),
            one("dev-", 0, 3_000),
            one("dev-x", 1, 4_000),
            one("dev-x", MAX, MAX),
            one("dev-x", MAX - 1, 5)
          ])
          yield* Effect.sleep("200 millis") // several probe writes (a row into messages and out again)
          return {
            x0: yield* sink.lastSeq("dev-x", 0),
            x1: yield* sink.lastSeq("dev-x", 1),
            x2: yield* sink.lastSeq("dev-x", 2),
            xMax: yield* sink.lastSeq("dev-x", MAX),
            xMax1: yield* sink.lastSeq("dev-x", MAX - 1),
            lower: yield* sink.lastSeq("dev-x", -1),
            probe: yield* sink.lastSeq("#probe", -1),
            like: yield* sink.lastSeq("dev-%", 0),
            empty: yield* sink.lastSeq("", 0)
          }
        }))
      expect(seen).toEqual({ x0: 7, x1: 4_000, x2: null, xMax: MAX, xMax1: 5, lower: null, probe: null, like: null, empty: null })
      expect(countIn(dir, "SELECT count(*) AS n FROM messages WHERE device = '#probe'")).toBe(0)
      expect(countIn(dir, "SELECT count(*) AS n FROM device_state")).toBe(0)
      Fs.rmSync(dir, { recursive: true, force: true })
    }).pipe(Effect.provide(quiet)), 10_000)

  it.live("300,000 rows of one (device, epoch) and 2,000 other devices: the highest of each, nothing for an epoch without rows", () =>
    Effect.gen(function*() {
      const dir = tempDir("gw-lsa-")
      const db = openDatabase(Path.join(dir, "gateway.db"), "normal")
      const ins = db.prepare(
        `INSERT INTO messages (device, epoch, seq, kind, device_ts, received_at, gateway, traceparent, body)
         VALUES (?, ?, ?, 'telemetry', 0, 0, 'gw', NULL, '{}')`
      )
      db.exec("BEGIN")
      for (let i = 0; i < 300_000; i++) ins.run("big", 4, i)
      for (let d = 0; d < 2_000; d++) ins.run(`d-${d}`, 4, d)
      db.exec("COMMIT")
      db.close()
      const seen = yield* withSink(dir, { checkBudgetMs: 0 }, (sink) =>
        Effect.gen(function*() {
          return { last: yield* sink.lastSeq("big", 4), other: yield* sink.lastSeq("d-1999", 4), none: yield* sink.lastSeq("big", 5) }
        }))
      expect(seen.last).toBe(299_999)
      expect(seen.other).toBe(1_999)
      expect(seen.none).toBeNull()
      Fs.rmSync(dir, { recursive: true, force: true })
    }).pipe(Effect.provide(quiet)), 15_000)

  it.live("two sinks on one store (workers): each one's lastSeq sees the other's commits, and a device_state row below does not lower it", () =>
    Effect.gen(function*() {
      const dir = tempDir("gw-lsa-")
      const seen = yield* withSink(dir, {}, (a) =>
        withSink(dir, {}, (b) =>
          Effect.gen(function*() {
            yield* a.write(envelopes("shared", 2, 0, 10))
            yield* b.write(envelopes("shared", 2, 5, 10))
            yield* a.raiseStates([["shared", 2, 3]]) // an older version's (or a route change's) lower row
            return { a: yield* a.lastSeq("shared", 2), b: yield* b.lastSeq("shared", 2) }
          })))
      expect(seen).toEqual({ a: 14, b: 14 })
      Fs.rmSync(dir, { recursive: true, force: true })
    }).pipe(Effect.provide(quiet)), 15_000)

  it.live("a commit into a store file replaced under the gateway (write failed `lost`, not acked) is not reported", () =>
    Effect.gen(function*() {
      const dir = tempDir("gw-lsa-")
      const db = Path.join(dir, "gateway.db")
      const seen = yield* withSink(dir, { probeEveryMs: 60_000 }, (sink) =>
        Effect.gen(function*() {
          yield* sink.write(envelopes("dev-l", 0, 0, 5))
          Fs.renameSync(db, db + ".moved")
          const failed = yield* Effect.exit(sink.write(envelopes("dev-l", 0, 5, 5)))
          return { failed: Exit.isFailure(failed), last: yield* Effect.orElseSucceed(sink.lastSeq("dev-l", 0), () => null) }
        }))
      expect(seen.failed).toBe(true)
      // seqs 5..9 were refused (nacked); a restart opens a new store at the path without them
      expect(seen.last === null || seen.last <= 4).toBe(true)
      Fs.rmSync(dir, { recursive: true, force: true })
    }).pipe(Effect.provide(quiet)), 10_000)
})

describe("lastSeq attacks (a gateway end to end)", () => {
  const open = (port: number, device: string, epoch?: number) => Device.open(port, device, epoch === undefined ? {} : { epoch })

  it("SQLite alone: lastSeq is the highest seq acked, across a reconnect and a restart on a store with an older device_state row", async () => {
    const dataDir = tempDir("gw-lsa-gw-")
    // an earlier version's row: another epoch (must not leak) and a lower one in this epoch
    const old = openDatabase(Path.join(dataDir, "gateway.db"), "normal")
    old.exec(`INSERT INTO device_state (device, epoch, last_seq) VALUES ('pump-1', 1, 900), ('pump-1', 2, 1)`)
    old.close()
    let g = await startGateway({ GATEWAY_DATA_DIR: dataDir })
    try {
      const first = await open(g.port, "pump-1", 2)
      expect(first.welcome["lastSeq"]).toBe(1)
      first.d.send(telemetry(3), event(6), telemetry(4))
      expect((await first.d.take(3)).map((a) => [a.type, a["seq"]])).toEqual([["ack", 3], ["ack", 6], ["ack", 4]])
      // invalid: nacked, never stored
      first.d.send({ type: "telemetry", seq: 40, ts: -5, body: { metrics: {} } })
      expect((await first.d.next())["type"]).toBe("nack")
      first.d.end()
      const again = await open(g.port, "pump-1", 2)
      expect(again.welcome["lastSeq"]).toBe(6)
      again.d.end()
      const epoch3 = await open(g.port, "pump-1", 3)
      expect(epoch3.welcome["lastSeq"]).toBeNull()
      epoch3.d.end()
      await g.stop()
      g = await startGateway({ GATEWAY_DATA_DIR: dataDir })
      const later = await open(g.port, "pump-1", 2)
      expect(later.welcome["lastSeq"]).toBe(6)
      later.d.end()
    } finally {
      await g.stop()
      Fs.rmSync(dataDir, { recursive: true, force: true })
    }
  }, 20_000)
})

describe.runIf(hasNatsServer)("lastSeq attacks (a gateway end to end, NATS in the routes, a private nats-server)", () => {
  /** A gateway on `dataDir` with NATS at `url` in its sinks, failing fast once NATS is gone. */
  const withNats = (dataDir: string, url: string, env: Record<string, string>) =>
    startGateway({
      GATEWAY_DATA_DIR: dataDir,
      NATS_URL: url,
      NATS_STREAM_CREATE: "true",
      NATS_ACK_TIMEOUT_MS: "1000",
      GATEWAY_STORE_RETRIES: "1",
      GATEWAY_OUTBOX: "off",
      GATEWAY_BREAKER_FAILURES: "100",
      ...env
    })

  it(
    "GATEWAY_SINK=sqlite,nats with NATS down: a message SQLite holds but NATS does not is never reported",
    async () => {
      const s = await startNatsServer()
      const dataDir = tempDir("gw-lsa-gw-")
      const g = await withNats(dataDir, s.url, { GATEWAY_SINK: "sqlite,nats" })
      try {
        const { d } = await Device.open(g.port, "pump-2")
        d.send(telemetry(1), telemetry(2))
        expect((await d.take(2)).map((a) => [a.type, a["seq"]])).toEqual([["ack", 1], ["ack", 2]])
        await s.kill()
        d.send(telemetry(9))
        const [nack] = await d.take(1, 8_000)
        expect(nack).toEqual(expect.objectContaining({ type: "nack", seq: 9, code: "unavailable" }))
        d.end()
        // SQLite holds 9, NATS does not: the welcome must not say 9
        expect(countIn(dataDir, "SELECT count(*) AS n FROM messages WHERE device = 'pump-2' AND seq = 9")).toBe(1)
        const again = await Device.open(g.port, "pump-2")
        expect(again.welcome["lastSeq"]).toBe(2)
        again.d.end()
      } finally {
        await g.stop()
        await s.stop()
        Fs.rmSync(dataDir, { recursive: true, force: true })
      }
    },
    25_000
  )

  it(
    "routes file (events → sqlite, telemetry → nats), NATS down: the SQLite-only route counts, the NATS one does not",
    async () => {
      const s = await startNatsServer()
      const dataDir = tempDir("gw-lsa-gw-")
      const routes = Path.join(dataDir, "routes.json")
      Fs.writeFileSync(routes, JSON.stringify({ routes: [{ kinds: ["event"], sinks: ["sqlite"] }, { kinds: ["telemetry"], sinks: ["nats"] }] }))
      const g = await withNats(dataDir, s.url, { GATEWAY_SINK: "sqlite", GATEWAY_ROUTES_FILE: routes })
      try {
        const { d } = await Device.open(g.port, "door-2")
        d.send(telemetry(1), event(2))
        expect((await d.take(2)).map((a) => [a.type, a["seq"]]).sort()).toEqual([["ack", 1], ["ack", 2]])
        await s.kill()
        d.send(telemetry(20), event(5))
        const answers = await d.take(2, 8_000)
        expect(answers.map((a) => [a.type, a["seq"]]).sort()).toEqual([["ack", 5], ["nack", 20]])
        d.end()
        // the device-state service writes behind the acks: wait for it
        let last: unknown = undefined
        for (let i = 0; i < 40 && last !== 5; i++) {
          const again = await Device.open(g.port, "door-2")
          last = again.welcome["lastSeq"]
          again.d.end()
          expect(last === null || (typeof last === "number" && last <= 5)).toBe(true)
          if (last !== 5) await new Promise((r) => setTimeout(r, 50))
        }
        expect(last).toBe(5)
      } finally {
        await g.stop()
        await s.stop()
        Fs.rmSync(dataDir, { recursive: true, force: true })
      }
    },
    25_000
  )
})
