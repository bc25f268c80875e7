/**
 * The outbox's drain: an Effect Stream of batches taken from the outbox in insertion order
 * (`drainBatch` rows past a cursor: from memory when this process appended them and still holds
 * them, OutboxMirror.ts, else read back from the file), each written through the wrapped driver
 * with its ORIGINAL envelopes (same device/epoch/seq, so the same message id: the sink
 * deduplicates an overlap), then settled: Committed and Duplicate rows removed, Rejected ones
 * handed to the dead letters and removed. The stream never ends and never fails: it runs for the
 * life of the outbox.
 *
 * One batch at a time at the driver, so nothing forwarded overtakes what was stored before it:
 * a batch is retried (only its messages not yet taken) until every message of it is decided,
 * waiting between tries on a capped, jittered exponential schedule (`retryBaseMs` doubling up to
 * `retryMaxMs`), cut short when the driver's health turns ready. (Two batches at the driver were
 * measured: no gain on a 2-core machine, where the server and the event loop are the limit.)
 * Around that one write, two buffers of one batch each overlap the outbox's own work with it: the
 * next batch is read while this one is at the driver, and the last one is removed meanwhile
 * (bench/outbox.ts measures this stream against the same steps in a plain loop, {@link forwardLoop}).
 */
import { Duration, Effect, Fiber, Queue, Schedule, Stream } from "effect"
import type { Envelope } from "../../domain/Envelope.ts"
import { MessageOutcome, messageId, type SinkDriver } from "../Contract.ts"
import type { OutboxClient, OutboxFault } from "./OutboxClient.ts"
import type { OutboxMirror } from "./OutboxMirror.ts"
import { parseRows } from "./OutboxStore.ts"

/** A dead letter: an envelope the sink refused for good, and why. */
export interface Rejection {
  readonly envelope: Envelope
  readonly reason: string
}

/** What the forwarder needs. */
export interface ForwarderOptions {
  readonly driver: SinkDriver
  readonly client: OutboxClient
  /** The rows this process appended, in memory: sent from there when they are there. */
  readonly mirror: OutboxMirror
  readonly drainBatch: number
  readonly retryBaseMs: number
  readonly retryMaxMs: number
  /** Rung when rows were appended (a sliding queue of one: rings coalesce). */
  readonly bell: Queue.Queue<void>
  readonly onRejected: (records: ReadonlyArray<Rejection>) => Effect.Effect<void>
  /** Kept up to date by the forwarder: `retrying` while a batch it sent waits to be tried again. */
  readonly status: { retrying: boolean }
  /** After a batch was settled (removed): how many the sink took and how many were dead-lettered. */
  readonly onSettled: (taken: number, deadLettered: number) => void
}

/** Rows of the outbox, oldest first, and their envelopes (`undefined`: a row that no longer parses). */
interface ReadBatch {
  /** The rows are every row from `fromId` to `toId`: `count` of them. */
  readonly fromId: number
  readonly toId: number
  readonly count: number
  /** Bytes of the rows as stored, when they were read from the file. */
  readonly bytes: number | undefined
  readonly envelopes: ReadonlyArray<Envelope | undefined>
}

/** A batch whose every message is decided. */
interface Decided {
  readonly fromId: number
  readonly toId: number
  /** Rows from `fromId` to `toId`, and their bytes when known. */
  readonly count: number
  readonly bytes: number | undefined
  readonly taken: number
  readonly rejected: ReadonlyArray<Rejection>
}

/** How often the driver's health is asked while waiting to try again. */
const HEALTH_POLL_MS = 100

