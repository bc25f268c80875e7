/**
 * The outbox's SQLite file, as plain synchronous functions shared by its writer thread
 * (OutboxWriter.ts) and its tests: the schema, opening the file, and the four things done to it
 * (append a batch, read the oldest rows past a cursor, remove forwarded rows, a write probe), each
 * one transaction. Also how a batch is packed into one string to cross to the thread.
 *
 * One row per message, in insertion order (`id`, AUTOINCREMENT: never reused, so a cursor held
 * across a drain that empties the table stays valid): the key columns (device, epoch, seq), the
 * envelope as JSON text, its size in bytes, when it was stored. The depth (messages, bytes) is
 * kept in a one-row table updated in the same transaction as the rows, so it is exact after any
 * crash and known at start without a scan.
 *
 * Durability: WAL mode, `synchronous=NORMAL` by default (as the main store): a COMMIT is in the
 * WAL through the OS when it returns, so it survives the process being killed (SIGKILL, OOM); a
 * power loss or kernel crash can lose the commits since the last checkpoint (the WAL is fsynced
 * at checkpoints, every {@link AUTOCHECKPOINT_PAGES} pages). `full` fsyncs every commit.
 *
 * The file is opened in EXCLUSIVE locking mode: one process at a time (a second gateway pointed
 * at the same file fails its start instead of forwarding, and counting, the same rows).
 */
import * as Fs from "node:fs"
import * as Path from "node:path"
import { DatabaseSync, type StatementSync } from "node:sqlite"
import type { Envelope } from "../../domain/Envelope.ts"

/** The tables: the rows, the depth (one row), the probe's row. */
export const SCHEMA = `
CREATE TABLE IF NOT EXISTS outbox (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  device TEXT NOT NULL, epoch INTEGER NOT NULL, seq INTEGER NOT NULL,
  bytes INTEGER NOT NULL, enqueued_at INTEGER NOT NULL, envelope TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox_depth (
  id INTEGER PRIMARY KEY CHECK (id = 1), messages INTEGER NOT NULL, bytes INTEGER NOT NULL);
INSERT OR IGNORE INTO outbox_depth (id, messages, bytes) VALUES (1, 0, 0);
CREATE TABLE IF NOT EXISTS outbox_probe (id INTEGER PRIMARY KEY, pad BLOB NOT NULL);
`

/** WAL pages between automatic checkpoints (16 MiB of 4 KiB pages), run by the writer thread at a commit. */
export const AUTOCHECKPOINT_PAGES = 4_096

/** Free pages past which an emptied outbox gives its space back to the filesystem (8 MiB). */
const VACUUM_FREE_PAGES = 2_048

/** What the outbox holds. */
export interface Depth {
  /** Messages stored. */
  readonly messages: number
  /** Bytes of their envelopes (UTF-8 JSON). */
  readonly bytes: number
  /** When the oldest was stored (epoch ms), null when empty. */
  readonly oldestAt: number | null
  /** The highest id ever given (0 when none): rows past a cursor exist only while this is above it. */
  readonly lastId: number
}

/** Bounds of the outbox. */
export interface Limits {
  readonly maxMessages: number
  readonly maxBytes: number
}

// ---- packing (event loop side) ----

/** A batch packed for the writer thread: one string, one line per row. */
export interface Packed {
  /** `<epoch>\t<seq>\t<device as JSON>\t<envelope JSON>\n` per row (JSON text holds no raw tab or newline). */
  readonly text: string
  /** Batch positions packed, in order (row k of `text` is `batch[positions[k]]`). */
  readonly positions: ReadonlyArray<number>
  /** Batch positions left out, and why (a value JSON cannot hold, a key that is not an integer). */
  readonly refused: ReadonlyMap<number, string>
}

