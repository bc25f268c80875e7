/**
 * The SQLite sink's store check at start, as a child process (`node SqliteCheck.ts <path>`): runs
 * `PRAGMA quick_check` on its own read-only connection and prints what it found as one JSON line
 * ({@link CheckReply}). A process, not a thread: a check of a large store from a cold disk runs
 * for seconds inside one SQLite call, which neither a worker thread's termination nor the
 * process's exit can cut short (both wait for it); a process is killed at once. The sink waits
 * for it a bounded time (~0.35 s per million messages with the file in the page cache, ~10× that
 * from a cold disk) and otherwise takes its answer whenever it comes. A small store is checked
 * in the start itself ({@link check}), which is faster than starting a process.
 */
import { DatabaseSync } from "node:sqlite"

// Imports nothing of the gateway's: the process starts in ~40 ms instead of loading Effect.

/**
 * SQLite's structural check of the whole file (`PRAGMA quick_check`: every page of every table
 * and index, without comparing indexes to their tables). Returns the problems found, at most
 * `max`; empty when the file is sound. Reads every page: ~0.35 s per million messages when the
 * file is in the page cache (see README).
 */
export const quickCheck = (db: DatabaseSync, max = 8): Array<string> => {
  const rows = db.prepare(`PRAGMA quick_check(${Math.max(1, Math.floor(max))})`).all() as Array<{ quick_check: string }>
  return rows.map((r) => r.quick_check).filter((r) => r !== "ok")
}

/** SQLITE_CORRUPT or SQLITE_NOTADB. */
const isCorrupt = (e: unknown) => {
  const code = ((e as { readonly errcode?: number }).errcode ?? 0) & 0xff
  return code === 11 || code === 26
}

/** What the check found. */
export type CheckReply =
  /** `problems` empty: the file is sound. */
  | { readonly ok: true; readonly problems: ReadonlyArray<string>; readonly ms: number }
  /** The check itself could not run (`corrupt`: SQLite refused the file as malformed). */
  | { readonly ok: false; readonly corrupt: boolean; readonly message: string; readonly ms: number }

/** Checks the store at `path`. */
export const check = (path: string): CheckReply => {
  const started = performance.now()
  try {
    const db = new DatabaseSync(path, { readOnly: true, timeout: 1_000 })
    try {
      return { ok: true, problems: quickCheck(db), ms: performance.now() - started }
    } finally {
      db.close()
    }
  } catch (error) {
    return { ok: false, corrupt: isCorrupt(error), message: error instanceof Error ? error.message : String(error), ms: performance.now() - started }
  }
}

if (import.meta.main) {
  const path = process.argv[2]
  if (path !== undefined) process.stdout.write(JSON.stringify(check(path)) + "\n")
}
