/**
 * One sink's own bounded queue and writer. The router hands it each batch's share for this sink
 * and waits for the share's outcomes; a Stream over the queue takes whatever has gathered (a
 * whole backlog per pull), merges it into driver writes of at most `maxMerge` messages and keeps
 * `inFlight` of them going at once. A queue that stays full longer than `stallMs` (a sink slower
 * than the traffic routed to it) answers further shares at once, every message `Unavailable`,
 * until it has room again: a slow or failed sink holds up the rest of the gateway for at most
 * `stallMs`. With one sink there is nothing else to hold up, and its queue pushes back instead
 * (`stallMs` infinite): the lanes fill and their overload policy applies.
 */
import { Deferred, Effect, Option, Queue, type Scope, Stream, Tracer } from "effect"
import type { Envelope } from "../../domain/Envelope.ts"
import { watchSinkQueue } from "../../observability/Metrics.ts"
import { type BatchResult, MessageOutcome, type SinkDriver, SinkError, type SinkHealth } from "../Contract.ts"

/** How a sink's queue is sized. */
export interface SinkQueueSettings {
  /** Shares waiting at most (beyond the writes in flight). */
  readonly capacity: number
  /** Driver writes at once. */
  readonly inFlight: number
  /** Messages per driver write at most (shares are merged up to it; a larger share is written alone). */
  readonly maxMerge: number
  /** Milliseconds a full queue may hold up a share before shares are answered Unavailable at once. */
  readonly stallMs: number
}

/** A sink behind its queue. */
export interface SinkQueue {
  readonly name: string
  /** Writes `batch` through the queue: one outcome per message, or the driver's whole-batch error. */
  readonly submit: (batch: ReadonlyArray<Envelope>) => Effect.Effect<BatchResult, SinkError>
  readonly health: Effect.Effect<SinkHealth>
  /** Shares waiting (not yet with the driver). */
  readonly waiting: () => number
}

interface Share {
  readonly batch: ReadonlyArray<Envelope>
  readonly done: Deferred.Deferred<BatchResult, SinkError>
  /** The span of the batch it came from (the write's span links it), when tracing. */
  readonly span: Tracer.AnySpan | undefined
}

/** Every message of `size` answered Unavailable for `reason`. */
export const allUnavailable = (size: number, reason: string): BatchResult => {
  const outcomes = new Uint8Array(size).fill(MessageOutcome.Unavailable)
  const reasons = new Map<number, string>()
  for (let i = 0; i < size; i++) reasons.set(i, reason)
  return { outcomes, reasons }
}

/** `driver` behind a bounded queue written by a Stream, for the life of the scope. */
export const makeSinkQueue = (driver: SinkDriver, settings: SinkQueueSettings): Effect.Effect<SinkQueue, never, Scope.Scope> =>
  Effect.gen(function*() {
    const queue = yield* Effect.acquireRelease(
      Queue.bounded<Share>(settings.capacity),
      (q) =>
        // what is still waiting at the end is not written: its devices are told so and resend
        Effect.flatMap(Queue.clear(q), (left) =>
          Effect.forEach(left, (share) =>
            Deferred.fail(share.done, new SinkError({ sink: driver.name, reason: "unavailable", message: "gateway shutting down" })), {
            discard: true
          })).pipe(Effect.andThen(Queue.shutdown(q)))
    )
    yield* watchSinkQueue(driver.name, settings.capacity, () => Queue.sizeUnsafe(queue))

    /** One driver write of several shares; each share gets its slice of the outcomes. */
    const writeMerged = (shares: ReadonlyArray<Share>) => {
      const batch: Array<Envelope> = []
      for (const s of shares) for (const e of s.batch) batch.push(e)
      const links: Array<Tracer.SpanLink> = []
      for (const s of shares) if (s.span !== undefined) links.push({ span: s.span, attributes: {} })
      return driver.write(batch).pipe(
        // no stack trace captured: an Error per write, for a span that names its own place
        Effect.withSpan(
          "sink.write",
          { kind: "client", links, attributes: { "sink.name": driver.name, "batch.size": batch.length } },
          { captureStackTrace: false }
        ),
        Effect.exit,
        Effect.flatMap((exit) =>
          Effect.sync(() => {
            let at = 0
            for (const s of shares) {
              if (exit._tag === "Success") Deferred.doneUnsafe(s.done, Effect.succeed(slice(exit.value, at, s.batch.length)))
              else Deferred.doneUnsafe(s.done, exit)
              at += s.batch.length
            }
          })
        )
      )
    }

    /** The shares of one pull as driver writes of at most `maxMerge` messages, one after the other. */
    const writeBacklog = (shares: ReadonlyArray<Share>) => {
      const groups: Array<Array<Share>> = []
      let current: Array<Share> = []
      let size = 0
      for (const s of shares) {
        if (current.length > 0 && size + s.batch.length > settings.maxMerge) {
          groups.push(current)
          current = []
          size = 0
        }
        current.push(s)
        size += s.batch.length
      }
      if (current.length > 0) groups.push(current)
      return Effect.forEach(groups, writeMerged, { discard: true })
    }

    yield* Stream.fromQueue(queue).pipe(
      Stream.chunks,
      Stream.mapEffect(writeBacklog, { concurrency: settings.inFlight }),
      Stream.runDrain,
      Effect.forkScoped
    )

    /** Since when offers have found the queue full (undefined: it had room at the last offer). */
    let fullSince: number | undefined
    const behind = (ms: number) => `sink ${driver.name} is behind (its queue full for ${Math.round(ms)} ms)`

    const submit = (batch: ReadonlyArray<Envelope>): Effect.Effect<BatchResult, SinkError> =>
      // serviceOption, not currentParentSpan: no NoSuchElementError (an Error, with its stack) per batch
      Effect.flatMap(Effect.serviceOption(Tracer.ParentSpan), (parent) => {
        if (batch.length === 0) return Effect.succeed({ outcomes: new Uint8Array(0), reasons: new Map() })
        const done = Deferred.makeUnsafe<BatchResult, SinkError>()
        const share: Share = { batch, done, span: Option.getOrUndefined(parent) }
        if (Queue.offerUnsafe(queue, share)) {
          fullSince = undefined
          return Deferred.await(done)
        }
        const now = performance.now()
        fullSince ??= now
        const left = settings.stallMs - (now - fullSince)
        if (left <= 0) return Effect.succeed(allUnavailable(batch.length, behind(now - fullSince)))
        const offer = Queue.offer(queue, share)
        return (Number.isFinite(left) ? offer.pipe(Effect.timeoutOption(left)) : Effect.asSome(offer)).pipe(
          Effect.flatMap((taken) =>
            taken._tag === "Some"
              ? Deferred.await(done)
              : Effect.sync(() => allUnavailable(batch.length, behind(performance.now() - (fullSince ?? now))))
          )
        )
      })

    return { name: driver.name, submit, health: driver.health, waiting: () => Queue.sizeUnsafe(queue) }
  })

/** `length` outcomes of `result` from `from`, with their reasons renumbered. */
const slice = (result: BatchResult, from: number, length: number): BatchResult => {
  if (from === 0 && length === result.outcomes.length) return result
  const reasons = new Map<number, string>()
  for (const [i, why] of result.reasons) if (i >= from && i < from + length) reasons.set(i - from, why)
  return { outcomes: result.outcomes.subarray(from, from + length), reasons }
}
