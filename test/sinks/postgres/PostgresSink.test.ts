/**
 * The PostgreSQL sink driver against the machine's shared server, in a database of this file's
 * own (`gw_test_<random>`, dropped afterwards): the table created at start, commits read back
 * column by column (body and annotations as jsonb, traceparent), duplicates within a batch and
 * across batches, a row PostgreSQL refuses (`\u0000` in a jsonb string, a NUL in a text column)
 * and a value that cannot be a row rejected alone while the rest commits, concurrent writers,
 * and health following the writes (a table dropped under the sink: not ready, misconfigured;
 * back: ready again, through the probe, without a write).
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect, Logger } from "effect"
import type { Envelope } from "../../../src/domain/Envelope.ts"
import { MessageOutcome, SinkError } from "../../../src/sinks/Contract.ts"
import { makePostgresSink } from "../../../src/sinks/postgres/PostgresSink.ts"
import { postgresSettings, type PostgresOverrides } from "../../../src/sinks/postgres/PostgresSettings.ts"
import { eventEnvelope, telemetryEnvelope } from "../../support/envelopes.ts"
import { healthBecomes, outcomesOf } from "../../support/natsSink.ts"
import { createTestDatabase, query, requireSharedPostgres, sharedPostgresUp, storedKeys, type TestDatabase, traceparentOf, tracedEnvelopes } from "./support.ts"

requireSharedPostgres("The PostgreSQL sink tests")

const quiet = Effect.provide(Logger.layer([]))
const { Committed, Duplicate, Rejected } = MessageOutcome

let db: TestDatabase
beforeAll(async () => {
  if (sharedPostgresUp) db = await createTestDatabase()
})
afterAll(async () => {
  await db?.drop()
})

let tables = 0
/** A sink on a table of its own (`t<n>`), so that tests do not see each other's rows. */
const freshSink = (overrides: PostgresOverrides = {}) =>
  Effect.gen(function*() {
    const table = `t${++tables}`
    const sink = yield* makePostgresSink(postgresSettings({ databaseUrl: db.url, table, statementTimeoutMs: 3_000, ...overrides })).pipe(quiet)
    return { sink, table }
  })

