/**
 * The commit stage, the last of every pipeline: hands the chunk to the {@link Router} (each
 * message to the sinks of its route, each sink with its own queue, retries and breaker) and
 * settles each message with its outcome: committed, duplicate (every sink held it before), or
 * refused for good by a sink (`PermanentPersistenceError`: nack invalid; kept as a dead letter),
 * or not taken this time (`TransientUpstreamError`: nack unavailable, the device resends).
 */
import { Effect } from "effect"
import type { Envelope } from "../domain/Envelope.ts"
import { PermanentPersistenceError, TransientUpstreamError } from "../domain/Errors.ts"
import { type BatchResult, MessageOutcome } from "../sinks/Contract.ts"
import { Router } from "../sinks/routing/Router.ts"
import * as Stage from "./Stage.ts"

/** The commit stage's name (reserved: user stages may not use it). */
export const COMMIT = "commit"

/** Writes each chunk through the {@link Router} and settles every message. */
export const commit: Stage.Stage<Envelope, never, TransientUpstreamError | PermanentPersistenceError, Router> = Stage.unwrap(
  Effect.gen(function*() {
    const router = yield* Router
    return Stage.chunk<Envelope, never, TransientUpstreamError | PermanentPersistenceError>(
      COMMIT,
      (batch: ReadonlyArray<Envelope>) => Effect.map(router.write(batch), (result) => verdicts(router.names, result)),
      { timeoutMs: Infinity } // bounded by each sink's own timeouts, retries and breaker
    )
  })
)

type Verdict = Stage.Settled | Stage.Rejected<PermanentPersistenceError | TransientUpstreamError>

const verdicts = (sink: string, result: BatchResult): Array<Verdict> => {
  const out: Array<Verdict> = new Array(result.outcomes.length)
  for (let i = 0; i < out.length; i++) {
    const o = result.outcomes[i]
    out[i] = o === MessageOutcome.Committed
      ? Stage.committed
      : o === MessageOutcome.Duplicate
      ? Stage.duplicate
      : o === MessageOutcome.Unavailable
      ? Stage.reject(new TransientUpstreamError({ sink, message: result.reasons.get(i) ?? "unavailable" }))
      : Stage.reject(new PermanentPersistenceError({ sink, message: result.reasons.get(i) ?? "unknown reason" }))
  }
  return out
}
