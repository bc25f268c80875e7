/**
 * Worker thread of the SQLite sink: runs WAL checkpoints on its own connection so that the
 * event loop's writer only appends to the WAL. A PASSIVE checkpoint never blocks the writer;
 * once it has copied every frame, SQLite restarts the WAL from its start, so the WAL stays as
 * large as what is written between two checkpoints.
 */
import { DatabaseSync } from "node:sqlite"
import { workerData } from "node:worker_threads"

const { path, everyMs } = workerData as { readonly path: string; readonly everyMs: number }
const db = new DatabaseSync(path)
db.exec("PRAGMA busy_timeout = 1000")

setInterval(() => {
  try {
    db.exec("PRAGMA wal_checkpoint(PASSIVE)")
  } catch {
    // busy or closing: the next tick tries again
  }
}, everyMs)
