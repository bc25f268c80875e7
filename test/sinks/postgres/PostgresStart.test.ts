/**
 * The PostgreSQL sink's start: what stops it (a PostgresStartError naming the variable, in one
 * line) and what does not (a server that is not there yet: the sink starts not ready and becomes
 * ready by itself). Against the machine's shared server (a database of this file's own), a
 * fault proxy in front of it, and a private server with password authentication.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Logger, Option } from "effect"
import { MessageOutcome } from "../../../src/sinks/Contract.ts"
import { makePostgresSink } from "../../../src/sinks/postgres/PostgresSink.ts"
import { postgresSettings, type PostgresOverrides } from "../../../src/sinks/postgres/PostgresSettings.ts"
import { PostgresStartError } from "../../../src/sinks/postgres/PostgresStartError.ts"
import { Fault, startFaultProxy } from "../../support/faultProxy.ts"
import { healthBecomes, outcomesOf } from "../../support/natsSink.ts"
import { hasPostgresServer, type PostgresServer, requirePostgresServer, startPostgresServer, stopAllPostgresServers } from "../../support/postgresServer.ts"
import { createTestDatabase, query, requireSharedPostgres, sharedPostgresUp, storedKeys, type TestDatabase, tracedEnvelopes, withDatabase } from "./support.ts"

requireSharedPostgres("The PostgreSQL sink start tests")
requirePostgresServer("The PostgreSQL sink's password and permission tests")

const quiet = Effect.provide(Logger.layer([]))

let db: TestDatabase
beforeAll(async () => {
  if (sharedPostgresUp) db = await createTestDatabase()
})
afterAll(async () => {
  await db?.drop()
  await stopAllPostgresServers()
})

const start = (overrides: PostgresOverrides) =>
  makePostgresSink(postgresSettings({ databaseUrl: db.url, statementTimeoutMs: 3_000, connectTimeoutMs: 2_000, ...overrides })).pipe(quiet)

/** The start's failure (dies when it started). */
const startError = (overrides: PostgresOverrides) =>
  Effect.gen(function*() {
    const exit = yield* Effect.exit(start(overrides))
    if (Exit.isSuccess(exit)) return yield* Effect.die(new Error("the sink started"))
    const error = Option.getOrUndefined(Exit.findErrorOption(exit))
    expect(error).toBeInstanceOf(PostgresStartError)
    return error as PostgresStartError
  })

