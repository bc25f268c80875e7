/**
 * Writer thread of the outbox: owns its one SQLite connection (appends, reads for forwarding,
 * removals, probes), so no commit, checkpoint or vacuum ever blocks the event loop. One request
 * in, one reply out, in order (the thread does one thing at a time, so replies arrive in the
 * order requests were posted, and the depth in each reply is exact as of that request).
 *
 * After every write, before its reply (so before any of its acks), the thread checks that the
 * file and its WAL at their paths are still the ones it has open (two `stat` calls, as the
 * SQLite sink's writer does): a commit into a file that was removed or replaced is not
 * acknowledged, and from then on, or once a write found the file corrupt, every request fails
 * unwritten (`fatal`): the outbox takes nothing more until the process restarts.
 */
import * as Path from "node:path"
import { parentPort, workerData } from "node:worker_threads"
import { type Fault, faultOf, freeBytes, isFatal, isTransient, lostBecause, storeIdentity } from "../sqlite/SqliteStore.ts"
import { append, type Depth, describe, type Limits, openOutbox, prepare, probe, readAfter, readDepth, removeRange } from "./OutboxStore.ts"

/** What the thread is started with. */
export interface WriterData extends Limits {
  readonly path: string
  readonly synchronous: "normal" | "full"
}

/** One request to the thread. */
export type OutboxRequest =
  /** Store packed rows (OutboxStore.packRows) stamped `now`, as many as fit. */
  | { readonly id: number; readonly op: "append"; readonly rows: string; readonly now: number }
  /** The oldest rows past `afterId`, at most `limit`. */
  | { readonly id: number; readonly op: "read"; readonly afterId: number; readonly limit: number }
  /** Remove the rows from `fromId` to `toId` (`expect`: read before as `count` rows of `bytes`; null: count them). */
  | {
    readonly id: number
    readonly op: "remove"
    readonly fromId: number
    readonly toId: number
    readonly expect: { readonly count: number; readonly bytes: number } | null
  }
  /** A write of `bytes` (OutboxStore.probe), passing only when as many bytes are free on the filesystem. */
  | { readonly id: number; readonly op: "probe"; readonly bytes: number }

/** The thread's answer to one request, with the depth after it. */
export type OutboxReply =
  | {
    readonly id: number
    readonly ok: true
    readonly depth: Depth
    /** append: rows stored; remove: rows removed. */
    readonly count: number
    /** read: the rows' ids. */
    readonly ids?: Float64Array
    /** read: the envelopes, one JSON array. */
    readonly json?: string
    /** read: bytes of the envelopes. */
    readonly bytes?: number
  }
  | {
    readonly id: number
    readonly ok: false
    readonly depth: Depth
    readonly message: string
    readonly fault: Fault
    /** Worth another try (busy, I/O, full). */
    readonly transient: boolean
    /** The outbox takes nothing more in this process (corrupt, or the file lost). */
    readonly fatal: boolean
  }

/** The thread's first message: opened (with the depth found), or why not. */
export type WriterHello = { readonly ready: true; readonly depth: Depth } | { readonly ready: false; readonly message: string }

/** Commands besides requests. */
export type WriterCommand = OutboxRequest | "close"

const data = workerData as WriterData
const port = parentPort!

const start = () => {
  try {
    const db = openOutbox(data.path, data.synchronous)
    const st = prepare(db)
    const depth = readDepth(st)
    // a first read: a file whose pages cannot be read fails the start, not the first forward
    readAfter(st, 0, 1)
    return { db, st, depth }
  } catch (error) {
    const busy = (((error as { readonly errcode?: number }).errcode ?? 0) & 0xff) === 5
    const message = busy ? "the file is in use by another process (one outbox file per sink per process)" : describe(error)
    port.postMessage({ ready: false, message } satisfies WriterHello)
    return undefined
  }
}

const opened = start()
if (opened !== undefined) {
  const { db, st } = opened
  let depth = opened.depth
  const files = storeIdentity(data.path)
  /** Set once the outbox can take nothing more; every later request fails with it. */
  let fatal: { readonly fault: Fault; readonly message: string } | undefined

  const failure = (id: number, fault: Fault, message: string, transient: boolean): OutboxReply => ({
    id,
    ok: false,
    depth,
    message,
    fault,
    transient,
    fatal: isFatal(fault)
  })

  const handle = (r: OutboxRequest): OutboxReply => {
    if (fatal !== undefined) return failure(r.id, fatal.fault, fatal.message, false)
    let reply: OutboxReply
    try {
      switch (r.op) {
        case "read": {
          const rows = readAfter(st, r.afterId, r.limit)
          return { id: r.id, ok: true, depth, count: rows.ids.length, ids: rows.ids, json: rows.json, bytes: rows.bytes }
        }
        case "append": {
          const count = append(db, st, r.rows, data, r.now)
          depth = readDepth(st)
          reply = { id: r.id, ok: true, depth, count }
          break
        }
        case "remove": {
          const count = removeRange(db, st, r.fromId, r.toId, r.expect ?? undefined)
          depth = readDepth(st)
          reply = { id: r.id, ok: true, depth, count }
          break
        }
        case "probe": {
          probe(db, st, r.bytes)
          const free = freeBytes(Path.dirname(data.path))
          reply = free === undefined || free >= r.bytes
            ? { id: r.id, ok: true, depth, count: 0 }
            : failure(r.id, "full", `database or disk is full (${free} bytes free, ${r.bytes} needed)`, true)
          break
        }
      }
    } catch (error) {
      const fault = faultOf(error)
      if (isFatal(fault)) fatal = { fault, message: `outbox file is corrupt: ${describe(error)}` }
      reply = failure(r.id, fault, fatal?.message ?? describe(error), isTransient(error) && fatal === undefined)
    }
    // a commit into a file that is no longer at its path is lost at the next start: not acked
    // (a removal acks nothing: the next append or probe finds it)
    const lost = r.op === "remove" ? undefined : lostBecause(files)
    if (lost !== undefined) {
      fatal = { fault: "lost", message: `outbox file lost: ${lost} under the running gateway` }
      reply = failure(r.id, "lost", fatal.message, false)
    }
    return reply
  }

  port.on("message", (command: WriterCommand) => {
    if (command === "close") {
      try {
        db.close() // the last connection: checkpoints the WAL into the file and removes it
      } catch {
        // closing a broken file: nothing more to keep
      }
      port.close()
      return
    }
    const reply = handle(command)
    port.postMessage(reply, reply.ok && reply.ids !== undefined ? [reply.ids.buffer as ArrayBuffer] : [])
  })
  port.postMessage({ ready: true, depth } satisfies WriterHello)
}
