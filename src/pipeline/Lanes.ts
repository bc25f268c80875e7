/**
 * The two bounded lanes between the connections and the persistence stage (DESIGN.md), each an
 * Effect `Queue` with its overload policy named where it is built:
 * - critical (events): `Queue.bounded`, full → the offering connection suspends (backpressure:
 *   it stops reading its socket once its in-flight window is full). Events are never shed.
 * - bulk (telemetry): sliding, full → the oldest message is dropped and its sender gets
 *   `nack shed`. Built on `Queue.bounded` with the drop done here, because `Queue.sliding` drops
 *   silently and every dropped message must still be answered.
 * Both are also bounded in bytes by the node's memory budget: above its high watermark the bulk
 * lane sheds its oldest telemetry on every offer, whatever its length, and batches are taken up
 * to `GATEWAY_BATCH_MAX_BYTES` of frames. And the bulk lane is bounded in time: telemetry that
 * waited longer than `GATEWAY_BULK_MAX_AGE_MS` is shed when it reaches the head.
 * A one-slot doorbell wakes the persistence stage when either lane receives work.
 */
import { Context, Effect, Layer, Queue, Schedule } from "effect"
import { MemoryBudget } from "../admission/MemoryBudget.ts"
import { GatewayConfig } from "../config/GatewayConfig.ts"
import type { Envelope } from "../domain/Envelope.ts"
import { nackFrame } from "../domain/Frames.ts"
import * as Metrics from "../observability/Metrics.ts"
import type { MessageSpan } from "../observability/Tracing.ts"

/** How often the lane depth gauges are sampled. */
const DEPTH_SAMPLE_EVERY = "200 millis"

/** Where a message's answer goes: the ordered answer table of its connection. */
export interface Replier {
  /** Records the answer of `ticket` (written once every earlier ticket is answered). */
  readonly resolve: (ticket: number, frame: string) => void
  /** Writes every answer that is now in order. */
  readonly flush: () => void
}

/** One message between ingest and commit. */
export interface InFlight {
  readonly envelope: Envelope
  readonly replier: Replier
  readonly ticket: number
  /** Byte length of the message's frame (batches are bounded in bytes). */
  readonly bytes: number
  /** `performance.now()` at arrival, for the ingest-to-commit histogram. */
  readonly arrivedAt: number
  /** The message's ingest span, when tracing is on and the message is sampled. */
  readonly span: MessageSpan | undefined
}

/** What the connections and the persistence stage see of the lanes. */
export interface LanesShape {
  /** Enqueues telemetry; when the lane is full (or memory above the high watermark) the oldest telemetry is shed (and nacked). */
  readonly offerTelemetry: (item: InFlight) => void
  /** Enqueues an event if there is room; false when the critical lane is full. */
  readonly tryOfferEvent: (item: InFlight) => boolean
  /** Enqueues events, suspending while the critical lane is full (backpressure). */
  readonly offerEvents: (items: ReadonlyArray<InFlight>) => Effect.Effect<void>
  /** Wakes the persistence stage (call once after a chunk's offers). */
  readonly notify: () => void
  /** Takes up to `max` messages and about `maxBytes` of frames without waiting: critical first, then bulk. */
  readonly takeBatch: (max: number, maxBytes: number) => Array<InFlight>
  /** Waits until `notify` was called since the last wait. */
  readonly awaitWork: Effect.Effect<void>
  /** Messages waiting in both lanes. */
  readonly size: () => number
  /** The fuller lane's fill, 0..1 (admission refuses new connections near 1). */
  readonly fill: () => number
}

