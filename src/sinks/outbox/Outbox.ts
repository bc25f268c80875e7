/**
 * Store and forward (issue "Downstream", deliverable 5): a {@link SinkDriver} wrapped in a durable
 * local outbox, so that what the sink cannot take now is committed locally and forwarded later.
 * The rule it keeps: a message answered Committed is durably in the sink OR in the outbox; nothing
 * is answered Committed that no durable store holds.
 *
 * `write(batch)`:
 * - while the outbox holds messages (or an append to it is still unanswered), the batch is
 *   appended to it, whole, and answered Committed once the outbox's COMMIT returned: nothing
 *   overtakes what is stored, so each device's messages reach the sink in the order they came
 *   (the forwarder sends in insertion order);
 * - otherwise it goes to the driver: its Committed, Duplicate and Rejected outcomes pass through;
 *   its Unavailable messages are appended (then Committed); a whole-batch {@link SinkError} that
 *   is retryable (the driver given is already wrapped in retries and a breaker: past its budget,
 *   or the breaker open) appends the whole batch; a non-retryable one passes through unchanged;
 * - the outbox full (`maxMessages`, `maxBytes`): the messages that do not fit are Unavailable,
 *   "outbox full" (it never grows past its bounds); its file failing (disk full, I/O): those
 *   messages are Unavailable (never Committed); a message JSON cannot hold is Rejected.
 *
 * The forwarder (OutboxForwarder.ts) drains the outbox for the life of the scope, in insertion
 * order (what this process appended is sent from memory within a budget, OutboxMirror.ts; the rest
 * is read back from the file); rows are removed only after the driver answered for them, so
 * writes keep going to the outbox until the last forwarded rows are confirmed. Under a steady
 * load the outbox would then never be seen empty, so once it is nearly empty and the sink takes
 * what is forwarded, a write waits (briefly, neither stored nor sent) for the forwarder to empty
 * it and then goes straight to the driver: the hand-back. A new process on the same file
 * forwards what was left.
 *
 * Durability (OutboxStore.ts): WAL with `synchronous=NORMAL` by default, as the main store: a
 * message answered Committed from the outbox survives the process being killed, not a power loss
 * or kernel crash since the last checkpoint (`synchronous: "full"` fsyncs every commit). Overlaps
 * are the sink's to absorb: a message the sink stored but did not confirm (its ack lost in an
 * outage) is forwarded again with the same id, a duplicate only while the sink still remembers
 * the id (JetStream: its duplicate window, which must outlast the outbox's oldest message).
 * Order holds for writes made one after another (as the commit stage makes them); writes made
 * concurrently while the outbox is empty are not ordered among themselves.
 *
 * Health: ready while the outbox can take writes (even with the driver down: that is the point),
 * or while it is empty and the driver is ready; not ready, saying why, when it is full or its file
 * fails. `depth` is what it holds, for `/readyz` and the gateway's metrics. One log line when it
 * starts taking the sink's traffic, one when it has drained (how many, how long).
 */
import { Clock, Deferred, Effect, FiberSet, Option, Queue, type Scope } from "effect"
import type { Envelope } from "../../domain/Envelope.ts"
import { record } from "../../observability/Metrics.ts"
import { spanEvent } from "../../observability/SpanEvent.ts"
import { type BatchResult, MessageOutcome, type SinkDriver, type SinkError, type SinkHealth } from "../Contract.ts"
import { makeOutboxClient } from "./OutboxClient.ts"
import { forwardLoop, forwardStream, type Rejection } from "./OutboxForwarder.ts"
import { outboxMetrics, recordDepth } from "./OutboxMetrics.ts"
import { makeOutboxMirror } from "./OutboxMirror.ts"
import {
  checkSettings,
  DEFAULT_MEMORY_BYTES,
  DEFAULT_RETRY_BASE_MS,
  DEFAULT_RETRY_MAX_MS,
  type OutboxSettings
} from "./OutboxSettings.ts"
import { OutboxStartError } from "./OutboxStartError.ts"
import { type Depth, packRows } from "./OutboxStore.ts"

export type { OutboxSettings } from "./OutboxSettings.ts"
export { OutboxStartError } from "./OutboxStartError.ts"

/** What the outbox holds now. */
export interface OutboxDepth {
  readonly messages: number
  /** Bytes of the stored envelopes (their JSON text). */
  readonly bytes: number
  /** Age of the oldest stored message, undefined when empty. */
  readonly oldestAgeMs: number | undefined
}

