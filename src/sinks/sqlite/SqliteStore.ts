/**
 * The SQLite store itself, as plain synchronous functions shared by the sink's writer thread
 * and its tests: the schema (DESIGN.md's `messages` table, mirrored in PostgreSQL), opening a
 * database in WAL mode, and writing one batch of rows in one transaction.
 */
import * as Fs from "node:fs"
import { DatabaseSync, type StatementSync } from "node:sqlite"
import { annotationsOf, type Envelope } from "../../domain/Envelope.ts"
import { Outcome } from "../Outcome.ts"
import { whileBusy, WriteLock } from "./SqliteWriteLock.ts"

/**
 * The schema of DESIGN.md, plus `annotations` (the fields stages added, as a JSON object, or
 * NULL), the per-device state, dead letters, and the one row that write probes rewrite.
 */
export const SCHEMA = `
CREATE TABLE IF NOT EXISTS messages (
  device TEXT NOT NULL, epoch INTEGER NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL,
  device_ts INTEGER NOT NULL, received_at INTEGER NOT NULL, gateway TEXT NOT NULL,
  traceparent TEXT, body TEXT NOT NULL, annotations TEXT);
CREATE UNIQUE INDEX IF NOT EXISTS messages_key ON messages (device, epoch, seq);
CREATE TABLE IF NOT EXISTS device_state (
  device TEXT NOT NULL, epoch INTEGER NOT NULL, last_seq INTEGER NOT NULL,
  PRIMARY KEY (device, epoch)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dead_letters (
  id INTEGER PRIMARY KEY, device TEXT, epoch INTEGER, seq INTEGER, kind TEXT,
  reason TEXT NOT NULL, envelope TEXT NOT NULL, failed_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS store_probe (id INTEGER PRIMARY KEY, at INTEGER NOT NULL, pad BLOB NOT NULL);
`

/** One message as the writer inserts it: the columns of `messages` (body as JSON text). */
export type Row = readonly [
  device: string,
  epoch: number,
  seq: number,
  kind: string,
  deviceTs: number,
  receivedAt: number,
  gateway: string,
  traceparent: string | null,
  body: string,
  annotations: string | null
]

// Rows cross the thread boundary as one string: fields split by \u0001, rows ended by \u0002.
// Neither can occur inside a field: ids, kinds and traceparents are restricted to printable
// ASCII, numbers are digits, and JSON text escapes every control character.
const FIELD = "\u0001"
const END = "\u0002"

/** A batch packed for the writer thread, without the envelopes that cannot be stored. */
export interface Packed {
  /** The rows, as one string. */
  readonly text: string
  /** Rows in `text`. */
  readonly count: number
  /** Batch positions left out, and why (a stage added a value JSON cannot hold). */
  readonly refused: ReadonlyMap<number, string>
}

/** Packs envelopes into the one string sent to the writer thread (body and annotations as JSON text). */
export const packEnvelopes = (batch: ReadonlyArray<Envelope>): Packed => {
  let text = ""
  let refused: Map<number, string> | undefined
  for (let i = 0; i < batch.length; i++) {
    const e = batch[i]!
    let row: string
    try {
      row = e.device + FIELD + e.epoch + FIELD + e.seq + FIELD + e.kind + FIELD + e.deviceTs + FIELD + e.receivedAt +
        FIELD + e.gateway + FIELD + (e.traceparent ?? "") + FIELD + JSON.stringify(e.body) + FIELD +
        (annotationsOf(e) ?? "") + END
    } catch (error) {
      ;(refused ??= new Map()).set(i, `cannot be stored as JSON: ${describe(error)}`)
      continue
    }
    text += row
  }
  return { text, count: batch.length - (refused?.size ?? 0), refused: refused ?? NONE_REFUSED }
}

const NONE_REFUSED: ReadonlyMap<number, string> = new Map()