/** The lanes service. */
export class Lanes extends Context.Service<Lanes, LanesShape>()("gateway/Lanes") {
  /** Lanes sized by GATEWAY_CRITICAL_QUEUE and GATEWAY_BULK_QUEUE. */
  static readonly layer = Layer.effect(
    Lanes,
    Effect.gen(function*() {
      const config = yield* GatewayConfig
      const budget = yield* MemoryBudget
      // Policy "suspend": a full critical lane blocks the offering connection.
      const critical = yield* Queue.bounded<InFlight>(config.criticalQueue)
      // Policy "sliding" (by hand below): a full bulk lane drops its oldest message.
      const bulk = yield* Queue.bounded<InFlight>(config.bulkQueue)
      // Policy "sliding", capacity 1: many rings before a wait count as one.
      const doorbell = yield* Queue.sliding<true>(1)
      Metrics.record(Metrics.laneCapacity("critical"), config.criticalQueue)
      Metrics.record(Metrics.laneCapacity("bulk"), config.bulkQueue)
      const criticalDepth = Metrics.laneDepth("critical")
      const bulkDepth = Metrics.laneDepth("bulk")
      // Depth gauges are sampled, not updated per offer: no work on the hot path for them.
      yield* Effect.sync(() => {
        Metrics.record(criticalDepth, Queue.sizeUnsafe(critical))
        Metrics.record(bulkDepth, Queue.sizeUnsafe(bulk))
      }).pipe(Effect.repeat(Schedule.spaced(DEPTH_SAMPLE_EVERY)), Effect.forkScoped)

      const shed = (old: InFlight) => {
        old.replier.resolve(old.ticket, nackFrame(old.envelope.seq, "shed", "telemetry shed under overload (oldest first)"))
        old.replier.flush()
        old.span?.finish("shed")
        Metrics.record(Metrics.messages("telemetry", "shed"), 1)
        Metrics.record(Metrics.errors("OverloadError"), 1)
      }

      // a doorbell already rung is left alone: offering into the full sliding queue would drop
      // and re-add its one value (allocations on every socket read)
      const ring = () => {
        if (Queue.sizeUnsafe(doorbell) === 0) Queue.offerUnsafe(doorbell, true)
      }

      return Lanes.of({
        offerTelemetry: (item) => {
          while (Queue.isFullUnsafe(bulk) || (budget.isHigh() && Queue.sizeUnsafe(bulk) > 0)) {
            const oldest = Queue.takeUnsafe(bulk)
            if (oldest === undefined || oldest._tag !== "Success") break
            shed(oldest.value)
          }
          Queue.offerUnsafe(bulk, item)
        },
        tryOfferEvent: (item) => Queue.offerUnsafe(critical, item),
        // what fits goes in at once; the rest one by one as room frees, each announced (the
        // persistence loop may be waiting for the doorbell while this waits for room)
        offerEvents: (items) =>
          Effect.suspend(() => {
            let i = 0
            while (i < items.length && Queue.offerUnsafe(critical, items[i]!)) i++
            if (i > 0) ring()
            if (i === items.length) return Effect.void
            return Effect.forEach(items.slice(i), (item) => Effect.andThen(Queue.offer(critical, item), Effect.sync(ring)), {
              discard: true
            })
          }),
        notify: ring,
        takeBatch: (max, maxBytes) => {
          const batch: Array<InFlight> = []
          let bytes = takeInto(critical, batch, max, maxBytes, 0)
          // telemetry that waited longer than GATEWAY_BULK_MAX_AGE_MS is shed instead: under a
          // long overload the lane is a bounded delay, not a minutes-deep backlog (and the acks
          // of events, which follow the device's earlier telemetry in send order, stay timely)
          const staleBefore = performance.now() - config.bulkMaxAgeMs
          while (batch.length < max && bytes < maxBytes) {
            const taken = Queue.takeUnsafe(bulk)
            if (taken === undefined || taken._tag !== "Success") break
            const item = taken.value
            if (item.arrivedAt < staleBefore) {
              shed(item)
              continue
            }
            batch.push(item)
            bytes += item.bytes
          }
          return batch
        },
        awaitWork: Effect.asVoid(Queue.take(doorbell)),
        size: () => Queue.sizeUnsafe(critical) + Queue.sizeUnsafe(bulk),
        fill: () => Math.max(Queue.sizeUnsafe(critical) / config.criticalQueue, Queue.sizeUnsafe(bulk) / config.bulkQueue)
      })
    })
  )
}

/**
 * Moves events that are already in `queue` into `batch` until it holds `max` messages or
 * `maxBytes` of frames (the message that crosses the byte limit is included, so one frame
 * larger than the limit still travels); returns the batch's bytes. Taking frees room, which
 * wakes connections suspended on a full critical lane.
 */
const takeInto = (queue: Queue.Queue<InFlight>, batch: Array<InFlight>, max: number, maxBytes: number, bytes: number) => {
  while (batch.length < max && bytes < maxBytes) {
    const taken = Queue.takeUnsafe(queue)
    if (taken === undefined || taken._tag !== "Success") break
    batch.push(taken.value)
    bytes += taken.value.bytes
  }
  return bytes
}
