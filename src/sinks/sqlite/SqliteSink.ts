/**
 * The embedded default sink: SQLite through Node 24's built-in `node:sqlite`, in WAL mode, at
 * `<dataDir>/gateway.db`. One transaction per batch; the unique key (device, epoch, seq) keeps
 * one row per message and reports resends as duplicates; each device's highest committed seq
 * per epoch is upserted in the same transaction, so `lastSeq` survives restarts.
 *
 * Threads: commits run on a writer thread ({@link ./SqliteWriter.ts}) and WAL checkpoints on a
 * checkpointer thread ({@link ./SqliteCheckpointer.ts}); the event loop keeps a read connection
 * for `lastSeq`. With `synchronous=NORMAL` (default) a commit survives a process crash; an OS
 * crash or power loss can lose the commits since the last checkpoint. `GATEWAY_SQLITE_SYNC=full`
 * fsyncs every commit.
 *
 * Health (readiness) follows the store's real writes: a write that fails (disk full, I/O error,
 * busy past its budget) makes the sink unhealthy until a write succeeds again; when no batch has
 * been written for {@link PROBE_EVERY_MS}, a probe write (a row into `messages` and out again, in
 * one commit) stands in for one, so an idle or drained gateway notices a fault and its repair
 * without device traffic. A store found corrupt, or removed or replaced under the gateway (the
 * writer compares the files at their paths with the ones it has open, after every write and
 * before its acks), is unavailable until restart. At start, the file's structure is checked
 * (`PRAGMA quick_check`: a small store's in the start itself, a larger one's in a child process
 * waited for at most {@link START_CHECK_BUDGET_MS}) and a probe write of a full batch's size is
 * made: a corrupt store stops the start; one that cannot take writes (disk full) starts not ready.
 */
import { Context, Deferred, Effect, FiberSet, Layer, Metric, Option, Schedule } from "effect"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { DatabaseSync } from "node:sqlite"
import * as Url from "node:url"
import { Worker } from "node:worker_threads"
import type { Envelope } from "../../domain/Envelope.ts"
import { PermanentPersistenceError, TransientUpstreamError } from "../../domain/Errors.ts"
import { record, sinkHealthy, watchStoreWal } from "../../observability/Metrics.ts"
import type { DeadLetter } from "../DeadLetters.ts"
import { Outcome } from "../Outcome.ts"
import { check as checkStore, type CheckReply } from "./SqliteCheck.ts"
import {
  describe,
  type Fault,
  type FileIdentity,
  freeBytes,
  lastSeqQuery,
  lostBecause,
  openDatabase,
  packEnvelopes,
  type DeviceSeq,
  safeJson,
  storeIdentity
} from "./SqliteStore.ts"
import type { DeadLetterRequest, ProbeRequest, StateRequest, WriteReply, WriteRequest } from "./SqliteWriter.ts"

/** The result of writing one batch to the store. */
export interface WriteResult {
  /** `outcomes[i]` is the Outcome code of `batch[i]`. */
  readonly outcomes: Uint8Array
  /** Why each rejected message was refused, by its index in the batch. */
  readonly rejections: ReadonlyMap<number, string>
}

/**
 * The gateway's embedded store (`<dataDir>/gateway.db`): the `messages` of the SQLite sink, the
 * dead letters, and each device's highest committed seq per epoch. Whole-batch failures are
 * typed by the taxonomy: `TransientUpstreamError` (may pass: disk full, I/O, busy) or
 * `PermanentPersistenceError` (the store is corrupt or lost until a restart).
 */
export interface LocalStoreShape {
  /** Commits a batch to `messages`. */
  readonly write: (batch: ReadonlyArray<Envelope>) => Effect.Effect<WriteResult, TransientUpstreamError | PermanentPersistenceError>
  /** Stores dead letters durably. */
  readonly deadLetter: (records: ReadonlyArray<DeadLetter>) => Effect.Effect<void, TransientUpstreamError>
  /** Highest committed seq of (device, epoch), or null when none is known (or the store at the path is no longer the one open). */
  readonly lastSeq: (device: string, epoch: number) => Effect.Effect<number | null, TransientUpstreamError>
  /** Raises `device_state` to what another sink committed (never lowers it). */
  readonly raiseStates: (states: ReadonlyArray<DeviceSeq>) => Effect.Effect<void, TransientUpstreamError>
  /** True while the store takes writes: follows its real writes. */
  readonly isHealthy: Effect.Effect<boolean>
  /** Why it takes no writes now (undefined while healthy). */
  readonly unavailableReason: Effect.Effect<string | undefined>
  /** True once the store takes no more writes in this process (corrupt, lost, writer gone). */
  readonly isBroken: Effect.Effect<boolean>
}

