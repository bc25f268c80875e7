/**
 * Why the NATS sink cannot start: a bad `NATS_URL`, an unreadable credentials or TLS file,
 * wrong credentials, a TLS mismatch, JetStream off, a missing stream without
 * `NATS_STREAM_CREATE=true`, a stream that cannot be created. One typed error naming the
 * variable to fix, described in one line; the caller turns it into exit 78 (or, for what is only
 * found once the server answers later, a not-ready sink saying why). A server that cannot be
 * reached at start is NOT a start failure: the sink starts not ready and keeps connecting.
 */
import { Data } from "effect"
import type { SinkFailure } from "../Contract.ts"

/** A start failure of the NATS sink. */
export class NatsStartError extends Data.TaggedError("NatsStartError")<{
  /** The variable to fix (`NATS_URL`, `NATS_CREDS`, `NATS_TLS_CA`, `NATS_STREAM`, ...). */
  readonly variable: string
  /** `misconfigured` for everything a retry cannot fix. */
  readonly reason: SinkFailure
  /** What is wrong, one line. */
  readonly message: string
  readonly cause?: unknown
}> {
  /** One line for the log and the exit: `nats sink: NATS_STREAM: stream "DEVICES" not found ...`. */
  get line(): string {
    return `nats sink: ${this.variable}: ${oneLine(this.message)}`
  }
}

/** `text` on one line (newlines and runs of blanks collapsed), at most 300 characters. */
export const oneLine = (text: string): string => {
  const flat = text.replace(/\s+/g, " ").trim()
  return flat.length > 300 ? `${flat.slice(0, 297)}...` : flat
}
