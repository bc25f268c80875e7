/**
 * The persistence loop: takes critical work first, batches by size (`GATEWAY_BATCH_MAX`) or
 * linger (`GATEWAY_BATCH_LINGER_MS`), runs each batch through the pipeline (your stages, then
 * the commit stage that writes it to the sink), then answers every message of the batch on its
 * own connection, in send order: an ack once committed, the nack of its error class when a stage
 * or the store rejected it. It marks commits in the dedup windows. On shutdown it keeps
 * committing until the lanes are empty or the drain deadline passes.
 */
import { Effect, Exit, Fiber, Layer, Semaphore, type Tracer } from "effect"
import { GatewayConfig } from "../config/GatewayConfig.ts"
import { Lifecycle } from "../Lifecycle.ts"
import * as Metrics from "../observability/Metrics.ts"
import { MessageTracer } from "../observability/Tracing.ts"
import { type DeadLetter, Sink } from "../sinks/Sink.ts"
import { answerOf, Tally } from "./Answer.ts"
import { commit, COMMIT } from "./Commit.ts"
import { Dedup } from "./Dedup.ts"
import { type InFlight, Lanes, type Replier } from "./Lanes.ts"
import { Pipeline } from "./Pipeline.ts"
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
  const pipeline = yield* Stage.build(Stage.andThen(stages, commit), { spans: tracer.enabled })
  if (pipeline.names.indexOf(COMMIT) !== pipeline.names.length - 1) {
    return yield* Effect.die(new Error(`a user stage is named "${COMMIT}": the name is reserved for the commit stage`))
  }

  const answer = (batch: ReadonlyArray<InFlight>, outcome: Stage.Outcome<never, Stage.StageError>) => {
    const now = performance.now()
    const dirty = new Set<Replier>()
    const tally = new Tally()
    dedup.beginBatch()
    const { stops, stoppedAt } = outcome
    for (let j = 0; j < stops.length; j++) {
      const item = batch[stoppedAt[j]!]!
      const e = item.envelope
      const stop = stops[j]!
      const { frame, outcome } = answerOf(e.seq, stop)
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

  /** Stores what a stage refused for good before those messages are nacked (best effort). */
  const keepDeadLetters = (batch: ReadonlyArray<InFlight>, outcome: Stage.Outcome<never, Stage.StageError>) => {
    const letters = deadLettersOf(batch, outcome)
    if (letters.length === 0) return Effect.void
    return sink.deadLetter(letters).pipe(
      Effect.tapError((e) =>
        Effect.logWarning("dead letters not stored").pipe(Effect.annotateLogs({ count: letters.length, error: e.message }))
      ),
      Effect.ignore
    )
  }

  const runBatch = (batch: ReadonlyArray<InFlight>) => {
    const run = Effect.flatMap(pipeline.run(batch.map((i) => i.envelope)), (outcome) =>
      Effect.as(keepDeadLetters(batch, outcome), outcome)).pipe(Effect.map((outcome) => answer(batch, outcome)))
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
      let batch = yield* lanes.takeBatch(config.batchMax)
      while (batch.length === 0) {
        if (closing) return yield* Semaphore.take(slots, PIPELINE - 1) // wait for the batches in flight
        yield* lanes.awaitWork
        batch = yield* lanes.takeBatch(config.batchMax)
      }
      if (batch.length < config.batchMax && config.batchLingerMs > 0 && !closing) {
        yield* Effect.sleep(config.batchLingerMs)
        batch = batch.concat(yield* lanes.takeBatch(config.batchMax - batch.length))
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

/**
 * The messages a stage before `commit` refused for good (invalid, or refused like a store
 * would), as they entered the pipeline. The store dead-letters its own refusals itself.
 */
const deadLettersOf = (batch: ReadonlyArray<InFlight>, outcome: Stage.Outcome<never, Stage.StageError>) => {
  const letters: Array<DeadLetter> = []
  const { stops, stoppedAt, stoppedBy } = outcome
  for (let j = 0; j < stops.length; j++) {
    const stop = stops[j]!
    if (!(stop instanceof Stage.Rejected) || stoppedBy[j] === COMMIT) continue
    const tag = stop.error._tag
    if (tag !== "ValidationError" && tag !== "PermanentPersistenceError") continue
    letters.push({ envelope: batch[stoppedAt[j]!]!.envelope, reason: `stage ${stoppedBy[j]}: ${stop.error.message}` })
  }
  return letters
}