/** Packs `batch[i]` for each `i` of `indices` (every position when omitted). */
export const packRows = (batch: ReadonlyArray<Envelope>, indices?: ReadonlyArray<number>): Packed => {
  // joined once at the end: a string built by `+=` is a rope that posting to the thread flattens (a copy more)
  const lines: Array<string> = []
  const positions: Array<number> = []
  let refused: Map<number, string> | undefined
  const n = indices === undefined ? batch.length : indices.length
  for (let k = 0; k < n; k++) {
    const i = indices === undefined ? k : indices[k]!
    const e = batch[i]!
    if (!Number.isSafeInteger(e.epoch) || !Number.isSafeInteger(e.seq)) {
      ;(refused ??= new Map()).set(i, "epoch and seq must be integers to be stored in the outbox")
      continue
    }
    let json: string
    try {
      json = JSON.stringify(e)
    } catch (error) {
      ;(refused ??= new Map()).set(i, `cannot be stored as JSON: ${describe(error)}`)
      continue
    }
    lines.push(`${e.epoch}\t${e.seq}\t${JSON.stringify(e.device)}\t${json}\n`)
    positions.push(i)
  }
  return { text: lines.join(""), positions, refused: refused ?? NONE }
}

const NONE: ReadonlyMap<number, string> = new Map()

/** Rows read for forwarding, as they cross back: ids, and the envelopes as one JSON array text. */
export interface ReadRows {
  readonly ids: Float64Array
  /** Bytes of these rows' envelopes (what removing them takes off the depth). */
  readonly bytes: number
  /** `[<envelope>,\n<envelope>...]`: one `JSON.parse` on the event loop. */
  readonly json: string
}

/** The envelopes of {@link ReadRows}; a row that does not parse (a damaged file) is `undefined`. */
export const parseRows = (rows: ReadRows): Array<Envelope | undefined> => {
  try {
    return JSON.parse(rows.json) as Array<Envelope>
  } catch {
    // find the damaged rows: rows are separated by ",\n", which JSON text never holds
    const inner = rows.json.slice(1, -1)
    return inner.split(",\n").map((row) => {
      try {
        return JSON.parse(row) as Envelope
      } catch {
        return undefined
      }
    })
  }
}

// ---- the file (writer thread side) ----

/**
 * Opens (and creates) the outbox: EXCLUSIVE locking (fails SQLITE_BUSY when another process
 * has it), incremental auto-vacuum on a new file, WAL, the schema. Throws what SQLite threw.
 */
export const openOutbox = (path: string, synchronous: "normal" | "full"): DatabaseSync => {
  Fs.mkdirSync(Path.dirname(path), { recursive: true })
  orphanWal(path)
  const db = new DatabaseSync(path)
  try {
    db.exec("PRAGMA busy_timeout = 0; PRAGMA locking_mode = EXCLUSIVE; PRAGMA auto_vacuum = INCREMENTAL")
    db.exec("PRAGMA journal_mode = WAL")
    db.exec(`PRAGMA synchronous = ${synchronous === "full" ? "FULL" : "NORMAL"};
      PRAGMA wal_autocheckpoint = ${AUTOCHECKPOINT_PAGES}; PRAGMA cache_size = -8192;`)
    db.exec("BEGIN IMMEDIATE")
    try {
      db.exec(SCHEMA)
      db.exec("COMMIT")
    } catch (error) {
      if (db.isTransaction) db.exec("ROLLBACK")
      throw error
    }
  } catch (error) {
    db.close()
    throw error
  }
  return db
}

/**
 * Throws when `<file>-wal` holds commits but the file is gone (moved or removed, then the
 * process killed): opening would make a new empty file and SQLite would delete that WAL, and
 * with it messages that were acknowledged.
 */
const orphanWal = (path: string) => {
  const wal = Fs.statSync(path + "-wal", { throwIfNoEntry: false })
  if (wal !== undefined && wal.size > 0 && !Fs.existsSync(path)) {
    throw new Error(`${path}-wal holds ${wal.size} bytes of commits but ${path} is missing: put it back, or remove the WAL`)
  }
}

/** Rows per multi-row INSERT (6 parameters each): one call into SQLite per chunk, not per row (~30% less CPU per row, measured). */
const INSERT_CHUNK = 64

