/**
 * The simulator's counters, shared by every simulated device: plain numbers and maps bumped on
 * the per-frame path (no allocation beyond a map entry per new code), one histogram for the
 * whole run and one for the current second (reset by the progress line).
 */
import { Histogram } from "./Histogram.ts"

/** Adds one to `key` of a counting map. */
export const bump = (map: Map<string, number>, key: string, by = 1): void => {
  map.set(key, (map.get(key) ?? 0) + by)
}

/** Every counter of one run. */
export class Stats {
  // ---- frames ----
  /** Frames the devices produced (each with its own seq), overflow not included. */
  produced = 0
  /** Of them, events. */
  events = 0
  /** Of them, frames carrying a `trace`. */
  traced = 0
  /** Frames not produced because the device's backlog was full (a device's buffer overflowing). */
  overflow = 0
  /** Frames written at least once. */
  sent = 0
  /** Frame writes, resends included. */
  writes = 0
  /** Writes of a frame after its first (after a reconnect, or after a nack with retry). */
  resent = 0
  /** Frames acked (the first ack of each frame). */
  acked = 0
  /** Of them, acks with `dup:true` (the gateway had committed the frame before). */
  dupAcks = 0
  /** Frames finally refused (`invalid`, `forbidden`, or a nack without retry of an unknown code): never resent. */
  rejected = 0
  /** Answers that matched no frame in flight on that connection (a protocol surprise). */
  unexpected = 0
  /** Nacks by code (every nack, resends' included). */
  readonly nacks = new Map<string, number>()

  // ---- connections ----
  /** Connection attempts (TCP connects started). */
  attempts = 0
  /** Sessions opened (welcome received). */
  sessions = 0
  /** Devices that opened at least one session. */
  devicesConnected = 0
  /** Sessions opened by a device that had one before. */
  reconnects = 0
  /** Sessions open now. */
  connected = 0
  /** `error busy` refusals received. */
  busy = 0
  /** `goaway` frames received. */
  goaways = 0
  /** Shortest wait from an `error busy` to the device's next connection attempt (ms; Infinity: none). */
  busyWaitMinMs = Infinity
  /** Shortest wait from a `goaway` to the device's next connection attempt (ms; Infinity: none). */
  goawayWaitMinMs = Infinity
  /** Hellos that carried a `resume` hint. */
  resumeHellos = 0
  /** Pings sent (keepalive). */
  pings = 0
  /** `error` frames by code (busy included). */
  readonly errors = new Map<string, number>()
  /** Socket errors by code (ECONNREFUSED, ECONNRESET, …), and `timeout` for a connect or hello that took too long. */
  readonly socketErrors = new Map<string, number>()
  /** Devices that stopped for good (refused credentials, a protocol error), by the error code. */
  readonly gaveUp = new Map<string, number>()
  /** Gateway lines of any kind received (tells "nothing answers there" from "it refuses us"). */
  gatewayLines = 0

  // ---- latency ----
  /** Ack latency from the scheduled send time, over the run. */
  readonly latency = new Histogram()
  /** The same over the current second. */
  readonly second = new Histogram()

  /** Records the first ack of a frame scheduled `latencyMs` ago. */
  ack(latencyMs: number, dup: boolean): void {
    this.acked++
    if (dup) this.dupAcks++
    this.latency.record(latencyMs)
    this.second.record(latencyMs)
  }

  /** Frames produced and not yet settled (acked or finally refused). */
  get pending(): number {
    return this.produced - this.acked - this.rejected
  }
}