/** Unpacks what {@link packEnvelopes} packed. */
export const unpackRows = (packed: string, expected: number): Array<Row> => {
  const rows: Array<Row> = []
  let start = 0
  let end = packed.indexOf(END)
  while (end !== -1) {
    const f = packed.slice(start, end).split(FIELD)
    rows.push([f[0]!, Number(f[1]), Number(f[2]), f[3]!, Number(f[4]), Number(f[5]), f[6]!, f[7] === "" ? null : f[7]!, f[8]!, f[9] === "" ? null : f[9]!])
    start = end + 1
    end = packed.indexOf(END, start)
  }
  if (rows.length !== expected) throw new Error(`packed batch holds ${rows.length} rows, expected ${expected}`)
  return rows
}

// SQLite primary result codes that a retry can outlive (busy, locked, nomem, I/O, full, cantopen, protocol).
const TRANSIENT_CODES = new Set([5, 6, 7, 10, 13, 14, 15])

// Codes that concern one row only (constraint, too big, datatype mismatch, bind range); a bind
// error raised by node:sqlite itself carries no errcode. Anything else fails the whole batch.
const ROW_CODES = new Set([18, 19, 20, 25])

/** True when an insert error concerns that row alone (the rest of the batch can commit). */
export const isRowRejection = (e: unknown): boolean => {
  const code = (e as { readonly errcode?: number }).errcode
  return code === undefined || ROW_CODES.has(code & 0xff)
}

/** True when a node:sqlite error is worth retrying. */
export const isTransient = (e: unknown): boolean =>
  TRANSIENT_CODES.has((((e as { readonly errcode?: number }).errcode) ?? 1) & 0xff)

/**
 * JSON text of any value, for dead letters: what JSON cannot hold (a BigInt, a cycle) is written
 * as a string instead of failing, so a message that cannot be stored can still be kept.
 */
export const safeJson = (value: unknown): string => {
  const seen = new WeakSet<object>()
  return JSON.stringify(value, (_key, v: unknown) => {
    if (typeof v === "bigint") return `${v}n`
    if (typeof v === "object" && v !== null) {
      if (seen.has(v)) return "[cycle]"
      seen.add(v)
    }
    return v
  }) ?? "null"
}

/**
 * What kind of store fault a failed write was, for readiness, logs and metrics: `full` (no space
 * left), `io` (an I/O error, or the file cannot be opened), `corrupt` (a malformed page, or not a
 * database), `readonly` (the file or its filesystem became read-only), `busy` (another process
 * held the write lock past the budget), `lost` (the file was removed or replaced under the
 * gateway), `other`.
 */
export type Fault = "full" | "io" | "corrupt" | "readonly" | "busy" | "lost" | "other"

/** The {@link Fault} of a node:sqlite error (by its primary result code). */
export const faultOf = (e: unknown): Fault => {
  switch (((e as { readonly errcode?: number }).errcode ?? 1) & 0xff) {
    case 13: // SQLITE_FULL
      return "full"
    case 10: // SQLITE_IOERR
    case 14: // SQLITE_CANTOPEN
      return "io"
    case 11: // SQLITE_CORRUPT
    case 26: // SQLITE_NOTADB
      return "corrupt"
    case 8: // SQLITE_READONLY
      return "readonly"
    case 5: // SQLITE_BUSY
    case 6: // SQLITE_LOCKED
      return "busy"
    default:
      return "other"
  }
}

/** Faults that no later write can outlive: the store stays unavailable until the process restarts. */
export const isFatal = (fault: Fault): boolean => fault === "corrupt" || fault === "lost"

/**
 * Which file a path names: device and inode. A file SQLite holds open keeps its inode, so a path
 * that names another (or nothing) means the file was removed, renamed or replaced.
 */
export interface FileIdentity {
  readonly dev: bigint
  readonly ino: bigint
}