describe.runIf(sharedPostgresUp)("PostgresSink start", () => {
  it.live("an unparseable DATABASE_URL or a bad PG_* value stops the start, naming the variable", () =>
    Effect.gen(function*() {
      for (const url of ["http://127.0.0.1:5432/x", "postgres://[::1/x", "host=127.0.0.1 dbname=x", "postgres://h:99999/x", "postgres://h/x?sslmode=sometimes"]) {
        const e = yield* startError({ databaseUrl: url })
        expect(e.variable, url).toBe("DATABASE_URL")
        expect(e.reason).toBe("misconfigured")
        expect(e.line).toMatch(/^postgres sink: DATABASE_URL: /)
        expect(e.line).not.toMatch(/\n/)
      }
      expect((yield* startError({ table: "messages; drop table x" })).variable).toBe("PG_TABLE")
      expect((yield* startError({ table: "a.b.c" })).variable).toBe("PG_TABLE")
      expect((yield* startError({ poolSize: 0 })).variable).toBe("PG_POOL_SIZE")
      expect((yield* startError({ statementTimeoutMs: 1.5 })).variable).toBe("PG_STATEMENT_TIMEOUT_MS")
      expect((yield* startError({ connectTimeoutMs: -1 })).variable).toBe("PG_CONNECT_TIMEOUT_MS")
    }))

  it.live("an unknown user or a missing database stops the start (DATABASE_URL, misconfigured)", () =>
    Effect.gen(function*() {
      const u = new URL(db.url)
      u.username = "gw_no_such_role"
      const noRole = yield* startError({ databaseUrl: u.toString() })
      expect(noRole).toMatchObject({ variable: "DATABASE_URL", reason: "misconfigured" })
      expect(noRole.message).toMatch(/gw_no_such_role/)
      expect(noRole.message).toMatch(/28000/)
      const noDb = yield* startError({ databaseUrl: withDatabase(db.url, "gw_test_no_such_database") })
      expect(noDb).toMatchObject({ variable: "DATABASE_URL", reason: "misconfigured" })
      expect(noDb.message).toMatch(/3D000/)
    }))

  it.live("a table of another shape stops the start (PG_TABLE, what differs); a table without annotations gets the column", () =>
    Effect.gen(function*() {
      yield* query(db.url, "CREATE TABLE wrong_types (device text, epoch bigint, seq text, kind text, device_ts bigint, received_at bigint, gateway text, traceparent text, body jsonb, annotations jsonb, UNIQUE (device, epoch, seq))")
      const types = yield* startError({ table: "wrong_types" })
      expect(types.variable).toBe("PG_TABLE")
      expect(types.line).toMatch(/column seq is text \(expected bigint\)/)
      yield* query(db.url, "CREATE TABLE no_key (device text, epoch integer, seq bigint, kind text, device_ts bigint, received_at bigint, gateway text, traceparent text NOT NULL, body jsonb, annotations jsonb, extra int NOT NULL)")
      const noKey = yield* startError({ table: "no_key" })
      expect(noKey.line).toMatch(/no unique key on exactly \(device, epoch, seq\)/)
      expect(noKey.line).toMatch(/column traceparent is NOT NULL/)
      expect(noKey.line).toMatch(/column extra \(integer\) is NOT NULL without a default/)
      yield* query(db.url, "CREATE TABLE old_shape (device text NOT NULL, epoch integer NOT NULL, seq bigint NOT NULL, kind text NOT NULL, device_ts bigint NOT NULL, received_at bigint NOT NULL, gateway text NOT NULL, traceparent text, body jsonb NOT NULL, PRIMARY KEY (seq, device, epoch))")
      const sink = yield* start({ table: "old_shape" })
      expect(sink.table()).toEqual({ name: "public.old_shape", created: false, annotationsAdded: true })
      const r = yield* outcomesOf(sink, [{ ...tracedEnvelopes("dev-o", 1, 1)[0]!, alerts: ["x"] } as never])
      expect(r.outcomes).toEqual([MessageOutcome.Committed])
      expect(yield* query(db.url, "SELECT annotations::text AS a FROM old_shape")).toEqual([{ a: `{"alerts": ["x"]}` }])
    }))

  it.live("the table is found (or created) through the search path of the URL's options, or named schema.table", () =>
    Effect.gen(function*() {
      yield* query(db.url, "CREATE SCHEMA gw_other")
      const url = new URL(db.url)
      url.searchParams.set("options", "-csearch_path=gw_other")
      const viaPath = yield* start({ databaseUrl: url.toString() })
      expect(viaPath.table()).toMatchObject({ name: "gw_other.messages", created: true })
      yield* outcomesOf(viaPath, tracedEnvelopes("dev-s", 1, 3))
      expect((yield* storedKeys(db.url, "gw_other.messages")).size).toBe(3)
      const named = yield* start({ table: "gw_other.named" })
      expect(named.table()).toMatchObject({ name: "gw_other.named", created: true })
    }))

  it.live("a server not there at start is not a start failure: not ready, writes fail fast (retryable); it comes: ready by itself", () =>
    Effect.gen(function*() {
      const shared = new URL(db.url)
      const proxy = yield* Effect.acquireRelease(
        Effect.promise(() => startFaultProxy(shared.hostname, Number(shared.port || 5432))),
        (p) => Effect.promise(() => p.close())
      )
      yield* Effect.promise(() => proxy.set(Fault.refuse))
      const url = new URL(db.url)
      url.port = String(proxy.port)
      const sink = yield* start({ databaseUrl: url.toString(), table: "late" })
      expect(sink.table()).toBeUndefined()
      expect(yield* sink.health).toMatchObject({ ready: false, reason: "unreachable" })
      const failed = yield* Effect.flip(sink.write(tracedEnvelopes("dev-l", 1, 3)))
      expect(failed.reason).toBe("unreachable")
      expect(failed.retryable).toBe(true)
      yield* Effect.promise(() => proxy.set(Fault.pass))
      yield* healthBecomes(sink, true, 15_000)
      expect(sink.table()).toMatchObject({ created: true })
      expect((yield* outcomesOf(sink, tracedEnvelopes("dev-l", 1, 3))).outcomes).toEqual(new Array(3).fill(MessageOutcome.Committed))
    }))

  it.live("a server that does not answer at start (blackholed): the start ends within the connect timeout, not ready (timeout)", () =>
    Effect.gen(function*() {
      const shared = new URL(db.url)
      const proxy = yield* Effect.acquireRelease(
        Effect.promise(() => startFaultProxy(shared.hostname, Number(shared.port || 5432))),
        (p) => Effect.promise(() => p.close())
      )
      yield* Effect.promise(() => proxy.set(Fault.blackhole))
      const url = new URL(db.url)
      url.port = String(proxy.port)
      const started = Date.now()
      const sink = yield* start({ databaseUrl: url.toString(), connectTimeoutMs: 800 })
      const took = Date.now() - started
      expect(took).toBeGreaterThanOrEqual(700)
      expect(took).toBeLessThan(5_000)
      expect(yield* sink.health).toMatchObject({ ready: false, reason: "timeout" })
    }))
})

