/**
 * Per-message outcome codes of a sink batch, a byte each (no object per message). A module of
 * its own, free of imports, so the SQLite writer thread can use it without loading Effect.
 */
export const Outcome = {
  /** Written now. */
  Committed: 0,
  /** Already in the store: the message had been committed before (ack `dup:true`). */
  Duplicate: 1,
  /** Refused by the store (constraint, size, schema): dead-lettered, nacked, never retried. */
  Rejected: 2,
  /** Not taken this time (a remote sink's route or server could not): nacked unavailable, the device resends. */
  Unavailable: 3
} as const
