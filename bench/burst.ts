/**
 * The `burst` scenario: sustained overload. The gateway runs with a deliberately slow sink
 * (bench/slowGateway.ts, BENCH_SINK_RATE msgs/s) and `devices` devices each send on their own
 * paced schedule (one frame per write) so that the total is `factor` × the sink rate, 5% events,
 * each keeping at most `window` frames unanswered (a send due while the window is full is
 * skipped and counted as not offered). Meanwhile `pingers` idle devices ping every 200 ms and
 * the ping→pong latency is measured. Prints a progress line every 5 s; after `seconds` sending
 * stops and it waits up to `finalWaitMs` for the remaining answers, then reports what happened to
 * the events (never shed: each should be acked, or nacked with retry) and the telemetry.
 *
 *   npm run bench -- --only burst --seconds 30 --sink-rate 2000 --memory-budget 128
 */
import * as Net from "node:net"
import { Histogram } from "./load.ts"
import {
  fmt,
  gatewayArgv,
  gatewayEnv,
  metricSum,
  type NodeFlags,
  removeDir,
  scrapeMetrics,
  sleep,
  startServer,
  statusKb,
  stopServer,
  tempDir
} from "./proc.ts"

/** What to run. */
export interface BurstOptions {
  readonly seconds: number
  readonly sinkRate: number
  /** Offered load as a multiple of the sink rate. */
  readonly factor: number
  readonly devices: number
  readonly window: number
  readonly eventRatio: number
  readonly pingers: number
  readonly memoryBudgetMiB: number
  readonly finalWaitMs: number
  readonly flags: NodeFlags
}

/** Counters of one run (also printed as progress). */
export interface BurstResult {
  telemetrySent: number
  telemetryAcked: number
  telemetryShed: number
  eventsSent: number
  eventsAcked: number
  notOffered: number
  /** Nacks by `<kind> <code> retry=<bool>`. */
  readonly nacks: Record<string, number>
  eventsNackedRetry: number
  eventsNackedFinal: number
  /** Frames whose connection closed before their answer, by kind. */
  closedUnanswered: { telemetry: number; event: number }
  eventsUnanswered: number
  telemetryUnanswered: number
  reconnects: number
  peakRssMb: number
  maxRssMb: number
  readonly ping: Histogram
  readonly eventAck: Histogram
  pongs: number
  /** Messages acked by the end of the load period (before the final wait). */
  ackedDuringLoad: number
  drainMs: number
}

interface Sent {
  readonly event: boolean
  readonly at: number
}

interface Answer {
  readonly type: string
  readonly seq?: number
  readonly code?: string
  readonly retry?: boolean
}

interface Conn {
  readonly id: string
  socket: Net.Socket | undefined
  welcomed: boolean
  /** Unanswered frames by seq (data devices) or ping send times, oldest first (pingers). */
  readonly inflight: Map<number, Sent>
  readonly pings: Array<number>
}

const telemetryBody = `{"metrics":{"temp":21.5,"humidity":40.2,"battery":3.71},"tags":{"site":"burst"}}`
const eventBody = `{"name":"door_open","severity":"info"}`

