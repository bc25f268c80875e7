/**
 * The `store` scenario (in process, no server): what the SQLite sink's writer costs per row in
 * the fleet's pattern, on the sink's own functions, to show the floor under the gateway's CPU
 * per message. Rows of a fleet of `devices` (one telemetry row per device in turn, as bench/
 * fleet.ts's evenly spread schedules fill a batch: a batch holds neighbouring device ids), in
 * batches of 16, 96 (about what the 4 ms group commit gathers at 20,000 msgs/s) and 256 (a
 * flood's batch), on a fresh store per round:
 *
 * - `packEnvelopes`: the event loop's side of a batch (the rows as one string; the
 *   `postMessage` to the writer thread and its reply are not in it);
 * - what the writer thread does with a batch: `unpackRows`, `writeBatch` (the inserts through
 *   the unique index, `device_state`, the commit) and `lostBecause` (two `stat` calls);
 * - checkpoints on a second connection every `CHECKPOINT_EVERY_ROWS` rows (the sink's
 *   checkpointer runs every 250 ms: 5,000 rows at 20,000 msgs/s), PASSIVE: nothing writes
 *   meanwhile, so each copies the whole WAL and the next commit starts it over, as the sink's
 *   restart does;
 * - WAL bytes per row: the frames the commits wrote (each row of a fleet dirties its own
 *   device's index page, and a commit writes every page it dirtied).
 *
 * Everything is measured over the second half of a round's rows (the index then holds the
 * first half), the first half warming up. CPU is `process.cpuUsage` (the whole process: here
 * one thread plus V8's helpers, so the garbage of one step can be collected in another's time);
 * median of `ROUNDS` rounds.
 *
 *   npm run bench -- --only store
 */
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { DatabaseSync } from "node:sqlite"
import type { Envelope } from "../src/domain/Envelope.ts"
import { Outcome } from "../src/sinks/Outcome.ts"
import { lostBecause, openDatabase, packEnvelopes, prepare, storeIdentity, unpackRows, writeBatch } from "../src/sinks/sqlite/SqliteStore.ts"
import { fmt } from "./proc.ts"

/** One measured case. */
export interface StoreRow {
  readonly devices: number
  readonly batch: number
  readonly packUs: number
  readonly writerUs: number
  readonly checkpointUs: number
  readonly walBytesPerRow: number
}

const ROUNDS = 3
const ROWS = 200_000
const CHECKPOINT_EVERY_ROWS = 5_000
/** Bytes a WAL frame takes: its header, then the page. */
const FRAME_HEADER_BYTES = 24

const cpuUs = () => {
  const u = process.cpuUsage()
  return u.user + u.system
}

const median = (xs: ReadonlyArray<number>) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!

/** The fleet's telemetry envelopes: `rows` of them, device after device. */
const envelopesOf = (devices: number, rows: number): Array<Envelope> => {
  const seqs = new Array<number>(devices).fill(0)
  const prefix = `store-${Date.now()}`
  const out: Array<Envelope> = []
  for (let i = 0; i < rows; i++) {
    const d = i % devices
    const now = Date.now()
    out.push({
      device: `${prefix}-${d}`,
      epoch: 0,
      seq: seqs[d]!++,
      kind: "telemetry",
      deviceTs: now,
      receivedAt: now,
      gateway: "bench",
      traceparent: null,
      body: { metrics: { temp: 21.5, humidity: 40.2, battery: 3.71 }, tags: { site: "bench" } }
    })
  }
  return out
}

/** One round on a fresh store: per row of its second half, CPU of packing, of the writer's work and of the checkpoints, and WAL bytes. */
const round = (envelopes: ReadonlyArray<Envelope>, batch: number) => {
  const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "gw-store-bench-"))
  try {
    const path = Path.join(dir, "gateway.db")
    const db = openDatabase(path, "normal")
    const checkpointer = new DatabaseSync(path)
    try {
      const st = prepare(db)
      const passive = checkpointer.prepare("PRAGMA wal_checkpoint(PASSIVE)")
      const frameBytes = (db.prepare("PRAGMA page_size").get() as { page_size: number }).page_size + FRAME_HEADER_BYTES
      const opened = storeIdentity(path)
      /** Copies the WAL back; what the commits since the last copy wrote, in frames. */
      const copy = () => (passive.get() as { log: number }).log
      const half = Math.floor(envelopes.length / batch / 2) * batch
      let pack = 0
      let writer = 0
      let checkpoint = 0
      let frames = 0
      let sinceCopy = 0
      for (let at = 0; at < envelopes.length; at += batch) {
        if (at === half) copy() // the second half starts with an empty WAL
        const measured = at >= half
        const t0 = cpuUs()
        const packed = packEnvelopes(envelopes.slice(at, at + batch))
        const t1 = cpuUs()
        const result = writeBatch(db, st, unpackRows(packed.text, packed.count), Date.now())
        if (lostBecause(opened) !== undefined) throw new Error("store lost during the bench")
        const t2 = cpuUs()
        if (result.rejections.length > 0 || result.outcomes.some((o) => o !== Outcome.Committed)) {
          throw new Error("a row was not committed as new: the bench would time something else")
        }
        sinceCopy += packed.count
        const due = sinceCopy >= CHECKPOINT_EVERY_ROWS || at + batch >= envelopes.length
        const t3 = cpuUs()
        const copied = due ? copy() : 0
        const t4 = cpuUs()
        if (due) sinceCopy = 0
        if (!measured) continue
        pack += t1 - t0
        writer += t2 - t1
        checkpoint += t4 - t3
        frames += copied
      }
      const rows = envelopes.length - half
      return { pack: pack / rows, writer: writer / rows, checkpoint: checkpoint / rows, walBytes: (frames * frameBytes) / rows }
    } finally {
      checkpointer.close()
      db.close()
    }
  } finally {
    Fs.rmSync(dir, { recursive: true, force: true })
  }
}

/** Runs every case. */
export const runStoreBench = (): Array<StoreRow> => {
  const out: Array<StoreRow> = []
  for (const devices of [1_000, 10_000]) {
    const envelopes = envelopesOf(devices, ROWS)
    for (const batch of [16, 96, 256]) {
      const rounds = Array.from({ length: ROUNDS }, () => round(envelopes, batch))
      out.push({
        devices,
        batch,
        packUs: median(rounds.map((r) => r.pack)),
        writerUs: median(rounds.map((r) => r.writer)),
        checkpointUs: median(rounds.map((r) => r.checkpoint)),
        walBytesPerRow: median(rounds.map((r) => r.walBytes))
      })
    }
  }
  return out
}

/** The scenario's table. */
export const storeTable = (rows: ReadonlyArray<StoreRow>): string =>
  [
    `\n### store: the SQLite sink's own CPU per row in the fleet's pattern (in process, the second half of ${fmt(ROWS)} rows, median of ${ROUNDS} rounds)`,
    "| devices | rows per batch | packEnvelopes µs/row (event loop) | unpack + writeBatch + lostBecause µs/row (writer thread) | checkpoint µs/row | WAL bytes/row |",
    "|---:|---:|---:|---:|---:|---:|",
    ...rows.map((r) =>
      `| ${fmt(r.devices)} | ${r.batch} | ${fmt(r.packUs, 2)} | ${fmt(r.writerUs, 2)} | ${fmt(r.checkpointUs, 2)} | ${fmt(r.walBytesPerRow)} |`
    )
  ].join("\n")
