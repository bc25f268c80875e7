/**
 * Retries of one sink: a batch the driver failed as a whole with a retryable {@link SinkError}
 * is written again on a capped, jittered exponential schedule (50 ms doubling, at most 2 s
 * apart, `GATEWAY_STORE_RETRIES` times). Messages the driver answered `Unavailable` one by one
 * are not retried here: the outbox takes them, or the devices resend them.
 */
import { Duration, Effect, Schedule } from "effect"
import { record, sinkBatchMs, sinkBatchSize, sinkRetries } from "../../observability/Metrics.ts"
import { spanEvent } from "../../observability/SpanEvent.ts"
import type { SinkDriver } from "../Contract.ts"

/** How a sink retries. */
export interface RetryPolicy {
  /** Retries after the first attempt (`GATEWAY_STORE_RETRIES`). */
  readonly retries: number
  /** First delay, doubled each retry (jittered). */
  readonly baseMs: number
  /** Longest delay between two attempts. */
  readonly maxMs: number
}

/** The policy of `GATEWAY_STORE_RETRIES`: 50 ms doubling to at most 2 s. */
export const retryPolicy = (retries: number): RetryPolicy => ({ retries, baseMs: 50, maxMs: 2_000 })

/** `driver` with its retryable whole-batch failures retried by `policy`; batch size and time recorded per sink. */
export const withRetry = (driver: SinkDriver, policy: RetryPolicy): SinkDriver => {
  const schedule = Schedule.exponential(Duration.millis(policy.baseMs), 2).pipe(
    Schedule.jittered,
    Schedule.modifyDelay(({ duration }) => Effect.succeed(Duration.min(duration, Duration.millis(policy.maxMs)))),
    Schedule.upTo({ times: policy.retries })
  )
  const retries = sinkRetries(driver.name)
  const sizes = sinkBatchSize(driver.name)
  const durations = sinkBatchMs(driver.name)
  return {
    name: driver.name,
    health: driver.health,
    write: (batch) =>
      Effect.suspend(() => {
        const started = performance.now()
        let attempt = 0
        record(sizes, batch.length)
        return driver.write(batch).pipe(
          Effect.tapError((e) => {
            attempt++
            if (!e.retryable) return Effect.void
            record(retries, 1)
            // an event on the current span (the sink.write span) for each failed attempt a retry follows
            return attempt > policy.retries ? Effect.void : spanEvent("sink.retry", {
              "sink.name": driver.name,
              "retry.attempt": attempt,
              "error.reason": e.reason,
              "error.message": e.message
            })
          }),
          Effect.retry({ schedule, while: (e) => e.retryable }),
          Effect.ensuring(Effect.sync(() => record(durations, performance.now() - started)))
        )
      })
  }
}