/** Runs the burst against a fresh slow gateway, printing progress every 5 s. */
export const runBurst = async (o: BurstOptions): Promise<BurstResult> => {
  const dataDir = tempDir()
  const server = await startServer(gatewayArgv(o.flags, "bench/slowGateway.ts"), gatewayEnv(dataDir, {
    BENCH_SINK_RATE: String(o.sinkRate),
    GATEWAY_MEMORY_BUDGET: String(o.memoryBudgetMiB * 1024 * 1024)
  }))
  const r: BurstResult = {
    telemetrySent: 0, telemetryAcked: 0, telemetryShed: 0, eventsSent: 0, eventsAcked: 0, notOffered: 0, nacks: {},
    eventsNackedRetry: 0, eventsNackedFinal: 0, closedUnanswered: { telemetry: 0, event: 0 }, eventsUnanswered: 0,
    telemetryUnanswered: 0, reconnects: 0, peakRssMb: 0, maxRssMb: 0, ping: new Histogram(), eventAck: new Histogram(),
    pongs: 0, ackedDuringLoad: 0, drainMs: 0
  }
  let stopped = false

  const onAnswer = (c: Conn, a: Answer, now: number) => {
    if (a.type === "pong") {
      r.pongs++
      r.ping.record(now - c.pings.shift()!)
      return
    }
    const sent = a.seq === undefined ? undefined : c.inflight.get(a.seq)
    if (sent === undefined) return
    c.inflight.delete(a.seq!)
    if (a.type === "ack") {
      if (sent.event) {
        r.eventsAcked++
        r.eventAck.record(now - sent.at)
      } else r.telemetryAcked++
    } else if (a.type === "nack") {
      const key = `${sent.event ? "event" : "telemetry"} ${a.code} retry=${a.retry === true}`
      r.nacks[key] = (r.nacks[key] ?? 0) + 1
      if (!sent.event && a.code === "shed") r.telemetryShed++
      if (sent.event && a.retry === true) r.eventsNackedRetry++
      else if (sent.event) r.eventsNackedFinal++
    }
  }

  const connect = (c: Conn) => {
    if (stopped) return
    const socket = Net.connect({ port: server.port, host: "127.0.0.1", noDelay: true })
    c.socket = socket
    socket.on("connect", () => socket.write(`{"type":"hello","v":1,"device":"${c.id}","token":"t"}\n`))
    let rest = ""
    let retryIn = 500
    socket.on("data", (chunk: Buffer) => {
      const now = performance.now()
      const lines = (rest + chunk.toString("utf8")).split("\n")
      rest = lines.pop() ?? ""
      for (const line of lines) {
        if (line === "") continue
        const a = JSON.parse(line) as Answer & { retryAfterMs?: number }
        if (a.type === "welcome") c.welcomed = true
        else if (a.type === "error") {
          r.nacks[`error ${a.code}`] = (r.nacks[`error ${a.code}`] ?? 0) + 1
          retryIn = a.retryAfterMs ?? retryIn // busy: honoured
          socket.destroy()
        } else onAnswer(c, a, now)
      }
    })
    socket.on("error", () => undefined)
    socket.on("close", () => {
      if (socket !== c.socket || stopped) return // at the end, unanswered frames are counted before closing
      for (const s of c.inflight.values()) r.closedUnanswered[s.event ? "event" : "telemetry"]++
      c.inflight.clear()
      c.pings.length = 0
      c.welcomed = false
      c.socket = undefined
      if (stopped) return
      r.reconnects++
      setTimeout(() => connect(c), retryIn)
    })
  }

  const mk = (id: string): Conn => ({ id, socket: undefined, welcomed: false, inflight: new Map(), pings: [] })
  const devices = Array.from({ length: o.devices }, (_, i) => mk(`burst-${i}`))
  const pingers = Array.from({ length: o.pingers }, (_, i) => mk(`burst-idle-${i}`))
  for (const c of [...devices, ...pingers]) connect(c)
  const t0 = performance.now()
  while (performance.now() - t0 < 10_000 && [...devices, ...pingers].some((c) => !c.welcomed)) await sleep(20)

  // each device: its own phase, one frame every `interval` ms, events on every 1/eventRatio-th seq
  const interval = (1000 * o.devices) / (o.sinkRate * o.factor)
  const eventEvery = Math.max(1, Math.round(1 / o.eventRatio))
  const start = performance.now()
  const due = devices.map(() => start + Math.random() * interval)
  const seqs = devices.map(() => 1)
  const pacer = setInterval(() => {
    const now = performance.now()
    for (let i = 0; i < devices.length; i++) {
      const c = devices[i]!
      while (due[i]! <= now) {
        due[i]! += interval
        if (!c.welcomed || c.inflight.size >= o.window) {
          r.notOffered++
          continue
        }
        const seq = seqs[i]!++
        const event = (seq + i) % eventEvery === 0
        c.inflight.set(seq, { event, at: now })
        if (event) r.eventsSent++
        else r.telemetrySent++
        c.socket!.write(event
          ? `{"type":"event","seq":${seq},"ts":${Date.now()},"body":${eventBody}}\n`
          : `{"type":"telemetry","seq":${seq},"ts":${Date.now()},"body":${telemetryBody}}\n`)
      }
    }
  }, 2)
  const pinger = setInterval(() => {
    for (const c of pingers) {
      if (!c.welcomed) continue
      c.pings.push(performance.now())
      c.socket!.write(`{"type":"ping"}\n`)
    }
  }, 200)

  const sample = () => (r.maxRssMb = Math.max(r.maxRssMb, statusKb(server.pid, "VmRSS") / 1024))
  const sampler = setInterval(sample, 500)
  const progress = async (label: string) => {
    const samples = await scrapeMetrics(server.adminPort)
    const used = metricSum(samples, "gateway_memory_used_bytes")
    const lag = metricSum(samples, "nodejs_eventloop_lag_max_seconds")
    const other = Object.entries(r.nacks).filter(([k]) => !k.startsWith("telemetry shed")).reduce((s, [, v]) => s + v, 0)
    console.log(`${label.padStart(6)} rss ${fmt(statusKb(server.pid, "VmRSS") / 1024)} MB${
      used === undefined ? "" : ` (budget used ${fmt(used / 1048576)} MiB)`
    } | acked ${fmt(r.telemetryAcked + r.eventsAcked)} | shed ${fmt(r.telemetryShed)} | other nacks ${fmt(other)} | events sent ${
      fmt(r.eventsSent)
    } acked ${fmt(r.eventsAcked)} | not offered ${fmt(r.notOffered)} | ping p99 ${fmt(pct(r.ping, 0.99), 1)} ms${
      lag === undefined ? "" : ` | gateway event-loop delay max ${fmt(lag * 1000, 1)} ms`
    }`)
  }
  console.log(`burst: ${o.devices} devices at ${fmt(o.sinkRate * o.factor)} msgs/s total (${fmt(1000 / interval, 1)}/s each), sink ${
    fmt(o.sinkRate)
  } msgs/s, ${o.pingers} pingers, budget ${o.memoryBudgetMiB} MiB`)
  for (let s = 5; s <= o.seconds; s += 5) {
    await sleep(start + s * 1000 - performance.now())
    await progress(`${s} s`)
  }
  await sleep(start + o.seconds * 1000 - performance.now())
  clearInterval(pacer)
  clearInterval(pinger)
  r.ackedDuringLoad = r.telemetryAcked + r.eventsAcked

  // sending stopped: wait for what is still unanswered
  const unanswered = () => devices.reduce((n, c) => n + c.inflight.size, 0)
  const waitStart = performance.now()
  while (unanswered() > 0 && performance.now() - waitStart < o.finalWaitMs) await sleep(50)
  r.drainMs = performance.now() - waitStart
  await progress("end")
  for (const c of devices) {
    for (const s of c.inflight.values()) {
      if (s.event) r.eventsUnanswered++
      else r.telemetryUnanswered++
    }
  }
  clearInterval(sampler)
  sample()
  r.peakRssMb = statusKb(server.pid, "VmHWM") / 1024
  stopped = true
  for (const c of [...devices, ...pingers]) c.socket?.destroy()
  await stopServer(server)
  removeDir(dataDir)
  return r
}

