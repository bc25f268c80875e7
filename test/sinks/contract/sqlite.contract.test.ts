/**
 * The sink contract suite (suite.ts) against the SQLite driver (SqliteDriver.ts over a real
 * SqliteSink store in a directory of its own, probing every 100 ms).
 *
 * Unavailable, for real: where `mount` is permitted, each store lives on a 16 MB tmpfs of its
 * own, and the outage is a FULL DISK: a file fills the filesystem, then a connection of the
 * test's own commits blobs into a table of its own until SQLite says the disk is full (the room
 * the WAL already had is used up too, and its checkpoint, which would have to grow the database
 * file, cannot run: no write of the sink fits anywhere). Removing the file is the repair. Where
 * `mount` is not permitted (or GATEWAY_CONTRACT_SQLITE_OUTAGE=lock), the outage is ANOTHER
 * WRITER HOLDING THE LOCK (`BEGIN IMMEDIATE` on a connection of the test's own, past the
 * writer's 1 s budget: SQLITE_BUSY), and the repair its ROLLBACK. A file-size limit
 * (RLIMIT_FSIZE, storeFaults.test.ts's other fallback) is not used: here it would limit the
 * test process itself, not a gateway child.
 *
 * Refused for good: a message a stage gave a field JSON cannot hold (a BigInt): the store cannot
 * write it (SqliteStore.ts packEnvelopes), keeps it as a dead letter and rejects it alone.
 */
import { Effect, Logger } from "effect"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { DatabaseSync } from "node:sqlite"
import type { Envelope } from "../../../src/domain/Envelope.ts"
import { sqliteDriver } from "../../../src/sinks/sqlite/SqliteDriver.ts"
import * as SqliteSink from "../../../src/sinks/sqlite/SqliteSink.ts"
import { telemetryEnvelope } from "../../support/envelopes.ts"
import { contractSuite, type DriverInstance, type Outage, type StoredKey, traceparentOf } from "./suite.ts"

const quiet = Effect.provide(Logger.layer([]))

/** A directory for one store: on a 16 MB tmpfs of its own when `mount` is permitted. */
interface Disk {
  readonly dataDir: string
  /** The tmpfs's mount point, when there is one. */
  readonly mount: string | undefined
  readonly remove: () => void
}

const forceLock = process.env["GATEWAY_CONTRACT_SQLITE_OUTAGE"] === "lock"

const newDisk = (): Disk => {
  const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "gw-contract-sqlite-"))
  const mounted = !forceLock &&
    ChildProcess.spawnSync("mount", ["-t", "tmpfs", "-o", "size=16m", "tmpfs", dir], { encoding: "utf8" }).status === 0
  return {
    dataDir: Path.join(dir, "data"),
    mount: mounted ? dir : undefined,
    remove: () => {
      if (mounted) ChildProcess.spawnSync("umount", ["-l", dir])
      Fs.rmSync(dir, { recursive: true, force: true })
    }
  }
}

/** Writes a file until the filesystem of `dir` is full (ENOSPC); returns its path. */
const fillFilesystem = (dir: string): string => {
  const file = Path.join(dir, "filler")
  const fd = Fs.openSync(file, "a")
  try {
    for (const size of [1_048_576, 65_536, 4_096, 512, 1]) {
      const chunk = Buffer.alloc(size, 7)
      try {
        for (;;) Fs.writeSync(fd, chunk)
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== "ENOSPC") throw error
      }
    }
  } finally {
    Fs.closeSync(fd)
  }
  return file
}

/** SQLITE_FULL or SQLITE_IOERR (a short write on a full filesystem). */
const isDiskFull = (e: unknown): boolean => {
  const code = ((e as { readonly errcode?: number }).errcode ?? 0) & 0xff
  return code === 13 || code === 10
}

/**
 * Commits blobs into `contract_ballast` (a table of the test's own) until SQLite says the disk is
 * full, smaller and smaller, and then a few one-byte ones: whatever room the WAL file still had
 * is taken, and no commit of the sink (each at least a frame) fits.
 */
