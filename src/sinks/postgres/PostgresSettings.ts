/**
 * What the PostgreSQL sink needs from the configuration, as plain values: the `DATABASE_URL`
 * and `PG_*` variables of config/GatewayConfig.ts ({@link postgresSettingsOf}), or set directly by
 * tests and benchmarks ({@link postgresSettings}). The libpq variables (`PGHOST`, `PGPORT`,
 * `PGUSER`, `PGPASSWORD`, `PGDATABASE`) fill what `DATABASE_URL` leaves out ({@link libpqConfig}).
 */
import { Config, Option, Redacted } from "effect"

/** The libpq variables that fill what `DATABASE_URL` leaves out (each undefined when unset). */
export interface LibpqDefaults {
  readonly host?: string | undefined
  readonly port?: string | undefined
  readonly user?: string | undefined
  readonly password?: Redacted.Redacted<string> | undefined
  readonly database?: string | undefined
}

/** The PostgreSQL sink's settings. */
export interface PostgresSettings {
  /**
   * `DATABASE_URL`: `postgres://user:password@host:port/database?sslmode=...&options=...`
   * (libpq's URI form; `options=-csearch_path=...` picks the schema of the table). Redacted: it
   * may hold a password.
   */
  readonly databaseUrl: Redacted.Redacted<string>
  /** `PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE`: what the URL leaves out. */
  readonly libpq: LibpqDefaults
  /** `PG_TABLE`: the messages table, `name` or `schema.name` (default `messages`), created when missing. */
  readonly table: string
  /**
   * `PG_STATEMENT_TIMEOUT_MS`: the server's `statement_timeout` for every statement, and (plus a
   * second) the client's deadline for an answer: a connection that stops answering is dropped.
   */
  readonly statementTimeoutMs: number
  /** `PG_CONNECT_TIMEOUT_MS`: the longest wait for a new connection (TCP, TLS, authentication). */
  readonly connectTimeoutMs: number
  /** `PG_POOL_SIZE`: connections kept open, so many batches written at once. */
  readonly poolSize: number
  /** `application_name` of the connections, shown in `pg_stat_activity` (the gateway's id). */
  readonly applicationName: string
}

/** What {@link postgresSettings} accepts: any field, and the URL also as plain text. */
export type PostgresOverrides = Partial<Omit<PostgresSettings, "databaseUrl">> & {
  readonly databaseUrl?: string | Redacted.Redacted<string>
}

/** The defaults of the `PG_*` variables, overridden by `overrides`. */
export const postgresSettings = (overrides: PostgresOverrides = {}): PostgresSettings => {
  const { databaseUrl, ...rest } = overrides
  return {
    libpq: {},
    table: "messages",
    statementTimeoutMs: 5_000,
    connectTimeoutMs: 5_000,
    poolSize: 4,
    applicationName: "iot-gateway",
    ...rest,
    databaseUrl: databaseUrl === undefined
      ? Redacted.make("postgres://127.0.0.1:5432/postgres")
      : typeof databaseUrl === "string"
      ? Redacted.make(databaseUrl)
      : databaseUrl
  }
}

/** The `DATABASE_URL` and `PG_*` fields of the gateway's configuration. */
export interface PostgresConfigFields {
  /** `DATABASE_URL` (empty: everything from the libpq variables and their defaults). */
  readonly databaseUrl: string | Redacted.Redacted<string>
  /** `PG_TABLE` (default `messages`). */
  readonly pgTable: string
  /** `PG_STATEMENT_TIMEOUT_MS` (default 5000). */
  readonly pgStatementTimeoutMs: number
  /** `PG_CONNECT_TIMEOUT_MS` (default 5000). */
  readonly pgConnectTimeoutMs: number
  /** `PG_POOL_SIZE` (default 4). */
  readonly pgPoolSize: number
  /** The libpq variables ({@link libpqConfig}); none when left out. */
  readonly libpq?: LibpqDefaults | undefined
  /** The gateway's id, in `application_name`. */
  readonly gatewayId: string
}

/** The sink's settings from the gateway's configuration. */
export const postgresSettingsOf = (c: PostgresConfigFields): PostgresSettings => ({
  databaseUrl: typeof c.databaseUrl === "string" ? Redacted.make(c.databaseUrl) : c.databaseUrl,
  libpq: c.libpq ?? {},
  table: c.pgTable,
  statementTimeoutMs: c.pgStatementTimeoutMs,
  connectTimeoutMs: c.pgConnectTimeoutMs,
  poolSize: c.pgPoolSize,
  applicationName: `iot-gateway ${c.gatewayId}`
})

const optional = (name: string) => Config.option(Config.String(name)).pipe(Config.map(Option.getOrUndefined))

/** Reads the libpq variables `PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD` (redacted) and `PGDATABASE`. */
export const libpqConfig: Config.Config<LibpqDefaults> = Config.all({
  host: optional("PGHOST"),
  port: optional("PGPORT"),
  user: optional("PGUSER"),
  password: Config.option(Config.Redacted("PGPASSWORD")).pipe(Config.map(Option.getOrUndefined)),
  database: optional("PGDATABASE")
})
