/**
 * Envelopes as the rows of one multi-row INSERT: one array per column (the statement unnests
 * them, PostgresSchema.ts), as SQLite's store turns an envelope into a row (SqliteStore.ts):
 * `body` as JSON text, `annotations` the fields stages added as a JSON object (or NULL),
 * `traceparent` (or NULL). The integers go as `int8` (BigInt), so a value that is not an integer
 * is refused here, per message, instead of failing the statement. {@link insertedRows} matches
 * the keys the INSERT returned with the rows.
 */
import * as PgTypes from "@effect/sql-pg/PgTypes"
import { Result } from "effect"
import { annotationsOf, type Envelope } from "../../domain/Envelope.ts"

/** Rows of a batch, column by column; `positions[r]` is row `r`'s index in the batch. */
export interface Rows {
  readonly positions: Array<number>
  readonly device: Array<string>
  readonly epoch: Array<bigint>
  readonly seq: Array<bigint>
  readonly kind: Array<string>
  readonly deviceTs: Array<bigint>
  readonly receivedAt: Array<bigint>
  readonly gateway: Array<string>
  readonly traceparent: Array<string | null>
  readonly body: Array<string>
  readonly annotations: Array<string | null>
}

/** The rows of a batch, and the messages that cannot be rows (by batch index, with why). */
export interface PreparedRows {
  readonly rows: Rows
  readonly refused: ReadonlyMap<number, string>
}

const SEP = "\u0000"

/** A key (device, epoch, seq) as one string (an integer as a bigint or a number: the same string). */
export const keyOf = (device: string, epoch: unknown, seq: unknown): string =>
  device + SEP + String(epoch) + SEP + String(seq)

const rowsOf = (n: number): Rows => ({
  positions: new Array<number>(n),
  device: new Array<string>(n),
  epoch: new Array<bigint>(n),
  seq: new Array<bigint>(n),
  kind: new Array<string>(n),
  deviceTs: new Array<bigint>(n),
  receivedAt: new Array<bigint>(n),
  gateway: new Array<string>(n),
  traceparent: new Array<string | null>(n),
  body: new Array<string>(n),
  annotations: new Array<string | null>(n)
})

/** Cuts every column of `rows` to `n` rows. */
const truncate = (rows: Rows, n: number): void => {
  for (const column of Object.values(rows) as Array<Array<unknown>>) column.length = n
}

const integer = (value: number, field: string): bigint => {
  if (!Number.isSafeInteger(value)) throw new RangeError(`${field} ${value} is not an integer`)
  return BigInt(value)
}

const describe = (e: unknown): string => e instanceof Error ? e.message : String(e)

/** Turns a batch into rows; a message whose fields cannot be written is refused alone. */
export const prepareRows = (batch: ReadonlyArray<Envelope>): PreparedRows => {
  const rows = rowsOf(batch.length)
  let refused: Map<number, string> | undefined
  let r = 0
  for (let i = 0; i < batch.length; i++) {
    const e = batch[i] as Envelope
    try {
      rows.epoch[r] = integer(e.epoch, "epoch")
      rows.seq[r] = integer(e.seq, "seq")
      rows.deviceTs[r] = integer(e.deviceTs, "deviceTs")
      rows.receivedAt[r] = integer(e.receivedAt, "receivedAt")
      rows.body[r] = JSON.stringify(e.body)
      rows.annotations[r] = annotationsOf(e)
    } catch (error) {
      ;(refused ??= new Map()).set(i, `cannot be stored: ${describe(error)}`)
      continue
    }
    rows.positions[r] = i
    rows.device[r] = e.device
    rows.kind[r] = e.kind
    rows.gateway[r] = e.gateway
    rows.traceparent[r] = e.traceparent
    r++
  }
  if (r < batch.length) truncate(rows, r)
  return { rows, refused: refused ?? NONE }
}

const NONE: ReadonlyMap<number, string> = new Map()

/** Rows `from` (inclusive) to `to` (exclusive) of `rows`. */
export const sliceRows = (rows: Rows, from: number, to: number): Rows => ({
  positions: rows.positions.slice(from, to),
  device: rows.device.slice(from, to),
  epoch: rows.epoch.slice(from, to),
  seq: rows.seq.slice(from, to),
  kind: rows.kind.slice(from, to),
  deviceTs: rows.deviceTs.slice(from, to),
  receivedAt: rows.receivedAt.slice(from, to),
  gateway: rows.gateway.slice(from, to),
  traceparent: rows.traceparent.slice(from, to),
  body: rows.body.slice(from, to),
  annotations: rows.annotations.slice(from, to)
})

const column = (values: ReadonlyArray<unknown>, oid: number): PgTypes.Parameter =>
  Result.getOrThrowWith(PgTypes.array(values, oid), (e) => e)

/** The ten column arrays of `rows` as the INSERT's parameters ($1..$10), binary `text[]` and `int8[]`. */
export const paramsOf = (rows: Rows): Array<PgTypes.Parameter> => {
  const text = PgTypes.OID.text
  const int8 = PgTypes.OID.int8
  return [
    column(rows.device, text),
    column(rows.epoch, int8),
    column(rows.seq, int8),
    column(rows.kind, text),
    column(rows.deviceTs, int8),
    column(rows.receivedAt, int8),
    column(rows.gateway, text),
    column(rows.traceparent, text),
    column(rows.body, text),
    column(rows.annotations, text)
  ]
}

/**
 * Which rows the INSERT inserted (1) and which it did not (0: the key was there already, or came
 * earlier in the same rows), from the keys it returned (`device, epoch, seq`). RETURNING lists
 * the inserted rows in the order of the rows given, so one pass matches them without building a
 * key per row; were they ever in another order, the keys are matched as a set (the first row of
 * each key returned is the inserted one).
 */
export const insertedRows = (rows: Rows, returned: ReadonlyArray<ReadonlyArray<unknown>>): Uint8Array => {
  const n = rows.device.length
  const out = new Uint8Array(n)
  let j = 0
  for (let r = 0; r < n && j < returned.length; r++) {
    const k = returned[j] as ReadonlyArray<unknown>
    // epoch may come back as a number (an integer column): compared loosely with the bigint
    if (k[0] === rows.device[r] && k[2] === rows.seq[r] && k[1] == rows.epoch[r]) {
      out[r] = 1
      j++
    }
  }
  if (j === returned.length) return out
  out.fill(0)
  const keys = new Set<string>()
  for (const k of returned) keys.add(keyOf(String(k[0]), k[1], k[2]))
  for (let r = 0; r < n; r++) if (keys.delete(keyOf(rows.device[r] as string, rows.epoch[r], rows.seq[r]))) out[r] = 1
  return out
}
