/**
 * A token bucket on plain numbers (no Effect per call: it runs per message on the hot path).
 * Tokens refill continuously at `ratePerSec` up to `burst`; `take` either takes `n` tokens or
 * says how long until they would be there. Effect's `RateLimiter` suspends the caller instead
 * of answering at once, and costs an Effect per call (measured in `npm run bench -- --only
 * ratelimit`), so the gateway uses this.
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

  /** Takes `n` tokens and returns 0, or returns the milliseconds until `n` tokens exist (none taken). */
  take(n: number, nowMs: number): number {
    if (nowMs > this.last) {
      this.tokens = Math.min(this.burst, this.tokens + (nowMs - this.last) * this.ratePerMs)
      this.last = nowMs
    }
    if (this.tokens >= n) {
      this.tokens -= n
      return 0
    }
    // a request larger than the bucket can ever hold waits for a full bucket, then passes
    const missing = Math.min(n, this.burst) - this.tokens
    if (missing <= 0) {
      this.tokens -= n
      return 0
    }
    return Math.max(1, Math.ceil(missing / this.ratePerMs))
  }
}
