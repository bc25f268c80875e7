/**
 * The event loop's side of the outbox's writer thread (OutboxWriter.ts): starts the thread for
 * the life of a scope, sends it requests and waits for their replies, and keeps what the replies
 * say: the depth (exact as of the last reply: the thread answers in order) and whether the file
 * takes writes. A failed append or probe makes the outbox "failing" until one succeeds; while
 * failing, a probe write now and then tells when it takes writes again (no traffic needed); a
 * corrupt or lost file, or a dead thread, is for good (until restart).
 */
import { Data, Effect, Schedule, type Scope } from "effect"
import { Worker } from "node:worker_threads"
import type { SinkFailure } from "../Contract.ts"
import type { Fault } from "../sqlite/SqliteStore.ts"
import type { OutboxSettings } from "./OutboxSettings.ts"
import { OutboxStartError } from "./OutboxStartError.ts"
import { type Depth, describe, type Packed, type ReadRows } from "./OutboxStore.ts"
import type { OutboxReply, OutboxRequest, WriterCommand, WriterData, WriterHello } from "./OutboxWriter.ts"

/** A request the outbox's file could not do. */
export class OutboxFault extends Data.TaggedError("OutboxFault")<{
  readonly message: string
  readonly fault: Fault
  /** The outbox takes nothing more in this process. */
  readonly fatal: boolean
}> {}

/** Why the outbox cannot take writes now. */
export interface OutboxProblem {
  readonly reason: SinkFailure
  readonly message: string
}

/** The writer thread, as the wrapper and the forwarder use it. */
export interface OutboxClient {
  /** The depth as of the last reply. */
  readonly depth: () => Depth
  /** Appends not answered yet: while there are some, the outbox is not known to be empty. */
  readonly appendsInFlight: () => number
  /**
   * Stores packed rows stamped `now`; succeeds with how many were stored (a prefix). `onStored`
   * learns their ids as soon as the reply comes, before anyone is told the depth changed.
   */
  readonly append: (
    packed: Packed,
    now: number,
    onStored?: (firstId: number, stored: number) => void
  ) => Effect.Effect<number, OutboxFault>
  /** The oldest rows past `afterId`, at most `limit`, and the lastId the thread knew then. */
  readonly read: (afterId: number, limit: number) => Effect.Effect<ReadRows & { readonly lastId: number }, OutboxFault>
  /** Removes rows `fromId`..`toId` (read as `expect`, when known); succeeds with how many were removed. */
  readonly remove: (
    fromId: number,
    toId: number,
    expect?: { readonly count: number; readonly bytes: number }
  ) => Effect.Effect<number, OutboxFault>
  /** Why the file takes no writes now (failing, corrupt, lost, thread gone), or undefined. */
  readonly problem: () => OutboxProblem | undefined
}

/** What the client tells its owner after every reply (the depth may have changed). */
export type OnReply = (depth: Depth, op: OutboxRequest["op"]) => void

/** How often a failing outbox probes its file. */
const PROBE_EVERY_MS = 500

/** The smallest and largest probe (bytes): as large as the append that failed, within these. */
const PROBE_MIN_BYTES = 4_096
const PROBE_MAX_BYTES = 1024 * 1024

/**
 * Old-generation limit of the thread, MB: an append batch is one string on both sides, the
 * thread's own objects are a read batch's rows.
 */
const WRITER_HEAP_MB = 256

