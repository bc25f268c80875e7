/**
 * The `store` scenario (in process, no server): what the SQLite sink's writer costs per row in
 * the fleet's pattern, on the sink's own functions, to show the floor under the gateway's CPU
 * per message. Rows of a fleet of `devices` (one telemetry row per device in turn, as a fleet
 * sending on evenly spread schedules fills a batch), in batches of 16, 96 (what the 4 ms group
 * commit gathers at 20,000 msgs/s) and 256 (a flood's batch):
 *
 * - pack: `packEnvelopes`, the event loop's side of a batch (the rows as one string);
 * - writer: what the writer thread does per batch: `unpackRows`, `writeBatch` (the inserts with
 *   their unique index, `device_state`, the commit) and `lostBecause` (two `stat` calls);
 * - checkpoint: a second connection copying the WAL back as the sink's checkpointer does
 *   (PASSIVE every 250 ms of writing, restarted past 64 MiB), timed apart from the writer;
 * - WAL bytes per row, over the second half of a round (the index then holds 100,000 rows):
 *   each row of a fleet dirties its own device's index page, and a commit writes every page
 *   it dirtied.
 *
 * CPU is `process.cpuUsage` (this single thread, plus V8's helpers) per row, median of 3 rounds
 * of `rows` rows on a fresh store each.
 *
 *   npm run bench -- --only store
 */
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { DatabaseSync } from "node:sqlite"
import type { Envelope } from "../src/domain/Envelope.ts"
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
const CHECKPOINT_EVERY_MS = 250
const RESTART_BYTES = 64 * 1024 * 1024

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

/** One round on a fresh store: CPU per row of packing, of the writer and of the checkpoints. */
const round = (envelopes: ReadonlyArray<Envelope>, batch: number) => {
  const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "gw-store-bench-"))
  try {
    const path = Path.join(dir, "gateway.db")
    const db = openDatabase(path, "normal")
    const st = prepare(db)
    const checkpointer = new DatabaseSync(path)
    const passive = checkpointer.prepare("PRAGMA wal_checkpoint(PASSIVE)")
    const restart = checkpointer.prepare("PRAGMA wal_checkpoint(TRUNCATE)")
    const pageBytes = (db.prepare("PRAGMA page_size").get() as { page_size: number }).page_size
    const opened = storeIdentity(path)
    let pack = 0
    let writer = 0
    let checkpoint = 0
    let lastCheckpoint = performance.now()
    // WAL frames the second half's commits wrote (the index then holds half the rows already):
    // each checkpoint copies all of the WAL (nothing writes meanwhile), so the next commit
    // starts it over and a checkpoint's `log` is what was written since the one before
    let frames = 0
    let framesFrom: number | undefined
    for (let at = 0; at < envelopes.length; at += batch) {
      const slice = envelopes.slice(at, at + batch)
      const t0 = cpuUs()
      const packed = packEnvelopes(slice)
      const t1 = cpuUs()
      writeBatch(db, st, unpackRows(packed.text, packed.count), Date.now())
      if (lostBecause(opened) !== undefined) throw new Error("store lost during the bench")
      const t2 = cpuUs()
      pack += t1 - t0
      writer += t2 - t1
      if (performance.now() - lastCheckpoint >= CHECKPOINT_EVERY_MS) {
        const t = cpuUs()
        const done = passive.get() as { log: number }
        if (Fs.statSync(`${path}-wal`).size > RESTART_BYTES) restart.get() // the file back to nothing
        checkpoint += cpuUs() - t
        if (framesFrom !== undefined) frames += done.log
        else if (at + batch >= envelopes.length / 2) framesFrom = at + batch // counted from the next commit on
        lastCheckpoint = performance.now()
      }
    }
    frames += (passive.get() as { log: number }).log
    checkpointer.close()
    db.close()
    const measured = framesFrom === undefined ? 0 : envelopes.length - framesFrom
    return {
      pack: pack / envelopes.length,
      writer: writer / envelopes.length,
      checkpoint: checkpoint / envelopes.length,
      walBytes: measured > 0 ? (frames * (pageBytes + 24)) / measured : Number.NaN
    }
  } finally {
    Fs.rmSync(dir, { recursive: true, force: true })
  }
}

/** Runs every case. */
export const runStoreBench = (rows = 200_000): Array<StoreRow> => {
  const out: Array<StoreRow> = []
  for (const devices of [1_000, 10_000]) {
    const envelopes = envelopesOf(devices, rows)
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
    "\n### store: the SQLite writer's own CPU per row in the fleet's pattern (in process, median of 3 rounds of 200,000 rows)",
    "| devices | rows per batch | pack µs/row (event loop) | writer µs/row (writer thread) | checkpoint µs/row | WAL bytes/row |",
    "|---:|---:|---:|---:|---:|---:|",
    ...rows.map((r) =>
      `| ${fmt(r.devices)} | ${r.batch} | ${fmt(r.packUs, 2)} | ${fmt(r.writerUs, 2)} | ${fmt(r.checkpointUs, 2)} | ${fmt(r.walBytesPerRow)} |`
    )
  ].join("\n")
