/**
 * Why the PostgreSQL sink cannot start: an unparseable `DATABASE_URL`, a bad `PG_*` value, wrong
 * credentials, a database that does not exist, no permission to create or write the table, a
 * table that exists with another shape. One typed error naming the variable to fix, described
 * in one line; the caller turns it into exit 78. A server that cannot be reached at start is NOT
 * a start failure: the sink starts not ready and keeps connecting.
 */
import { Data } from "effect"
import type { SinkFailure } from "../Contract.ts"

/** A start failure of the PostgreSQL sink. */
export class PostgresStartError extends Data.TaggedError("PostgresStartError")<{
  /** The variable to fix (`DATABASE_URL`, `PG_TABLE`, `PG_POOL_SIZE`, ...). */
  readonly variable: string
  /** `misconfigured` for what a retry cannot fix, `corrupt` for a damaged database. */
  readonly reason: SinkFailure
  /** What is wrong, one line. */
  readonly message: string
  readonly cause?: unknown
}> {
  /** One line for the log and the exit: `postgres sink: PG_TABLE: table messages has another shape: ...`. */
  get line(): string {
    return `postgres sink: ${this.variable}: ${oneLine(this.message)}`
  }
}

/** `text` on one line (newlines and runs of blanks collapsed), at most 300 characters. */
export const oneLine = (text: string): string => {
  const flat = text.replace(/\s+/g, " ").trim()
  return flat.length > 300 ? `${flat.slice(0, 297)}...` : flat
}