/** The driver wrapped: the contract, plus what the outbox holds. */
export interface OutboxedDriver extends SinkDriver {
  readonly depth: Effect.Effect<OutboxDepth>
}

const READY: SinkHealth = { ready: true }

/** How often the depth gauges (the oldest message's age grows by itself) are refreshed. */
const GAUGES_EVERY_MS = 1_000

/** How long a write waits for the forwarder to empty a nearly empty outbox before it is appended instead. */
const HANDOVER_MS = 1_000

/**
 * The driver wrapped: what it cannot take now is committed to the outbox at `settings.file` and
 * forwarded later; `onRejected` gets the forwarded messages the sink refused for good (dead
 * letters: they were answered Committed long before). Starts the outbox's thread and forwarder
 * for the life of the scope; fails with an {@link OutboxStartError} when the file cannot be used.
 */
export const withOutbox = (
  driver: SinkDriver,
  settings: OutboxSettings,
  onRejected: (records: ReadonlyArray<{ envelope: Envelope; reason: string }>) => Effect.Effect<void>
): Effect.Effect<OutboxedDriver, OutboxStartError, Scope.Scope> =>
  Effect.gen(function*() {
    const problem = checkSettings(settings)
    if (problem !== undefined) return yield* new OutboxStartError({ file: settings.file, message: problem })
    const sink = driver.name
    const metrics = outboxMetrics(sink)
    // the forwarder's doorbell: sliding, one slot — rings while it is busy coalesce into one, and
    // a ring is never waited on by the writer (an append never blocks on the forwarder)
    const bell = yield* Queue.sliding<void>(1)
    // what this process appends, kept in memory for the forwarder while the budget lasts
    const mirror = makeOutboxMirror(Math.min(settings.memoryBytes ?? DEFAULT_MEMORY_BYTES, settings.maxBytes))

    /** The current spell of store-and-forward: since when, and how many it forwarded. */
    let spell: { readonly since: number; forwarded: number; deadLettered: number } | undefined

    const ageOf = (d: Depth, now: number) => (d.oldestAt === null ? undefined : Math.max(0, now - d.oldestAt))
    const showDepth = (d: Depth) => recordDepth(metrics, d.messages, d.bytes, ageOf(d, Date.now()))

    // log lines from the thread's replies, with this scope's logger
    const runFork = yield* FiberSet.makeRuntime<never, void, never>()

    const client = yield* makeOutboxClient(settings, (d, op) => {
      showDepth(d)
      if (op === "append") Queue.offerUnsafe(bell, undefined)
      openGate()
    })

    /** What the forwarder says of itself: true while a batch it sent is waiting to be tried again. */
    const forwarding = { retrying: false }

    /**
     * The hand-back to the driver. Under a steady load the outbox would never be seen empty (each
     * append lands before the forwarder has removed the rows before it), so once it is nearly empty
     * (at most one drain batch) and the forwarder's writes are being taken, a write waits, at most
     * {@link HANDOVER_MS}, for the forwarder to empty it, instead of being appended behind the last
     * rows; then it goes straight to the driver. Nothing overtakes: the write is neither stored nor
     * sent while it waits. A wait that times out is not tried again until the forwarder settles a batch.
     */
    let gate: Deferred.Deferred<void> | undefined
    let gateTimedOut = false
    function openGate() {
      if (gate === undefined || storing()) return
      Deferred.doneUnsafe(gate, Effect.void)
      gate = undefined
    }
    /**
     * Waits for the outbox to be emptied when that is near and the sink is taking what the
     * forwarder sends (it took some in this spell, is not waiting to retry, and says it is ready);
     * true when the outbox is empty now.
     */
    const handedBack = Effect.gen(function*() {
      const d = client.depth()
      const near = !gateTimedOut && !forwarding.retrying && spell !== undefined && spell.forwarded > 0 &&
        d.messages <= settings.drainBatch && client.problem() === undefined
      if (!near || !(yield* driver.health).ready) return false
      const g = gate ??= Deferred.makeUnsafe<void>()
      const waited = yield* Deferred.await(g).pipe(Effect.timeoutOption(HANDOVER_MS))
      if (Option.isNone(waited)) gateTimedOut = true
      return !storing()
    })

    /** Ends the spell once the outbox is empty and no append is unanswered: one line, how many, how long. */
    const checkDrained = () => {
      const s = spell
      if (s === undefined || client.depth().messages > 0 || client.appendsInFlight() > 0) return
      spell = undefined
      openGate()
      const ms = Date.now() - s.since
      runFork(Effect.logInfo(`outbox drained: ${s.forwarded} messages forwarded to ${sink} in ${ms} ms`).pipe(
        Effect.annotateLogs({ sink, forwarded: s.forwarded, deadLettered: s.deadLettered, durationMs: ms, file: settings.file })
      ))
    }
    const start = client.depth()
    showDepth(start)
    if (start.messages > 0) {
      spell = { since: Date.now(), forwarded: 0, deadLettered: 0 }
      yield* Effect.logInfo(`outbox holds ${start.messages} messages for ${sink} from an earlier run; forwarding them`).pipe(
        Effect.annotateLogs({ sink, messages: start.messages, bytes: start.bytes, file: settings.file })
      )
    }

    /** True while writes must go to the outbox: it holds messages, or an append is unanswered. */
    const storing = () => client.depth().messages > 0 || client.appendsInFlight() > 0

    /** Why the outbox cannot take writes now (its file, or full), or undefined. */
    const outboxProblem = () => {
      const p = client.problem()
      if (p !== undefined) return p
      const d = client.depth()
      const typical = d.messages === 0 ? 0 : d.bytes / d.messages
      if (d.messages >= settings.maxMessages || d.bytes + typical > settings.maxBytes) {
        return { reason: "unavailable" as const, message: `outbox full (${d.messages} messages, ${d.bytes} bytes)` }
      }
      return undefined
    }

    /**
     * Appends `batch[i]` for each `i` of `indices` and settles them in `outcomes`/`reasons`:
     * stored → Committed; past the bounds or the file failing → Unavailable; JSON cannot hold it → Rejected.
     */
    const store = (
      batch: ReadonlyArray<Envelope>,
      indices: ReadonlyArray<number> | undefined,
      outcomes: Uint8Array,
      reasons: Map<number, string>,
      why: string
    ): Effect.Effect<void> =>
      Effect.gen(function*() {
        const packed = packRows(batch, indices)
        for (const [i, reason] of packed.refused) {
          outcomes[i] = MessageOutcome.Rejected
          reasons.set(i, reason)
        }
        if (packed.positions.length === 0) return
        const now = yield* Clock.currentTimeMillis
        const result = yield* Effect.result(client.append(packed, now, (firstId, stored) => {
          const envelopes = new Array<Envelope>(stored)
          for (let k = 0; k < stored; k++) envelopes[k] = batch[packed.positions[k]!]!
          mirror.add(firstId, envelopes, Math.ceil((packed.text.length * stored) / packed.positions.length))
        }))
        const stored = result._tag === "Success" ? result.success : 0
        for (let k = 0; k < packed.positions.length; k++) {
          const i = packed.positions[k]!
          if (k < stored) {
            outcomes[i] = MessageOutcome.Committed
            reasons.delete(i)
          } else {
            outcomes[i] = MessageOutcome.Unavailable
            reasons.set(i, result._tag === "Success" ? "outbox full" : `${why}; outbox: ${result.failure.message}`)
          }
        }
        if (stored > 0) record(metrics.appended, stored)
        const refused = packed.positions.length - stored
        // an event on the write's span (sink.write): these messages went to the outbox (or could not)
        yield* spanEvent("outbox.spill", {
          "sink.name": sink,
          "outbox.stored": stored,
          "outbox.refused": refused,
          "outbox.reason": why,
          ...(result._tag === "Failure" ? { "error.message": result.failure.message } : {})
        })
        if (refused > 0) record(metrics.refused(result._tag === "Success" ? "full" : "store_error"), refused)
        if (stored > 0 && spell === undefined) {
          spell = { since: now, forwarded: 0, deadLettered: 0 }
          yield* Effect.logInfo(`outbox takes ${sink}'s traffic: ${why}`).pipe(Effect.annotateLogs({ sink, file: settings.file }))
        }
        if (stored === 0) checkDrained()
        if (result._tag === "Failure") {
          yield* Effect.logWarning(`outbox cannot store ${refused} messages for ${sink}: ${result.failure.message}`).pipe(
            Effect.annotateLogs({ sink, fault: result.failure.fault })
          )
        }
      })

    const storeAll = (batch: ReadonlyArray<Envelope>, why: string) =>
      Effect.suspend(() => {
        const outcomes = new Uint8Array(batch.length)
        const reasons = new Map<number, string>()
        return Effect.as(store(batch, undefined, outcomes, reasons, why), { outcomes, reasons } satisfies BatchResult)
      })

    /** The driver's answer, with its Unavailable messages stored. */
    const storeUnavailable = (batch: ReadonlyArray<Envelope>, r: BatchResult): Effect.Effect<BatchResult> =>
      Effect.suspend(() => {
        const indices: Array<number> = []
        for (let i = 0; i < r.outcomes.length; i++) if (r.outcomes[i] === MessageOutcome.Unavailable) indices.push(i)
        if (indices.length === 0) return Effect.succeed(r)
        const outcomes = Uint8Array.from(r.outcomes)
        const reasons = new Map(r.reasons)
        const why = `${indices.length} of ${batch.length} messages unavailable (${r.reasons.get(indices[0]!) ?? "unavailable"})`
        return Effect.as(store(batch, indices, outcomes, reasons, why), { outcomes, reasons } satisfies BatchResult)
      })

    /** The batch to the driver; what it cannot take now, to the outbox. */
    const direct = (batch: ReadonlyArray<Envelope>): Effect.Effect<BatchResult, SinkError> =>
      driver.write(batch).pipe(
        Effect.matchEffect({
          onFailure: (e) => (e.retryable ? storeAll(batch, `${e.reason}: ${e.message}`) : Effect.fail(e)),
          onSuccess: (r) => storeUnavailable(batch, r)
        })
      )

    const write = (batch: ReadonlyArray<Envelope>): Effect.Effect<BatchResult, SinkError> =>
      Effect.suspend((): Effect.Effect<BatchResult, SinkError> => {
        if (batch.length === 0) return Effect.succeed({ outcomes: new Uint8Array(0), reasons: new Map() })
        if (!storing()) return direct(batch)
        return Effect.flatMap(handedBack, (empty) => (empty ? direct(batch) : storeAll(batch, "the outbox holds messages")))
      })

    const health = Effect.gen(function*() {
      const p = outboxProblem()
      if (p === undefined) return READY
      // the outbox cannot take writes, but takes none now: the driver's own answer stands
      if (!storing()) {
        const h = yield* driver.health
        if (h.ready) return READY
        return { ready: false, reason: p.reason, message: `${p.message}; ${sink}: ${h.message}` } satisfies SinkHealth
      }
      return { ready: false, reason: p.reason, message: p.message } satisfies SinkHealth
    })

    const depth = Effect.map(Clock.currentTimeMillis, (now): OutboxDepth => {
      const d = client.depth()
      return { messages: d.messages, bytes: d.bytes, oldestAgeMs: ageOf(d, now) }
    })

    // the gauges follow every reply; the oldest message's age also grows without one
    yield* Effect.sync(() => showDepth(client.depth())).pipe(
      Effect.andThen(Effect.sleep(GAUGES_EVERY_MS)),
      Effect.forever,
      Effect.forkScoped
    )

    const forwarder = settings.forwarder === "loop" ? forwardLoop : forwardStream
    // a defect (a bug) does not stop the drain for good: logged, and the forwarder started again
    // from the oldest row (what was forwarded but not removed is sent again: the sink's duplicate)
    const supervised = (run: Effect.Effect<void>) =>
      run.pipe(
        Effect.catchDefect((defect) =>
          Effect.logError("outbox forwarder failed; starting it again in 1 s").pipe(
            Effect.annotateLogs({ sink, error: String(defect) }),
            Effect.andThen(Effect.sleep(1_000))
          )
        ),
        Effect.forever
      )
    yield* Effect.forkScoped(supervised(forwarder({
      driver,
      client,
      mirror,
      bell,
      drainBatch: settings.drainBatch,
      retryBaseMs: settings.retryBaseMs ?? DEFAULT_RETRY_BASE_MS,
      retryMaxMs: settings.retryMaxMs ?? DEFAULT_RETRY_MAX_MS,
      onRejected: (records: ReadonlyArray<Rejection>) => onRejected(records),
      status: forwarding,
      onSettled: (taken, deadLettered) => {
        gateTimedOut = false
        record(metrics.forwarded, taken)
        if (deadLettered > 0) record(metrics.deadLettered, deadLettered)
        if (spell !== undefined) {
          spell.forwarded += taken
          spell.deadLettered += deadLettered
        }
        checkDrained()
      }
    })))

    return { name: sink, write, health, depth } satisfies OutboxedDriver
  })