describe.runIf(sharedPostgresUp)("PostgresSink", () => {
  it.live("creates the table at start and commits a batch; every column reads back", () =>
    Effect.gen(function*() {
      const { sink, table } = yield* freshSink()
      expect(sink.table()).toMatchObject({ name: `public.${table}`, created: true })
      const withAlerts = { ...telemetryEnvelope("dev-1", 2, { temp: 81.5 }, { site: "plant-7" }), alerts: ["hot"] }
      const batch: Array<Envelope> = [
        { ...telemetryEnvelope("dev-1", 1, { temp: 20 }), traceparent: traceparentOf(1) },
        withAlerts,
        eventEnvelope("dev-2", 7, "door-open")
      ]
      const r = yield* outcomesOf(sink, batch)
      expect(r.outcomes).toEqual([Committed, Committed, Committed])
      expect(r.reasons.size).toBe(0)
      const rows = yield* query(
        db.url,
        `SELECT device, epoch, seq, kind, device_ts::text AS device_ts, received_at::text AS received_at, gateway, traceparent,
           body::text AS body, annotations::text AS annotations FROM ${table} ORDER BY device, seq`
      )
      expect(rows.map((row) => ({ ...row, epoch: String(row["epoch"]), seq: String(row["seq"]) }))).toEqual([
        {
          device: "dev-1", epoch: "1", seq: "1", kind: "telemetry", device_ts: "1700000000001", received_at: "1700000000501",
          gateway: "gw-test", traceparent: traceparentOf(1), body: `{"metrics": {"temp": 20}}`, annotations: null
        },
        {
          device: "dev-1", epoch: "1", seq: "2", kind: "telemetry", device_ts: "1700000000002", received_at: "1700000000502",
          gateway: "gw-test", traceparent: null, body: `{"tags": {"site": "plant-7"}, "metrics": {"temp": 81.5}}`,
          annotations: `{"alerts": ["hot"]}`
        },
        {
          device: "dev-2", epoch: "1", seq: "7", kind: "event", device_ts: "1700000000007", received_at: "1700000000507",
          gateway: "gw-test", traceparent: null, body: `{"name": "door-open"}`, annotations: null
        }
      ])
    }))

  it.live("a key twice in one batch: the second is Duplicate; a key already stored: Duplicate; nothing is stored twice", () =>
    Effect.gen(function*() {
      const { sink, table } = yield* freshSink()
      const [a, b, c] = tracedEnvelopes("dev-d", 1, 3) as [Envelope, Envelope, Envelope]
      const first = yield* outcomesOf(sink, [a, b, { ...telemetryEnvelope("dev-d", 1, { temp: -1 }), traceparent: traceparentOf(1) }])
      expect(first.outcomes).toEqual([Committed, Committed, Duplicate])
      const second = yield* outcomesOf(sink, [b, c, c, a])
      expect(second.outcomes).toEqual([Duplicate, Committed, Duplicate, Duplicate])
      const stored = yield* storedKeys(db.url, table)
      expect([...stored.keys()].sort()).toEqual(["dev-d:1:1", "dev-d:1:2", "dev-d:1:3"])
      for (const [key, row] of stored) {
        expect(row.count, key).toBe(1)
        expect(row.traceparent).toBe(traceparentOf(Number(key.split(":")[2])))
      }
      // the first write of a key wins
      const kept = yield* query(db.url, `SELECT body->'metrics'->>'temp' AS temp FROM ${table} WHERE seq = 1`)
      expect(kept).toEqual([{ temp: "0" }])
    }))

  it.live("rows PostgreSQL refuses are Rejected alone (bisection); a value that cannot be a row too; the rest commits", () =>
    Effect.gen(function*() {
      const { sink, table } = yield* freshSink()
      const batch = tracedEnvelopes("dev-r", 1, 60)
      // \u0000 in a jsonb string: "unsupported Unicode escape sequence"
      batch[17] = { ...telemetryEnvelope("dev-r", 18, { temp: 1 }, { note: "nul\u0000here" }), traceparent: traceparentOf(18) }
      // a NUL in a text column: "invalid byte sequence for encoding UTF8"
      batch[40] = { ...telemetryEnvelope("dev-\u0000r", 41), traceparent: traceparentOf(41) }
      // not an integer: refused before PostgreSQL sees it
      batch[50] = { ...telemetryEnvelope("dev-r", 51.5), traceparent: traceparentOf(51) }
      const r = yield* outcomesOf(sink, batch)
      for (let i = 0; i < batch.length; i++) {
        expect(r.outcomes[i], `message ${i}`).toBe(i === 17 || i === 40 || i === 50 ? Rejected : Committed)
      }
      expect(r.reasons.get(17)).toMatch(/Unicode escape/)
      expect(r.reasons.get(17)).toMatch(/22P05/)
      expect(r.reasons.get(40)).toMatch(/22021/)
      expect(r.reasons.get(50)).toMatch(/seq 51.5 is not an integer/)
      expect([...r.reasons.keys()].sort((x, y) => x - y)).toEqual([17, 40, 50])
      const stored = yield* storedKeys(db.url, table)
      expect(stored.size).toBe(57)
      expect(stored.has("dev-r:1:18")).toBe(false)
      expect(yield* sink.health).toEqual({ ready: true })
      // a batch of nothing but a refused row: Rejected, no failure
      const alone = yield* outcomesOf(sink, [batch[17] as Envelope])
      expect(alone.outcomes).toEqual([Rejected])
    }))

  it.live("batches written at once on several connections all commit", () =>
    Effect.gen(function*() {
      const { sink, table } = yield* freshSink({ poolSize: 3 })
      const results = yield* Effect.forEach(
        [0, 1, 2, 3, 4, 5],
        (n) => outcomesOf(sink, tracedEnvelopes(`dev-c${n % 3}`, 1 + Math.floor(n / 3) * 500, 500)),
        { concurrency: 6 }
      )
      for (const r of results) expect(r.outcomes.every((o) => o === Committed)).toBe(true)
      expect((yield* storedKeys(db.url, table)).size).toBe(3_000)
    }))

  it.live("health follows the writes: table dropped, not ready (misconfigured) and writes fail; table back: ready without a write", () =>
    Effect.gen(function*() {
      const { sink, table } = yield* freshSink()
      expect(yield* sink.health).toEqual({ ready: true })
      expect((yield* outcomesOf(sink, tracedEnvelopes("dev-h", 1, 5))).outcomes).toEqual(new Array(5).fill(Committed))
      yield* query(db.url, `ALTER TABLE ${table} RENAME TO ${table}_away`)
      const failed = yield* Effect.flip(sink.write(tracedEnvelopes("dev-h", 6, 5)))
      expect(failed).toBeInstanceOf(SinkError)
      expect(failed.reason).toBe("misconfigured")
      expect(failed.retryable).toBe(false)
      expect(failed.message).toMatch(/42P01/)
      expect(yield* sink.health).toMatchObject({ ready: false, reason: "misconfigured" })
      // the probe (a second later) finds the table still missing
      yield* Effect.sleep("1200 millis")
      yield* sink.health
      yield* Effect.sleep("300 millis")
      expect(yield* sink.health).toMatchObject({ ready: false, reason: "misconfigured" })
      yield* query(db.url, `ALTER TABLE ${table}_away RENAME TO ${table}`)
      yield* healthBecomes(sink, true, 10_000)
      expect((yield* outcomesOf(sink, tracedEnvelopes("dev-h", 6, 5))).outcomes).toEqual(new Array(5).fill(Committed))
      expect((yield* storedKeys(db.url, table)).size).toBe(10)
    }))

  it.live("a trigger that drops rows: the keys not returned and not in the table are Unavailable, never Duplicate (attack finding)", () =>
    Effect.gen(function*() {
      const { sink, table } = yield* freshSink()
      expect((yield* outcomesOf(sink, tracedEnvelopes("dev-t", 1, 3))).outcomes).toEqual([Committed, Committed, Committed])
      yield* query(db.url, `CREATE FUNCTION drop_${table}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$`)
      yield* query(db.url, `CREATE TRIGGER drop_rows BEFORE INSERT ON ${table} FOR EACH ROW EXECUTE FUNCTION drop_${table}()`)
      // 2 and 3 are in the table (duplicates); 4 and 5 are dropped by the trigger
      const r = yield* outcomesOf(sink, tracedEnvelopes("dev-t", 2, 4))
      expect(r.outcomes).toEqual([Duplicate, Duplicate, MessageOutcome.Unavailable, MessageOutcome.Unavailable])
      expect(r.reasons.get(2)).toMatch(/not stored: .*trigger or rule/)
      expect((yield* storedKeys(db.url, table)).size).toBe(3)
    }))
})