/** The embedded store as a service. */
export class LocalStore extends Context.Service<LocalStore, LocalStoreShape>()("gateway/LocalStore") {}

/** Options of the SQLite sink. */
export interface SqliteSinkOptions {
  readonly dataDir: string
  readonly synchronous: "normal" | "full"
  /** Milliseconds between background WAL checkpoints. */
  readonly checkpointEveryMs?: number
  /** WAL frames above which the WAL is restarted (see SqliteCheckpointer.ts). */
  readonly walRestartFrames?: number
  /** The largest batch the writer is sent, in frame bytes (batch bytes + one frame): sizes its heap. */
  readonly maxBatchBytes?: number
  /** How long the start waits for the store check (default {@link START_CHECK_BUDGET_MS}; 0: not at all). */
  readonly checkBudgetMs?: number
  /** Stores up to this size are checked at start without a child process (default {@link INLINE_CHECK_BYTES}). */
  readonly inlineCheckMaxBytes?: number
  /** Milliseconds without a write after which a probe write is made (default {@link PROBE_EVERY_MS}). */
  readonly probeEveryMs?: number
  /**
   * Whether `lastSeq` reads the highest seq in `messages` too (default true: SQLite is the only
   * sink, so a stored row is held by every sink of its route). False when other sinks take
   * messages too: a message is committed only once all its sinks have it, and the device-state
   * service raises `device_state` then.
   */
  readonly lastSeqFromMessages?: boolean
}

/**
 * How long the start waits for `PRAGMA quick_check`. Measured on a 1,000,000-message store
 * (194 MB): 0.4–0.6 s with the file in the page cache, 4.4 s from a cold disk. A check that
 * takes longer goes on in the background; if it then finds the store corrupt, the sink becomes
 * unavailable (it can no longer stop the start).
 */
export const START_CHECK_BUDGET_MS = 2_000

/** Bytes an idle probe writes while the store is healthy. */
const SMALL_PROBE_BYTES = 64

/** Milliseconds without a write (batch, dead letters or probe) after which the sink probes the store. */
export const PROBE_EVERY_MS = 1_000

/**
 * WAL frames (64 MiB at SQLite's 4 KiB pages) above which the checkpointer restarts the WAL
 * (SqliteCheckpointer.ts), holding the write lock for one short checkpoint (measured 7–18 ms):
 * at 20,000 msgs/s from 1,000 devices (~4 KiB of WAL a message: each row dirties its device's
 * index page) about every 0.7 s. Below this a WAL is left to restart by itself.
 */
const WAL_RESTART_FRAMES = 16_384

/** 1 while the sink takes writes (what `/readyz` reports), 0 otherwise. */
const healthyGauge = sinkHealthy("sqlite")

const faultCounters = new Map<Fault, Metric.Metric<number, unknown>>()
/** Failed store writes (batches, dead letters, probes) by fault: full, io, corrupt, readonly, busy, lost, other. */
const storeFaults = (fault: Fault): Metric.Metric<number, unknown> => {
  let m = faultCounters.get(fault)
  if (m === undefined) {
    faultCounters.set(
      fault,
      m = Metric.counter("gateway_sink_store_faults_total", {
        description: "store writes that failed, by fault (lost: the store file was removed or replaced)",
        attributes: { sink: "sqlite", fault }
      })
    )
  }
  return m
}

/** Milliseconds the start's store check took (set when it finishes). */
const checkMs = Metric.gauge("gateway_sink_store_check_ms", {
  description: "how long the store check at start (PRAGMA quick_check) took",
  attributes: { sink: "sqlite" }
})