/** The steps of the drain, shared by the stream and the plain loop. */
const steps = (o: ForwarderOptions) => {
  /** Everything at or below it was read (and is being, or was, forwarded). */
  let cursor = 0

  const backoff = Schedule.exponential(Duration.millis(o.retryBaseMs), 2).pipe(
    Schedule.modifyDelay(({ duration }) => Effect.succeed(Duration.min(duration, Duration.millis(o.retryMaxMs)))),
    Schedule.jittered // after the cap: the gateways that lost one sink together do not retry in step
  )

  /** Resolves when the driver's health turns ready (from not ready); never if it stays as it is. */
  const readyAgain = Effect.gen(function*() {
    let sawDown = false
    for (;;) {
      const h = yield* o.driver.health
      if (!h.ready) sawDown = true
      else if (sawDown) return
      yield* Effect.sleep(HEALTH_POLL_MS)
    }
  })

  /** Runs `store` (an outbox request) until it succeeds, on the backoff schedule; logs the first failure of a streak. */
  const storeRetried = <A>(what: string, store: Effect.Effect<A, OutboxFault>): Effect.Effect<A> => {
    let logged = false
    return store.pipe(
      Effect.tapError((e) =>
        logged ? Effect.void : Effect.sync(() => (logged = true)).pipe(
          Effect.andThen(Effect.logWarning(`outbox ${what} failed; retrying`).pipe(Effect.annotateLogs({ sink: o.driver.name, error: e.message })))
        )
      ),
      Effect.retry(backoff),
      Effect.orDie // the schedule never ends
    )
  }

  /** The next `drainBatch` rows past the cursor (from memory when there, else the file); waits for the bell while there are none. */
  const nextBatch: Effect.Effect<ReadBatch> = Effect.gen(function*() {
    for (;;) {
      if (o.client.depth().lastId > cursor) {
        const fromId = cursor + 1
        const held = o.mirror.take(fromId, o.drainBatch)
        if (held !== undefined && held.length > 0) {
          cursor += held.length
          return { fromId, toId: cursor, count: held.length, bytes: undefined, envelopes: held }
        }
        // from the file, up to the rows held in memory
        const nextHeld = o.mirror.nextHeld(fromId)
        const limit = nextHeld === undefined ? o.drainBatch : Math.max(1, Math.min(o.drainBatch, nextHeld - fromId))
        const rows = yield* storeRetried("read", o.client.read(cursor, limit))
        if (rows.ids.length > 0) {
          cursor = rows.ids[rows.ids.length - 1]!
          return { fromId: rows.ids[0]!, toId: cursor, count: rows.ids.length, bytes: rows.bytes, envelopes: parseRows(rows) }
        }
        // nothing past the cursor up to what the thread knew when it read
        cursor = Math.max(cursor, rows.lastId)
        continue
      }
      yield* Queue.take(o.bell)
    }
  })

  /** Writes the batch through the driver until every message of it is decided. */
  const forward = (batch: ReadBatch): Effect.Effect<Decided> =>
    Effect.gen(function*() {
      const rejected: Array<Rejection> = []
      let taken = 0
      let left: Array<Envelope> = []
      for (let i = 0; i < batch.envelopes.length; i++) {
        const e = batch.envelopes[i]
        if (e !== undefined) left.push(e)
      }
      const damaged = batch.envelopes.length - left.length
      if (damaged > 0) {
        yield* Effect.logError(`outbox: ${damaged} stored rows no longer parse as envelopes; dropped`).pipe(
          Effect.annotateLogs({ sink: o.driver.name, fromId: batch.fromId, toId: batch.toId })
        )
      }
      let step: ((now: number, input: unknown) => Effect.Effect<readonly [Duration.Duration, Duration.Duration], unknown>) | undefined
      let warned = false
      while (left.length > 0) {
        const result = yield* Effect.result(o.driver.write(left))
        let why: string
        if (result._tag === "Success") {
          const { outcomes, reasons } = result.success
          const again: Array<Envelope> = []
          for (let i = 0; i < left.length; i++) {
            const out = outcomes[i]
            if (out === MessageOutcome.Committed || out === MessageOutcome.Duplicate) taken++
            else if (out === MessageOutcome.Rejected) rejected.push({ envelope: left[i]!, reason: reasons.get(i) ?? "rejected" })
            else again.push(left[i]!)
          }
          why = `${again.length} of ${left.length} not taken: ${reasons.get(outcomes.indexOf(MessageOutcome.Unavailable)) ?? "unavailable"}`
          left = again
          if (left.length === 0) break
        } else {
          const e = result.failure
          why = `${e.reason}: ${e.message}`
          // acked messages are never dropped: a misconfigured sink is retried (and said loudly) until fixed
          if (!e.retryable && !warned) {
            warned = true
            yield* Effect.logError(`outbox cannot forward to ${o.driver.name} (${why}); retrying until it can`).pipe(
              Effect.annotateLogs({ sink: o.driver.name })
            )
          }
        }
        o.status.retrying = true
        step ??= yield* Schedule.toStep(backoff)
        const [, delay] = yield* step(Date.now(), why).pipe(Effect.orElseSucceed(() => [Duration.zero, Duration.millis(o.retryMaxMs)] as const))
        yield* Effect.raceFirst(Effect.sleep(delay), readyAgain)
      }
      o.status.retrying = false
      return { fromId: batch.fromId, toId: batch.toId, count: batch.count, bytes: batch.bytes, taken, rejected }
    })

  /** Dead letters first, then the rows are removed (a dead-letter store that dies is logged, not retried). */
  const settle = (d: Decided): Effect.Effect<void> =>
    Effect.gen(function*() {
      if (d.rejected.length > 0) {
        yield* o.onRejected(d.rejected).pipe(Effect.catchDefect((defect) =>
          Effect.logError(`outbox: ${d.rejected.length} dead letters could not be handed over; dropped`).pipe(
            Effect.annotateLogs({ sink: o.driver.name, ids: d.rejected.slice(0, 10).map((r) => messageId(r.envelope)).join(" "), error: String(defect) })
          )
        ))
      }
      if (d.count > 0) {
        const expect = d.bytes === undefined ? undefined : { count: d.count, bytes: d.bytes }
        yield* storeRetried("remove", o.client.remove(d.fromId, d.toId, expect))
      }
      o.onSettled(d.taken, d.rejected.length)
    })

  return { nextBatch, forward, settle }
}

/**
 * The drain as an Effect Stream: read ahead by one batch (a buffer of one: "suspend", the reader
 * waits while a batch is already waiting, so at most three batches are in memory), forwarded one
 * at a time, settled behind a buffer of one (the removal overlaps the next batch's write).
 */
export const forwardStream = (o: ForwarderOptions): Effect.Effect<void> =>
  Effect.suspend(() => {
    const s = steps(o) // each run from the oldest row
    return Stream.fromEffectRepeat(s.nextBatch).pipe(
      Stream.buffer({ capacity: 1, strategy: "suspend" }),
      Stream.mapEffect(s.forward),
      Stream.buffer({ capacity: 1, strategy: "suspend" }),
      Stream.runForEach(s.settle)
    )
  })

/** The same drain as a plain loop with forked fibers (the same overlaps): for bench/outbox.ts's comparison. */
export const forwardLoop = (o: ForwarderOptions): Effect.Effect<void> =>
  Effect.suspend(() => {
    const s = steps(o) // each run from the oldest row
    return Effect.scoped(Effect.gen(function*() {
      let next = yield* Effect.forkScoped(s.nextBatch)
      let settling: Fiber.Fiber<void> | undefined
      for (;;) {
        const batch = yield* Fiber.join(next)
        next = yield* Effect.forkScoped(s.nextBatch)
        const decided = yield* s.forward(batch)
        if (settling !== undefined) yield* Fiber.join(settling)
        settling = yield* Effect.forkScoped(s.settle(decided))
      }
    }))
  })