/** Prepared statements of the writer. */
export interface Statements {
  readonly insert: StatementSync
  /** Inserts {@link INSERT_CHUNK} rows at once. */
  readonly insertChunk: StatementSync
  readonly select: StatementSync
  readonly rangeSize: StatementSync
  readonly deleteRange: StatementSync
  readonly depth: StatementSync
  readonly addDepth: StatementSync
  readonly oldest: StatementSync
  readonly lastId: StatementSync
  readonly probe: StatementSync
}

/** Prepares the writer's statements. */
export const prepare = (db: DatabaseSync): Statements => ({
  insert: db.prepare(`INSERT INTO outbox (device, epoch, seq, bytes, enqueued_at, envelope) VALUES (?, ?, ?, ?, ?, ?)`),
  insertChunk: db.prepare(
    `INSERT INTO outbox (device, epoch, seq, bytes, enqueued_at, envelope) VALUES ${Array(INSERT_CHUNK).fill("(?, ?, ?, ?, ?, ?)").join(", ")}`
  ),
  select: arrays(db.prepare(`SELECT id, bytes, envelope FROM outbox WHERE id > ? ORDER BY id LIMIT ?`)),
  rangeSize: db.prepare(`SELECT count(*) AS n, total(bytes) AS b FROM outbox WHERE id BETWEEN ? AND ?`),
  deleteRange: db.prepare(`DELETE FROM outbox WHERE id BETWEEN ? AND ?`),
  depth: db.prepare(`SELECT messages, bytes FROM outbox_depth WHERE id = 1`),
  addDepth: db.prepare(`UPDATE outbox_depth SET messages = messages + ?, bytes = bytes + ? WHERE id = 1`),
  oldest: db.prepare(`SELECT enqueued_at AS at FROM outbox ORDER BY id LIMIT 1`),
  lastId: db.prepare(`SELECT seq FROM sqlite_sequence WHERE name = 'outbox'`),
  probe: db.prepare(`INSERT INTO outbox_probe (id, pad) VALUES (1, randomblob(?1)) ON CONFLICT (id) DO UPDATE SET pad = excluded.pad`)
})

/** Rows as arrays, not objects (no property names made per row). */
const arrays = (st: StatementSync): StatementSync => {
  st.setReturnArrays(true)
  return st
}

/** The depth as stored (the one-row table, the oldest row, the sequence). */
export const readDepth = (st: Statements): Depth => {
  const d = st.depth.get() as { messages: number; bytes: number }
  const oldest = st.oldest.get() as { at: number } | undefined
  const last = st.lastId.get() as { seq: number } | undefined
  return { messages: d.messages, bytes: d.bytes, oldestAt: oldest?.at ?? null, lastId: last?.seq ?? 0 }
}

/** Runs `body` in one `BEGIN IMMEDIATE` … `COMMIT`, rolled back when it throws. */
const transaction = <A>(db: DatabaseSync, body: () => A): A => {
  db.exec("BEGIN IMMEDIATE")
  try {
    const a = body()
    db.exec("COMMIT")
    return a
  } catch (error) {
    if (db.isTransaction) db.exec("ROLLBACK")
    throw error
  }
}

/**
 * Appends packed rows in one transaction, in order, as long as they fit the limits: the rows
 * after the first that does not fit are not stored (so a batch is never stored with a hole).
 * Returns how many were stored (a prefix of the rows).
 */
