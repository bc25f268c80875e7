/**
 * The embedded default sink: SQLite through Node 24's built-in `node:sqlite`, in WAL mode, at
 * `<dataDir>/gateway.db`. One transaction per batch; the unique key (device, epoch, seq) keeps one
 * row per message and reports resends as duplicates; each device's highest committed seq per
 * epoch is upserted in the same transaction (`lastSeq` survives restarts).
 *
 * Speed: the `messages` table is append-only (rowid order) with a unique index on the key, and
 * WAL checkpoints run in a worker thread ({@link ./SqliteCheckpointer.ts}) on their own
 * connection, so the event loop only appends to the WAL. With `synchronous=NORMAL` a commit
 * survives a process crash; an OS crash or power loss can lose the last commits since the
 * previous checkpoint's fsync. `synchronous=FULL` (GATEWAY_SQLITE_SYNC=full) fsyncs every commit.
 */
import { Effect, Layer } from "effect"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { DatabaseSync, type StatementSync } from "node:sqlite"
import { Worker } from "node:worker_threads"
import type { Envelope } from "../domain/Envelope.ts"
import { PermanentPersistenceError, TransientUpstreamError } from "../domain/Errors.ts"
import { Outcome, Sink, type WriteResult } from "./Sink.ts"

/** Options of the SQLite sink. */
export interface SqliteSinkOptions {
  readonly dataDir: string
  readonly synchronous: "normal" | "full"
  /** Milliseconds between background WAL checkpoints. */
  readonly checkpointEveryMs?: number
}

/** The schema of DESIGN.md (mirrored in PostgreSQL), plus the per-device state and dead letters. */
export const SCHEMA = `
CREATE TABLE IF NOT EXISTS messages (
  device TEXT NOT NULL, epoch INTEGER NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL,
  device_ts INTEGER NOT NULL, received_at INTEGER NOT NULL, gateway TEXT NOT NULL,
  traceparent TEXT, body TEXT NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS messages_key ON messages (device, epoch, seq);
CREATE TABLE IF NOT EXISTS device_state (
  device TEXT NOT NULL, epoch INTEGER NOT NULL, last_seq INTEGER NOT NULL,
  PRIMARY KEY (device, epoch)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dead_letters (
  id INTEGER PRIMARY KEY, device TEXT, epoch INTEGER, seq INTEGER, kind TEXT,
  reason TEXT NOT NULL, envelope TEXT NOT NULL, failed_at INTEGER NOT NULL);
`

// SQLite primary result codes that a retry can outlive (busy, locked, I/O, disk full, ...).
const TRANSIENT_CODES = new Set([5, 6, 7, 10, 13, 14, 15])

interface SqliteError {
  readonly errcode?: number
  readonly message: string
}

const isTransient = (e: unknown) =>
  TRANSIENT_CODES.has(((e as SqliteError).errcode ?? 1) & 0xff)

const describe = (e: unknown) => (e instanceof Error ? e.message : String(e))

class TransientRow extends Error {}

interface Statements {
  readonly insert: StatementSync
  readonly upsertState: StatementSync
  readonly selectState: StatementSync
  readonly deadLetter: StatementSync
}

const prepare = (db: DatabaseSync): Statements => ({
  insert: db.prepare(
    `INSERT INTO messages (device, epoch, seq, kind, device_ts, received_at, gateway, traceparent, body)
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device, epoch, seq) DO NOTHING`
  ),
  upsertState: db.prepare(
    `INSERT INTO device_state (device, epoch, last_seq) VALUES (?, ?, ?)
     ON CONFLICT (device, epoch) DO UPDATE SET last_seq = max(last_seq, excluded.last_seq)`
  ),
  selectState: db.prepare(`SELECT last_seq FROM device_state WHERE device = ? AND epoch = ?`),
  deadLetter: db.prepare(
    `INSERT INTO dead_letters (device, epoch, seq, kind, reason, envelope, failed_at) VALUES (?, ?, ?, ?, ?, ?, ?)`
  )
})

