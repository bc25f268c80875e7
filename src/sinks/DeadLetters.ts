/**
 * Dead letters: messages a stage or a sink refused for good, kept for operators to inspect and
 * replay. A service of its own (not a sink's): by default the `dead_letters` table of the
 * embedded store, whichever sinks take the messages.
 */
import { Context, Effect, Layer } from "effect"
import type { Envelope } from "../domain/Envelope.ts"
import type { TransientUpstreamError } from "../domain/Errors.ts"
import { LocalStore } from "./sqlite/SqliteSink.ts"

/** A message refused for good, and why. */
export interface DeadLetter {
  readonly envelope: Envelope
  /** Which stage or sink refused it and why. */
  readonly reason: string
}

/** Where dead letters are kept. */
export class DeadLetters extends Context.Service<DeadLetters, {
  /** Stores `records` durably. */
  readonly write: (records: ReadonlyArray<DeadLetter>) => Effect.Effect<void, TransientUpstreamError>
}>()("gateway/DeadLetters") {
  /** Dead letters in the embedded store's `dead_letters` table. */
  static readonly local = Layer.effect(
    DeadLetters,
    Effect.gen(function*() {
      const store = yield* LocalStore
      return { write: store.deadLetter }
    })
  )
}
