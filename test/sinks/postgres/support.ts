/**
 * Test support for the PostgreSQL sink's tests: the machine's shared server (127.0.0.1:5432, trust
 * authentication; `GATEWAY_TEST_PG_URL` names another), on which each test file makes a database
 * of its own (`gw_test_<random>`, dropped afterwards: no other database is touched); plain
 * queries for reading a table back; envelopes with a traceparent; a steady load retried as the
 * commit stage retries.
 */
import * as PgConnection from "@effect/sql-pg/PgConnection"
import { Effect, Redacted } from "effect"
import * as Crypto from "node:crypto"
import * as Net from "node:net"
import type { Envelope } from "../../../src/domain/Envelope.ts"
import { MessageOutcome, messageId, type SinkDriver } from "../../../src/sinks/Contract.ts"
import { telemetryEnvelope } from "../../support/envelopes.ts"

/** The shared server's maintenance database, as the superuser. */
export const SHARED_URL = process.env["GATEWAY_TEST_PG_URL"] ?? "postgres://postgres@127.0.0.1:5432/postgres"

/** True when something listens where the shared server should be. */
export const sharedPostgresUp: boolean = await new Promise<boolean>((resolve) => {
  const url = new URL(SHARED_URL)
  const socket = Net.connect({ host: url.hostname, port: Number(url.port || 5432) })
  const done = (up: boolean) => {
    socket.destroy()
    resolve(up)
  }
  socket.setTimeout(1_000, () => done(false))
  socket.once("connect", () => done(true))
  socket.once("error", () => done(false))
})

/**
 * Call at the top of a test file: without the shared server it warns loudly (the file's tests
 * are then skipped by `describe.runIf(sharedPostgresUp)`), or throws when GATEWAY_REQUIRE_SERVICES=1.
 */
export const requireSharedPostgres = (what: string): void => {
  if (sharedPostgresUp) return
  const reason = `${what} need a PostgreSQL server at ${new URL(SHARED_URL).host} (trust authentication for postgres), or GATEWAY_TEST_PG_URL`
  if (process.env["GATEWAY_REQUIRE_SERVICES"] === "1") throw new Error(reason)
  console.warn(`SKIPPED LOUDLY: ${reason}`)
}

/** Runs one statement on `url` (a connection of its own) and returns its rows. */
export const query = (url: string, sql: string, params: ReadonlyArray<unknown> = []) =>
  Effect.scoped(Effect.gen(function*() {
    const conn = yield* PgConnection.make({ url: Redacted.make(url), prepare: false })
    return (yield* conn.query(sql, params)).rows
  })).pipe(Effect.orDie)

/** `url` with another database. */
export const withDatabase = (url: string, database: string): string => {
  const u = new URL(url)
  u.pathname = `/${database}`
  return u.toString()
}

/** A database of its own on a server (`base`: its maintenance database URL). */
export interface TestDatabase {
  readonly name: string
  readonly url: string
  /** Drops it (the sessions still on it are terminated). */
  readonly drop: () => Promise<void>
}

