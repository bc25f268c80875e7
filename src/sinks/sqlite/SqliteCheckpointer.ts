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
 *
 * What bounds the writers' wait: the lock is polled for (every 0.1 ms, as the writers poll:
 * SQLite's own busy handler sleeps for milliseconds and never catches the gap between
 * back-to-back commits) for `LOCK_WAIT_MS`, and given back unused when it came only after
 * `LOCK_SLOW_MS`; it is not taken while a reader's snapshot keeps part of the WAL uncopied (no
 * restart could follow, and the copy under it would be all that is left). Once the WAL is four
 * times `restartFrames` those give way (a second's wait for the lock): its size stays bounded,
 * except on a disk so slow that the last small-tail pass took over `SLOW_PASS_MS` (its fsyncs:
 * the held pass would cost as much, and writers would wait past their 1 s budget): the lock is
 * never taken there, and the WAL restarts by itself once the load eases (a pass that finds no
 * commit landing). Readers that keep overlapping (a dashboard polling
 * the store) leave no moment for the commit to restart the WAL after a complete copy; when that
 * happened, restarts for the next `READERS_FOR_MS` are RESTART checkpoints that wait up to
 * `READERS_WAIT_MS` for the older readers (new ones read the database file only), holding the
 * writers that long.
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
/** Passes before the one under the lock, each copying what landed during the one before. */
const MAX_PASSES = 4
/** Frames that may land during a pass for the next to be the one under the lock. */
const TAIL_FRAMES = 256
/** How long the lock is waited for, normally; a second once the WAL is four times `restartFrames`. */
const LOCK_WAIT_MS = 50
const FORCED_LOCK_WAIT_MS = 1_000
/** A lock had only after this is given back unused (unless forced). */
const LOCK_SLOW_MS = 5
/** A small-tail pass slower than this (a slow disk's fsyncs) is not repeated under the lock. */
const SLOW_PASS_MS = 200
/** How long restarts keep waiting for readers once readers held one off. */
const READERS_FOR_MS = 10_000
/** How long a RESTART checkpoint waits for older readers, holding writers. */
const READERS_WAIT_MS = 20

const db = new DatabaseSync(path)
// what a RESTART checkpoint waits for readers whose snapshots are in the WAL (writers wait meanwhile)
db.exec(`PRAGMA busy_timeout = ${READERS_WAIT_MS}`)
const passive = db.prepare("PRAGMA wal_checkpoint(PASSIVE)")
const restart = db.prepare("PRAGMA wal_checkpoint(RESTART)")
/** Holds the write lock while the last tail is copied (polling for it as the writers do). */
const holder = new DatabaseSync(path)
holder.exec("PRAGMA busy_timeout = 0")

interface Checkpointed {
  readonly busy: number
  readonly log: number
  readonly checkpointed: number
}

const pass = () => passive.get() as unknown as Checkpointed

/**
 * The last tail copied under the write lock; false when the lock could not be had in `waitMs`,
 * or only after `LOCK_SLOW_MS` (others' commits landed meanwhile: not a small tail any more)
 * unless `forced`.
 */
const copyTailLocked = (waitMs: number, forced: boolean): boolean => {
  const asked = performance.now()
  try {
    whileBusy(() => holder.exec("BEGIN IMMEDIATE"), waitMs)
  } catch {
    return false
  }
  try {
    if (!forced && performance.now() - asked > LOCK_SLOW_MS) return false
    pass()
    return true
  } finally {
    holder.exec("ROLLBACK")
  }
}

/** The WAL's frame count after the last complete copy under the lock (0: none since the last look). */
let copiedAt = 0
/** Until when (`performance.now()`) restarts wait for readers: a complete copy did not let the WAL start over. */
let readersUntil = 0

setInterval(() => {
  try {
    let done = pass()
    if (copiedAt > 0) {
      if (done.log >= copiedAt) readersUntil = performance.now() + READERS_FOR_MS
      copiedAt = 0
    }
    if (done.log <= restartFrames) return
    let took = 0
    for (let i = 1; i < MAX_PASSES; i++) {
      const before = done.log
      const started = performance.now()
      done = pass()
      took = performance.now() - started
      if (done.log - before <= TAIL_FRAMES) break
    }
    const forced = done.log > 4 * restartFrames
    // the held pass costs what the last one did (its fsyncs): too slow a disk is never held for
    // (writers would wait past their budget and fail); the WAL restarts when the load eases
    if (took > SLOW_PASS_MS) return
    const uncopied = done.log - done.checkpointed
    if (performance.now() < readersUntil) {
      // copy and wait (bounded) for the readers that began before it (those that begin after
      // read the database file only), if what the readers keep uncopied is a small tail
      if (uncopied <= TAIL_FRAMES) restart.get()
      return
    }
    // a reader's snapshot holds the copy back: no restart can happen now, and a copy under the
    // lock would hold every writer for the whole of what is left
    if (uncopied > 0) return
    if (copyTailLocked(forced ? FORCED_LOCK_WAIT_MS : LOCK_WAIT_MS, forced)) copiedAt = done.log
  } catch {
    // busy or closing: the next tick tries again
  }
}, everyMs)
