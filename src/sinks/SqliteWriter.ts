/**
 * Writer thread of the SQLite sink: owns the write connection and commits the batches (and dead
 * letters) that the event loop sends it, so a commit never blocks socket reads, pings or acks. One message in
 * (`{ id, rows }`, rows packed in one string: one string crosses the thread boundary, not
 * thousands of objects), one reply out (outcomes as a transferred byte array, or the error's class).
 */
import { parentPort, workerData } from "node:worker_threads"
import {
  type DeadLetterRow,
  describe,
  isTransient,
  openDatabase,
  prepare,
  unpackRows,
  writeBatch,
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

/** The writer's answer to one request. */
export type WriteReply =
  | { readonly id: number; readonly ok: true; readonly outcomes: Uint8Array; readonly rejections: ReadonlyArray<readonly [number, string]> }
  | { readonly id: number; readonly ok: false; readonly transient: boolean; readonly message: string }

const { path, synchronous } = workerData as { readonly path: string; readonly synchronous: "normal" | "full" }
const db = openDatabase(path, synchronous)
const statements = prepare(db)
const port = parentPort!

port.on("message", (request: WriteRequest | DeadLetterRequest | "close") => {
  if (request === "close") {
    db.close()
    port.close()
    return
  }
  let reply: WriteReply
  try {
    if ("deadLetters" in request) {
      writeDeadLetters(db, statements, request.deadLetters, Date.now())
      reply = { id: request.id, ok: true, outcomes: new Uint8Array(0), rejections: [] }
    } else {
      const result = writeBatch(db, statements, unpackRows(request.rows, request.count), Date.now())
      reply = { id: request.id, ok: true, outcomes: result.outcomes, rejections: result.rejections }
    }
  } catch (error) {
    reply = { id: request.id, ok: false, transient: isTransient(error), message: describe(error) }
  }
  port.postMessage(reply, reply.ok ? [reply.outcomes.buffer as ArrayBuffer] : [])
})
port.postMessage("ready")
