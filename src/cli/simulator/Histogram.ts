/**
 * A latency histogram for the simulator: log-linear buckets (~1% wide, 1 µs at the bottom, up to
 * hours at the top), so recording is one `Math.log` and an increment, and percentiles need no
 * sorting. Exact count, sum and max are kept beside the buckets.
 */

const BUCKETS = 2400
/** Buckets per natural-log unit: 100 → each bucket ~1% wider than the last. */
const SCALE = 100

/** Latency histogram in milliseconds with ~1% resolution. */
export class Histogram {
  private readonly counts = new Float64Array(BUCKETS)
  /** Values recorded. */
  count = 0
  /** Sum of the values recorded (ms). */
  sum = 0
  /** Largest value recorded (ms); 0 when empty. */
  max = 0

  /** Records one latency in milliseconds (negative values count as 0). */
  record(ms: number): void {
    const us = ms * 1000
    const i = us <= 1 ? 0 : Math.min(BUCKETS - 1, Math.floor(Math.log(us) * SCALE))
    this.counts[i] = this.counts[i]! + 1
    this.count++
    this.sum += ms > 0 ? ms : 0
    if (ms > this.max) this.max = ms
  }

  /**
   * The value below which a fraction `p` (0..1) of the recorded values lie: the upper edge of
   * its bucket, never above the exact max; 0 when empty.
   */
  percentile(p: number): number {
    if (this.count === 0) return 0
    const target = Math.max(1, Math.ceil(this.count * p))
    let seen = 0
    for (let i = 0; i < BUCKETS; i++) {
      seen += this.counts[i]!
      if (seen >= target) return Math.min(this.max, Math.exp((i + 1) / SCALE) / 1000)
    }
    return this.max
  }

  /** Mean of the recorded values (ms); 0 when empty. */
  mean(): number {
    return this.count === 0 ? 0 : this.sum / this.count
  }

  /** Forgets everything recorded. */
  reset(): void {
    this.counts.fill(0)
    this.count = 0
    this.sum = 0
    this.max = 0
  }
}
