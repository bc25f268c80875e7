/**
 * `welcome.lastSeq` from the embedded store (real sink, real threads, a store in a temporary
 * directory). With SQLite the only sink it is the highest seq stored in `messages` for (device,
 * epoch), and batches write no `device_state` rows; a `device_state` row (an earlier version's,
 * or rows removed since) still counts, so the answer never falls below what the store reported
 * before. With other sinks in the routes only `device_state` counts: a stored row may not be held
 * by every sink of its route yet.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Logger } from "effect"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { openDatabase } from "../../../src/sinks/sqlite/SqliteStore.ts"
import { telemetryIn as envelopes } from "../../support/envelopes.ts"
import { tempDir } from "../../support/gateway.ts"
import { withSink } from "../../support/sqliteSink.ts"
import { countIn } from "../../support/store.ts"

describe("lastSeq from the embedded store", () => {
  it.live("with SQLite alone: the highest seq stored for (device, epoch); no device_state rows written", () =>
    Effect.gen(function*() {
      const dir = tempDir("gw-lastseq-")
      const seen = yield* withSink(dir, {}, (sink) =>
        Effect.gen(function*() {
          const before = yield* sink.lastSeq("dev-a", 1)
          // out of order, with a gap (events overtake telemetry), then a resend of stored ones
          yield* sink.write(envelopes("dev-a", 1, 5, 3))
          yield* sink.write(envelopes("dev-a", 1, 0, 2))
          yield* sink.write(envelopes("dev-a", 1, 6, 3))
          yield* sink.write(envelopes("dev-a", 2, 100, 1))
          yield* sink.write(envelopes("dev-b", 1, 40, 1))
          return {
            before,
            a1: yield* sink.lastSeq("dev-a", 1),
            a2: yield* sink.lastSeq("dev-a", 2),
            a3: yield* sink.lastSeq("dev-a", 3),
            b1: yield* sink.lastSeq("dev-b", 1),
            other: yield* sink.lastSeq("dev-c", 1)
          }
        }))
      expect(seen).toEqual({ before: null, a1: 8, a2: 100, a3: null, b1: 40, other: null })
      expect(countIn(dir, "SELECT count(*) AS n FROM device_state")).toBe(0)
      expect(countIn(dir, "SELECT count(*) AS n FROM messages WHERE device = 'dev-a' AND epoch = 1")).toBe(6)
      Fs.rmSync(dir, { recursive: true, force: true })
    }).pipe(Effect.provide(Logger.layer([]))), 30_000)

  it.live("a device_state row above what messages hold (an earlier version's, rows removed since) still counts", () =>
    Effect.gen(function*() {
      const dir = tempDir("gw-lastseq-")
      // a store as an earlier version left it: states raised with every batch, rows since deleted
      const old = openDatabase(Path.join(dir, "gateway.db"), "normal")
      old.exec(`INSERT INTO device_state (device, epoch, last_seq) VALUES ('dev-old', 0, 500), ('dev-low', 0, 3)`)
      old.close()
      const seen = yield* withSink(dir, {}, (sink) =>
        Effect.gen(function*() {
          yield* sink.write(envelopes("dev-old", 0, 10, 5))
          yield* sink.write(envelopes("dev-low", 0, 10, 5))
          return { old: yield* sink.lastSeq("dev-old", 0), low: yield* sink.lastSeq("dev-low", 0) }
        }))
      expect(seen).toEqual({ old: 500, low: 14 })
      Fs.rmSync(dir, { recursive: true, force: true })
    }).pipe(Effect.provide(Logger.layer([]))), 30_000)

  it.live("with other sinks in the routes: only device_state counts, raised when every sink confirmed", () =>
    Effect.gen(function*() {
      const dir = tempDir("gw-lastseq-")
      const seen = yield* withSink(dir, { lastSeqFromMessages: false }, (sink) =>
        Effect.gen(function*() {
          yield* sink.write(envelopes("dev-r", 0, 0, 10))
          const storedOnly = yield* sink.lastSeq("dev-r", 0)
          yield* sink.raiseStates([["dev-r", 0, 6]])
          const raised = yield* sink.lastSeq("dev-r", 0)
          yield* sink.raiseStates([["dev-r", 0, 2]])
          return { storedOnly, raised, notLowered: yield* sink.lastSeq("dev-r", 0) }
        }))
      expect(seen).toEqual({ storedOnly: null, raised: 6, notLowered: 6 })
      Fs.rmSync(dir, { recursive: true, force: true })
    }).pipe(Effect.provide(Logger.layer([]))), 30_000)
})
