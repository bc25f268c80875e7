/**
 * Why the outbox cannot start: bad settings, a file that cannot be opened or created (no
 * permission, no space), one another process holds (two gateways on one outbox file), one that
 * is not a database or is corrupt, a WAL left without its database, or a writer thread that
 * cannot start. One typed error, described in one line; the caller turns it into an exit code.
 */
import { Data } from "effect"

/** A start failure of the outbox. */
export class OutboxStartError extends Data.TaggedError("OutboxStartError")<{
  /** The outbox file. */
  readonly file: string
  /** What is wrong, one line. */
  readonly message: string
  readonly cause?: unknown
}> {
  /** One line for the log and the exit: `outbox <file>: <message>`. */
  get line(): string {
    return `outbox ${this.file}: ${this.message}`
  }
}