/** The identity of the file at `path`, undefined when there is none. */
export const identityOf = (path: string): FileIdentity | undefined => {
  const s = Fs.statSync(path, { bigint: true, throwIfNoEntry: false })
  return s === undefined ? undefined : { dev: s.dev, ino: s.ino }
}

/**
 * The identities of a store's files that commits go to: the database and its WAL (both exist
 * while a connection is open in WAL mode, and SQLite never replaces either while one is).
 */
export const storeIdentity = (path: string): ReadonlyArray<readonly [string, FileIdentity | undefined]> => [
  [path, identityOf(path)],
  [path + "-wal", identityOf(path + "-wal")]
]

/**
 * Why the store at `path` is no longer the one opened (`opened` from {@link storeIdentity} at
 * open), or undefined while it still is. Two `stat` calls.
 */
export const lostBecause = (opened: ReadonlyArray<readonly [string, FileIdentity | undefined]>): string | undefined => {
  for (const [file, was] of opened) {
    if (was === undefined) continue
    let now: FileIdentity | undefined
    try {
      now = identityOf(file)
    } catch (error) {
      // e.g. ENOTDIR (the directory replaced by a file), EACCES: it cannot be told to be there
      return `${file} cannot be found at its path (${(error as NodeJS.ErrnoException).code ?? describe(error)})`
    }
    if (now === undefined) return `${file} was removed or renamed`
    if (now.dev !== was.dev || now.ino !== was.ino) return `${file} was replaced by another file`
  }
  return undefined
}

/** The key of the probe row in `messages` (no device can have it: device ids are `[A-Za-z0-9_:-]`). */
const PROBE_DEVICE = "#probe"

/**
 * A write probe, in one committed transaction: a row into `messages` (so through its unique
 * index) and out again, and the `store_probe` row rewritten with `padBytes` random bytes, which
 * the commit must write anew (so it needs as much room as a batch of that size: on a nearly full
 * disk a small write can still fit where a batch does not). It fails as a batch would on a full
 * disk, an I/O error or a corrupt path through the index. Throws what the write threw.
 */
export const probe = (db: DatabaseSync, st: Statements, now: number, padBytes: number): void => {
  st.lock.begin()
  try {
    st.insert.run(PROBE_DEVICE, -1, -1, "probe", now, now, "probe", null, "{}", null)
    st.deleteProbe.run(PROBE_DEVICE)
    st.upsertProbe.run(now, Math.max(1, Math.floor(padBytes)))
    db.exec("COMMIT")
  } catch (error) {
    if (db.isTransaction) db.exec("ROLLBACK")
    throw error
  } finally {
    st.lock.released()
  }
}

/**
 * Bytes free for the gateway on the filesystem of `dir` (the blocks reserved for root count when
 * it runs as root), undefined when it cannot be told. One `statfs` call.
 */
export const freeBytes = (dir: string): number | undefined => {
  try {
    const fs = Fs.statfsSync(dir)
    return (process.getuid?.() === 0 ? fs.bfree : fs.bavail) * fs.bsize
  } catch {
    return undefined
  }
}

/** The message of an unknown thrown value. */
export const describe = (e: unknown): string => (e instanceof Error ? e.message : String(e))

/**
 * Bytes a WAL is cut back to when it starts over: a WAL that grew while something held its
 * restart off (a long read by an operator's query, a stalled checkpoint) gives the room back
 * with the next restart. Steady load keeps it below this (restarted past 64 MiB: ~90 MB at
 * 20,000 msgs/s from 1,000 devices).
 */
const WAL_SIZE_LIMIT = 128 * 1024 * 1024

/** How long opening waits for other processes that hold the lock (workers opening a fresh file together). */
const OPEN_BUDGET_MS = 10_000

/** How long a batch waits for the write lock before it fails with SQLITE_BUSY (transient: retried). */
const WRITE_LOCK_BUDGET_MS = 1_000

