/**
 * The fleet-shaped load: `devices` connections that each send their own share of a total
 * `rate` on their own evenly spread schedule, one frame per write (so, on an idle enough server,
 * one frame per socket read), as a fleet of devices that each report every few seconds does.
 *
 * Send k of the whole fleet (k = 0, 1, 2, …) is due at `k / rate` seconds and belongs to device
 * `k mod devices`: each device sends every `devices / rate` seconds, the devices' phases evenly
 * spread over that period. A device whose `window` of unanswered frames is full holds its due
 * sends and writes each (still one frame per write) as an answer frees a slot. Latency is taken
 * from the scheduled send time (no coordinated omission: a late send counts its lateness) and,
 * separately, from the actual write. Devices connect in waves and retry `busy` after its
 * `retryAfterMs`, so 10,000 devices can join a gateway with its default accept rate.
 *
 * The fleet first sends for `settleMs` on the same connections, and only what is due after that
 * is measured: a fleet in steady operation. What was due while it settled (every device's first
 * frames after joining, the server's first writes of their keys) is reported on its own
 * (`settleP99Ms`), not mixed into the steady figures.
 */
import * as Net from "node:net"
import { monitorEventLoopDelay } from "node:perf_hooks"
import { Histogram } from "./load.ts"

/** What to run. */
export interface FleetOptions {
  readonly port: number
  readonly devices: number
  /** Total msgs/s across the fleet. */
  readonly rate: number
  /** Unanswered frames a device may have; due sends wait past it. */
  readonly window: number
  /** Fraction of frames that are events (0..1). */
  readonly eventRatio: number
  readonly durationMs: number
  /** Sending before the measured interval (same devices, same rate); 0: measure from the first send. */
  readonly settleMs: number
  /** Prefix of device ids (distinct per run so the store sees fresh keys). */
  readonly devicePrefix: string
  /** Told when the measured interval starts and ends (to measure CPU over it alone). */
  readonly interval?: { readonly begin: () => void; readonly end: () => void } | undefined
}

/** What was measured. */
export interface FleetResult {
  readonly acked: number
  readonly nacked: number
  readonly seconds: number
  readonly msgsPerSec: number
  /** Latency from the scheduled send time. */
  readonly p50Ms: number
  readonly p99Ms: number
  readonly maxMs: number
  /** Latency from the actual write. */
  readonly writeP50Ms: number
  readonly writeP99Ms: number
  /** Sends that were due but still unsent when the run ended (the fleet fell behind). */
  readonly behind: number
  /** Connection attempts refused with `busy` while the fleet joined. */
  readonly busy: number
  /** The load generator's own event-loop delay p99 while sending (its lateness shows in p99). */
  readonly generatorDelayP99Ms: number
  /** Latency p99 of the sends due while the fleet settled (its first `settleMs`); NaN without one. */
  readonly settleP99Ms: number
}

interface Device {
  readonly index: number
  readonly id: string
  socket: Net.Socket | undefined
  seq: number
  /** Scheduled and actual send times of unanswered frames, oldest first (rings of `window`). */
  readonly due: Float64Array
  readonly wrote: Float64Array
  head: number
  inflight: number
  /** Due sends not yet written (window full). */
  waiting: number
  welcomed: boolean
  rest: Buffer | undefined
}

const telemetryBody = `{"metrics":{"temp":21.5,"humidity":40.2,"battery":3.71},"tags":{"site":"bench"}}`
const eventBody = `{"name":"door_open","severity":"info","data":{"door":3}}`
const WAVE = 500
const JOIN_LIMIT_MS = 120_000