describe.runIf(sharedPostgresUp && hasPostgresServer)("PostgresSink start with password authentication (private server)", () => {
  let server: PostgresServer
  beforeAll(async () => {
    server = await startPostgresServer({ password: "s3cr3t" })
  }, 60_000)

  it.live("a wrong password stops the start (DATABASE_URL, misconfigured); the right one starts", () =>
    Effect.gen(function*() {
      const wrong = new URL(server.url)
      wrong.password = "nope"
      const e = yield* startError({ databaseUrl: wrong.toString() })
      expect(e).toMatchObject({ variable: "DATABASE_URL", reason: "misconfigured" })
      expect(e.message).toMatch(/28P01/)
      expect(e.line).not.toMatch(/s3cr3t|nope/)
      const none = new URL(server.url)
      none.password = ""
      expect((yield* startError({ databaseUrl: none.toString() })).variable).toBe("DATABASE_URL")
      const sink = yield* start({ databaseUrl: server.url })
      expect(yield* sink.health).toEqual({ ready: true })
    }))

  it.live("a user who may not create or write the table stops the start (DATABASE_URL)", () =>
    Effect.gen(function*() {
      yield* query(server.url, "CREATE ROLE gw_reader LOGIN PASSWORD 'r3ader'")
      yield* query(server.url, "REVOKE CREATE ON SCHEMA public FROM PUBLIC")
      const reader = new URL(server.url)
      reader.username = "gw_reader"
      reader.password = "r3ader"
      const cannotCreate = yield* startError({ databaseUrl: reader.toString(), table: "denied" })
      expect(cannotCreate.variable).toBe("DATABASE_URL")
      expect(cannotCreate.message).toMatch(/42501/)
      // the table exists, but the user may only read it
      const owner = yield* start({ databaseUrl: server.url, table: "readonly" })
      expect(owner.table()).toMatchObject({ created: true })
      yield* query(server.url, "GRANT SELECT ON readonly TO gw_reader")
      const cannotWrite = yield* startError({ databaseUrl: reader.toString(), table: "readonly" })
      expect(cannotWrite.variable).toBe("DATABASE_URL")
      expect(cannotWrite.line).toMatch(/may not INSERT/)
    }))
})
