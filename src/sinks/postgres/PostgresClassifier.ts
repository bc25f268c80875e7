/**
 * Maps what the PostgreSQL client fails with (`@effect/sql-pg`'s `SqlError`, whose cause carries
 * the server's ErrorResponse fields and SQLSTATE; Node socket and TLS errors; a codec refusing
 * a value) onto the sink contract: a row to reject (the batch is retried without it), or a
 * {@link SinkFailure} for the whole statement, and whether its connection must be dropped.
 *
 * By SQLSTATE: `08*` connection exceptions are `unreachable`; `57P01`/`57P02`/`57P03` (admin or
 * crash shutdown, cannot connect now), `53*` insufficient resources (disk full, out of memory,
 * too many connections), `40001`/`40P01` (serialization failure, deadlock), `25006` (a read-only
 * standby after a failover), `55P03`/`55006` (lock or object busy) and `58*` (I/O error) are
 * `unavailable`; `57014` (statement timeout) is `timeout`; `28*` (authentication), `3D000` (no
 * such database), `3F000` (no such schema), `42501` (permission), `42P01` (no such table) and the
 * other `42*` (a table whose columns changed) are `misconfigured`; `22*` (data exception: `\u0000`
 * in a jsonb string, a number out of range), `23*` (integrity constraint) and `54000` (an index
 * row too large) blame a row: {@link PgErrorClass} `row`; `XX001`/`XX002` (corrupt data or index)
 * are `corrupt`; anything else is `unknown`. No answer within the client's deadline
 * (PostgresPool.ts `StatementDeadline`) and a connect that timed out are `timeout`.
 */
import type { SinkFailure } from "../Contract.ts"
import { oneLine } from "./PostgresStartError.ts"

/** What one error means for a statement. */
export type PgErrorClass =
  /** A row of the statement is to blame: retry without it (a batch of one: Rejected). */
  | { readonly outcome: "row"; readonly code: string | undefined; readonly message: string }
  /**
   * The statement failed as a whole. `failure` says whether a retry may help; `connection` is
   * true when the connection is not usable any more (drop it).
   */
  | {
    readonly outcome: "failed"
    readonly failure: SinkFailure
    readonly connection: boolean
    readonly code: string | undefined
    readonly message: string
  }

/** The fields of a PostgreSQL ErrorResponse that the classifier reads. */
interface ServerError {
  readonly code: string
  readonly message: string
  readonly detail?: string | undefined
  readonly table?: string | undefined
  readonly column?: string | undefined
}

/** The error and its causes (and a SqlError's reason), outermost first (at most 8). */
const chain = (error: unknown): Array<unknown> => {
  const out: Array<unknown> = []
  let e: unknown = error
  while (typeof e === "object" && e !== null && out.length < 8) {
    out.push(e)
    const next: unknown = "reason" in e && typeof e.reason === "object" ? e.reason : "cause" in e ? e.cause : undefined
    if (next === e) break
    e = next
  }
  if (out.length === 0 && error !== undefined) out.push(error)
  return out
}

const stringField = (e: unknown, field: string): string | undefined => {
  if (typeof e !== "object" || e === null || !(field in e)) return undefined
  const value = (e as Record<string, unknown>)[field]
  return typeof value === "string" ? value : undefined
}

/** The server's ErrorResponse in `error` or its causes (it has a `severity` and a SQLSTATE `code`). */
export const serverErrorOf = (error: unknown): ServerError | undefined => {
  for (const e of chain(error)) {
    const code = stringField(e, "code")
    if (code === undefined || stringField(e, "severity") === undefined || !/^[0-9A-Z]{5}$/.test(code)) continue
    return {
      code,
      message: stringField(e, "message") ?? "PostgreSQL error",
      detail: stringField(e, "detail"),
      table: stringField(e, "table"),
      column: stringField(e, "column")
    }
  }
  return undefined
}

const messageOf = (e: unknown): string => e instanceof Error ? e.message : String(e)

const UNREACHABLE_NODE_CODES: ReadonlySet<string> = new Set([
  "ECONNREFUSED", "ECONNRESET", "ENOTFOUND", "EAI_AGAIN", "EHOSTUNREACH", "ENETUNREACH", "EPIPE", "ECONNABORTED", "ENOENT"
])
const TLS_CODE = /^(ERR_TLS_|ERR_SSL_|UNABLE_TO_|CERT_|DEPTH_ZERO|SELF_SIGNED|ERR_OSSL)/

const failed = (failure: SinkFailure, connection: boolean, code: string | undefined, message: string): PgErrorClass =>
  ({ outcome: "failed", failure, connection, code, message: oneLine(message) })

/** What a SQLSTATE means (`connection`: the session is over). */
export const classifySqlState = (code: string, message: string): PgErrorClass => {
  const text = `${message} (${code})`
  const cls = code.slice(0, 2)
  if (cls === "22" || cls === "23" || code === "54000") return { outcome: "row", code, message: oneLine(text) }
  if (cls === "08") return failed("unreachable", true, code, text)
  if (code === "57P01" || code === "57P02" || code === "57P03") return failed("unavailable", true, code, text)
  if (code === "57P05") return failed("unreachable", true, code, text) // idle session timeout
  if (code === "57P04") return failed("misconfigured", true, code, text) // database dropped
  if (code === "57014") return failed("timeout", false, code, text)
  if (cls === "53" || cls === "58" || code === "40001" || code === "40P01" || code === "25006" || code === "55P03" || code === "55006") {
    return failed("unavailable", code === "53300", code, text)
  }
  if (cls === "28") return failed("misconfigured", true, code, text)
  if (code === "3D000" || code === "3F000" || cls === "42") return failed("misconfigured", false, code, text)
  if (code === "XX001" || code === "XX002") return failed("corrupt", false, code, text)
  return failed("unknown", false, code, text)
}

/** Classifies an error of a connect or a statement. */
export const classifyPgError = (error: unknown): PgErrorClass => {
  const server = serverErrorOf(error)
  if (server !== undefined) {
    const where = server.column !== undefined ? ` (column ${server.column})` : ""
    const detail = server.detail !== undefined ? `: ${server.detail}` : ""
    return classifySqlState(server.code, `${server.message}${detail}${where}`)
  }
  const all = chain(error)
  for (const e of all) {
    const code = stringField(e, "code")
    if (code === undefined) continue
    if (TLS_CODE.test(code)) return failed("misconfigured", true, undefined, `TLS: ${messageOf(e)} (${code})`)
    if (code === "ETIMEDOUT") return failed("timeout", true, undefined, `${messageOf(e)} (${code})`)
    if (UNREACHABLE_NODE_CODES.has(code)) return failed("unreachable", true, undefined, `${messageOf(e)} (${code})`)
  }
  for (const e of all) {
    const tag = stringField(e, "_tag")
    const text = stringField(e, "message") ?? messageOf(e)
    if (tag === "StatementDeadline") return failed("timeout", true, undefined, text)
    if (tag === "PgTypesCodecError") return { outcome: "row", code: undefined, message: oneLine(`a value cannot be encoded: ${text}`) }
    if (tag === "AuthenticationError") return failed("misconfigured", true, undefined, text)
    if (tag === "ConnectionError") {
      return /timed out/i.test(text) ? failed("timeout", true, undefined, text) : failed("unreachable", true, undefined, text)
    }
  }
  return failed("unknown", false, undefined, messageOf(all[0] ?? error))
}
