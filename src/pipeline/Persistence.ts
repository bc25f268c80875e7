/**
 * The persistence stage: takes critical work first, batches by size (`GATEWAY_BATCH_MAX`) or
 * linger (`GATEWAY_BATCH_LINGER_MS`), commits each batch to the sink (transient errors retried
 * on a jittered, capped exponential schedule), then answers every message of the batch on its
 * own connection, in send order. It marks commits in the dedup windows. On shutdown it keeps
 * committing until the lanes are empty or the drain deadline passes.
 */
import { Duration, Effect, Exit, Fiber, Layer, Schedule, Semaphore, type Tracer } from "effect"
import { GatewayConfig } from "../config/GatewayConfig.ts"
import type { PermanentPersistenceError, TransientUpstreamError } from "../domain/Errors.ts"
import { ackFrame, nackFrame } from "../domain/Frames.ts"
import { Lifecycle } from "../Lifecycle.ts"
import * as Metrics from "../observability/Metrics.ts"
import { Outcome, Sink, type WriteResult } from "../sinks/Sink.ts"
import { Dedup } from "./Dedup.ts"
import { type InFlight, Lanes, type Replier } from "./Lanes.ts"

/** Batches with the sink at once. */
const PIPELINE = 2

/** How long a device should wait before resending after `nack unavailable`. */
const UNAVAILABLE_RETRY_AFTER_MS = 1_000

const SUCCESS = Exit.void

/** The persistence stage as a layer: a scoped fiber that lives as long as the gateway. */
export const layer = Layer.effectDiscard(Effect.gen(function*() {
  const config = yield* GatewayConfig
  const lanes = yield* Lanes
  const sink = yield* Sink
  const dedup = yield* Dedup
  const lifecycle = yield* Lifecycle

  const retrySchedule = Schedule.exponential("50 millis", 2).pipe(
    Schedule.jittered,
    Schedule.modifyDelay(({ duration }) => Effect.succeed(Duration.min(duration, Duration.seconds(2)))),
    Schedule.upTo({ times: config.storeRetries })
  )

  const write = (batch: ReadonlyArray<InFlight>) => {
    const links: Array<Tracer.SpanLink> = []
    for (const item of batch) if (item.span !== undefined) links.push({ span: item.span, attributes: {} })
    return sink.write(batch.map((i) => i.envelope)).pipe(
      Effect.tapError(() => Effect.sync(() => Metrics.record(Metrics.sinkRetries, 1))),
      Effect.retry({ schedule: retrySchedule, while: (e) => e._tag === "TransientUpstreamError" }),
      Effect.withSpan("sink.batch", {
        kind: "client",
        links,
        attributes: { "sink.name": sink.name, "batch.size": batch.length }
      })
    )
  }

  const answer = (batch: ReadonlyArray<InFlight>, result: WriteResult) => {
    const now = performance.now()
    const dirty = new Set<Replier>()
    let committed = 0, duplicate = 0, rejected = 0
    dedup.beginBatch()
    for (let i = 0; i < batch.length; i++) {
      const item = batch[i]!
      const e = item.envelope
      const outcome = result.outcomes[i]
      let frame: string
      if (outcome === Outcome.Rejected) {
        rejected++
        frame = nackFrame(e.seq, "invalid", `rejected by the store: ${result.rejections.get(i) ?? "unknown reason"}`)
      } else {
        if (outcome === Outcome.Committed) committed++
        else duplicate++
        dedup.markCommitted(e.device, e.epoch, e.seq)
        frame = ackFrame(e.seq, outcome === Outcome.Duplicate)
        Metrics.record(Metrics.commitLatencyMs, now - item.arrivedAt)
      }
      item.replier.resolve(item.ticket, frame)
      dirty.add(item.replier)
      item.span?.end(process.hrtime.bigint(), SUCCESS)
    }
    for (const r of dirty) r.flush()
    countByKind(batch, result)
    if (rejected > 0) Metrics.record(Metrics.errors("PermanentPersistenceError"), rejected)
    Metrics.record(Metrics.dedupDevices, dedup.deviceCount)
  }

  const fail = (batch: ReadonlyArray<InFlight>, error: TransientUpstreamError | PermanentPersistenceError) =>
    Effect.gen(function*() {
      yield* Effect.logWarning("sink batch failed").pipe(
        Effect.annotateLogs({ sink: sink.name, size: batch.length, error: error.message })
      )
      Metrics.record(Metrics.errors(error._tag), 1)
      const dirty = new Set<Replier>()
      for (const item of batch) {
        // the whole batch failed, not one message: the device keeps it and retries (PROTOCOL.md)
        const frame = nackFrame(item.envelope.seq, "unavailable", `store unavailable: ${error.message}`, UNAVAILABLE_RETRY_AFTER_MS)
        item.replier.resolve(item.ticket, frame)
        dirty.add(item.replier)
        item.span?.end(process.hrtime.bigint(), SUCCESS)
        Metrics.record(Metrics.messages(item.envelope.kind, "unavailable"), 1)
      }
      for (const r of dirty) r.flush()
    })

  const commit = (batch: ReadonlyArray<InFlight>) =>
    Effect.gen(function*() {
      const started = performance.now()
      Metrics.record(Metrics.sinkBatchSize, batch.length)
      yield* write(batch).pipe(
        Effect.matchEffect({
          onSuccess: (result) => Effect.sync(() => answer(batch, result)),
          onFailure: (error) => fail(batch, error)
        })
      )
      Metrics.record(Metrics.sinkBatchMs, performance.now() - started)
    })

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
      yield* Effect.forkChild(Effect.ensuring(commit(batch), Semaphore.release(slots, 1)))
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

const countByKind = (batch: ReadonlyArray<InFlight>, result: WriteResult) => {
  let tc = 0, td = 0, tr = 0, ec = 0, ed = 0, er = 0
  for (let i = 0; i < batch.length; i++) {
    const o = result.outcomes[i]
    if (batch[i]!.envelope.kind === "telemetry") {
      if (o === Outcome.Committed) tc++
      else if (o === Outcome.Duplicate) td++
      else tr++
    } else {
      if (o === Outcome.Committed) ec++
      else if (o === Outcome.Duplicate) ed++
      else er++
    }
  }
  if (tc) Metrics.record(Metrics.messages("telemetry", "committed"), tc)
  if (td) Metrics.record(Metrics.messages("telemetry", "duplicate"), td)
  if (tr) Metrics.record(Metrics.messages("telemetry", "rejected"), tr)
  if (ec) Metrics.record(Metrics.messages("event", "committed"), ec)
  if (ed) Metrics.record(Metrics.messages("event", "duplicate"), ed)
  if (er) Metrics.record(Metrics.messages("event", "rejected"), er)
}
