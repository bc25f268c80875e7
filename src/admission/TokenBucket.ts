/**
 * A token bucket on plain numbers (no Effect per call: it runs per message on the hot path).
 * Tokens refill continuously at `ratePerSec` up to `burst`. A request larger than the bucket can
 * hold passes when the bucket is full and leaves a debt that later refills pay off, so it is
 * limited, not refused forever. Effect's `RateLimiter` suspends the caller instead of answering
 * at once, and costs an Effect per call (measured in `npm run bench -- --only ratelimit`), so
 * the gateway uses this.
 */
export class TokenBucket {
  private readonly ratePerMs: number
  private readonly burst: number
  private tokens: number
  /** Clock reading (ms) of the last refill. */
  private last: number

  constructor(ratePerSec: number, burst: number, nowMs: number) {
    this.ratePerMs = ratePerSec / 1000
    this.burst = burst
    this.tokens = burst
    this.last = nowMs
  }

  /** Milliseconds until `n` tokens may be taken (0: now); takes nothing. */
  wait(n: number, nowMs: number): number {
    if (nowMs > this.last) {
      this.tokens = Math.min(this.burst, this.tokens + (nowMs - this.last) * this.ratePerMs)
      this.last = nowMs
    }
    // a millionth of a token is refill rounding, not a shortage
    const missing = Math.min(n, this.burst) - this.tokens
    return missing <= 1e-6 ? 0 : Math.max(1, Math.ceil(missing / this.ratePerMs))
  }

  /** Takes `n` tokens and returns 0, or returns the milliseconds until it could (none taken). */
  take(n: number, nowMs: number): number {
    const wait = this.wait(n, nowMs)
    if (wait === 0) this.tokens -= n
    return wait
  }
}
