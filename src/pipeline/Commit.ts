/**
 * The commit stage, the last of every pipeline: writes the chunk to the sink as one batch
 * (transient errors retried on a jittered, capped exponential schedule, GATEWAY_STORE_RETRIES)
 * and settles each message with its outcome: committed, duplicate (stored before), or rejected
 * by the store alone (`PermanentPersistenceError`: nack invalid; the store dead-letters it), or
 * not taken this time by a remote sink (`TransientUpstreamError`: nack unavailable, retry). A
 * batch the sink fails as a whole is not the messages' fault: each of them is rejected with a
 * `TransientUpstreamError` (nack unavailable, retry).
 */
import { Duration, Effect, Schedule } from "effect"
import { GatewayConfig } from "../config/GatewayConfig.ts"
import type { Envelope } from "../domain/Envelope.ts"
import { PermanentPersistenceError, TransientUpstreamError } from "../domain/Errors.ts"
import * as Metrics from "../observability/Metrics.ts"
import { Outcome, Sink, type WriteResult } from "../sinks/Sink.ts"
import * as Stage from "./Stage.ts"

/** The commit stage's name (reserved: user stages may not use it). */
export const COMMIT = "commit"

/** Writes each chunk to the {@link Sink} and settles every message. */
export const commit: Stage.Stage<
  Envelope,
  never,
  TransientUpstreamError | PermanentPersistenceError,
  Sink | GatewayConfig
> = Stage.unwrap(
  Effect.gen(function*() {
    const sink = yield* Sink
    const config = yield* GatewayConfig
    const retrySchedule = Schedule.exponential("50 millis", 2).pipe(
      Schedule.jittered,
      Schedule.modifyDelay(({ duration }) => Effect.succeed(Duration.min(duration, Duration.seconds(2)))),
      Schedule.upTo({ times: config.storeRetries })
    )
    return Stage.chunk<Envelope, never, TransientUpstreamError | PermanentPersistenceError>(COMMIT, (batch: ReadonlyArray<Envelope>) =>
      Effect.gen(function*() {
        const started = performance.now()
        Metrics.record(Metrics.sinkBatchSize, batch.length)
        const result = yield* sink.write(batch).pipe(
          Effect.tapError(() => Effect.sync(() => Metrics.record(Metrics.sinkRetries, 1))),
          Effect.retry({ schedule: retrySchedule, while: (e) => e._tag === "TransientUpstreamError" }),
          Effect.tapError((error) =>
            Effect.logWarning("sink batch failed").pipe(
              Effect.annotateLogs({ sink: sink.name, size: batch.length, error: error.message, class: error._tag })
            )
          ),
          // failing the whole batch says nothing about its messages: the devices keep them and resend
          Effect.catchTag("PermanentPersistenceError", (e) =>
            Effect.fail(new TransientUpstreamError({ sink: e.sink, message: e.message, cause: e })))
        )
        Metrics.record(Metrics.sinkBatchMs, performance.now() - started)
        return verdicts(sink.name, result)
      }), { timeoutMs: Infinity }) // bounded by the sink's own timeouts and GATEWAY_STORE_RETRIES
  })
)

type Verdict = Stage.Settled | Stage.Rejected<PermanentPersistenceError | TransientUpstreamError>

const verdicts = (sink: string, result: WriteResult): Array<Verdict> => {
  const out: Array<Verdict> = new Array(result.outcomes.length)
  for (let i = 0; i < out.length; i++) {
    const o = result.outcomes[i]
    out[i] = o === Outcome.Committed
      ? Stage.committed
      : o === Outcome.Duplicate
      ? Stage.duplicate
      : o === Outcome.Unavailable
      // this message alone could not be taken this time (a remote sink's route or server): the device resends
      ? Stage.reject(new TransientUpstreamError({ sink, message: result.rejections.get(i) ?? "unavailable" }))
      : Stage.reject(new PermanentPersistenceError({ sink, message: result.rejections.get(i) ?? "unknown reason" }))
  }
  return out
}
