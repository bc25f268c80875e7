/**
 * Test support: a real SQLite sink (its writer and checkpointer threads) opened on a directory
 * for the length of one Effect, and closed after it whatever it ends with.
 */
import { Effect, Exit, Scope } from "effect"
import * as SqliteSink from "../../src/sinks/sqlite/SqliteSink.ts"

/** Runs `body` against a sink opened on `dataDir` (synchronous NORMAL, then `options`), then closes it. */
export const withSink = <A, E>(
  dataDir: string,
  options: Partial<SqliteSink.SqliteSinkOptions>,
  body: (sink: SqliteSink.LocalStoreShape) => Effect.Effect<A, E>
) =>
  Effect.gen(function*() {
    const scope = yield* Scope.make()
    const sink = yield* SqliteSink.make({ dataDir, synchronous: "normal", ...options }).pipe(Scope.provide(scope))
    return yield* body(sink).pipe(Effect.ensuring(Scope.close(scope, Exit.void)))
  })
