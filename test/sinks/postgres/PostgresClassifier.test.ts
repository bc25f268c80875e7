/**
 * The PostgreSQL classifier on real errors: every SQLSTATE of its table raised by the shared
 * server itself (`RAISE ... USING ERRCODE`, in a database of this file's own), errors PostgreSQL
 * makes on its own (a jsonb `\u0000`, a division by zero, a missing table, a statement timeout),
 * a refused connection, and the sink's own deadline.
 */
import * as PgConnection from "@effect/sql-pg/PgConnection"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect, Redacted } from "effect"
import { classifyPgError, type PgErrorClass } from "../../../src/sinks/postgres/PostgresClassifier.ts"
import { StatementDeadline } from "../../../src/sinks/postgres/PostgresPool.ts"
import { freePort } from "../../support/natsServer.ts"
import { createTestDatabase, requireSharedPostgres, sharedPostgresUp, type TestDatabase } from "./support.ts"

requireSharedPostgres("The PostgreSQL classifier tests")

let db: TestDatabase
beforeAll(async () => {
  if (sharedPostgresUp) db = await createTestDatabase()
})
afterAll(async () => {
  await db?.drop()
})

/** The error of `sql` run on the test database, classified. */
const classified = (sql: string) =>
  Effect.scoped(Effect.gen(function*() {
    const conn = yield* PgConnection.make({ url: Redacted.make(db.url) })
    const error = yield* Effect.flip(conn.query(sql))
    return classifyPgError(error)
  })).pipe(Effect.orDie)

const raised = (code: string) => classified(`DO $$ BEGIN RAISE EXCEPTION 'raised for the test' USING ERRCODE = '${code}'; END $$`)

/** What the class says, without the message. */
const shape = (c: PgErrorClass) =>
  c.outcome === "row" ? { outcome: "row", code: c.code } : { outcome: c.outcome, failure: c.failure, connection: c.connection, code: c.code }

describe.runIf(sharedPostgresUp)("classifyPgError", () => {
  it.live("maps every SQLSTATE of its table, raised by the server", () =>
    Effect.gen(function*() {
      const table: ReadonlyArray<readonly [string, ReturnType<typeof shape>]> = [
        ["08006", { outcome: "failed", failure: "unreachable", connection: true, code: "08006" }],
        ["57P01", { outcome: "failed", failure: "unavailable", connection: true, code: "57P01" }],
        ["57P02", { outcome: "failed", failure: "unavailable", connection: true, code: "57P02" }],
        ["57P03", { outcome: "failed", failure: "unavailable", connection: true, code: "57P03" }],
        ["53100", { outcome: "failed", failure: "unavailable", connection: false, code: "53100" }],
        ["53300", { outcome: "failed", failure: "unavailable", connection: true, code: "53300" }],
        ["40001", { outcome: "failed", failure: "unavailable", connection: false, code: "40001" }],
        ["40P01", { outcome: "failed", failure: "unavailable", connection: false, code: "40P01" }],
        ["25006", { outcome: "failed", failure: "unavailable", connection: false, code: "25006" }],
        ["58030", { outcome: "failed", failure: "unavailable", connection: false, code: "58030" }],
        ["57014", { outcome: "failed", failure: "timeout", connection: false, code: "57014" }],
        ["28P01", { outcome: "failed", failure: "misconfigured", connection: true, code: "28P01" }],
        ["28000", { outcome: "failed", failure: "misconfigured", connection: true, code: "28000" }],
        ["3D000", { outcome: "failed", failure: "misconfigured", connection: false, code: "3D000" }],
        ["42501", { outcome: "failed", failure: "misconfigured", connection: false, code: "42501" }],
        ["42P01", { outcome: "failed", failure: "misconfigured", connection: false, code: "42P01" }],
        ["22P05", { outcome: "row", code: "22P05" }],
        ["22003", { outcome: "row", code: "22003" }],
        ["23505", { outcome: "row", code: "23505" }],
        ["23502", { outcome: "row", code: "23502" }],
        ["54000", { outcome: "row", code: "54000" }],
        ["XX001", { outcome: "failed", failure: "corrupt", connection: false, code: "XX001" }],
        ["XX002", { outcome: "failed", failure: "corrupt", connection: false, code: "XX002" }],
        ["XX000", { outcome: "failed", failure: "unknown", connection: false, code: "XX000" }],
        ["P0001", { outcome: "failed", failure: "unknown", connection: false, code: "P0001" }]
      ]
      for (const [code, want] of table) {
        const c = yield* raised(code)
        expect(shape(c), code).toEqual(want)
        expect(c.message).toMatch(new RegExp(`raised for the test.*\\(${code}\\)$`))
      }
    }))

  it.live("errors PostgreSQL makes itself: a jsonb \\u0000 and a division by zero blame the row; a missing table is misconfigured", () =>
    Effect.gen(function*() {
      const nul = yield* classified(`SELECT '{"a": "\\u0000"}'::jsonb`)
      expect(nul).toMatchObject({ outcome: "row", code: "22P05" })
      expect(nul.message).toMatch(/unsupported Unicode escape sequence/)
      expect(yield* classified("SELECT 1 / 0")).toMatchObject({ outcome: "row", code: "22012" })
      expect(yield* classified("SELECT * FROM gw_no_such_table")).toMatchObject({ outcome: "failed", failure: "misconfigured", code: "42P01" })
    }))

  it.live("a statement timeout is a timeout; the connection stays usable", () =>
    Effect.scoped(Effect.gen(function*() {
      const conn = yield* PgConnection.make({ url: Redacted.make(db.url), startupParameters: { statement_timeout: "100" } })
      const c = classifyPgError(yield* Effect.flip(conn.query("SELECT pg_sleep(2)")))
      expect(c).toMatchObject({ outcome: "failed", failure: "timeout", connection: false, code: "57014" })
      expect((yield* conn.query("SELECT 1 AS one")).rows).toEqual([{ one: 1 }])
    })).pipe(Effect.orDie))

  it.live("a refused connection is unreachable (drop the connection); the sink's deadline is a timeout", () =>
    Effect.gen(function*() {
      const port = yield* Effect.promise(freePort)
      const refused = yield* Effect.flip(Effect.scoped(PgConnection.make({ host: "127.0.0.1", port, username: "postgres" })))
      const c = classifyPgError(refused)
      expect(c).toMatchObject({ outcome: "failed", failure: "unreachable", connection: true })
      expect(c.message).toMatch(/ECONNREFUSED/)
      expect(classifyPgError(new StatementDeadline({ ms: 1_500 }))).toMatchObject({ outcome: "failed", failure: "timeout", connection: true })
      expect(classifyPgError(new Error("something else"))).toMatchObject({ outcome: "failed", failure: "unknown" })
    }))
})
