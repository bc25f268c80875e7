/**
 * Test support: reads the gateway's SQLite store directly, as an operator would.
 */
import * as Path from "node:path"
import { DatabaseSync } from "node:sqlite"
import type { DeadLetterRow } from "../../src/sinks/sqlite/SqliteStore.ts"

/** A row of `messages`. */
export interface MessageRow {
  readonly device: string
  readonly epoch: number
  readonly seq: number
  readonly kind: string
  readonly device_ts: number
  readonly received_at: number
  readonly gateway: string
  readonly traceparent: string | null
  readonly body: string
  /** Fields stages added to the envelope, as a JSON object (null when none). */
  readonly annotations: string | null
}

/**
 * Takes SQLite's write lock on the store in `dataDir` from a connection of the test's own, so the
 * gateway's writer really cannot commit (SQLITE_BUSY); the returned function releases it (once).
 */
export const holdWriteLock = (dataDir: string): (() => void) => {
  const db = new DatabaseSync(Path.join(dataDir, "gateway.db"))
  db.exec("BEGIN IMMEDIATE")
  let held = true
  return () => {
    if (!held) return
    held = false
    db.exec("ROLLBACK")
    db.close()
  }
}

/** Every row of `messages` for a device (all devices when omitted), ordered by key. */
export const rows = (dataDir: string, device?: string): Array<MessageRow> => {
  const db = new DatabaseSync(Path.join(dataDir, "gateway.db"), { readOnly: true })
  try {
    const sql = `SELECT * FROM messages ${device === undefined ? "" : "WHERE device = ?"} ORDER BY device, epoch, seq`
    const stmt = db.prepare(sql)
    return (device === undefined ? stmt.all() : stmt.all(device)) as unknown as Array<MessageRow>
  } finally {
    db.close()
  }
}

/** Every dead letter, in the order stored. */
export const deadLetters = (dataDir: string): Array<DeadLetterRow> => {
  const db = new DatabaseSync(Path.join(dataDir, "gateway.db"), { readOnly: true })
  try {
    return db.prepare("SELECT device, epoch, seq, kind, reason, envelope FROM dead_letters ORDER BY id").all() as unknown as Array<
      DeadLetterRow
    >
  } finally {
    db.close()
  }
}

/** The number a one-row query's `n` column gives on the store in `dataDir` (read-only). */
export const countIn = (dataDir: string, sql: string): number => {
  const db = new DatabaseSync(Path.join(dataDir, "gateway.db"), { readOnly: true })
  try {
    return (db.prepare(sql).get() as { n: number }).n
  } finally {
    db.close()
  }
}
