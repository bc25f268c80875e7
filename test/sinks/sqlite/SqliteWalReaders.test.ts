/**
 * From the attack on the WAL restart (SqliteCheckpointer.ts): short read transactions that overlap (a
 * dashboard's panels, an exporter polling the store, each read a few ms) leave no moment without
 * a reader whose snapshot is in the WAL. The checkpointer copies the tail under the write lock
 * and lets go, but the writer's next commit can start the WAL over only when no such reader is
 * left (SQLite's walRestartLog needs every read-mark lock): it never is, so the WAL grows for as
 * long as the writes and the reads last (measured 750-820 MiB in 6 s out of process, with
 * readers holding 4-20 ms; 29 MiB without them). `journal_size_limit` cannot help: it applies
 * when the WAL restarts (190 MiB in this test's 3 s before the fix). Readers that begin after
 * the copy read the database file only and do not hold a restart off: once readers held one off,
 * restarts are RESTART checkpoints that wait (up to 20 ms) for the older readers to end.
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
const HOLD_MS = 4

describe("WAL restart: overlapping short readers", () => {
  // restartFrames 256 = 1 MiB. With the readers a restart sometimes comes late (it waits for the
  // older readers), so the file's largest size steps up now and then: 41–82 MiB in this test's
  // 3 s, ~93 MiB and flat over a 20 s run. The bound is what a restart cuts the file back to
  // (journal_size_limit, 128 MiB); without the fix it grew by ~63 MiB a second
  it.live("the WAL stays bounded while two readers each hold a read for 4 ms, overlapping", () =>
    Effect.gen(function*() {
      const dir = tempDir("gw-walattack-")
      const path = Path.join(dir, "gateway.db")
      const wal = path + "-wal"
      const scope = yield* Scope.make()
      const sink = yield* SqliteSink.make({ dataDir: dir, synchronous: "normal", checkpointEveryMs: 50, walRestartFrames: 256 }).pipe(
        Scope.provide(scope)
      )
      let running = true
      let reads = 0
      const readers = [0, 1].map((i) => {
        const r = new DatabaseSync(path, { readOnly: true })
        const loop = () => {
          if (!running) return
          r.exec("BEGIN")
          r.prepare("SELECT max(rowid) FROM messages").get()
          setTimeout(() => {
            r.exec("COMMIT")
            reads++
            setImmediate(loop)
          }, HOLD_MS)
        }
        setTimeout(loop, (i * HOLD_MS) / 2)
        return r
      })
      let largest = 0
      const end = performance.now() + 3_000
      for (let b = 0; performance.now() < end; b++) {
        const batch = Array.from({ length: DEVICES }, (_, d) => telemetryEnvelope(`rd-${String(d).padStart(4, "0")}`, b))
        expect((yield* sink.write(batch)).outcomes).toEqual(new Uint8Array(DEVICES))
        largest = Math.max(largest, Fs.statSync(wal).size)
        yield* Effect.sleep(1) // lets the readers' timers run
      }
      running = false
      yield* Effect.sleep(3 * HOLD_MS)
      for (const r of readers) r.close()
      yield* Scope.close(scope, Exit.void)
      Fs.rmSync(dir, { recursive: true, force: true })
      console.log(`reads ${reads}, largest WAL ${(largest / 1048576).toFixed(0)} MiB`)
      expect(reads).toBeGreaterThan(100)
      expect(largest).toBeLessThan(128 * 1024 * 1024)
    }).pipe(Effect.provide(Logger.layer([]))), 60_000)
})