const exhaustStore = (path: string) => {
  const db = new DatabaseSync(path)
  try {
    db.exec("PRAGMA busy_timeout = 5000")
    const insert = db.prepare("INSERT INTO contract_ballast (b) VALUES (randomblob(?))")
    for (const size of [262_144, 16_384, 1_024, 1]) {
      let failures = 0
      while (failures < 3) {
        try {
          insert.run(size)
          failures = 0
        } catch (error) {
          if (!isDiskFull(error)) throw error
          failures++
        }
      }
    }
  } finally {
    db.close()
  }
}

/** A full disk on the store's tmpfs, and room again. */
const fullDisk = (mount: string, path: string): Outage => {
  let filler: string | undefined
  return {
    kind: "outage",
    condition: "disk full (16 MB tmpfs filled, the WAL's room used up)",
    begin: Effect.sync(() => {
      const db = new DatabaseSync(path)
      try {
        db.exec("PRAGMA busy_timeout = 5000; CREATE TABLE IF NOT EXISTS contract_ballast (b BLOB)")
      } finally {
        db.close()
      }
      filler = fillFilesystem(mount)
      exhaustStore(path)
    }),
    end: Effect.sync(() => {
      if (filler !== undefined) Fs.rmSync(filler, { force: true })
      filler = undefined
    })
  }
}

/** Another writer holding the store's write lock, and letting it go. */
const heldLock = (path: string): Outage => {
  let holder: DatabaseSync | undefined
  return {
    kind: "outage",
    condition: "another writer holds the write lock (SQLITE_BUSY)",
    begin: Effect.sync(() => {
      const db = new DatabaseSync(path)
      db.exec("PRAGMA busy_timeout = 5000")
      db.exec("BEGIN IMMEDIATE")
      holder = db
    }),
    end: Effect.sync(() => {
      const db = holder
      holder = undefined
      if (db === undefined) return
      db.exec("ROLLBACK")
      db.close()
    })
  }
}

/** What `messages` holds for `keys`, on a read-only connection of its own. */
const storedIn = (path: string, keys: ReadonlyArray<string>): ReadonlyMap<string, StoredKey> => {
  const wanted = new Set(keys)
  const out = new Map<string, StoredKey>()
  const db = new DatabaseSync(path, { readOnly: true })
  try {
    const rows = db.prepare(
      "SELECT device, epoch, seq, count(*) AS n, count(traceparent) AS traced FROM messages GROUP BY device, epoch, seq"
    ).all() as Array<{ device: string; epoch: number; seq: number; n: number; traced: number }>
    for (const r of rows) {
      const key = `${r.device}:${r.epoch}:${r.seq}`
      if (wanted.has(key)) out.set(key, { count: r.n, traceparent: r.traced === r.n })
    }
  } finally {
    db.close()
  }
  return out
}

const make = Effect.gen(function*() {
  const disk = yield* Effect.acquireRelease(Effect.sync(newDisk), (d) => Effect.sync(d.remove))
  const store = yield* SqliteSink.make({ dataDir: disk.dataDir, synchronous: "normal", probeEveryMs: 100 })
  const path = Path.join(disk.dataDir, "gateway.db")
  return {
    driver: sqliteDriver(store),
    stored: (keys) => Effect.sync(() => storedIn(path, keys)),
    outage: disk.mount !== undefined ? fullDisk(disk.mount, path) : heldLock(path)
  } satisfies DriverInstance
}).pipe(quiet)

contractSuite("sqlite", {
  missing: undefined,
  make,
  refused: {
    what: "a field JSON cannot hold, a BigInt",
    make: (device: string, seq: number): Envelope =>
      ({ ...telemetryEnvelope(device, seq), traceparent: traceparentOf(seq), huge: 10n }) as Envelope
  },
  healthDeadlineMs: 5_000,
  timeoutMs: 30_000
})