export const append = (db: DatabaseSync, st: Statements, text: string, limits: Limits, now: number): number =>
  transaction(db, () => {
    const depth = st.depth.get() as { messages: number; bytes: number }
    // the rows that fit, as insert parameters: device, epoch, seq, bytes, enqueued_at, envelope
    const params: Array<string | number> = []
    let messages = depth.messages
    let bytes = depth.bytes
    let start = 0
    let end = text.indexOf("\n")
    while (end !== -1) {
      const t1 = text.indexOf("\t", start)
      const t2 = text.indexOf("\t", t1 + 1)
      const t3 = text.indexOf("\t", t2 + 1)
      const json = text.slice(t3 + 1, end)
      const size = Buffer.byteLength(json)
      if (messages + 1 > limits.maxMessages || bytes + size > limits.maxBytes) break
      const deviceJson = text.slice(t2 + 1, t3)
      const device = deviceJson.includes("\\") ? (JSON.parse(deviceJson) as string) : deviceJson.slice(1, -1)
      params.push(device, Number(text.slice(start, t1)), Number(text.slice(t1 + 1, t2)), size, now, json)
      messages++
      bytes += size
      start = end + 1
      end = text.indexOf("\n", start)
    }
    const stored = params.length / 6
    let k = 0
    for (; k + INSERT_CHUNK <= stored; k += INSERT_CHUNK) st.insertChunk.run(...params.slice(k * 6, (k + INSERT_CHUNK) * 6))
    for (; k < stored; k++) st.insert.run(...params.slice(k * 6, k * 6 + 6))
    if (stored > 0) st.addDepth.run(stored, bytes - depth.bytes)
    return stored
  })

/** The oldest rows with an id above `afterId`, at most `limit`. */
export const readAfter = (st: Statements, afterId: number, limit: number): ReadRows => {
  const rows = st.select.all(afterId, limit) as unknown as Array<readonly [id: number, bytes: number, envelope: string]>
  const ids = new Float64Array(rows.length)
  const parts = new Array<string>(rows.length)
  let bytes = 0
  for (let i = 0; i < rows.length; i++) {
    const r = rows[i]!
    ids[i] = r[0]
    bytes += r[1]
    parts[i] = r[2]
  }
  return { ids, bytes, json: `[${parts.join(",\n")}]` }
}

/**
 * Removes the rows with ids from `fromId` to `toId` in one transaction, and takes them off the
 * depth: `expect` is what reading them found (count and bytes), so no second pass over them is
 * needed; without it, or when the rows removed are not those (never, unless the file was changed
 * by another hand), they are counted first. When that empties the outbox and many pages are free,
 * gives the space back to the filesystem (after the commit). Returns how many rows were removed.
 */
export const removeRange = (
  db: DatabaseSync,
  st: Statements,
  fromId: number,
  toId: number,
  expect?: { readonly count: number; readonly bytes: number }
): number => {
  const counted = () =>
    transaction(db, () => {
      const size = st.rangeSize.get(fromId, toId) as { n: number; b: number }
      if (size.n === 0) return 0
      st.deleteRange.run(fromId, toId)
      st.addDepth.run(-size.n, -size.b)
      return size.n
    })
  const trusted = (e: { readonly count: number; readonly bytes: number }) => {
    try {
      return transaction(db, () => {
        const changes = Number(st.deleteRange.run(fromId, toId).changes)
        if (changes !== e.count) throw NOT_AS_READ
        if (changes > 0) st.addDepth.run(-e.count, -e.bytes)
        return changes
      })
    } catch (error) {
      if (error === NOT_AS_READ) return counted()
      throw error
    }
  }
  const removed = expect === undefined ? counted() : trusted(expect)
  if (removed > 0 && (st.depth.get() as { messages: number }).messages === 0) shrink(db)
  return removed
}

/** Thrown (and caught) to roll back a removal that did not find the rows as they were read. */
const NOT_AS_READ = new Error("the rows removed are not the rows read")

/** An emptied outbox with many free pages: freed to the filesystem, and the WAL truncated. */
const shrink = (db: DatabaseSync) => {
  const free = (db.prepare("PRAGMA freelist_count").get() as { freelist_count: number }).freelist_count
  if (free < VACUUM_FREE_PAGES) return
  db.exec("PRAGMA incremental_vacuum; PRAGMA wal_checkpoint(TRUNCATE)")
}

/**
 * A write probe: one committed transaction rewriting the probe row with `bytes` random bytes,
 * so it needs as much room as a batch of that size. Throws what the write threw.
 */
export const probe = (db: DatabaseSync, st: Statements, bytes: number): void =>
  transaction(db, () => {
    st.probe.run(Math.max(1, Math.floor(bytes)))
  })

/** The message of an unknown thrown value. */
export const describe = (e: unknown): string => (e instanceof Error ? e.message : String(e))