/** A percentile of `h`, no larger than its max (the histogram answers with a bucket's upper edge). */
const pct = (h: Histogram, p: number) => Math.min(h.percentile(p), h.max)

/** The result as a markdown table. */
export const burstTable = (r: BurstResult, o: BurstOptions): string => {
  const lost = r.eventsSent - r.eventsAcked - r.eventsNackedRetry
  const rows: Array<[string, string]> = [
    ["events sent / acked", `${fmt(r.eventsSent)} / ${fmt(r.eventsAcked)}`],
    ["events nacked, retry true / false", `${fmt(r.eventsNackedRetry)} / ${fmt(r.eventsNackedFinal)}`],
    ["events unanswered after the final wait", fmt(r.eventsUnanswered)],
    ["events unanswered when their connection closed", fmt(r.closedUnanswered.event)],
    ["**events lost** (sent − acked − nacked with retry)", `**${fmt(lost)}**`],
    ["event ack latency p50 / p99 / max", `${fmt(pct(r.eventAck, 0.5), 1)} / ${fmt(pct(r.eventAck, 0.99), 1)} / ${fmt(r.eventAck.max, 1)} ms`],
    ["telemetry sent / acked / shed", `${fmt(r.telemetrySent)} / ${fmt(r.telemetryAcked)} / ${fmt(r.telemetryShed)}`],
    ["telemetry unanswered after the final wait", fmt(r.telemetryUnanswered)],
    ["sends skipped (window full: not offered)", fmt(r.notOffered)],
    ["acked msgs/s during the load period (sink rate: the most possible)", fmt(r.ackedDuringLoad / o.seconds)],
    ["nacks and errors by code", Object.entries(r.nacks).map(([k, v]) => `${k}: ${fmt(v)}`).join(", ") || "none"],
    ["reconnects", fmt(r.reconnects)],
    ["final wait", `${fmt(r.drainMs / 1000, 1)} s`],
    ["gateway peak RSS (VmHWM) / max sampled", `${fmt(r.peakRssMb)} / ${fmt(r.maxRssMb)} MB`],
    ["ping→pong p50 / p99 / max", `${fmt(pct(r.ping, 0.5), 2)} / ${fmt(pct(r.ping, 0.99), 2)} / ${fmt(r.ping.max, 1)} ms (${fmt(r.pongs)} pongs)`]
  ]
  return [
    `\n### burst: ${o.factor}× the sink rate (${fmt(o.sinkRate)} msgs/s sink, ${fmt(o.sinkRate * o.factor)} offered) for ${o.seconds} s, ${o.devices} devices × window ${o.window}, ${
      fmt(o.eventRatio * 100)
    }% events, ${o.pingers} pingers, GATEWAY_MEMORY_BUDGET ${o.memoryBudgetMiB} MiB`,
    "| measure | value |",
    "|---|---:|",
    ...rows.map(([k, v]) => `| ${k} | ${v} |`)
  ].join("\n")
}
