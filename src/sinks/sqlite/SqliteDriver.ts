/**
 * The SQLite sink as a {@link SinkDriver}: the embedded store's `messages`. A store that cannot
 * take writes now (disk full, I/O error, busy) fails a batch `unavailable` (retryable); one that
 * is corrupt or gone fails it `corrupt` until a restart. Messages it refuses for good it keeps as
 * dead letters itself, in the batch's transaction ({@link deadLettersItself}).
 */
import { Effect } from "effect"
import type { PermanentPersistenceError, TransientUpstreamError } from "../../domain/Errors.ts"
import { type SinkDriver, SinkError, type SinkHealth } from "../Contract.ts"
import type { LocalStoreShape } from "./SqliteSink.ts"

/** The SQLite sink writes its own dead letters (the router does not write them again). */
export const deadLettersItself = true

/** The driver of the embedded store's `messages`. */
export const sqliteDriver = (store: LocalStoreShape): SinkDriver => ({
  name: "sqlite",
  write: (batch) =>
    store.write(batch).pipe(
      Effect.map((r) => ({ outcomes: r.outcomes, reasons: r.rejections })),
      Effect.mapError(toSinkError)
    ),
  health: Effect.gen(function*() {
    if (yield* store.isHealthy) return { ready: true } satisfies SinkHealth
    const message = (yield* store.unavailableReason) ?? "unavailable"
    return { ready: false, reason: (yield* store.isBroken) ? "corrupt" : "unavailable", message } satisfies SinkHealth
  })
})

/** The store's taxonomy errors as the contract's: transient → `unavailable`, permanent → `corrupt`. */
const toSinkError = (e: TransientUpstreamError | PermanentPersistenceError) =>
  new SinkError({ sink: "sqlite", reason: e._tag === "TransientUpstreamError" ? "unavailable" : "corrupt", message: e.message, cause: e })