/**
 * Old-generation limit of the writer thread, MB: room for the largest batch packed, parsed and
 * bound (re-serialized bodies can grow ~9× their frame bytes: 16× leaves room), at least 128 MB. A fixed 1 GB let the thread's
 * heap grow before collecting, which showed as ~30 MB more peak RSS in the latency benchmark.
 */
const writerHeapMb = (maxBatchBytes: number | undefined) =>
  Math.max(128, Math.ceil((16 * (maxBatchBytes ?? 0)) / (1024 * 1024)))

const startWorker = (file: string, workerData: unknown, oldGenerationMb = 128) =>
  Effect.acquireRelease(
    // a small young generation; the old one sized by the caller
    Effect.sync(() =>
      new Worker(new URL(file, import.meta.url), {
        workerData,
        resourceLimits: { maxYoungGenerationSizeMb: 8, maxOldGenerationSizeMb: oldGenerationMb }
      })
    ),
    (worker) => Effect.promise(() => worker.terminate())
  )

/** The SQLite sink as a scoped service: closing the scope checkpoints and closes the file. */
export const make = Effect.fn("SqliteSink.make")(function*(options: SqliteSinkOptions) {
  const path = Path.resolve(options.dataDir, "gateway.db")
  const probeEveryMs = options.probeEveryMs ?? PROBE_EVERY_MS
  const runFork = yield* FiberSet.makeRuntime<never, void, never>()
  let opened: ReadonlyArray<readonly [string, FileIdentity | undefined]> = []
  const reader = yield* Effect.acquireRelease(
    Effect.try({
      try: () => {
        Fs.mkdirSync(options.dataDir, { recursive: true })
        orphanWal(path)
        const db = openDatabase(path, options.synchronous) // creates the schema before the threads start
        db.exec("PRAGMA query_only = 1; PRAGMA cache_size = -2048")
        opened = storeIdentity(path)
        return db
      },
      catch: (cause) =>
        new PermanentPersistenceError({
          sink: "sqlite",
          message: `cannot open ${path}: ${describe(cause)}${lowOnSpace(options.dataDir)}`,
          cause
        })
    }),
    (db) => closeAndCheckpoint(db, path, opened)
  )
  const selectState = reader.prepare(lastSeqQuery(options.lastSeqFromMessages ?? true))
  yield* watchStoreWal(() => walBytes(path))

  // the structural check: a small store's here and now (~20 ms for 10 MB), a larger one's in its
  // own process while the writer starts
  const checkStarted = performance.now()
  const check = storeBytes(path) <= (options.inlineCheckMaxBytes ?? INLINE_CHECK_BYTES) ? checkNow(path) : yield* startCheck(path)

  const writer = yield* startWorker(
    "./SqliteWriter.ts",
    { path, synchronous: options.synchronous },
    writerHeapMb(options.maxBatchBytes)
  )
  yield* Effect.callback<void, PermanentPersistenceError>((resume) => {
    writer.once("message", () => resume(Effect.void))
    writer.once("error", (cause) =>
      resume(Effect.fail(new PermanentPersistenceError({ sink: "sqlite", message: `writer failed: ${describe(cause)}`, cause }))))
  })
  const checkpointer = yield* startWorker("./SqliteCheckpointer.ts", {
    path,
    everyMs: options.checkpointEveryMs ?? 250,
    restartFrames: options.walRestartFrames ?? WAL_RESTART_FRAMES
  })
  // a thread that cannot start (e.g. no file descriptor left) stops the start with one line
  yield* Effect.callback<void, PermanentPersistenceError>((resume) => {
    checkpointer.once("online", () => resume(Effect.void))
    checkpointer.once("error", (cause) =>
      resume(Effect.fail(new PermanentPersistenceError({ sink: "sqlite", message: `checkpointer failed: ${describe(cause)}`, cause }))))
  })
  // later, losing it costs no write (the WAL grows until the next checkpoint): a warning, not a crash
  checkpointer.on("error", (cause) =>
    runFork(Effect.logWarning("sqlite checkpointer thread failed; WAL checkpoints stopped").pipe(
      Effect.annotateLogs({ error: describe(cause) })
    )))

  // ---- health: what the last write said, unless the store is gone for good ----
  let writerAlive = true
  /** Why the store takes no more writes in this process (corrupt, lost); sticky. */
  let fatal: string | undefined
  /** Why the last write failed, until one succeeds. */
  let failing: string | undefined
  let lastReplyAt = performance.now()
  /**
   * What the next probe asks for: at start, that a write of a full batch's size succeeds and
   * that as many bytes are free on the filesystem; while writes fail, the same for the size of
   * the last one that failed (a small write can fit in room the WAL already has on a full disk,
   * where that one did not; free space alone does not see quotas or file-size limits); else a
   * small write.
   */
  const fullBatchBytes = Math.max(SMALL_PROBE_BYTES, options.maxBatchBytes ?? 1024 * 1024)
  let probeBytes = fullBatchBytes
  let needFree = fullBatchBytes
  /** Bytes of the batches with the writer, by request id. */
  const sentBytes = new Map<number, number>()
  const healthy = () => writerAlive && fatal === undefined && failing === undefined
  const showHealth = () => record(healthyGauge, healthy() ? 1 : 0)

  const becomeFatal = (message: string, fault: Fault) => {
    if (fatal !== undefined) return
    fatal = message
    showHealth()
    runFork(
      Effect.logError(`sqlite store unavailable until restart: ${message}`).pipe(
        Effect.annotateLogs({ sink: "sqlite", path, fault })
      )
    )
  }

  /** Every reply of the writer (batches, dead letters, probes) says whether the store takes writes. */
  const noteReply = (reply: WriteReply) => {
    lastReplyAt = performance.now()
    const bytes = sentBytes.get(reply.id) ?? 0
    sentBytes.delete(reply.id)
    if (reply.ok) {
      probeBytes = SMALL_PROBE_BYTES
      needFree = SMALL_PROBE_BYTES
      if (failing !== undefined && fatal === undefined) {
        failing = undefined
        runFork(Effect.logInfo("sqlite store takes writes again").pipe(Effect.annotateLogs({ sink: "sqlite", path })))
      }
    } else {
      record(storeFaults(reply.fault), 1)
      probeBytes = Math.min(fullBatchBytes, Math.max(probeBytes, bytes))
      needFree = Math.max(needFree, probeBytes)
      if (reply.fatal) becomeFatal(reply.message, reply.fault)
      else if (failing === undefined) {
        failing = reply.message
        runFork(
          Effect.logError(`sqlite store cannot take writes: ${reply.message}; not ready until a write succeeds`).pipe(
            Effect.annotateLogs({ sink: "sqlite", path, fault: reply.fault })
          )
        )
      } else failing = reply.message
    }
    showHealth()
  }

  const pending = new Map<number, (reply: WriteReply) => void>()
  let nextId = 0
  writer.on("message", (reply: WriteReply) => {
    noteReply(reply)
    const done = pending.get(reply.id)
    pending.delete(reply.id)
    done?.(reply)
  })
  writer.on("error", (cause) => {
    writerAlive = false
    showHealth()
    for (const done of pending.values()) {
      done({ id: -1, ok: false, transient: true, message: `writer thread died: ${describe(cause)}`, fault: "other", fatal: false })
    }
    pending.clear()
    sentBytes.clear()
  })
  yield* Effect.addFinalizer(() => Effect.sync(() => (writerAlive = false)))

  /** Sends one request (a fresh id each time it runs, retries included) and waits for its reply. */
  const request = (make: (id: number) => WriteRequest | DeadLetterRequest | StateRequest | ProbeRequest, bytes = 0) =>
    Effect.callback<WriteResult, TransientUpstreamError | PermanentPersistenceError>((resume) => {
      if (!writerAlive) return resume(Effect.fail(new TransientUpstreamError({ sink: "sqlite", message: "sqlite writer is not running" })))
      // not retried: only a restart can make the store usable again
      if (fatal !== undefined) return resume(Effect.fail(new PermanentPersistenceError({ sink: "sqlite", message: fatal })))
      const message = make(nextId++)
      if (bytes > 0) sentBytes.set(message.id, bytes)
      pending.set(message.id, (reply) =>
        resume(
          reply.ok
            ? Effect.succeed({ outcomes: reply.outcomes, rejections: new Map(reply.rejections) })
            : Effect.fail(
              reply.transient
                ? new TransientUpstreamError({ sink: "sqlite", message: reply.message })
                : new PermanentPersistenceError({ sink: "sqlite", message: reply.message })
            )
        ))
      writer.postMessage(message)
      // interrupted while waiting (shutdown): forget the reply, whenever it comes
      return Effect.sync(() => pending.delete(message.id))
    })

  const probe = Effect.suspend(() => request((id) => ({ id, probe: probeBytes, needFree }), probeBytes))

  // ---- start: the probe write now, the check within its budget ----
  yield* Effect.ignore(probe)
  if (fatal !== undefined) {
    return yield* new PermanentPersistenceError({ sink: "sqlite", message: `${path} is corrupt (write probe: ${fatal}); ${RECOVER}` })
  }
  const budget = options.checkBudgetMs ?? START_CHECK_BUDGET_MS
  const budgetLeft = Math.max(1, budget - (performance.now() - checkStarted))
  // a budget of 0: the start never waits for the check
  const found = budget <= 0 ? Option.none() : yield* check.result.pipe(Effect.timeout(budgetLeft), Effect.option)
  if (Option.isSome(found)) {
    const reply = found.value
    if (!reply.ok && !reply.corrupt) {
      return yield* new PermanentPersistenceError({ sink: "sqlite", message: `cannot check ${path}: ${reply.message}` })
    }
    const corrupt = corruption(reply)
    if (corrupt !== undefined) {
      return yield* new PermanentPersistenceError({ sink: "sqlite", message: `${path} is corrupt (${corrupt}); ${RECOVER}` })
    }
  } else {
    yield* Effect.logWarning("sqlite store check still running; the gateway starts meanwhile").pipe(
      Effect.annotateLogs({ sink: "sqlite", path, budgetMs: budget })
    )
    // too late to stop the start: a corrupt store is made unavailable instead
    yield* check.result.pipe(
      Effect.flatMap((reply) => {
        const corrupt = corruption(reply)
        if (corrupt !== undefined) return Effect.sync(() => becomeFatal(`store is corrupt (${corrupt})`, "corrupt"))
        return reply.ok ? Effect.void : Effect.logWarning("sqlite store check could not finish").pipe(
          Effect.annotateLogs({ sink: "sqlite", path, error: reply.message })
        )
      }),
      Effect.forkScoped
    )
  }
  showHealth()

  // while no batch is written, a probe write now and then tells whether the store still takes writes
  yield* Effect.suspend(() =>
    writerAlive && fatal === undefined && pending.size === 0 && performance.now() - lastReplyAt >= probeEveryMs
      ? Effect.ignore(probe)
      : Effect.void
  ).pipe(
    Effect.repeat(Schedule.spaced(Math.max(10, Math.floor(probeEveryMs / 4)))),
    Effect.forkScoped
  )

  const write = (batch: ReadonlyArray<Envelope>): Effect.Effect<WriteResult, TransientUpstreamError | PermanentPersistenceError> =>
    Effect.suspend(() => {
      const packed = packEnvelopes(batch)
      if (packed.refused.size === 0) return request((id) => ({ id, rows: packed.text, count: packed.count }), packed.text.length)
      // what cannot be stored is refused alone, and kept as a dead letter (as the store does)
      const keep = deadLetter([...packed.refused].map(([i, reason]) => ({ envelope: batch[i]!, reason }))).pipe(
        Effect.catchCause(() => Effect.void)
      )
      const sent = packed.count === 0
        ? Effect.succeed(EMPTY)
        : request((id) => ({ id, rows: packed.text, count: packed.count }), packed.text.length)
      return Effect.map(Effect.andThen(keep, sent), (result) => withRefused(batch.length, packed.refused, result))
    })

  const deadLetter = (records: ReadonlyArray<DeadLetter>) =>
    request((id) => ({
      id,
      deadLetters: records.map(({ envelope: e, reason }) => ({
        device: e.device,
        epoch: e.epoch,
        seq: e.seq,
        kind: e.kind,
        reason,
        envelope: safeJson(e)
      }))
    })).pipe(
      Effect.asVoid,
      Effect.mapError((e) => new TransientUpstreamError({ sink: "sqlite", message: `dead letters not stored: ${e.message}` }))
    )

  return LocalStore.of({
    write,
    deadLetter,
    // nothing read from a store that is no longer the one at the path (moved, replaced, corrupt):
    // its last commits were refused, and a restart opens another file
    lastSeq: (device, epoch) =>
      Effect.try({
        try: () => {
          if (fatal !== undefined) return null
          const stored = (selectState.get(device, epoch) as { last_seq: number | null } | undefined)?.last_seq ?? null
          return lostBecause(opened) === undefined ? stored : null
        },
        catch: (cause) => new TransientUpstreamError({ sink: "sqlite", message: describe(cause), cause })
      }),
    raiseStates: (states) =>
      request((id) => ({ id, states })).pipe(
        Effect.asVoid,
        Effect.mapError((e) => new TransientUpstreamError({ sink: "sqlite", message: `device states not stored: ${e.message}` }))
      ),
    isHealthy: Effect.sync(healthy),
    unavailableReason: Effect.sync(() => !writerAlive ? "writer thread not running" : fatal ?? failing),
    isBroken: Effect.sync(() => !writerAlive || fatal !== undefined)
  })
})

