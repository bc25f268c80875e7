/**
 * `DATABASE_URL`: libpq's URI form, `postgres[ql]://[user[:password]@][host][:port][/database]
 * [?param=value&...]`, with the parameters the client knows (`sslmode`, `options`,
 * `application_name`, `connect_timeout`, `host`, `port`, `user`, `password`, `dbname`). What the
 * URL leaves out comes from the libpq variables (`PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`,
 * `PGDATABASE`), then libpq's defaults (localhost, 5432, the OS user, a database named as the
 * user). A host starting with `/` is a directory holding the server's Unix socket. Checked at
 * start, so a bad URL is one clear line naming `DATABASE_URL`, never a connection error later.
 */
import { Redacted } from "effect"
import type { LibpqDefaults, PostgresSettings } from "./PostgresSettings.ts"

/** Where and as whom to connect: what the URL says, completed. */
export interface PgTarget {
  /** Host name or address; a directory of Unix sockets when it starts with `/`. */
  readonly host: string
  readonly port: number
  readonly user: string
  readonly database: string
  readonly password: Redacted.Redacted<string> | undefined
  /** `sslmode` of the URL (undefined: plain TCP, as the client defaults). */
  readonly sslmode: string | undefined
  /** The URL as given (passed on to the client for `sslmode`, `options`, `connect_timeout`, ...). */
  readonly url: Redacted.Redacted<string> | undefined
  /** `host:port/database as user`, without the password: for logs and errors. */
  readonly display: string
}

const SSLMODES: ReadonlySet<string> = new Set(["disable", "allow", "prefer", "require", "verify-ca", "verify-full"])

const decode = (text: string): string | undefined => {
  try {
    return decodeURIComponent(text)
  } catch {
    return undefined
  }
}

const portOf = (text: string): number | undefined => {
  const n = Number(text)
  return /^\d{1,5}$/.test(text) && n >= 1 && n <= 65535 ? n : undefined
}

/** Parses `DATABASE_URL` and completes it from `libpq`; a string (what is wrong, one line) when invalid. */
export const parseDatabaseUrl = (raw: string, libpq: LibpqDefaults = {}): PgTarget | string => {
  const text = raw.trim()
  let host: string | undefined
  let port: string | undefined
  let user: string | undefined
  let password: string | undefined
  let database: string | undefined
  let sslmode: string | undefined
  if (text !== "") {
    if (!/^postgres(ql)?:\/\//i.test(text)) {
      return "expected a URL postgres://user:password@host:port/database (libpq key=value strings are not supported)"
    }
    let url: URL
    try {
      url = new URL(text)
    } catch {
      return "not a valid URL (expected postgres://user:password@host:port/database; percent-encode special characters)"
    }
    if (url.hostname.includes(",")) return "several hosts in one URL are not supported"
    const parts = {
      host: decode(url.hostname.startsWith("[") ? url.hostname.slice(1, -1) : url.hostname),
      user: decode(url.username),
      password: decode(url.password),
      database: decode(url.pathname.replace(/^\//, ""))
    }
    if (parts.host === undefined || parts.user === undefined || parts.password === undefined || parts.database === undefined) {
      return "invalid percent-encoding in the URL"
    }
    host = parts.host === "" ? undefined : parts.host
    port = url.port === "" ? undefined : url.port
    user = parts.user === "" ? undefined : parts.user
    password = url.password === "" ? undefined : parts.password
    database = parts.database === "" ? undefined : parts.database
    for (const [key, value] of url.searchParams) {
      if (key === "host") host = value
      else if (key === "port") port = value
      else if (key === "user") user = value
      else if (key === "password") password = value
      else if (key === "dbname") database = value
      else if (key === "sslmode") sslmode = value
      else if (key === "connect_timeout" && !/^\d+$/.test(value)) return `connect_timeout=${value} is not a number of seconds`
    }
    if (sslmode !== undefined && !SSLMODES.has(sslmode)) return `unknown sslmode=${sslmode} (expected ${[...SSLMODES].join(", ")})`
  }
  host ??= libpq.host ?? "localhost"
  port ??= libpq.port ?? "5432"
  user ??= libpq.user ?? process.env["USER"] ?? "postgres"
  database ??= libpq.database ?? user
  const portNumber = portOf(port)
  if (portNumber === undefined) return `port ${port} is not from 1 to 65535`
  if (host === "") return "no host"
  const secret = password !== undefined ? Redacted.make(password) : libpq.password
  return {
    host,
    port: portNumber,
    user,
    database,
    password: secret,
    sslmode,
    url: text === "" ? undefined : Redacted.make(text),
    display: `${host.includes(":") ? `[${host}]` : host}:${portNumber}/${database} as ${user}`
  }
}

/** {@link parseDatabaseUrl} of the settings' `DATABASE_URL`. */
export const targetOf = (settings: PostgresSettings): PgTarget | string =>
  parseDatabaseUrl(Redacted.value(settings.databaseUrl), settings.libpq)
