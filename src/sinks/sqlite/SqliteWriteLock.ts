/**
 * Taking SQLite's write lock when several processes share the store (GATEWAY_WORKERS > 1: every
 * worker commits to the same `gateway.db`). SQLite's own busy handler sleeps 1, 2, 5, 10 … 100 ms
 * between tries, so a writer committing back to back keeps the lock and another one starves:
 * measured with two processes committing batches of 2,000 rows, one made 460,000 rows/s and
 * the other 500, failing with SQLITE_BUSY after 1 s. Here a waiting writer polls every 100 µs,
 * and a writer that had to wait in the last 2 s (so another writer exists) pauses 300 µs after
 * each commit, so a waiter finds the lock free: the same two processes made 288,000 and 286,000
 * rows/s, no wait above 10 ms. A writer alone never waits, so it never pauses.
 *
 * Synchronous (it sleeps with `Atomics.wait`): it runs on the sink's writer thread, and at start.
 */
import type { DatabaseSync } from "node:sqlite"

const POLL_MS = 0.1
const HAND_OFF_MS = 0.3
const CONTENDED_FOR_MS = 2_000

const sleeper = new Int32Array(new SharedArrayBuffer(4))
const sleep = (ms: number) => void Atomics.wait(sleeper, 0, 0, ms)

/** SQLITE_BUSY or SQLITE_LOCKED: another connection holds the lock. */
export const isBusy = (e: unknown): boolean => {
  const code = ((e as { readonly errcode?: number }).errcode ?? 0) & 0xff
  return code === 5 || code === 6
}

/**
 * Runs `attempt` until it does not fail busy, polling every 100 µs for at most `budgetMs`; the
 * last busy error is thrown when the budget is spent. Returns whether it had to wait.
 */
export const whileBusy = (attempt: () => void, budgetMs: number): boolean => {
  const deadline = performance.now() + budgetMs
  let waited = false
  for (;;) {
    try {
      attempt()
      return waited
    } catch (error) {
      if (!isBusy(error) || performance.now() >= deadline) throw error
      waited = true
      sleep(POLL_MS)
    }
  }
}

/** The write lock of one connection, taken with `BEGIN IMMEDIATE`. */
export class WriteLock {
  /** When this connection last had to wait for the lock (-Infinity: never). */
  private contendedAt = -Infinity
  private readonly db: DatabaseSync
  private readonly budgetMs: number

  /** Takes over the connection's waiting: its `busy_timeout` is set to 0 (polling replaces it). */
  constructor(db: DatabaseSync, budgetMs: number) {
    this.db = db
    this.budgetMs = budgetMs
    db.exec("PRAGMA busy_timeout = 0")
  }

  /** `BEGIN IMMEDIATE`, waiting up to the budget; throws SQLITE_BUSY (transient) past it. */
  begin(): void {
    if (whileBusy(() => this.db.exec("BEGIN IMMEDIATE"), this.budgetMs)) this.contendedAt = performance.now()
  }

  /** After `COMMIT` or `ROLLBACK`: leaves the lock to a waiting writer if there may be one. */
  released(): void {
    if (performance.now() - this.contendedAt < CONTENDED_FOR_MS) sleep(HAND_OFF_MS)
  }
}