const EMPTY: WriteResult = { outcomes: new Uint8Array(0), rejections: new Map() }

/** The result for the whole batch: the writer's outcomes for the rows sent, Rejected for the rest. */
const withRefused = (size: number, refused: ReadonlyMap<number, string>, sent: WriteResult): WriteResult => {
  const outcomes = new Uint8Array(size)
  const rejections = new Map<number, string>()
  let k = 0
  for (let i = 0; i < size; i++) {
    const reason = refused.get(i)
    if (reason !== undefined) {
      outcomes[i] = Outcome.Rejected
      rejections.set(i, reason)
      continue
    }
    outcomes[i] = sent.outcomes[k]!
    const rejected = sent.rejections.get(k)
    if (rejected !== undefined) rejections.set(i, rejected)
    k++
  }
  return { outcomes, rejections }
}

/**
 * Final checkpoint so the WAL is folded into the database file, then close. When the file at
 * `path` is no longer the store that was opened, through the connection still open on it (its
 * WAL, still at the path after a `mv gateway.db`, folded into the file that was moved, and
 * emptied): opening the path would make a new empty store in its place (or fail, the directory
 * gone).
 */
const closeAndCheckpoint = (db: DatabaseSync, path: string, opened: ReadonlyArray<readonly [string, FileIdentity | undefined]>) =>
  Effect.gen(function*() {
    const lost = lostBecause(opened)
    if (lost !== undefined) {
      const folded = yield* Effect.try(() => db.exec("PRAGMA query_only = 0; PRAGMA wal_checkpoint(TRUNCATE)")).pipe(
        Effect.as("yes"),
        Effect.catch((e) => Effect.succeed(describe(e.cause)))
      )
      db.close()
      return yield* Effect.logWarning("sqlite store closed away from its path: no new store made there").pipe(
        Effect.annotateLogs({ sink: "sqlite", path, why: lost, walFoldedIntoIt: folded })
      )
    }
    db.close()
    yield* Effect.try(() => {
      const last = new DatabaseSync(path)
      try {
        last.exec("PRAGMA wal_checkpoint(TRUNCATE)")
      } finally {
        last.close()
      }
    }).pipe(Effect.catch((e) =>
      Effect.logWarning("sqlite final checkpoint failed; the WAL is kept and replayed at the next start").pipe(
        Effect.annotateLogs({ sink: "sqlite", path, error: describe(e.cause) })
      )
    ))
  })

