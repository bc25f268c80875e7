/**
 * The SQLite sink's WAL stays bounded under writes that never pause (real sink, real threads, a
 * store in a temporary directory): batches of 200 rows from 200 devices each, back to back, so
 * every commit writes ~200 index pages (~800 KiB of WAL) and commits land while every checkpoint
 * runs. 400 such batches write ~300 MB of WAL frames; the file must stay within a few restarts'
 * worth (measured 17–20 MB), and within `journal_size_limit` once the load ends.
 *
 * And a WAL that grew past `journal_size_limit` (64 MiB) while a reader's snapshot held its
 * restart off (250 batches: ~160 MB) is cut back to it by the next restart.
 *
 * Each failed before this change: the first before the writer restarted the WAL (the checkpointer's PASSIVE checkpoints alone):
 * SQLite starts a WAL over only when a commit begins with every frame already copied, which
 * back-to-back commits never allow, so the file grew by every commit (640 MB in 10 s under the
 * fleet bench at 20,000 msgs/s); the second without `journal_size_limit` (166 MB kept).
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Logger, Scope } from "effect"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { DatabaseSync } from "node:sqlite"

import * as SqliteSink from "../../../src/sinks/sqlite/SqliteSink.ts"
import { telemetryEnvelope } from "../../support/envelopes.ts"
import { tempDir } from "../../support/gateway.ts"

const DEVICES = 200
const BATCHES = 400

describe("SQLite sink WAL", () => {
  it.live("stays bounded under back-to-back commits that each touch hundreds of pages", () =>
    Effect.gen(function*() {
      const dir = tempDir("gw-wal-")
      const wal = Path.join(dir, "gateway.db-wal")
      const scope = yield* Scope.make()
      const sink = yield* SqliteSink.make({ dataDir: dir, synchronous: "normal", checkpointEveryMs: 50, walRestartFrames: 256 }).pipe(
        Scope.provide(scope)
      )
      let largest = 0
      for (let b = 0; b < BATCHES; b++) {
        const batch = Array.from({ length: DEVICES }, (_, d) => telemetryEnvelope(`wal-device-${String(d).padStart(4, "0")}`, b))
        const written = yield* sink.write(batch)
        expect(written.outcomes).toEqual(new Uint8Array(DEVICES))
        largest = Math.max(largest, Fs.statSync(wal).size)
      }
      yield* Scope.close(scope, Exit.void)

      const db = new DatabaseSync(Path.join(dir, "gateway.db"), { readOnly: true })
      const stored = (db.prepare("SELECT count(*) AS n FROM messages").get() as { n: number }).n
      db.close()
      Fs.rmSync(dir, { recursive: true, force: true })
      expect(stored).toBe(DEVICES * BATCHES)
      // ~300 MB of frames were written; the file holds what lands between two restarts
      expect(largest).toBeLessThan(64 * 1024 * 1024)
    }).pipe(Effect.provide(Logger.layer([]))), 60_000)

  it.live("stays bounded with two sinks sharing the store (a node's workers), both committing back to back", () =>
    Effect.gen(function*() {
      const dir = tempDir("gw-wal-")
      const wal = Path.join(dir, "gateway.db-wal")
      const scope = yield* Scope.make()
      const open = () =>
        SqliteSink.make({ dataDir: dir, synchronous: "normal", checkpointEveryMs: 50, walRestartFrames: 256 }).pipe(Scope.provide(scope))
      const sinks = [yield* open(), yield* open()]
      let largest = 0
      yield* Effect.forEach(sinks, (sink, s) =>
        Effect.gen(function*() {
          for (let b = 0; b < BATCHES / 2; b++) {
            const batch = Array.from({ length: DEVICES }, (_, d) => telemetryEnvelope(`wal-${s}-${String(d).padStart(4, "0")}`, b))
            expect((yield* sink.write(batch)).outcomes).toEqual(new Uint8Array(DEVICES))
            largest = Math.max(largest, Fs.statSync(wal).size)
          }
        }), { concurrency: 2, discard: true })
      yield* Scope.close(scope, Exit.void)
      const db = new DatabaseSync(Path.join(dir, "gateway.db"), { readOnly: true })
      const stored = (db.prepare("SELECT count(*) AS n FROM messages").get() as { n: number }).n
      db.close()
      Fs.rmSync(dir, { recursive: true, force: true })
      expect(stored).toBe(DEVICES * BATCHES)
      expect(largest).toBeLessThan(64 * 1024 * 1024)
    }).pipe(Effect.provide(Logger.layer([]))), 60_000)

  it.live("grown past its limit while a reader held its restart off, it is cut back once it starts over", () =>
    Effect.gen(function*() {
      const dir = tempDir("gw-wal-")
      const wal = Path.join(dir, "gateway.db-wal")
      const scope = yield* Scope.make()
      const sink = yield* SqliteSink.make({ dataDir: dir, synchronous: "normal", checkpointEveryMs: 50, walRestartFrames: 256 }).pipe(
        Scope.provide(scope)
      )
      const batch = (b: number) => Array.from({ length: DEVICES }, (_, d) => telemetryEnvelope(`wal-device-${String(d).padStart(4, "0")}`, b))
      // an operator's long read: its snapshot keeps every frame since it began
      const reader = new DatabaseSync(Path.join(dir, "gateway.db"), { readOnly: true })
      reader.exec("BEGIN")
      reader.prepare("SELECT count(*) FROM messages").get()
      for (let b = 0; b < 300; b++) yield* sink.write(batch(b))
      const grown = Fs.statSync(wal).size
      reader.exec("COMMIT")
      reader.close()
      // the writes go on: the checkpointer first copies the ~300 MB back (its passes take a few
      // hundred ms), then the next restart cuts the file; how many batches that takes depends on
      // how fast they commit, so they go on until it happens or 15 s have passed
      const until = performance.now() + 15_000
      let after = Fs.statSync(wal).size
      for (let b = 300; after > 128 * 1024 * 1024 && performance.now() < until; b++) {
        yield* sink.write(batch(b))
        after = Fs.statSync(wal).size
      }
      yield* Scope.close(scope, Exit.void)
      Fs.rmSync(dir, { recursive: true, force: true })
      expect(grown).toBeGreaterThan(160 * 1024 * 1024)
      expect(after).toBeLessThanOrEqual(128 * 1024 * 1024)
    }).pipe(Effect.provide(Logger.layer([]))), 60_000)
})
