/**
 * The persistence loop: takes critical work first, batches by size (`GATEWAY_BATCH_MAX` messages,
 * `GATEWAY_BATCH_MAX_BYTES` of frames) or
 * linger (`GATEWAY_BATCH_LINGER_MS`), runs each batch through the pipeline (your stages, then
 * the commit stage that writes it to the sink), then answers every message of the batch on its
 * own connection, in send order: an ack once committed, the nack of its error class when a stage
 * or the store rejected it. It marks commits in the dedup windows. On shutdown it keeps
 * committing until the lanes are empty or the drain deadline passes.
 */
import { Cause, Effect, Exit, Fiber, Layer, Semaphore, type Tracer } from "effect"
import { GatewayConfig } from "../config/GatewayConfig.ts"
import { Lifecycle } from "../Lifecycle.ts"
import * as Metrics from "../observability/Metrics.ts"
import { MessageTracer } from "../observability/Tracing.ts"
import { type DeadLetter, Sink } from "../sinks/Sink.ts"
import type { Envelope } from "../domain/Envelope.ts"
import { nackFrame } from "../domain/Frames.ts"
import { answerOf, Tally, UNAVAILABLE_RETRY_AFTER_MS } from "./Answer.ts"
import { commit, COMMIT } from "./Commit.ts"
import { Dedup } from "./Dedup.ts"
import { type InFlight, Lanes, type Replier } from "./Lanes.ts"
import { Pipeline, PipelineError } from "./Pipeline.ts"
import * as Stage from "./Stage.ts"

/** Batches in the pipeline at once. */
const PIPELINE = 2

const SUCCESS = Exit.void

