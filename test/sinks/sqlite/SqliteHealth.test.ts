/**
 * The SQLite sink's health (what `/readyz` reports) follows its real writes, on real stores in
 * temporary directories (node:sqlite, the sink's own threads):
 * - a write that fails (here: another connection holds the write lock past the writer's budget,
 *   SQLITE_BUSY) makes the sink unhealthy, with the reason; once the lock is free, its probe
 *   write makes it healthy again without any batch;
 * - the file renamed (or replaced) under the sink: the batch written after it fails (never
 *   acknowledged), the sink stays unavailable even once the file is back (until restart), and
 *   it does not make a new store at the path when it closes;
 * - the start check in its own process (for large stores; forced here): a corrupt store stops
 *   the start; found after the start's budget, it makes the sink unavailable then.
 *
 * Each failed against 9ac6edc: the sink was healthy whenever its writer thread was alive, wrote
 * on into a renamed file (and made a new empty `gateway.db` at the path when it closed), and had
 * no start check.
 */
import { afterEach, describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Logger, Scope } from "effect"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { DatabaseSync } from "node:sqlite"

import * as SqliteSink from "../../../src/sinks/sqlite/SqliteSink.ts"
import { openDatabase, prepare, type Row, writeBatch } from "../../../src/sinks/sqlite/SqliteStore.ts"
import { telemetryEnvelope } from "../../support/envelopes.ts"
import { tempDir } from "../../support/gateway.ts"

const dirs: Array<string> = []
afterEach(() => {
  for (const d of dirs.splice(0)) Fs.rmSync(d, { recursive: true, force: true })
})

const dataDir = () => {
  const d = tempDir("gw-health-")
  dirs.push(d)
  return d
}

/** The sink's log lines are not this test's output. */
const quiet = Effect.provide(Logger.layer([]))

const sleep = (ms: number) => Effect.promise(() => new Promise<void>((resolve) => setTimeout(resolve, ms)))

/** Polls the sink's health every 20 ms until it is `want`; fails after `ms`. */
const healthBecomes = (sink: SqliteSink.LocalStoreShape, want: boolean, ms: number) =>
  Effect.gen(function*() {
    const deadline = Date.now() + ms
    while ((yield* sink.isHealthy) !== want) {
      if (Date.now() > deadline) return yield* Effect.die(new Error(`sink not ${want ? "healthy" : "unhealthy"} within ${ms} ms`))
      yield* sleep(20)
    }
  })

const batch = (device: string, from: number, n: number) => Array.from({ length: n }, (_, i) => telemetryEnvelope(device, from + i))

/** A sink on `dir` in its own scope (closed by the returned `close`). */
const openSink = (dir: string, options: Partial<SqliteSink.SqliteSinkOptions> = {}) =>
  Effect.gen(function*() {
    const scope = yield* Scope.make()
    const sink = yield* SqliteSink.make({ dataDir: dir, synchronous: "normal", probeEveryMs: 100, ...options }).pipe(Scope.provide(scope))
    return { sink, close: Scope.close(scope, Exit.void) }
  })

const count = (path: string) => {
  const db = new DatabaseSync(path, { readOnly: true })
  try {
    return (db.prepare("SELECT count(*) AS n FROM messages").get() as { n: number }).n
  } finally {
    db.close()
  }
}

/** A store of 3,000 messages with a garbled leaf page of `messages_key`, far from any key the sink writes. */
const corruptStore = () => {
  const dir = dataDir()
  const path = Path.join(dir, "gateway.db")
  const db = openDatabase(path, "normal")
  const st = prepare(db)
  const row = (seq: number): Row => [`dev-${seq % 7}`, 0, seq, "telemetry", 1, 2, "gw", null, `{"metrics":{"t":${seq}}}`, null]
  writeBatch(db, st, Array.from({ length: 3_000 }, (_, i) => row(i)), 0)
  db.exec("PRAGMA wal_checkpoint(TRUNCATE)")
  const pageSize = (db.prepare("PRAGMA page_size").get() as { page_size: number }).page_size
  const leaves = (db.prepare("SELECT pageno FROM dbstat WHERE name = 'messages_key' AND pagetype = 'leaf' ORDER BY pageno")
    .all() as Array<{ pageno: number }>).map((r) => r.pageno)
  db.close()
  const fd = Fs.openSync(path, "r+")
  Fs.writeSync(fd, Buffer.alloc(pageSize, 0x5a), 0, pageSize, (leaves[leaves.length - 1]! - 1) * pageSize)
  Fs.closeSync(fd)
  return dir
}

