/**
 * Flapping detection: a device whose connections start more than `limit` times within
 * `windowMs` is banned for `banMs` (its next connections get `error busy` with `retryAfterMs`
 * set to the ban's end). Only authenticated connections that the gateway admitted count: nobody
 * can ban a device by using its id, and a device that obeys `busy` while the node is saturated
 * is not taken for a flapping one. The per-device records are bounded: least recently seen devices are evicted
 * beyond `maxDevices` (Map insertion order is the recency order).
 */

interface Record {
  /** Start of the current counting window (ms). */
  windowStart: number
  /** Connections in the current window. */
  count: number
  /** End of the ban (ms), 0 when not banned. */
  bannedUntil: number
}

/** Per-device connect counters. */
export class FlapGuard {
  private readonly records = new Map<string, Record>()
  private readonly limit: number
  private readonly windowMs: number
  private readonly banMs: number
  private readonly maxDevices: number

  constructor(options: { readonly limit: number; readonly windowMs: number; readonly banMs: number; readonly maxDevices: number }) {
    this.limit = options.limit
    this.windowMs = options.windowMs
    this.banMs = options.banMs
    this.maxDevices = options.maxDevices
  }

  /** Devices with a record. */
  get size(): number {
    return this.records.size
  }

  /** Milliseconds until `device`'s ban ends, 0 when it is not banned (counts nothing). */
  bannedFor(device: string, nowMs: number): number {
    const r = this.records.get(device)
    return r === undefined || r.bannedUntil <= nowMs ? 0 : r.bannedUntil - nowMs
  }

  /**
   * Counts one admitted connection of `device` at `nowMs`. Returns 0 when it may connect, else the
   * milliseconds until its ban ends (`justBanned` tells the caller to count a new ban).
   */
  connect(device: string, nowMs: number): { readonly waitMs: number; readonly justBanned: boolean } {
    let r = this.records.get(device)
    if (r === undefined) {
      r = { windowStart: nowMs, count: 0, bannedUntil: 0 }
      if (this.records.size >= this.maxDevices) {
        const oldest = this.records.keys().next()
        if (oldest.done !== true) this.records.delete(oldest.value)
      }
    } else {
      this.records.delete(device) // re-inserted below: most recently seen last
    }
    this.records.set(device, r)
    if (r.bannedUntil > nowMs) return { waitMs: r.bannedUntil - nowMs, justBanned: false }
    if (nowMs - r.windowStart >= this.windowMs) {
      r.windowStart = nowMs
      r.count = 0
    }
    r.count++
    if (r.count > this.limit) {
      r.bannedUntil = nowMs + this.banMs
      r.count = 0
      r.windowStart = r.bannedUntil
      return { waitMs: this.banMs, justBanned: true }
    }
    return { waitMs: 0, justBanned: false }
  }
}
