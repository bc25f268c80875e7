/**
 * The sink contract suite (suite.ts) against the PostgreSQL driver (PostgresSink.ts) on a
 * PRIVATE PostgreSQL of this file (initdb in a temporary directory, a free loopback port:
 * test/support/postgresServer.ts); every driver gets a table of its own (`contract_<n>`, created
 * by the sink at start), read back on a connection of the test's own.
 *
 * Unavailable, for real: the server killed (SIGKILL to the postmaster and every backend), and
 * restarted on the same port and data (crash recovery included).
 * Refused for good: a body with `\u0000` in a string, which `jsonb` cannot hold (SQLSTATE 22P05).
 */
import * as PgConnection from "@effect/sql-pg/PgConnection"
import { Effect, Logger, Redacted } from "effect"
import type { Envelope } from "../../../src/domain/Envelope.ts"
import { makePostgresSink } from "../../../src/sinks/postgres/PostgresSink.ts"
import { postgresSettings } from "../../../src/sinks/postgres/PostgresSettings.ts"
import { eventEnvelope } from "../../support/envelopes.ts"
import { hasPostgresServer, type PostgresServer, requirePostgresServer, startPostgresServer, stopAllPostgresServers } from "../../support/postgresServer.ts"
import { contractSuite, type DriverInstance, type StoredKey, traceparentOf } from "./suite.ts"

requirePostgresServer("The PostgreSQL sink contract tests")

const quiet = Effect.provide(Logger.layer([]))

let server: PostgresServer | undefined
let tables = 0

const running = (): PostgresServer => {
  if (server === undefined) throw new Error("the private PostgreSQL was not started")
  return server
}

/** What `table` holds for `keys` (`device:epoch:seq`), on a connection of its own. */
const storedIn = (url: string, table: string, keys: ReadonlyArray<string>) =>
  Effect.scoped(Effect.gen(function*() {
    const conn = yield* PgConnection.make({ url: Redacted.make(url), prepare: false })
    const rows = (yield* conn.query(
      `SELECT device || ':' || epoch || ':' || seq AS key, count(*)::int AS n, count(traceparent)::int AS traced
       FROM ${table} GROUP BY device, epoch, seq`,
      []
    )).rows
    const wanted = new Set(keys)
    const out = new Map<string, StoredKey>()
    for (const r of rows) {
      const key = String(r["key"])
      const n = Number(r["n"])
      if (wanted.has(key)) out.set(key, { count: n, traceparent: Number(r["traced"]) === n })
    }
    return out as ReadonlyMap<string, StoredKey>
  })).pipe(Effect.orDie)

const make = Effect.gen(function*() {
  const s = running()
  if (!s.running()) yield* Effect.promise(() => s.restart())
  const table = `contract_${++tables}`
  const sink = yield* makePostgresSink(postgresSettings({
    databaseUrl: s.url,
    table,
    statementTimeoutMs: 2_000,
    connectTimeoutMs: 2_000,
    poolSize: 2
  }))
  return {
    driver: sink,
    stored: (keys) => storedIn(s.url, table, keys),
    outage: {
      kind: "outage",
      condition: "PostgreSQL killed (SIGKILL to every process), then restarted on its port and data",
      begin: Effect.promise(() => s.kill()),
      end: Effect.promise(async () => {
        if (!s.running()) await s.restart()
      })
    }
  } satisfies DriverInstance
}).pipe(quiet)

contractSuite("postgres", {
  missing: hasPostgresServer ? undefined : "PostgreSQL's server binaries are not installed",
  setup: async () => {
    server = await startPostgresServer()
  },
  teardown: stopAllPostgresServers,
  make,
  refused: {
    what: "a body with \\u0000 in a string, which jsonb refuses",
    make: (device: string, seq: number): Envelope => ({ ...eventEnvelope(device, seq, "door\u0000open"), traceparent: traceparentOf(seq) })
  },
  healthDeadlineMs: 15_000,
  timeoutMs: 60_000
})