/**
 * Opens (and creates) the database in WAL mode; checkpoints are left to a separate thread.
 * Safe when several processes open a fresh file at once: the switch to WAL and the schema
 * (created and migrated in one transaction) are retried while another process holds the lock.
 */
export const openDatabase = (path: string, synchronous: "normal" | "full"): DatabaseSync => {
  const db = new DatabaseSync(path)
  db.exec("PRAGMA busy_timeout = 1000")
  whileBusy(() => db.exec("PRAGMA journal_mode = WAL"), OPEN_BUDGET_MS)
  db.exec(`PRAGMA synchronous = ${synchronous === "full" ? "FULL" : "NORMAL"};
    PRAGMA wal_autocheckpoint = 0; PRAGMA cache_size = -16384; PRAGMA journal_size_limit = ${WAL_SIZE_LIMIT};`)
  whileBusy(() => createSchema(db), OPEN_BUDGET_MS)
  return db
}

/** {@link SCHEMA} and {@link migrate} in one transaction. */
const createSchema = (db: DatabaseSync) => {
  db.exec("BEGIN IMMEDIATE")
  try {
    db.exec(SCHEMA)
    migrate(db)
    db.exec("COMMIT")
  } catch (error) {
    if (db.isTransaction) db.exec("ROLLBACK")
    throw error
  }
}

/** Brings a database made by an earlier version up to {@link SCHEMA} (columns are only ever added). */
const migrate = (db: DatabaseSync) => {
  const columns = db.prepare("SELECT name FROM pragma_table_info('messages')").all() as Array<{ name: string }>
  if (!columns.some((c) => c.name === "annotations")) db.exec("ALTER TABLE messages ADD COLUMN annotations TEXT")
}

/** Prepared statements of the writer, and its write lock. */
export interface Statements {
  readonly insert: StatementSync
  readonly upsertState: StatementSync
  readonly deadLetter: StatementSync
  /** Deletes the {@link probe}'s row of `messages`. */
  readonly deleteProbe: StatementSync
  /** Rewrites the {@link probe}'s row of `store_probe`. */
  readonly upsertProbe: StatementSync
  /** Shares the write lock fairly with other processes' writers ({@link WriteLock}). */
  readonly lock: WriteLock
}

/** Prepares the writer's statements (the connection's waiting for the lock is the {@link WriteLock}'s from now on). */
export const prepare = (db: DatabaseSync): Statements => ({
  lock: new WriteLock(db, WRITE_LOCK_BUDGET_MS),
  insert: db.prepare(
    `INSERT INTO messages (device, epoch, seq, kind, device_ts, received_at, gateway, traceparent, body, annotations)
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device, epoch, seq) DO NOTHING`
  ),
  upsertState: db.prepare(
    `INSERT INTO device_state (device, epoch, last_seq) VALUES (?, ?, ?)
     ON CONFLICT (device, epoch) DO UPDATE SET last_seq = max(last_seq, excluded.last_seq)`
  ),
  deadLetter: db.prepare(
    `INSERT INTO dead_letters (device, epoch, seq, kind, reason, envelope, failed_at) VALUES (?, ?, ?, ?, ?, ?, ?)`
  ),
  deleteProbe: db.prepare(`DELETE FROM messages WHERE device = ? AND epoch = -1 AND seq = -1`),
  upsertProbe: db.prepare(
    `INSERT INTO store_probe (id, at, pad) VALUES (1, ?1, randomblob(?2))
     ON CONFLICT (id) DO UPDATE SET at = excluded.at, pad = excluded.pad`
  )
})

/** What writing a batch produced: a byte per row and the reasons of rejected rows. */
export interface BatchResult {
  readonly outcomes: Uint8Array
  readonly rejections: Array<readonly [index: number, reason: string]>
}

class BatchFailure extends Error {}

/**
 * Writes one batch in one transaction. A row the store refuses (constraint, size) is rejected
 * and dead-lettered alone; any other failure rolls the whole batch back and is thrown. Device
 * states are not raised here: with SQLite alone the highest stored seq is read from `messages`
 * itself ({@link lastSeqQuery}), and with other sinks the device-state service raises them once
 * every sink confirmed.
 */
