/**
 * The sink contract: a batch of envelopes in, one outcome per message out. Whole-batch failures
 * are typed by the taxonomy: `TransientUpstreamError` (retried with backoff by the persistence
 * stage) or `PermanentPersistenceError` (every message of the batch is rejected). A single bad
 * message is rejected on its own and never fails its batch.
 */
import { Context, type Effect } from "effect"
import type { Envelope } from "../domain/Envelope.ts"
import type { PermanentPersistenceError, TransientUpstreamError } from "../domain/Errors.ts"

export { Outcome } from "./Outcome.ts"

/** The result of writing one batch. */
export interface WriteResult {
  /** `outcomes[i]` is the Outcome code of `batch[i]`. */
  readonly outcomes: Uint8Array
  /** Why each rejected message was refused, by its index in the batch. */
  readonly rejections: ReadonlyMap<number, string>
}

/** A message a stage refused for good, kept for operators to inspect (and replay). */
export interface DeadLetter {
  readonly envelope: Envelope
  /** Which stage refused it and why. */
  readonly reason: string
}

/** What every sink driver implements. */
export interface SinkShape {
  /** Short driver name for metrics, logs and spans (`sqlite`, `nats`, `postgres`). */
  readonly name: string
  /** Commits a batch durably; resolves only when every committed message is durable. */
  readonly write: (
    batch: ReadonlyArray<Envelope>
  ) => Effect.Effect<WriteResult, TransientUpstreamError | PermanentPersistenceError>
  /** Stores dead letters durably (the sink's own rejections it dead-letters itself, in `write`). */
  readonly deadLetter: (records: ReadonlyArray<DeadLetter>) => Effect.Effect<void, TransientUpstreamError>
  /** Highest committed seq of (device, epoch), or null when none is known. */
  readonly lastSeq: (device: string, epoch: number) => Effect.Effect<number | null, TransientUpstreamError>
  /**
   * True while the sink can take writes (readiness): it follows the sink's real writes (false
   * from a failed write until one succeeds), not only whether its connection or thread is up.
   */
  readonly isHealthy: Effect.Effect<boolean>
  /** Why the sink cannot take writes now, for `/readyz` and logs (undefined while healthy). */
  readonly unavailableReason?: Effect.Effect<string | undefined>
}

/** The generic sink service: the persistence stage depends on this tag only. */
export class Sink extends Context.Service<Sink, SinkShape>()("gateway/Sink") {}
