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
 * until one finds only a small tail to copy, then asks the writer to hold between two batches
 * ({@link WalRestart}) and copies that tail while it does: the writer's next commit finds every
 * frame copied and starts the WAL over. The file stays about as large as `restartFrames` plus a
 * tick's writes, reused in place. The hold is bounded (the writer goes on after `holdMs`; the
 * WAL then restarts at a later tick), except once the WAL is four times `restartFrames`, where
 * the writer waits up to a second: the WAL's size stays bounded even when checkpoints are slow.
 */
import { DatabaseSync } from "node:sqlite"
import { workerData } from "node:worker_threads"
import { WalRestart } from "./WalRestart.ts"

const { path, everyMs, restartFrames, walRestart } = workerData as {
  readonly path: string
  readonly everyMs: number
  /** WAL frames above which the WAL is restarted. */
  readonly restartFrames: number
  /** Shared with the writer: see {@link WalRestart}. */
  readonly walRestart: Int32Array
}
const db = new DatabaseSync(path)
db.exec("PRAGMA busy_timeout = 1000")
const passive = db.prepare("PRAGMA wal_checkpoint(PASSIVE)")
const restart = new WalRestart(walRestart)

/** Passes before the held one, each copying what landed during the one before. */
const MAX_PASSES = 4
/** Frames that may land during a pass for the next to be the held one. */
const TAIL_FRAMES = 256
/** How long the writer holds, normally; a second once the WAL is four times `restartFrames`. */
const HOLD_MS = 50
const FORCED_HOLD_MS = 1_000
/** How long this thread waits for the writer to reach the end of its batch. */
const REACH_MS = 50

interface Checkpointed {
  readonly busy: number
  readonly log: number
  readonly checkpointed: number
}

const pass = () => passive.get() as unknown as Checkpointed

setInterval(() => {
  try {
    let done = pass()
    if (done.log <= restartFrames) return
    for (let i = 1; i < MAX_PASSES; i++) {
      const before = done.log
      done = pass()
      if (done.log - before <= TAIL_FRAMES) break
    }
    restart.whileWriterHolds(done.log > 4 * restartFrames ? FORCED_HOLD_MS : HOLD_MS, REACH_MS, pass)
  } catch {
    // busy or closing: the next tick tries again
  }
}, everyMs)