/** Stores up to this size (database and WAL) are checked in the start itself, without a process. */
export const INLINE_CHECK_BYTES = 32 * 1024 * 1024

const storeBytes = (path: string) => (Fs.statSync(path, { throwIfNoEntry: false })?.size ?? 0) + walBytes(path)

/** The size of the store's WAL file (0 when there is none, or it cannot be looked at). */
const walBytes = (path: string): number => {
  try {
    return Fs.statSync(path + "-wal", { throwIfNoEntry: false })?.size ?? 0
  } catch {
    return 0
  }
}

/** The store check run now, on this thread. */
const checkNow = (path: string) => {
  const reply = checkStore(path)
  record(checkMs, reply.ms)
  return { result: Effect.succeed(reply) }
}

/**
 * The store check ({@link ./SqliteCheck.ts}) as a child process, and its answer, which comes once.
 * Closing the scope kills it if it still runs (a check inside SQLite cannot be stopped otherwise).
 */
const startCheck = (path: string) =>
  Effect.gen(function*() {
    const answer = Deferred.makeUnsafe<CheckReply>()
    const settle = (reply: CheckReply) => {
      if (Deferred.doneUnsafe(answer, Effect.succeed(reply))) record(checkMs, reply.ms)
    }
    const child = yield* Effect.acquireRelease(
      Effect.sync(() =>
        ChildProcess.spawn(
          process.execPath,
          ["--disable-warning=ExperimentalWarning", Url.fileURLToPath(new URL("./SqliteCheck.ts", import.meta.url)), path],
          { stdio: ["ignore", "pipe", "pipe"] }
        )
      ),
      (child) => Effect.sync(() => child.exitCode === null && child.signalCode === null && child.kill("SIGKILL"))
    )
    let out = ""
    let err = ""
    // a process that cannot be spawned (e.g. no file descriptor left) has no pipes, only an 'error'
    child.on("error", (cause) => settle({ ok: false, corrupt: false, message: describe(cause), ms: 0 }))
    child.stdout?.setEncoding("utf8").on("data", (d: string) => (out += d))
    child.stderr?.setEncoding("utf8").on("data", (d: string) => (err = (err + d).slice(-2_000)))
    child.once("close", (code, signal) => {
      try {
        settle(JSON.parse(out) as CheckReply)
      } catch {
        const why = signal !== null ? `killed by ${signal}` : `exit ${code}`
        settle({ ok: false, corrupt: false, message: `check process ${why}: ${oneLine(err.trim()) || "no output"}`, ms: 0 })
      }
    })
    return { result: Deferred.await(answer) }
  })