/** Creates `gw_test_<random>` on the server of `base`. */
export const createTestDatabase = async (base: string = SHARED_URL): Promise<TestDatabase> => {
  const name = `gw_test_${Crypto.randomBytes(6).toString("hex")}`
  await Effect.runPromise(query(base, `CREATE DATABASE ${name}`))
  return {
    name,
    url: withDatabase(base, name),
    drop: () => Effect.runPromise(query(base, `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)).then(() => undefined)
  }
}

/** `count` telemetry envelopes of `device` from seq `from`, each with a traceparent derived from its seq. */
export const tracedEnvelopes = (device: string, from: number, count: number): Array<Envelope> => {
  const out: Array<Envelope> = []
  for (let i = 0; i < count; i++) out.push({ ...telemetryEnvelope(device, from + i, { temp: i % 50 }), traceparent: traceparentOf(from + i) })
  return out
}

/** The traceparent {@link tracedEnvelopes} gives message `seq`. */
export const traceparentOf = (seq: number): string => `00-${"a".repeat(32)}-${seq.toString(16).padStart(16, "0")}-01`

/** The rows of `table` as `device:epoch:seq` → { count, traceparent } (all of them). */
export const storedKeys = (url: string, table = "messages") =>
  Effect.map(
    query(url, `SELECT device, epoch::text AS epoch, seq::text AS seq, count(*)::int AS n, min(traceparent) AS tp FROM ${table} GROUP BY 1, 2, 3`),
    (rows) => {
      const out = new Map<string, { readonly count: number; readonly traceparent: string | null }>()
      for (const r of rows) {
        out.set(`${String(r["device"])}:${String(r["epoch"])}:${String(r["seq"])}`, {
          count: Number(r["n"]),
          traceparent: r["tp"] === null ? null : String(r["tp"])
        })
      }
      return out
    }
  )

/** What {@link steadyLoad} saw. */
export interface LoadRun {
  /** The outcome that settled each message (Committed or Duplicate), by `device:epoch:seq`. */
  readonly settled: Map<string, number>
  /** How many times each id was answered Committed (more than once would mean stored twice). */
  readonly committedTimes: Map<string, number>
  /** Every failed write: its reason, how long it took, when it ended (Date.now()). */
  readonly failures: Array<{ readonly reason: string; readonly retryable: boolean; readonly ms: number; readonly at: number; readonly message: string }>
  /** How long each write took that succeeded. */
  readonly writeMs: Array<number>
  /** Messages answered Unavailable (and resent). */
  unavailable: number
  readonly rejected: Array<string>
}

/**
 * A steady load retried as the commit stage does: batches of `batchSize`, one every `everyMs`;
 * a batch's messages not taken (a retryable SinkError, or Unavailable ones) are written again,
 * with the same keys, after `retryMs`, until each is Committed or Duplicate (a Rejected one, or
 * a SinkError that is not retryable, is recorded and not retried) or `deadlineMs` passes.
 */
export const steadyLoad = (
  sink: SinkDriver,
  envelopes: ReadonlyArray<Envelope>,
  options: { readonly batchSize: number; readonly everyMs: number; readonly retryMs: number; readonly deadlineMs: number }
): Effect.Effect<LoadRun> =>
  Effect.gen(function*() {
    const run: LoadRun = { settled: new Map(), committedTimes: new Map(), failures: [], writeMs: [], unavailable: 0, rejected: [] }
    const deadline = Date.now() + options.deadlineMs
    for (let from = 0; from < envelopes.length && Date.now() < deadline; from += options.batchSize) {
      let pending = envelopes.slice(from, from + options.batchSize)
      while (pending.length > 0 && Date.now() < deadline) {
        const started = Date.now()
        const result = yield* Effect.result(sink.write(pending))
        const at = Date.now()
        const ms = at - started
        if (result._tag === "Failure") {
          const e = result.failure
          run.failures.push({ reason: e.reason, retryable: e.retryable, ms, at, message: e.message })
          if (!e.retryable) break
          yield* Effect.sleep(options.retryMs)
          continue
        }
        run.writeMs.push(ms)
        const next: Array<Envelope> = []
        for (let i = 0; i < pending.length; i++) {
          const e = pending[i] as Envelope
          const id = messageId(e)
          const o = result.success.outcomes[i]
          if (o === MessageOutcome.Committed || o === MessageOutcome.Duplicate) {
            run.settled.set(id, o)
            if (o === MessageOutcome.Committed) run.committedTimes.set(id, (run.committedTimes.get(id) ?? 0) + 1)
          } else if (o === MessageOutcome.Rejected) {
            run.rejected.push(`${id}: ${result.success.reasons.get(i) ?? "?"}`)
          } else {
            run.unavailable++
            next.push(e)
          }
        }
        pending = next
        if (pending.length > 0) yield* Effect.sleep(options.retryMs)
      }
      yield* Effect.sleep(options.everyMs)
    }
    return run
  })