/** Writes one batch in one transaction; throws only for whole-batch (transient) failures. */
const writeBatch = (db: DatabaseSync, st: Statements, batch: ReadonlyArray<Envelope>, now: number): WriteResult => {
  const outcomes = new Uint8Array(batch.length)
  const rejections = new Map<number, string>()
  // highest committed seq per device+epoch in this batch
  const tops = new Map<string, { device: string; epoch: number; seq: number }>()
  db.exec("BEGIN IMMEDIATE")
  try {
    for (let i = 0; i < batch.length; i++) {
      const e = batch[i]!
      let body: string
      try {
        body = JSON.stringify(e.body)
        const r = st.insert.run(e.device, e.epoch, e.seq, e.kind, e.deviceTs, e.receivedAt, e.gateway, e.traceparent, body)
        outcomes[i] = r.changes === 0 ? Outcome.Duplicate : Outcome.Committed
      } catch (error) {
        if (isTransient(error)) throw new TransientRow(describe(error), { cause: error })
        outcomes[i] = Outcome.Rejected
        rejections.set(i, describe(error))
        deadLetter(st, e, describe(error), now)
        continue
      }
      const k = `${e.device}\u0000${e.epoch}`
      const top = tops.get(k)
      if (top === undefined) tops.set(k, { device: e.device, epoch: e.epoch, seq: e.seq })
      else if (e.seq > top.seq) top.seq = e.seq
    }
    for (const t of tops.values()) st.upsertState.run(t.device, t.epoch, t.seq)
    db.exec("COMMIT")
  } catch (error) {
    if (db.isTransaction) db.exec("ROLLBACK")
    throw error instanceof TransientRow ? error.cause : error
  }
  return { outcomes, rejections }
}

const deadLetter = (st: Statements, e: Envelope, reason: string, now: number) => {
  try {
    st.deadLetter.run(e.device, e.epoch, e.seq, e.kind, reason, JSON.stringify(e), now)
  } catch {
    // the dead-letter table is best effort: the message is nacked either way
  }
}

/** Opens the database file and creates the schema; the caller owns closing it. */
export const openDatabase = (path: string, synchronous: "normal" | "full"): DatabaseSync => {
  const db = new DatabaseSync(path)
  db.exec(`PRAGMA journal_mode = WAL; PRAGMA synchronous = ${synchronous.toUpperCase()};
    PRAGMA wal_autocheckpoint = 0; PRAGMA busy_timeout = 100; PRAGMA cache_size = -65536;`)
  db.exec(SCHEMA)
  return db
}

/** The SQLite sink as a scoped service: closing the scope checkpoints and closes the file. */
export const make = Effect.fn("SqliteSink.make")(function*(options: SqliteSinkOptions) {
  const path = Path.resolve(options.dataDir, "gateway.db")
  const db = yield* Effect.acquireRelease(
    Effect.try({
      try: () => {
        Fs.mkdirSync(options.dataDir, { recursive: true })
        return openDatabase(path, options.synchronous)
      },
      catch: (cause) => new PermanentPersistenceError({ sink: "sqlite", message: `cannot open ${path}: ${describe(cause)}`, cause })
    }),
    (db) =>
      Effect.sync(() => {
        try {
          db.exec("PRAGMA wal_checkpoint(TRUNCATE)")
        } finally {
          db.close()
        }
      })
  )
  yield* Effect.acquireRelease(
    Effect.sync(() =>
      new Worker(new URL("./SqliteCheckpointer.ts", import.meta.url), {
        workerData: { path, everyMs: options.checkpointEveryMs ?? 250 }
      })
    ),
    (worker) => Effect.promise(() => worker.terminate())
  )
  const st = prepare(db)
  let closed = false
  yield* Effect.addFinalizer(() => Effect.sync(() => (closed = true)))

  const classify = (cause: unknown) =>
    isTransient(cause)
      ? new TransientUpstreamError({ sink: "sqlite", message: describe(cause), cause })
      : new PermanentPersistenceError({ sink: "sqlite", message: describe(cause), cause })

  return Sink.of({
    name: "sqlite",
    write: (batch) =>
      Effect.flatMap(Effect.clockWith((c) => c.currentTimeMillis), (now) =>
        Effect.try({ try: () => writeBatch(db, st, batch, now), catch: classify })),
    lastSeq: (device, epoch) =>
      Effect.try({
        try: () => {
          const row = st.selectState.get(device, epoch) as { last_seq: number } | undefined
          return row === undefined ? null : row.last_seq
        },
        catch: (cause) => new TransientUpstreamError({ sink: "sqlite", message: describe(cause), cause })
      }),
    isHealthy: Effect.sync(() => !closed && db.isOpen)
  })
})

/** The SQLite sink provided as the generic {@link Sink}. */
export const layer = (options: SqliteSinkOptions) => Layer.effect(Sink, make(options))