describe("SQLite sink health", () => {
  it.live("a failed write makes it unhealthy with the reason; a probe write makes it healthy again without a batch", () =>
    Effect.gen(function*() {
      const dir = dataDir()
      const { sink, close } = yield* openSink(dir)
      expect(yield* sink.isHealthy).toBe(true)
      expect((yield* sink.write(batch("d1", 0, 10))).outcomes).toEqual(new Uint8Array(10))

      // another process's writer holds the lock longer than the writer waits (1 s)
      const other = new DatabaseSync(Path.join(dir, "gateway.db"))
      other.exec("BEGIN IMMEDIATE")
      const failed = yield* Effect.flip(sink.write(batch("d1", 10, 10)))
      expect(failed._tag).toBe("TransientUpstreamError")
      expect(yield* sink.isHealthy).toBe(false)
      expect(yield* (sink.unavailableReason ?? Effect.succeed("no reason"))).toBe("database is locked")
      // the probe keeps failing while the lock is held
      yield* sleep(400)
      expect(yield* sink.isHealthy).toBe(false)

      other.exec("ROLLBACK")
      other.close()
      yield* healthBecomes(sink, true, 3_000)
      expect(yield* (sink.unavailableReason ?? Effect.succeed("no reason"))).toBeUndefined()
      expect((yield* sink.write(batch("d1", 10, 10))).outcomes).toEqual(new Uint8Array(10))
      yield* close
      expect(count(Path.join(dir, "gateway.db"))).toBe(20)
    }).pipe(quiet), 20_000)

  it.live("the file renamed under it: the next batch fails, unavailable until restart, no new store made at the path", () =>
    Effect.gen(function*() {
      const dir = dataDir()
      const path = Path.join(dir, "gateway.db")
      const { sink, close } = yield* openSink(dir)
      yield* sink.write(batch("d1", 0, 10))

      Fs.renameSync(path, Path.join(dir, "moved.db"))
      const failed = yield* Effect.flip(sink.write(batch("d1", 10, 10)))
      // not retried (PermanentPersistenceError): only a restart can help
      expect({ tag: failed._tag, message: failed.message }).toEqual({
        tag: "PermanentPersistenceError",
        message: `store lost: ${path} was removed or renamed under the running gateway`
      })
      expect(yield* sink.isHealthy).toBe(false)

      // back in place: still unavailable (what was committed meanwhile went to a file that was not at the path)
      Fs.renameSync(Path.join(dir, "moved.db"), path)
      yield* sleep(300)
      expect(yield* sink.isHealthy).toBe(false)
      expect((yield* Effect.flip(sink.write(batch("d1", 20, 10))))._tag).toBe("PermanentPersistenceError")
      expect((yield* Effect.flip(sink.write(batch("d1", 30, 10)))).message).toContain("store lost")

      Fs.renameSync(path, Path.join(dir, "moved.db"))
      yield* close
      expect(Fs.existsSync(path)).toBe(false)
    }).pipe(quiet), 20_000)

  it.live("the check process finds a corrupt store within its budget: the start fails with the reason", () =>
    Effect.gen(function*() {
      const dir = corruptStore()
      const failed = yield* Effect.flip(openSink(dir, { inlineCheckMaxBytes: 0 }))
      expect(failed._tag).toBe("PermanentPersistenceError")
      expect(failed.message).toMatch(/gateway\.db is corrupt \(PRAGMA quick_check: .*btreeInitPage.*\); restore it from a backup/)
    }).pipe(quiet), 20_000)

  it.live("a check process that outlived its budget: the corruption it finds later makes the sink unavailable", () =>
    Effect.gen(function*() {
      const dir = corruptStore()
      const { sink, close } = yield* openSink(dir, { checkBudgetMs: 0, inlineCheckMaxBytes: 0 })
      expect(yield* sink.isHealthy).toBe(true)
      yield* healthBecomes(sink, false, 10_000)
      const reason = yield* (sink.unavailableReason ?? Effect.succeed(undefined))
      expect(reason).toMatch(/^store is corrupt \(PRAGMA quick_check: .+\)$/)
      const failed = yield* Effect.flip(sink.write(batch("d1", 0, 5)))
      expect(failed.message).toBe(reason)
      yield* close
    }).pipe(quiet), 20_000)
})
