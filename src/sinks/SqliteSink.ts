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
 */
import { Effect, FiberSet, Layer } from "effect"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { DatabaseSync } from "node:sqlite"
import { Worker } from "node:worker_threads"
import type { Envelope } from "../domain/Envelope.ts"
import { PermanentPersistenceError, TransientUpstreamError } from "../domain/Errors.ts"
import { type DeadLetter, Outcome, Sink, type WriteResult } from "./Sink.ts"
import { describe, openDatabase, packEnvelopes, safeJson } from "./SqliteStore.ts"
import type { DeadLetterRequest, WriteReply, WriteRequest } from "./SqliteWriter.ts"

/** Options of the SQLite sink. */
export interface SqliteSinkOptions {
  readonly dataDir: string
  readonly synchronous: "normal" | "full"
  /** Milliseconds between background WAL checkpoints. */
  readonly checkpointEveryMs?: number
  /** The largest batch the writer is sent, in frame bytes (batch bytes + one frame): sizes its heap. */
  readonly maxBatchBytes?: number
}

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
  const reader = yield* Effect.acquireRelease(
    Effect.try({
      try: () => {
        Fs.mkdirSync(options.dataDir, { recursive: true })
        const db = openDatabase(path, options.synchronous) // creates the schema before the threads start
        db.exec("PRAGMA query_only = 1; PRAGMA cache_size = -2048")
        return db
      },
      catch: (cause) => new PermanentPersistenceError({ sink: "sqlite", message: `cannot open ${path}: ${describe(cause)}`, cause })
    }),
    (db) => Effect.sync(() => closeAndCheckpoint(db, path))
  )
  const selectState = reader.prepare(`SELECT last_seq FROM device_state WHERE device = ? AND epoch = ?`)

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
  const checkpointer = yield* startWorker("./SqliteCheckpointer.ts", { path, everyMs: options.checkpointEveryMs ?? 250 })
  // a thread that cannot start (e.g. no file descriptor left) stops the start with one line
  yield* Effect.callback<void, PermanentPersistenceError>((resume) => {
    checkpointer.once("online", () => resume(Effect.void))
    checkpointer.once("error", (cause) =>
      resume(Effect.fail(new PermanentPersistenceError({ sink: "sqlite", message: `checkpointer failed: ${describe(cause)}`, cause }))))
  })
  // later, losing it costs no write (the WAL grows until the next checkpoint): a warning, not a crash
  const runFork = yield* FiberSet.makeRuntime<never, void, never>()
  checkpointer.on("error", (cause) =>
    runFork(Effect.logWarning("sqlite checkpointer thread failed; WAL checkpoints stopped").pipe(
      Effect.annotateLogs({ error: describe(cause) })
    )))

  const pending = new Map<number, (reply: WriteReply) => void>()
  let nextId = 0
  let healthy = true
  writer.on("message", (reply: WriteReply) => {
    const done = pending.get(reply.id)
    pending.delete(reply.id)
    done?.(reply)
  })
  writer.on("error", (cause) => {
    healthy = false
    for (const done of pending.values()) done({ id: -1, ok: false, transient: true, message: `writer thread died: ${describe(cause)}` })
    pending.clear()
  })
  yield* Effect.addFinalizer(() => Effect.sync(() => (healthy = false)))

  /** Sends one request (a fresh id each time it runs, retries included) and waits for its reply. */
  const request = (make: (id: number) => WriteRequest | DeadLetterRequest) =>
    Effect.callback<WriteResult, TransientUpstreamError | PermanentPersistenceError>((resume) => {
      if (!healthy) return resume(Effect.fail(new TransientUpstreamError({ sink: "sqlite", message: "sqlite writer is not running" })))
      const message = make(nextId++)
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

  const write = (batch: ReadonlyArray<Envelope>): Effect.Effect<WriteResult, TransientUpstreamError | PermanentPersistenceError> =>
    Effect.suspend(() => {
      const packed = packEnvelopes(batch)
      if (packed.refused.size === 0) return request((id) => ({ id, rows: packed.text, count: packed.count }))
      // what cannot be stored is refused alone, and kept as a dead letter (as the store does)
      const keep = deadLetter([...packed.refused].map(([i, reason]) => ({ envelope: batch[i]!, reason }))).pipe(
        Effect.catchCause(() => Effect.void)
      )
      const sent = packed.count === 0 ? Effect.succeed(EMPTY) : request((id) => ({ id, rows: packed.text, count: packed.count }))
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

  return Sink.of({
    name: "sqlite",
    write,
    deadLetter,
    lastSeq: (device, epoch) =>
      Effect.try({
        try: () => (selectState.get(device, epoch) as { last_seq: number } | undefined)?.last_seq ?? null,
        catch: (cause) => new TransientUpstreamError({ sink: "sqlite", message: describe(cause), cause })
      }),
    isHealthy: Effect.sync(() => healthy)
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

/** Final checkpoint so the WAL is folded into the database file, then close. */
const closeAndCheckpoint = (db: DatabaseSync, path: string) => {
  db.close()
  const last = new DatabaseSync(path)
  try {
    last.exec("PRAGMA wal_checkpoint(TRUNCATE)")
  } finally {
    last.close()
  }
}

/** The SQLite sink provided as the generic {@link Sink}. */
export const layer = (options: SqliteSinkOptions) => Layer.effect(Sink, make(options))