/** The persistence loop as a layer: a scoped fiber that lives as long as the gateway. */
export const layer = Layer.effectDiscard(Effect.gen(function*() {
  const config = yield* GatewayConfig
  const lanes = yield* Lanes
  const dedup = yield* Dedup
  const lifecycle = yield* Lifecycle
  const tracer = yield* MessageTracer
  const stages = yield* Pipeline
  const sink = yield* Sink
  const user = yield* Stage.build(stages, { spans: tracer.enabled })
  const taken = user.names.filter((name) => RESERVED.has(name))
  if (taken.length > 0) {
    return yield* new PipelineError({ message: `user stages may not be named ${taken.join(", ")}: the gateway's own stages are` })
  }
  const committer = yield* Stage.build(commit, { spans: tracer.enabled })
  yield* Effect.logInfo("pipeline").pipe(
    Effect.annotateLogs({ ingest: ["validate", "dedup"], stages: [...user.names, ...committer.names] })
  )

  const answer = (batch: ReadonlyArray<InFlight>, ends: Ends) => {
    const now = performance.now()
    const dirty = new Set<Replier>()
    const tally = new Tally()
    dedup.beginBatch()
    for (let j = 0; j < ends.stops.length; j++) {
      const item = batch[ends.at[j]!]!
      const e = item.envelope
      const stop = ends.stops[j]!
      const { frame, outcome } = answerOf(e.seq, stop, e.kind)
      if (outcome === "committed" || outcome === "duplicate") {
        dedup.markCommitted(e.device, e.epoch, e.seq)
        Metrics.record(Metrics.commitLatencyMs, now - item.arrivedAt)
      }
      item.replier.resolve(item.ticket, frame)
      dirty.add(item.replier)
      item.span?.end(process.hrtime.bigint(), SUCCESS)
      tally.add(e.kind, outcome)
      tally.addError(stop)
    }
    for (const r of dirty) r.flush()
    tally.record()
    Metrics.record(Metrics.dedupDevices, dedup.deviceCount)
  }

  /** The last resort when a batch could not be answered normally: every message nacked unavailable. */
  const answerUnavailable = (batch: ReadonlyArray<InFlight>, why: string) => {
    const dirty = new Set<Replier>()
    for (const item of batch) {
      item.replier.resolve(item.ticket, nackFrame(item.envelope.seq, "unavailable", why, UNAVAILABLE_RETRY_AFTER_MS))
      dirty.add(item.replier)
      item.span?.end(process.hrtime.bigint(), SUCCESS)
      Metrics.record(Metrics.messages(item.envelope.kind, "unavailable"), 1)
    }
    for (const r of dirty) r.flush()
  }

  /** Stores what a stage refused for good before those messages are nacked (best effort). */
  const keepDeadLetters = (batch: ReadonlyArray<InFlight>, ends: Ends) => {
    const letters = deadLettersOf(batch, ends)
    if (letters.length === 0) return Effect.void
    return sink.deadLetter(letters).pipe(
      Effect.catchCause((cause) =>
        Effect.logWarning("dead letters not stored").pipe(
          Effect.annotateLogs({ count: letters.length, error: Cause.pretty(cause) })
        )
      )
    )
  }

  /** Your stages, the key guard, then commit: where every message of the batch ended. */
  const runStages = (batch: ReadonlyArray<InFlight>) =>
    Effect.gen(function*() {
      const first = yield* user.run(batch.map((i) => i.envelope))
      const ends: Ends = { stops: [...first.stops], at: [...first.stoppedAt], by: [...first.stoppedBy] }
      const toCommit: Array<Envelope> = []
      const commitAt: Array<number> = []
      for (let i = 0; i < first.passed.length; i++) {
        const at = first.passedAt === undefined ? i : first.passedAt[i]!
        const e = first.passed[i]!
        if (sameKey(e, batch[at]!.envelope)) {
          toCommit.push(e)
          commitAt.push(at)
        } else {
          ends.stops.push(new Stage.Rejected(new Stage.StageDefect({ stage: "pipeline", message: KEY_CHANGED, cause: undefined })))
          ends.at.push(at)
          ends.by.push("pipeline")
        }
      }
      if (toCommit.length > 0) {
        const second = yield* committer.run(toCommit)
        for (let j = 0; j < second.stops.length; j++) {
          ends.stops.push(second.stops[j]!)
          ends.at.push(commitAt[second.stoppedAt[j]!]!)
          ends.by.push(second.stoppedBy[j]!)
        }
      }
      return ends
    })

  const runBatch = (batch: ReadonlyArray<InFlight>) => {
    let answered = false
    const run = Effect.gen(function*() {
      const ends = yield* runStages(batch)
      yield* logDefects(ends)
      yield* keepDeadLetters(batch, ends)
      answer(batch, ends)
      answered = true
    }).pipe(
      // whatever went wrong, no message of the batch is left without an answer
      Effect.onExit((exit) =>
        answered ? Effect.void : Effect.andThen(
          Effect.sync(() => answerUnavailable(batch, "gateway could not process the message")),
          Effect.logError("batch failed without answers; nacked unavailable").pipe(
            Effect.annotateLogs({ size: batch.length, cause: Exit.isFailure(exit) ? Cause.pretty(exit.cause) : "" })
          )
        )
      )
    )
    if (!tracer.enabled) return run
    const links: Array<Tracer.SpanLink> = []
    for (const item of batch) if (item.span !== undefined) links.push({ span: item.span, attributes: {} })
    return Effect.withSpan(run, "sink.batch", { kind: "client", links, attributes: { "batch.size": batch.length } })
  }

  // Up to PIPELINE batches are with the sink at once: while it commits one, the next is taken
  // and sent, so the sink never idles waiting for the event loop. Answers stay in send order
  // per connection whatever order batches complete in (OrderedAnswers).
  const slots = yield* Semaphore.make(PIPELINE)
  let closing = false
  const loop = Effect.gen(function*() {
    while (true) {
      yield* Semaphore.take(slots, 1)
      let batch = lanes.takeBatch(config.batchMax, config.batchMaxBytes)
      while (batch.length === 0) {
        if (closing) return yield* Semaphore.take(slots, PIPELINE - 1) // wait for the batches in flight
        yield* lanes.awaitWork
        batch = lanes.takeBatch(config.batchMax, config.batchMaxBytes)
      }
      if (batch.length < config.batchMax && config.batchLingerMs > 0 && !closing) {
        yield* Effect.sleep(config.batchLingerMs)
        let bytes = 0
        for (const item of batch) bytes += item.bytes
        if (bytes < config.batchMaxBytes) batch = batch.concat(lanes.takeBatch(config.batchMax - batch.length, config.batchMaxBytes - bytes))
      }
      yield* Effect.forkChild(Effect.ensuring(runBatch(batch), Semaphore.release(slots, 1)))
    }
  })

  const fiber = yield* Effect.forkScoped(loop)
  yield* Effect.addFinalizer(() =>
    Effect.gen(function*() {
      closing = true
      lanes.notify()
      const left = yield* lifecycle.remainingMs
      const exit = yield* Fiber.await(fiber).pipe(Effect.timeoutOption(left))
      if (exit._tag === "None") {
        lifecycle.markCut(`${lanes.size()} messages still queued for the sink`)
        yield* Fiber.interrupt(fiber)
      }
    })
  )
}))

