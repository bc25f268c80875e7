/**
 * The load generator: `connections` devices, each keeping at most `window` data frames
 * unanswered, optionally paced to a total `rate` (msgs/s), with a telemetry/event mix, for
 * `durationMs`. Answers arrive in send order on a connection (PROTOCOL.md), so the k-th answer
 * line after welcome belongs to the k-th frame sent: latency needs no parsing of acks. Each
 * device has its own socket, opened by `dial` (plain TCP unless told: TLS, mutual TLS).
 */
import type * as Net from "node:net"
import { type Dial, plainDial } from "./dial.ts"

/** What to run. */
export interface LoadOptions {
  readonly port: number
  readonly connections: number
  readonly window: number
  /** Total msgs/s across all connections; 0 = as fast as the windows allow. */
  readonly rate: number
  /** Fraction of frames that are events (0..1). */
  readonly eventRatio: number
  readonly durationMs: number
  /** Prefix of device ids (distinct per run so the store sees fresh keys). */
  readonly devicePrefix: string
  /** How each device opens its socket (default: plain TCP). */
  readonly dial?: Dial
}

/** What was measured. */
export interface LoadResult {
  readonly acked: number
  readonly nacked: number
  readonly seconds: number
  readonly msgsPerSec: number
  readonly p50Ms: number
  readonly p99Ms: number
  readonly maxMs: number
}

/** Log-linear latency histogram: 1 µs resolution at the bottom, ~1% relative above. */
export class Histogram {
  private readonly counts = new Float64Array(4096)
  private total = 0
  max = 0

  record(ms: number): void {
    const us = Math.max(1, ms * 1000)
    const i = Math.min(4095, Math.floor(Math.log(us) * 100))
    this.counts[i]!++
    this.total++
    if (ms > this.max) this.max = ms
  }

  percentile(p: number): number {
    let seen = 0
    const target = this.total * p
    for (let i = 0; i < this.counts.length; i++) {
      seen += this.counts[i]!
      if (seen >= target && seen > 0) return Math.exp((i + 1) / 100) / 1000
    }
    return 0
  }
}

interface Device {
  readonly socket: Net.Socket
  seq: number
  /** Send times of unanswered frames, oldest first (ring). */
  readonly sent: Float64Array
  head: number
  inflight: number
  welcomed: boolean
}

const telemetryBody = `{"metrics":{"temp":21.5,"humidity":40.2,"battery":3.71},"tags":{"site":"bench"}}`
const eventBody = `{"name":"door_open","severity":"info","data":{"door":3}}`

/** Runs one load and resolves with its measurements. */
export const runLoad = (o: LoadOptions): Promise<LoadResult> =>
  new Promise((resolve, reject) => {
    const hist = new Histogram()
    let acked = 0
    let nacked = 0
    let counting = false
    let budget = 0
    const devices: Array<Device> = []
    let welcomed = 0
    let started = 0

    const send = (d: Device, n: number) => {
      let out = ""
      const now = performance.now()
      for (let i = 0; i < n; i++) {
        const seq = d.seq++
        const isEvent = o.eventRatio > 0 && (seq % 1000) < o.eventRatio * 1000
        out += isEvent
          ? `{"type":"event","seq":${seq},"ts":${Date.now()},"body":${eventBody}}\n`
          : `{"type":"telemetry","seq":${seq},"ts":${Date.now()},"body":${telemetryBody}}\n`
        d.sent[(d.head + d.inflight) % o.window] = now
        d.inflight++
      }
      d.socket.write(out)
    }

    const fill = (d: Device) => {
      if (!d.welcomed || !counting) return
      let n = o.window - d.inflight
      if (o.rate > 0) n = Math.min(n, Math.floor(budget))
      if (n <= 0) return
      if (o.rate > 0) budget -= n
      send(d, n)
    }

    const onData = (d: Device, chunk: Buffer) => {
      const now = performance.now()
      let start = 0
      let nl = chunk.indexOf(10)
      while (nl !== -1) {
        if (!d.welcomed) {
          d.welcomed = true
          if (++welcomed === o.connections) begin()
        } else if (chunk[start + 9] === 97 /* {"type":"a(ck) */) {
          if (counting) {
            acked++
            hist.record(now - d.sent[d.head]!)
          }
          d.head = (d.head + 1) % o.window
          d.inflight--
        } else if (chunk[start + 9] === 110 /* n(ack) */) {
          nacked++
          d.head = (d.head + 1) % o.window
          d.inflight--
        }
        start = nl + 1
        nl = chunk.indexOf(10, start)
      }
      if (o.rate === 0) fill(d)
    }

    let pacer: NodeJS.Timeout | undefined
    const begin = () => {
      counting = true
      started = performance.now()
      if (o.rate > 0) {
        let last = performance.now()
        let next = 0
        pacer = setInterval(() => {
          const now = performance.now()
          budget = Math.min(budget + (o.rate * (now - last)) / 1000, o.rate)
          last = now
          // spread the budget round-robin so every connection sends its share
          for (let k = 0; k < devices.length && budget >= 1; k++) fill(devices[(next + k) % devices.length]!)
          next = (next + 7) % devices.length
        }, 2)
      } else {
        for (const d of devices) fill(d)
      }
      setTimeout(finish, o.durationMs)
    }

    const finish = () => {
      counting = false
      if (pacer) clearInterval(pacer)
      const seconds = (performance.now() - started) / 1000
      for (const d of devices) d.socket.destroy()
      resolve({
        acked,
        nacked,
        seconds,
        msgsPerSec: acked / seconds,
        p50Ms: hist.percentile(0.5),
        p99Ms: hist.percentile(0.99),
        maxMs: hist.max
      })
    }

    const dial = o.dial ?? plainDial
    for (let i = 0; i < o.connections; i++) {
      const id = `${o.devicePrefix}-${i}`
      const socket = dial(o.port, id, () => socket.write(`{"type":"hello","v":1,"device":"${id}","token":"bench"}\n`))
      const d: Device = { socket, seq: 0, sent: new Float64Array(o.window), head: 0, inflight: 0, welcomed: false }
      devices.push(d)
      let rest: Buffer | undefined
      socket.on("data", (chunk: Buffer) => {
        let buf = rest === undefined ? chunk : Buffer.concat([rest, chunk])
        const last = buf.lastIndexOf(10)
        rest = last === buf.length - 1 ? undefined : Buffer.from(buf.subarray(last + 1))
        if (last >= 0) onData(d, last === buf.length - 1 ? buf : buf.subarray(0, last + 1))
      })
      // a device that cannot start (refused, a failed handshake) would stall the start forever
      socket.on("error", (e) => {
        if (counting || !d.welcomed) reject(e)
      })
      socket.on("close", () => {
        if (!d.welcomed) reject(new Error(`device ${id} was closed before its welcome`))
      })
    }
  })
