/**
 * Per source address (the peer's IP), what unauthenticated traffic may take: how many of its
 * connections may be open before their welcome, and how many failed authentications it may
 * cause in a window before its new connections are refused for the rest of that window. With
 * the node-wide cap on unauthenticated connections (in Admission), a client without a
 * credential cannot hold the slots a registered device needs, and a token-guessing client is
 * slowed to a few tries a minute. Records are bounded: beyond `maxSources` the least recently
 * seen address is evicted (Map insertion order is the recency order).
 */

interface Source {
  /** Its connections not yet welcomed (nor closed). */
  unauthenticated: number
  /** Start of the current counting window of failures (ms). */
  windowStart: number
  /** Failed authentications in the current window. */
  failures: number
  /** Until when (ms) its new connections are refused; 0 when they are not. */
  blockedUntil: number
}

/** Limits of a {@link SourceGuard}. */
export interface SourceLimits {
  /** Unauthenticated connections one address may hold at once. */
  readonly unauthenticatedPerSource: number
  /** Failed authentications of one address allowed within `failWindowMs`. */
  readonly failLimit: number
  readonly failWindowMs: number
  /** Addresses with a record at most. */
  readonly maxSources: number
}

/** The per-address records. */
export class SourceGuard {
  private readonly sources = new Map<string, Source>()
  private readonly limits: SourceLimits
  /** Unauthenticated connections of every address. */
  unauthenticated = 0

  constructor(limits: SourceLimits) {
    this.limits = limits
  }

  /** Addresses with a record. */
  get size(): number {
    return this.sources.size
  }

  /** Milliseconds until `address` may connect again after too many failures; 0 when it may. */
  blockedFor(address: string, nowMs: number): number {
    const s = this.sources.get(address)
    return s === undefined || s.blockedUntil <= nowMs ? 0 : s.blockedUntil - nowMs
  }

  /** True when `address` already holds its share of unauthenticated connections. */
  full(address: string): boolean {
    return (this.sources.get(address)?.unauthenticated ?? 0) >= this.limits.unauthenticatedPerSource
  }

  /** Counts a new unauthenticated connection of `address` (until {@link leave}). */
  enter(address: string): void {
    this.touch(address).unauthenticated++
    this.unauthenticated++
  }

  /** Its connection was welcomed or closed: no longer unauthenticated. Once per {@link enter}. */
  leave(address: string): void {
    if (this.unauthenticated > 0) this.unauthenticated--
    const s = this.sources.get(address)
    if (s === undefined) return // evicted meanwhile
    if (s.unauthenticated > 0) s.unauthenticated--
    if (s.unauthenticated === 0 && s.failures === 0 && s.blockedUntil === 0) this.sources.delete(address)
  }

  /**
   * Counts a failed authentication of `address`. Returns the milliseconds its new connections
   * are now refused for (0 while it is within its limit); `justBlocked` on the failure that
   * crossed the limit.
   */
  failed(address: string, nowMs: number): { readonly blockedMs: number; readonly justBlocked: boolean } {
    const s = this.touch(address)
    if (s.blockedUntil > nowMs) return { blockedMs: s.blockedUntil - nowMs, justBlocked: false }
    if (nowMs - s.windowStart >= this.limits.failWindowMs) {
      s.windowStart = nowMs
      s.failures = 0
      s.blockedUntil = 0
    }
    s.failures++
    if (s.failures > this.limits.failLimit) {
      s.blockedUntil = s.windowStart + this.limits.failWindowMs
      return { blockedMs: s.blockedUntil - nowMs, justBlocked: true }
    }
    return { blockedMs: 0, justBlocked: false }
  }

  private touch(address: string): Source {
    let s = this.sources.get(address)
    if (s === undefined) {
      s = { unauthenticated: 0, windowStart: -Infinity, failures: 0, blockedUntil: 0 }
      if (this.sources.size >= this.limits.maxSources) {
        const oldest = this.sources.keys().next()
        if (oldest.done !== true) this.sources.delete(oldest.value)
      }
    } else {
      this.sources.delete(address) // re-inserted below: most recently seen last
    }
    this.sources.set(address, s)
    return s
  }
}