/** Where the messages of a batch ended: `stops[j]` for `batch[at[j]]`, decided by stage `by[j]`. */
interface Ends {
  readonly stops: Array<Stage.Settled | Stage.Rejected<Stage.StageError | Stage.StageDefect>>
  readonly at: Array<number>
  readonly by: Array<string>
}

/** The gateway's own stage names. */
const RESERVED: ReadonlySet<string> = new Set(["validate", "dedup", COMMIT, "pipeline"])

const KEY_CHANGED =
  "a stage changed what it may not (device, epoch, seq, kind, gateway or traceparent), or passed on no envelope: not stored"

/**
 * True when a stage passed on an envelope with the key, kind, gateway and traceparent it entered
 * with (the gateway's own fields: stages add fields and change bodies, not identities).
 */
const sameKey = (e: Envelope, original: Envelope) =>
  typeof e === "object" && e !== null && e.seq === original.seq && e.device === original.device &&
  e.epoch === original.epoch && e.kind === original.kind && e.gateway === original.gateway &&
  e.traceparent === original.traceparent

/**
 * The messages a stage before `commit` refused for good (invalid, or refused like a store
 * would), as they entered the pipeline. The store dead-letters its own refusals itself.
 */
const deadLettersOf = (batch: ReadonlyArray<InFlight>, ends: Ends) => {
  const letters: Array<DeadLetter> = []
  for (let j = 0; j < ends.stops.length; j++) {
    const stop = ends.stops[j]!
    if (!(stop instanceof Stage.Rejected) || ends.by[j] === COMMIT) continue
    const tag = stop.error._tag
    if (tag !== "ValidationError" && tag !== "PermanentPersistenceError") continue
    letters.push({ envelope: batch[ends.at[j]!]!.envelope, reason: `stage ${ends.by[j]}: ${stop.error.message}` })
  }
  return letters
}

/** Logs each stage's bugs once per batch: how many messages, the first message and cause. */
const logDefects = (ends: Ends) =>
  Effect.suspend(() => {
    const byStage = new Map<string, { count: number; first: Stage.StageDefect }>()
    for (const stop of ends.stops) {
      if (!(stop instanceof Stage.Rejected) || stop.error._tag !== "StageDefect") continue
      const seen = byStage.get(stop.error.stage)
      if (seen === undefined) byStage.set(stop.error.stage, { count: 1, first: stop.error })
      else seen.count++
    }
    return Effect.forEach(byStage, ([stage, { count, first }]) =>
      Effect.logError("stage failed on messages: nacked unavailable").pipe(
        Effect.annotateLogs({
          stage,
          messages: count,
          error: first.message,
          cause: first.cause instanceof Error ? (first.cause.stack ?? first.cause.message) : String(first.cause)
        })
      ), { discard: true })
  })
