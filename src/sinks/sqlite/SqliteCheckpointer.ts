/**
 * Worker thread of the SQLite sink: runs WAL checkpoints on its own connection so that the
 * event loop's writer only appends to the WAL.
 *
 * Every tick a PASSIVE checkpoint copies the WAL into the database without blocking the writer.
 * Under steady writes that alone never lets the WAL start over: SQLite restarts it only when a
 * commit begins with every frame already copied, and commits keep landing while a checkpoint
 * runs. The file would grow for as long as the load lasts (measured: 730 MB in 10 s at 20,000
 * msgs/s from 1,000 devices), every append to its new end paying the kernel's zeroing of fresh
 * pages. So once the WAL holds more than `restartFrames` frames, this thread repeats the pass
 * until one finds only a small tail to copy, then takes the write lock on a second connection
 * (every writer, in every process sharing the store, waits for it as for another's commit),
 * copies that tail, and lets go: the next commit finds every frame copied and starts the WAL
 * over. The file stays about as large as `restartFrames` plus a tick's writes, reused in place.
 * The lock is polled for (every 0.1 ms, as the writers poll: SQLite's own busy handler sleeps
 * for milliseconds and never catches the gap between back-to-back commits) for `LOCK_WAIT_MS` (a restart that cannot get it is tried at a later
 * tick), up to a second once the WAL is four times `restartFrames`: its size stays bounded.
 */
import { DatabaseSync } from "node:sqlite"
import { workerData } from "node:worker_threads"
import { whileBusy } from "./SqliteWriteLock.ts"

const { path, everyMs, restartFrames } = workerData as {
  readonly path: string
  readonly everyMs: number
  /** WAL frames above which the WAL is restarted. */
  readonly restartFrames: number
}
const db = new DatabaseSync(path)
db.exec("PRAGMA busy_timeout = 1000")
const passive = db.prepare("PRAGMA wal_checkpoint(PASSIVE)")
/** Holds the write lock while the last tail is copied (polling for it as the writers do). */
const holder = new DatabaseSync(path)
holder.exec("PRAGMA busy_timeout = 0")

/** Passes before the one under the lock, each copying what landed during the one before. */
const MAX_PASSES = 4
/** Frames that may land during a pass for the next to be the one under the lock. */
const TAIL_FRAMES = 256
/** How long the lock is waited for, normally; a second once the WAL is four times `restartFrames`. */
const LOCK_WAIT_MS = 50
const FORCED_LOCK_WAIT_MS = 1_000

interface Checkpointed {
  readonly log: number
}

const pass = () => passive.get() as unknown as Checkpointed

/** The last tail copied under the write lock; false when the lock could not be had in `waitMs`. */
const copyTailLocked = (waitMs: number): boolean => {
  try {
    whileBusy(() => holder.exec("BEGIN IMMEDIATE"), waitMs)
  } catch {
    return false
  }
  try {
    pass()
  } finally {
    holder.exec("ROLLBACK")
  }
  return true
}

setInterval(() => {
  try {
    let done = pass()
    if (done.log <= restartFrames) return
    for (let i = 1; i < MAX_PASSES; i++) {
      const before = done.log
      done = pass()
      if (done.log - before <= TAIL_FRAMES) break
    }
    copyTailLocked(done.log > 4 * restartFrames ? FORCED_LOCK_WAIT_MS : LOCK_WAIT_MS)
  } catch {
    // busy or closing: the next tick tries again
  }
}, everyMs)