/**
 * Throws when `gateway.db-wal` holds commits but `gateway.db` is gone (moved or removed while a
 * gateway ran, then that gateway was killed): SQLite would delete that WAL on opening a new empty
 * `gateway.db`, and with it what it holds.
 */
const orphanWal = (path: string) => {
  const wal = Fs.statSync(path + "-wal", { throwIfNoEntry: false })
  if (wal !== undefined && wal.size > 0 && !Fs.existsSync(path)) {
    throw new Error(
      `${path}-wal holds ${wal.size} bytes of commits but ${path} is missing (moved or removed): put the database back ` +
        `beside it, or remove the WAL to start a new store`
    )
  }
}

/** Says so when the filesystem of `dir` is (nearly) full: SQLite's own message ("disk I/O error") does not. */
const lowOnSpace = (dir: string): string => {
  const free = freeBytes(dir)
  return free !== undefined && free < 1024 * 1024 ? ` (its filesystem has ${free} bytes free)` : ""
}

/** Problems on one line, at most ~300 characters. */
const oneLine = (text: string) => {
  const flat = text.replace(/\s*\n\s*/g, "; ")
  return flat.length > 300 ? `${flat.slice(0, 300)}…` : flat
}

const RECOVER = "restore it from a backup or recover it (sqlite3 gateway.db .recover) before starting"

/** What a check found wrong, in a few words; undefined when the store is sound or the check could not run. */
const corruption = (reply: CheckReply): string | undefined =>
  reply.ok
    ? reply.problems.length === 0 ? undefined : `PRAGMA quick_check: ${oneLine(reply.problems.join("; "))}`
    : reply.corrupt
    ? `PRAGMA quick_check: ${reply.message}`
    : undefined

/** The embedded store as the {@link LocalStore} service. */
export const layer = (options: SqliteSinkOptions) => Layer.effect(LocalStore, make(options))
