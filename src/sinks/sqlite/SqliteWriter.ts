/**
 * Writer thread of the SQLite sink: owns the write connection and commits the batches (and dead
 * letters) that the event loop sends it, so a commit never blocks socket reads, pings or acks. One message in
 * (`{ id, rows }`, rows packed in one string: one string crosses the thread boundary, not
 * thousands of objects), one reply out (outcomes as a transferred byte array, or the error's class).
 *
 * After every write, before its reply (so before any of its acks), the thread checks that
 * `gateway.db` and its WAL at their paths are still the files it has open (two `stat` calls): a
 * commit into a file that was removed, renamed or replaced is not acknowledged. From then on, or
 * once a write found the store corrupt, every request fails unwritten (`fatal`): no later write
 * can be trusted, so the store is unavailable until the process restarts.
 */
import * as Path from "node:path"
import { parentPort, workerData } from "node:worker_threads"
import {
  type DeadLetterRow,
  type DeviceSeq,
  describe,
  type Fault,
  faultOf,
  freeBytes,
  isFatal,
  isTransient,
  lostBecause,
  openDatabase,
  prepare,
  probe,
  storeIdentity,
  unpackRows,
  writeBatch,
  writeStates,
  writeDeadLetters
} from "./SqliteStore.ts"

/** A batch to commit. */
export interface WriteRequest {
  readonly id: number
  readonly rows: string
  readonly count: number
}

/** Dead letters to store. */
export interface DeadLetterRequest {
  readonly id: number
  readonly deadLetters: ReadonlyArray<DeadLetterRow>
}

/** Device states to raise (what remote sinks committed): see {@link writeStates}. */
export interface StateRequest {
  readonly id: number
  readonly states: ReadonlyArray<DeviceSeq>
}

/** A write probe ({@link probe}): tells whether the store takes writes when no batch does. */
export interface ProbeRequest {
  readonly id: number
  /** Bytes the probe writes anew (as many as the batch that failed, to tell whether one that size fits again). */
  readonly probe: number
  /**
   * Bytes that must be free on the store's filesystem for the probe to pass: a write can still
   * fit in room the WAL already has on a disk with none left, where the next batch will not.
   */
  readonly needFree: number
}

/** The writer's answer to one request. */
export type WriteReply =
  | { readonly id: number; readonly ok: true; readonly outcomes: Uint8Array; readonly rejections: ReadonlyArray<readonly [number, string]> }
  | {
    readonly id: number
    readonly ok: false
    readonly transient: boolean
    readonly message: string
    /** What kind of store fault it was. */
    readonly fault: Fault
    /** True when the store will take no more writes in this process (corrupt, or lost). */
    readonly fatal: boolean
  }

const { path, synchronous } = workerData as {
  readonly path: string
  readonly synchronous: "normal" | "full"
}
const db = openDatabase(path, synchronous)
const statements = prepare(db)
// the files commits go to, as opened: checked after every write, before its reply (and so its acks)
const opened = storeIdentity(path)
const port = parentPort!

/** Set once the store can take no more writes; every later request fails with it, unwritten. */
let fatal: { readonly fault: Fault; readonly message: string } | undefined

const failure = (id: number, fault: Fault, message: string, transient: boolean): WriteReply => ({
  id,
  ok: false,
  transient,
  message,
  fault,
  fatal: isFatal(fault)
})

port.on("message", (request: WriteRequest | DeadLetterRequest | StateRequest | ProbeRequest | "close") => {
  if (request === "close") {
    db.close()
    port.close()
    return
  }
  let reply: WriteReply
  if (fatal !== undefined) {
    reply = failure(request.id, fatal.fault, fatal.message, false)
  } else {
    try {
      if ("deadLetters" in request) {
        writeDeadLetters(db, statements, request.deadLetters, Date.now())
        reply = { id: request.id, ok: true, outcomes: new Uint8Array(0), rejections: [] }
      } else if ("states" in request) {
        writeStates(db, statements, request.states)
        reply = { id: request.id, ok: true, outcomes: new Uint8Array(0), rejections: [] }
      } else if ("probe" in request) {
        probe(db, statements, Date.now(), request.probe)
        const free = freeBytes(Path.dirname(path))
        reply = free === undefined || free >= request.needFree
          ? { id: request.id, ok: true, outcomes: new Uint8Array(0), rejections: [] }
          : failure(request.id, "full", `database or disk is full (${free} bytes free, ${request.needFree} needed)`, true)
      } else {
        const result = writeBatch(db, statements, unpackRows(request.rows, request.count), Date.now())
        reply = { id: request.id, ok: true, outcomes: result.outcomes, rejections: result.rejections }
      }
    } catch (error) {
      const fault = faultOf(error)
      if (isFatal(fault)) fatal = { fault, message: `store is corrupt: ${describe(error)}` }
      reply = failure(request.id, fault, fatal?.message ?? describe(error), isTransient(error) && fatal === undefined)
    }
    // A commit into a file that is no longer at its path is lost on restart: it is not acked.
    const lost = lostBecause(opened)
    if (lost !== undefined) {
      fatal = { fault: "lost", message: `store lost: ${lost} under the running gateway` }
      reply = failure(request.id, "lost", fatal.message, false)
    }
  }
  port.postMessage(reply, reply.ok ? [reply.outcomes.buffer as ArrayBuffer] : [])
})
port.postMessage("ready")