export const writeBatch = (
  db: DatabaseSync,
  st: Statements,
  rows: ReadonlyArray<Row>,
  now: number
): BatchResult => {
  const outcomes = new Uint8Array(rows.length)
  const rejections: Array<readonly [number, string]> = []
  st.lock.begin()
  try {
    for (let i = 0; i < rows.length; i++) {
      const r = rows[i]!
      try {
        const result = st.insert.run(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9])
        outcomes[i] = result.changes === 0 ? Outcome.Duplicate : Outcome.Committed
      } catch (error) {
        if (!isRowRejection(error)) throw new BatchFailure(describe(error), { cause: error })
        outcomes[i] = Outcome.Rejected
        rejections.push([i, describe(error)])
        deadLetter(st, r, describe(error), now)
      }
    }
    db.exec("COMMIT")
  } catch (error) {
    if (db.isTransaction) db.exec("ROLLBACK")
    throw error instanceof BatchFailure ? error.cause : error
  } finally {
    st.lock.released()
  }
  return { outcomes, rejections }
}

/**
 * The query of a device's highest committed seq in an epoch (one row, `last_seq`, NULL when
 * none is known; parameters device, epoch). `device_state` holds what the device-state service
 * raised (other sinks in the routes) and what versions before 2026-12-03 raised in every batch.
 * With `fromMessages` (SQLite is the only sink: a row in `messages` is held by every sink of its
 * route) the highest seq in `messages` counts too: the last entry of the unique index's range
 * for (device, epoch), one seek. It never lowers what `device_state` says.
 */
export const lastSeqQuery = (fromMessages: boolean): string =>
  fromMessages
    ? `SELECT max(s) AS last_seq FROM (
         SELECT last_seq AS s FROM device_state WHERE device = ?1 AND epoch = ?2
         UNION ALL SELECT max(seq) FROM messages WHERE device = ?1 AND epoch = ?2)`
    : `SELECT last_seq FROM device_state WHERE device = ?1 AND epoch = ?2`

/** One dead letter as it crosses to the writer thread. */
export interface DeadLetterRow {
  readonly device: string
  readonly epoch: number
  readonly seq: number
  readonly kind: string
  readonly reason: string
  /** The envelope as JSON text. */
  readonly envelope: string
}

/** Stores dead letters in one transaction. */
export const writeDeadLetters = (db: DatabaseSync, st: Statements, records: ReadonlyArray<DeadLetterRow>, now: number): void => {
  st.lock.begin()
  try {
    for (const r of records) st.deadLetter.run(r.device, r.epoch, r.seq, r.kind, r.reason, r.envelope, now)
    db.exec("COMMIT")
  } catch (error) {
    if (db.isTransaction) db.exec("ROLLBACK")
    throw error
  } finally {
    st.lock.released()
  }
}

/** A device's highest committed seq in an epoch, as a remote sink confirmed it. */
export type DeviceSeq = readonly [device: string, epoch: number, seq: number]

/** Raises each device's `last_seq` to `states`' seq (never lowers it), in one transaction. */
export const writeStates = (db: DatabaseSync, st: Statements, states: ReadonlyArray<DeviceSeq>): void => {
  st.lock.begin()
  try {
    for (const [device, epoch, seq] of states) st.upsertState.run(device, epoch, seq)
    db.exec("COMMIT")
  } catch (error) {
    if (db.isTransaction) db.exec("ROLLBACK")
    throw error
  } finally {
    st.lock.released()
  }
}

const deadLetter = (st: Statements, r: Row, reason: string, now: number) => {
  try {
    st.deadLetter.run(r[0], r[1], r[2], r[3], reason, JSON.stringify(r), now)
  } catch {
    // best effort: the message is nacked either way
  }
}