/** Starts the writer thread on `settings.file` for the life of the scope. */
export const makeOutboxClient = (
  settings: OutboxSettings,
  onReply: OnReply
): Effect.Effect<OutboxClient, OutboxStartError, Scope.Scope> =>
  Effect.gen(function*() {
    const file = settings.file
    const workerData: WriterData = {
      path: file,
      synchronous: settings.synchronous ?? "normal",
      maxBytes: settings.maxBytes,
      maxMessages: settings.maxMessages
    }
    const worker = yield* Effect.acquireRelease(
      Effect.try({
        try: () => {
          const w = new Worker(new URL("./OutboxWriter.ts", import.meta.url), {
            workerData,
            resourceLimits: { maxYoungGenerationSizeMb: 8, maxOldGenerationSizeMb: WRITER_HEAP_MB }
          })
          return { worker: w, exited: new Promise<void>((resolve) => w.once("exit", () => resolve())) }
        },
        catch: (cause) => new OutboxStartError({ file, message: `writer thread cannot start: ${describe(cause)}`, cause })
      }),
      closeWorker
    ).pipe(Effect.map(({ worker }) => worker))
    const hello = yield* Effect.callback<WriterHello, OutboxStartError>((resume) => {
      worker.once("message", (m: WriterHello) => resume(Effect.succeed(m)))
      worker.once("error", (cause) =>
        resume(Effect.fail(new OutboxStartError({ file, message: `writer thread failed: ${describe(cause)}`, cause }))))
    })
    if (!hello.ready) return yield* new OutboxStartError({ file, message: hello.message })

    let depth = hello.depth
    let appending = 0
    let alive = true
    let fatal: string | undefined
    /** Why the last append or probe failed, until one succeeds. */
    let failing: string | undefined
    let probeBytes = PROBE_MIN_BYTES
    const pending = new Map<number, (reply: OutboxReply) => void>()
    let nextId = 0

    worker.on("message", (reply: OutboxReply) => {
      depth = reply.depth
      const done = pending.get(reply.id)
      pending.delete(reply.id)
      done?.(reply)
    })
    worker.on("error", (cause) => {
      alive = false
      const message = `outbox writer thread died: ${describe(cause)}`
      for (const done of pending.values()) done({ id: -1, ok: false, depth, message, fault: "other", transient: false, fatal: true })
      pending.clear()
    })
    yield* Effect.addFinalizer(() => Effect.sync(() => (alive = false)))

    /** Sends a request (a fresh id each time it runs) and waits for its reply. */
    const request = (make: (id: number) => OutboxRequest, onOk?: (reply: Extract<OutboxReply, { ok: true }>) => void) =>
      Effect.callback<Extract<OutboxReply, { ok: true }>, OutboxFault>((resume) => {
        if (!alive) return resume(Effect.fail(new OutboxFault({ message: "outbox writer thread is not running", fault: "other", fatal: true })))
        const r = make(nextId++)
        const isAppend = r.op === "append"
        if (isAppend) appending++
        /** What every reply says, whether or not anyone still waits for it. */
        const note = (reply: OutboxReply) => {
          if (isAppend) appending--
          const write = r.op === "append" || r.op === "probe"
          if (reply.ok) {
            if (write) failing = undefined
            onOk?.(reply)
          } else if (reply.fatal) fatal ??= reply.message
          else if (write) failing = reply.message
          onReply(reply.depth, r.op)
        }
        pending.set(r.id, (reply) => {
          note(reply)
          resume(reply.ok ? Effect.succeed(reply) : Effect.fail(new OutboxFault({ message: reply.message, fault: reply.fault, fatal: reply.fatal })))
        })
        worker.postMessage(r satisfies WriterCommand)
        // interrupted while waiting: the reply still comes, and still counts (depth, appends in flight)
        return Effect.sync(() => void pending.set(r.id, note))
      })

    const append = (packed: Packed, now: number, onStored?: (firstId: number, stored: number) => void) =>
      Effect.suspend(() => {
        probeBytes = Math.min(PROBE_MAX_BYTES, Math.max(PROBE_MIN_BYTES, packed.text.length))
        return Effect.map(
          request(
            (id) => ({ id, op: "append", rows: packed.text, now }),
            // the rows stored have the ids up to the last given (one writer, one transaction)
            onStored === undefined ? undefined : (r) => r.count > 0 && onStored(r.depth.lastId - r.count + 1, r.count)
          ),
          (r) => r.count
        )
      })

    // while failing, a probe write now and then: the outbox becomes ready again without traffic
    yield* Effect.suspend(() =>
      alive && fatal === undefined && failing !== undefined
        ? Effect.ignore(request((id) => ({ id, op: "probe", bytes: probeBytes })))
        : Effect.void
    ).pipe(Effect.repeat(Schedule.spaced(PROBE_EVERY_MS)), Effect.forkScoped)

    return {
      depth: () => depth,
      appendsInFlight: () => appending,
      append,
      read: (afterId, limit) =>
        Effect.map(request((id) => ({ id, op: "read", afterId, limit })), (r) => ({
          ids: r.ids ?? new Float64Array(0),
          json: r.json ?? "[]",
          bytes: r.bytes ?? 0,
          lastId: r.depth.lastId
        })),
      remove: (fromId, toId, expect) =>
        Effect.map(request((id) => ({ id, op: "remove", fromId, toId, expect: expect ?? null })), (r) => r.count),
      problem: () =>
        !alive
          ? { reason: "unavailable", message: "outbox writer thread is not running" }
          : fatal !== undefined
          ? { reason: "corrupt", message: fatal }
          : failing !== undefined
          ? { reason: "unavailable", message: `outbox cannot store: ${failing}` }
          : undefined
    } satisfies OutboxClient
  })

/** Asks the thread to close the file (checkpointing the WAL into it) and waits for it to end; terminated after 10 s. */
const closeWorker = ({ worker, exited }: { readonly worker: Worker; readonly exited: Promise<void> }) =>
  Effect.promise(() => {
    const timer = setTimeout(() => void worker.terminate(), 10_000)
    worker.postMessage("close" satisfies WriterCommand)
    return exited.finally(() => clearTimeout(timer))
  })
