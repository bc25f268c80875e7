/**
 * The circuit breaker of one sink. Closed: batches go to the sink. After `failures` batches in a
 * row failed as a whole (past their retries) it opens: batches fail at once, without touching
 * the sink (reason `unavailable`, so the outbox takes them or the devices are told to come back
 * later), for `openMs`. Then it is half-open: one batch is let through as a trial (the others
 * still fail at once); if it succeeds the breaker closes, else it opens again for twice as long
 * (at most 60 s). The state is a gauge (`gateway_sink_breaker_state{sink}`: 0 closed, 1
 * half-open, 2 open), each transition one log line, and an open breaker makes the sink not
 * ready, with the last failure as the reason, until its wait is over (then the sink's own health
 * decides, so that an idle gateway becomes ready again without traffic).
 */
import { Effect, Metric } from "effect"
import { record } from "../../observability/Metrics.ts"
import { spanEvent } from "../../observability/SpanEvent.ts"
import { type SinkDriver, SinkError, type SinkHealth } from "../Contract.ts"

/** When a breaker opens and how long it stays open. */
export interface BreakerPolicy {
  /** Batches failed in a row that open it (`GATEWAY_BREAKER_FAILURES`). */
  readonly failures: number
  /** Milliseconds it stays open before the first trial (`GATEWAY_BREAKER_OPEN_MS`); doubled after each failed trial. */
  readonly openMs: number
}

/** The longest a breaker stays open between two trials. */
export const MAX_OPEN_MS = 60_000

/** A breaker's state. */
export type BreakerState = "closed" | "half-open" | "open"

const stateCode: Record<BreakerState, number> = { closed: 0, "half-open": 1, open: 2 }

const stateGauges = new Map<string, Metric.Metric<number, unknown>>()
const stateGauge = (sink: string) => {
  let g = stateGauges.get(sink)
  if (g === undefined) {
    g = Metric.gauge("gateway_sink_breaker_state", {
      description: "circuit breaker of a sink: 0 closed, 1 half-open (one trial batch), 2 open (batches fail at once)",
      attributes: { sink }
    })
    stateGauges.set(sink, g)
  }
  return g
}

/** A driver behind a breaker, and the breaker's state (for `/readyz` and tests). */
export interface BrokenDriver extends SinkDriver {
  readonly state: () => BreakerState
}

/** `driver` behind a circuit breaker with `policy`. */
export const withBreaker = (driver: SinkDriver, policy: BreakerPolicy): BrokenDriver => {
  let state: BreakerState = "closed"
  let failedInRow = 0
  let openFor = policy.openMs
  let openUntil = 0
  let trialRunning = false
  let lastFailure: SinkError | undefined
  const gauge = stateGauge(driver.name)
  record(gauge, 0)

  const moveTo = (next: BreakerState) => {
    if (next === state) return Effect.void
    const from = state
    state = next
    record(gauge, stateCode[next])
    const annotations = { sink: driver.name, from, to: next, failures: failedInRow, error: lastFailure?.message ?? "" }
    // a span event on the write that made the transition (its sink.write span), and a log line
    const event = spanEvent("sink.breaker", {
      "sink.name": driver.name,
      "breaker.from": from,
      "breaker.to": next,
      "breaker.failures": failedInRow,
      ...(next === "open" ? { "breaker.open_ms": openFor } : {})
    })
    return Effect.andThen(event, next === "open"
      ? Effect.logWarning(`sink ${driver.name} circuit open for ${openFor} ms`).pipe(Effect.annotateLogs(annotations))
      : Effect.logInfo(`sink ${driver.name} circuit ${next}`).pipe(Effect.annotateLogs(annotations)))
  }

  const failed = (e: SinkError, trial: boolean) =>
    Effect.suspend(() => {
      lastFailure = e
      failedInRow++
      if (trial) openFor = Math.min(MAX_OPEN_MS, openFor * 2)
      if (!trial && (state !== "closed" || failedInRow < policy.failures)) return Effect.void
      openUntil = performance.now() + openFor
      return moveTo("open")
    })

  const succeeded = Effect.suspend(() => {
    failedInRow = 0
    openFor = policy.openMs
    return moveTo("closed")
  })

  const refused = () =>
    new SinkError({
      sink: driver.name,
      reason: "unavailable",
      message: `circuit open after ${failedInRow} failed batches (last: ${lastFailure?.message ?? "unknown"})`
    })

  const write: SinkDriver["write"] = (batch) =>
    Effect.suspend(() => {
      // state and the trial are decided here, before anything yields: two batches arriving
      // together when the wait is over make one trial, not two
      const announce = state === "open" && performance.now() >= openUntil ? moveTo("half-open") : Effect.void
      if (state === "open" || (state === "half-open" && trialRunning)) return Effect.fail(refused())
      const trial = state === "half-open"
      if (trial) trialRunning = true
      return Effect.andThen(announce, driver.write(batch)).pipe(
        Effect.tapError((e) => failed(e, trial)),
        Effect.tap(() => succeeded),
        Effect.ensuring(Effect.sync(() => {
          if (trial) trialRunning = false
        }))
      )
    })

  // once the wait is over the next batch is a trial: readiness is the sink's own again (an idle
  // gateway, which a load balancer sends nothing while not ready, must not wait for traffic)
  const health: Effect.Effect<SinkHealth> = Effect.suspend(() =>
    state !== "open" || performance.now() >= openUntil
      ? driver.health
      : Effect.succeed<SinkHealth>({ ready: false, reason: lastFailure?.reason ?? "unavailable", message: refused().message })
  )

  return { name: driver.name, write, health, state: () => state }
}
