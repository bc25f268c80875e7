/**
 * Per-device rate limits: messages and bytes per second, one token bucket each (burst = one
 * second's worth). A data frame over either limit gets `nack rate_limited` with the
 * `retryAfterMs` after which it would pass. The limits come from the device's class in the
 * registry, else from GATEWAY_DEVICE_MSGS_PER_SEC / GATEWAY_DEVICE_BYTES_PER_SEC; 0 = no limit.
 */
import type { RateLimits } from "../auth/DeviceRegistry.ts"
import { TokenBucket } from "./TokenBucket.ts"

/** The two buckets of one device's connection. */
export class DeviceRateLimit {
  private readonly msgs: TokenBucket | undefined
  private readonly bytes: TokenBucket | undefined

  constructor(limits: RateLimits, nowMs: number) {
    this.msgs = limits.msgsPerSec > 0 ? new TokenBucket(limits.msgsPerSec, limits.msgsPerSec, nowMs) : undefined
    this.bytes = limits.bytesPerSec > 0 ? new TokenBucket(limits.bytesPerSec, limits.bytesPerSec, nowMs) : undefined
  }

  /** A limiter, or undefined when both limits are off (no work per frame then). */
  static of(limits: RateLimits, nowMs: number): DeviceRateLimit | undefined {
    return limits.msgsPerSec > 0 || limits.bytesPerSec > 0 ? new DeviceRateLimit(limits, nowMs) : undefined
  }

  /**
   * Admits one frame of `size` bytes (returns 0, spending from both buckets) or returns the
   * milliseconds until both limits would let it pass (spending nothing).
   */
  admit(size: number, nowMs: number): number {
    const wait = Math.max(this.bytes?.wait(size, nowMs) ?? 0, this.msgs?.wait(1, nowMs) ?? 0)
    if (wait > 0) return wait
    this.bytes?.take(size, nowMs)
    this.msgs?.take(1, nowMs)
    return 0
  }
}
