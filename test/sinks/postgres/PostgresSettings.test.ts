/**
 * The PostgreSQL sink's settings: the defaults of the `PG_*` variables, the settings from the
 * gateway's configuration fields, `DATABASE_URL` parsed and completed by the libpq variables
 * (read from the environment by `libpqConfig`), and what is refused with a reason.
 */
import { describe, expect, it } from "@effect/vitest"
import { ConfigProvider, Effect, Redacted } from "effect"
import { libpqConfig, postgresSettings, postgresSettingsOf } from "../../../src/sinks/postgres/PostgresSettings.ts"
import { parseDatabaseUrl, type PgTarget } from "../../../src/sinks/postgres/PostgresUrl.ts"

const target = (raw: string, libpq = {}): PgTarget => {
  const t = parseDatabaseUrl(raw, libpq)
  if (typeof t === "string") throw new Error(`refused: ${t}`)
  return t
}

const readLibpq = Effect.gen(function*() {
  return yield* libpqConfig
})

describe("PostgresSettings", () => {
  it("defaults: table messages, 5 s statement and connect timeouts, 4 connections", () => {
    const s = postgresSettings()
    expect({ ...s, databaseUrl: Redacted.value(s.databaseUrl) }).toEqual({
      databaseUrl: "postgres://127.0.0.1:5432/postgres",
      libpq: {},
      table: "messages",
      statementTimeoutMs: 5_000,
      connectTimeoutMs: 5_000,
      poolSize: 4,
      applicationName: "iot-gateway"
    })
    expect(String(postgresSettings({ databaseUrl: "postgres://u:secret@h/db" }).databaseUrl)).not.toMatch(/secret/)
  })

  it("from the configuration fields", () => {
    const s = postgresSettingsOf({
      databaseUrl: Redacted.make("postgres://u:p@db.example:6543/fleet"),
      pgTable: "telemetry.messages",
      pgStatementTimeoutMs: 2_000,
      pgConnectTimeoutMs: 3_000,
      pgPoolSize: 8,
      gatewayId: "gw-7"
    })
    expect(Redacted.value(s.databaseUrl)).toBe("postgres://u:p@db.example:6543/fleet")
    expect(s).toMatchObject({ table: "telemetry.messages", statementTimeoutMs: 2_000, connectTimeoutMs: 3_000, poolSize: 8, applicationName: "iot-gateway gw-7", libpq: {} })
  })

  it("libpqConfig reads PGHOST, PGPORT, PGUSER, PGPASSWORD (redacted) and PGDATABASE", async () => {
    const read = await Effect.runPromise(readLibpq.pipe(
      Effect.provide(ConfigProvider.layer(ConfigProvider.fromEnvRecord({ PGHOST: "db", PGPORT: "6000", PGUSER: "ingest", PGPASSWORD: "pw", PGDATABASE: "fleet" })))
    ))
    expect({ ...read, password: read.password === undefined ? undefined : Redacted.value(read.password) })
      .toEqual({ host: "db", port: "6000", user: "ingest", password: "pw", database: "fleet" })
    const none = await Effect.runPromise(readLibpq.pipe(Effect.provide(ConfigProvider.layer(ConfigProvider.fromEnvRecord({})))))
    expect(none).toEqual({ host: undefined, port: undefined, user: undefined, password: undefined, database: undefined })
  })
})

describe("parseDatabaseUrl", () => {
  it("reads user, password, host, port, database and the query parameters", () => {
    const t = target("postgresql://ingest:p%40ss@db.example:6543/fleet?sslmode=require&application_name=x")
    expect({ ...t, password: t.password === undefined ? undefined : Redacted.value(t.password), url: undefined }).toEqual({
      host: "db.example", port: 6543, user: "ingest", database: "fleet", password: "p@ss", sslmode: "require", url: undefined,
      display: "db.example:6543/fleet as ingest"
    })
    expect(target("postgres://[::1]:5433/x?user=u").display).toBe("[::1]:5433/x as u")
    expect(target("postgres:///fleet?host=/var/run/postgresql").host).toBe("/var/run/postgresql")
  })

  it("fills what the URL leaves out from the libpq variables, then libpq's defaults", () => {
    const libpq = { host: "pg.internal", port: "6432", user: "gw", password: Redacted.make("pw"), database: "ingest" }
    const filled = target("", libpq)
    expect(filled.display).toBe("pg.internal:6432/ingest as gw")
    expect(filled.password === undefined ? "" : Redacted.value(filled.password)).toBe("pw")
    expect(target("postgres://other/db", libpq).display).toBe("other:6432/db as gw")
    expect(target("postgres://u@h").display).toBe("h:5432/u as u")
  })

  it("refuses what is not a postgres URL, with a reason", () => {
    for (const [raw, why] of [
      ["mysql://h/db", /expected a URL postgres:/],
      ["host=h dbname=x", /key=value strings are not supported/],
      ["postgres://h:0/db", /port 0 is not from 1 to 65535/],
      ["postgres://h1,h2/db", /several hosts/],
      ["postgres://h/db?sslmode=maybe", /unknown sslmode=maybe/],
      ["postgres://h/db?connect_timeout=soon", /connect_timeout=soon/],
      ["postgres://h/%zz", /percent-encoding/]
    ] as const) {
      const r = parseDatabaseUrl(raw)
      expect(typeof r, raw).toBe("string")
      expect(r, raw).toMatch(why)
    }
  })
})
