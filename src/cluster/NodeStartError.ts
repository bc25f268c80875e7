/**
 * Why a node of several workers could not start: the one line the primary logs, and the exit
 * code it leaves with (a worker's own code when a worker failed at start, e.g. 78 for a bad
 * stages file; 1 otherwise).
 */
import { Data } from "effect"

/** The node could not start. */
export class NodeStartError extends Data.TaggedError("NodeStartError")<{
  /** One line, logged as `cannot start: <message>`; empty when a worker already logged why. */
  readonly message: string
  readonly exitCode: number
}> {}
