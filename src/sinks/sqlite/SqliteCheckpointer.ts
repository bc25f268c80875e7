/**
 * Worker thread of the SQLite sink: runs WAL checkpoints on its own connection so that the
 * event loop's writer only appends to the WAL.
 *
 * Every tick a PASSIVE checkpoint copies the WAL into the database without blocking the writer.
 * Under steady writes that alone never lets the WAL start over: SQLite restarts it only when a
 * commit begins with every frame already copied, and commits keep landing while a checkpoint
 * runs. The file would grow for as long as the load lasts (measured: 730 MB in 10 s at 20,000
 * msgs/s from 1,000 devices), every append to its new end paying the kernel's zeroing of fresh
 * pages. A RESTART checkpoint from here does not help: it waits for a moment without a writer,
 * which a busy writer never leaves. So once the WAL holds more than `restartFrames` frames, this
 * thread raises `walRestart` and the writer, between two batches, copies the few frames written
 * since this pass and restarts the WAL itself (SqliteWriter.ts): the file then stays as large as
 * what is written between two ticks, reused in place.
 */
import { DatabaseSync } from "node:sqlite"
import { workerData } from "node:worker_threads"

const { path, everyMs, restartFrames, walRestart } = workerData as {
  readonly path: string
  readonly everyMs: number
  /** WAL frames above which the writer is asked to restart the WAL. */
  readonly restartFrames: number
  /** Set to 1 to ask the writer to restart the WAL; the writer sets it back to 0 once it did. */
  readonly walRestart: Int32Array
}
const db = new DatabaseSync(path)
db.exec("PRAGMA busy_timeout = 1000")
const passive = db.prepare("PRAGMA wal_checkpoint(PASSIVE)")

setInterval(() => {
  try {
    const done = passive.get() as { readonly log: number } | undefined
    if (done !== undefined && done.log > restartFrames) Atomics.store(walRestart, 0, 1)
  } catch {
    // busy or closing: the next tick tries again
  }
}, everyMs)
