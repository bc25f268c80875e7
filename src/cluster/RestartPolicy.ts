/**
 * When to restart a worker that died: an exponential backoff from 100 ms, capped at 5 s, with
 * jitter so that workers that died together do not come back in lockstep, starting over once a
 * worker has stayed up long enough to count as healthy. A pure function (the random draw is
 * passed in), so the policy is tested without a clock.
 */

/** The policy's parameters. */
export interface RestartPolicy {
  /** Delay before the first restart of a run of failures. */
  readonly initialMs: number
  /** Longest delay: a worker that cannot start is retried at least this often. */
  readonly maxMs: number
  /** A worker that ran at least this long before it died was healthy: the backoff starts over. */
  readonly healthyAfterMs: number
}

/** 100 ms doubling to 5 s; reset after 10 s of uptime. */
export const defaultPolicy: RestartPolicy = { initialMs: 100, maxMs: 5_000, healthyAfterMs: 10_000 }

/** The delay before the next start, and the failure count to carry to the one after. */
export interface Restart {
  readonly delayMs: number
  /** Consecutive short-lived runs so far (0 after a healthy run). */
  readonly failures: number
}

/**
 * The restart after a worker died having run `uptimeMs`, when `failures` short-lived runs came
 * before it. The step doubles per consecutive failure; `random` in [0, 1) scales it by 0.8..1.2
 * (as `Schedule.jittered` does), and the result never exceeds `maxMs`.
 */
export const nextRestart = (policy: RestartPolicy, failures: number, uptimeMs: number, random: number): Restart => {
  const previous = uptimeMs >= policy.healthyAfterMs ? 0 : failures
  const step = policy.initialMs * 2 ** Math.min(previous, 30)
  return { delayMs: Math.round(Math.min(policy.maxMs, step * (0.8 + 0.4 * random))), failures: previous + 1 }
}