/** Runs the fleet-shaped load and resolves with its measurements. */
export const runFleet = (o: FleetOptions): Promise<FleetResult> =>
  new Promise((resolve, reject) => {
    const fromDue = new Histogram()
    const fromWrite = new Histogram()
    const settling = new Histogram()
    let acked = 0
    let nacked = 0
    let busy = 0
    /** Sending (from the first send to the end). */
    let sending = false
    /** Measuring: sends due from `measureFrom` on count. */
    let counting = false
    let measureFrom = Infinity
    let t0 = 0
    let next = 0 // the fleet's next send index
    let welcomed = 0
    const periodMs = (o.devices * 1000) / o.rate
    const loopDelay = monitorEventLoopDelay({ resolution: 1 })
    const devices: Array<Device> = []

    const write = (d: Device, dueAt: number) => {
      const seq = d.seq++
      const isEvent = o.eventRatio > 0 && (seq % 1000) < o.eventRatio * 1000
      const slot = (d.head + d.inflight) % o.window
      d.due[slot] = dueAt
      d.wrote[slot] = performance.now()
      d.inflight++
      d.socket!.write(
        isEvent
          ? `{"type":"event","seq":${seq},"ts":${Date.now()},"body":${eventBody}}\n`
          : `{"type":"telemetry","seq":${seq},"ts":${Date.now()},"body":${telemetryBody}}\n`
      )
    }

    /** The scheduled time of device `d`'s oldest waiting send. */
    const waitingDue = (d: Device, now: number) => {
      // its sends are due every period from its phase: the oldest waiting one is `waiting` periods back
      const phase = t0 + (d.index * 1000) / o.rate
      const last = phase + Math.floor((now - phase) / periodMs) * periodMs
      return last - (d.waiting - 1) * periodMs
    }

    const onAnswers = (d: Device, buf: Buffer, end: number) => {
      const now = performance.now()
      let start = 0
      let nl = buf.indexOf(10)
      while (nl !== -1 && nl < end) {
        const c = buf[start + 9] // {"type":"?
        if (!d.welcomed) {
          if (c === 119 /* w(elcome) */) {
            d.welcomed = true
            if (++welcomed === o.devices) begin()
          } else if (c === 101 /* e(rror) busy */) {
            busy++
            const m = /"retryAfterMs":(\d+)/.exec(buf.toString("utf8", start, nl))
            retry(d, m === null ? 500 : Number(m[1]))
            return
          }
        } else if (c === 97 /* a(ck) */ || c === 110 /* n(ack) */) {
          const due = d.due[d.head]!
          if (counting && due >= measureFrom) {
            if (c === 97) {
              acked++
              fromDue.record(now - due)
              fromWrite.record(now - d.wrote[d.head]!)
            } else nacked++
          } else if (sending && c === 97) settling.record(now - due)
          d.head = (d.head + 1) % o.window
          d.inflight--
          if (d.waiting > 0 && sending) {
            const dueAt = waitingDue(d, now)
            d.waiting--
            write(d, dueAt)
          }
        }
        start = nl + 1
        nl = buf.indexOf(10, start)
      }
    }

    const connect = (d: Device) => {
      const socket = Net.connect({ port: o.port, host: "127.0.0.1", noDelay: true })
      d.socket = socket
      d.rest = undefined
      socket.once("connect", () => socket.write(`{"type":"hello","v":1,"device":"${d.id}","token":"bench"}\n`))
      socket.on("data", (chunk: Buffer) => {
        const buf = d.rest === undefined ? chunk : Buffer.concat([d.rest, chunk])
        const last = buf.lastIndexOf(10)
        d.rest = last === buf.length - 1 ? undefined : Buffer.from(buf.subarray(last + 1))
        if (last >= 0) onAnswers(d, buf, last + 1)
      })
      socket.on("error", (e) => {
        if (sending) reject(e)
      })
      socket.on("close", () => {
        if (sending && d.socket === socket) reject(new Error(`device ${d.id} was closed during the run`))
      })
    }

    const retry = (d: Device, afterMs: number) => {
      d.socket?.destroy()
      d.socket = undefined
      if (performance.now() > joinDeadline) return reject(new Error(`the fleet did not join within ${JOIN_LIMIT_MS} ms`))
      setTimeout(() => connect(d), afterMs + Math.random() * 100)
    }

    let pacer: NodeJS.Timeout | undefined
    const tick = () => {
      const now = performance.now()
      const upTo = Math.floor(((now - t0) * o.rate) / 1000)
      for (; next <= upTo; next++) {
        const d = devices[next % o.devices]!
        if (d.inflight < o.window && d.waiting === 0) write(d, t0 + (next * 1000) / o.rate)
        else d.waiting++
      }
    }

    const begin = () => {
      sending = true
      t0 = performance.now() + 5
      pacer = setInterval(tick, 1)
      setTimeout(measure, o.settleMs + 5)
    }

    const measure = () => {
      counting = true
      measureFrom = t0 + o.settleMs
      o.interval?.begin()
      loopDelay.enable()
      setTimeout(finish, o.durationMs)
    }

    const finish = () => {
      counting = false
      sending = false
      o.interval?.end()
      loopDelay.disable()
      if (pacer) clearInterval(pacer)
      const seconds = (performance.now() - measureFrom) / 1000
      let behind = 0
      for (const d of devices) {
        behind += d.waiting
        d.socket?.destroy()
      }
      resolve({
        acked,
        nacked,
        seconds,
        msgsPerSec: acked / seconds,
        p50Ms: fromDue.percentile(0.5),
        p99Ms: fromDue.percentile(0.99),
        maxMs: fromDue.max,
        writeP50Ms: fromWrite.percentile(0.5),
        writeP99Ms: fromWrite.percentile(0.99),
        behind,
        busy,
        generatorDelayP99Ms: loopDelay.percentile(99) / 1e6,
        settleP99Ms: o.settleMs > 0 ? settling.percentile(0.99) : Number.NaN
      })
    }

    for (let i = 0; i < o.devices; i++) {
      devices.push({
        index: i,
        id: `${o.devicePrefix}-${i}`,
        socket: undefined,
        seq: 0,
        due: new Float64Array(o.window),
        wrote: new Float64Array(o.window),
        head: 0,
        inflight: 0,
        waiting: 0,
        welcomed: false,
        rest: undefined
      })
    }
    const joinDeadline = performance.now() + JOIN_LIMIT_MS
    // join in waves, as a fleet powering up does not open 10,000 sockets in one instant
    for (let w = 0; w * WAVE < o.devices; w++) {
      setTimeout(() => {
        for (let i = w * WAVE; i < Math.min(o.devices, (w + 1) * WAVE); i++) connect(devices[i]!)
      }, w * 250)
    }
  })
