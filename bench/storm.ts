/**
 * The `storm` scenario: N devices (default 10,000) connect to a fresh gateway at the same
 * instant, as after a site-wide power cut. Each device sends hello; on `error busy` it closes
 * and reconnects after exactly `retryAfterMs`; after `welcome` it sends one telemetry frame and
 * waits for its answer. Resets and refused connections are retried after a short jittered
 * backoff. Reports how long until every device is welcomed and every first message answered,
 * how many busy answers and resets there were, and the gateway's peak RSS. Stops at `timeoutMs`
 * (default 60 s) with whatever was reached. Each device dials its own socket (`dial`: plain TCP
 * unless told, e.g. TLS for bench/tlsStorm.ts); the gateway gets `env` on top of the storm's.
 *
 *   npm run bench -- --only storm --devices 10000
 */
import type * as Net from "node:net"
import { type Dial, plainDial } from "./dial.ts"
import { Histogram } from "./load.ts"
import {
  checkFileLimit,
  cpuMs,
  fmt,
  gatewayArgv,
  gatewayEnv,
  metricSum,
  type MetricSample,
  type NodeFlags,
  removeDir,
  scrapeMetrics,
  startServer,
  statusKb,
  stopServer,
  tcpExt,
  tempDir
} from "./proc.ts"

/** What to run. */
export interface StormOptions {
  readonly devices: number
  readonly timeoutMs: number
  readonly flags: NodeFlags
  /** How each device opens its socket (default: plain TCP). */
  readonly dial?: Dial
  /** More gateway environment (e.g. GATEWAY_TLS_CERT). */
  readonly env?: NodeJS.ProcessEnv
  /** Prefix of the device ids (default `storm`): ids are `<prefix>-<i>`. */
  readonly idPrefix?: string
}

/** What was reached. */
export interface StormResult {
  readonly devices: number
  readonly welcomed: number
  readonly acked: number
  /** First messages answered with a final nack (retry false); retryable nacks are resent. */
  readonly nackedFinal: number
  /** ms from the start until the last device was welcomed (undefined: not reached). */
  readonly allWelcomedMs: number | undefined
  /** ms from the start until every first message was answered (undefined: not reached). */
  readonly allAnsweredMs: number | undefined
  readonly welcomeP50Ms: number
  readonly welcomeP99Ms: number
  readonly attempts: number
  readonly busy: number
  readonly resets: number
  readonly refused: number
  /** Closed by the gateway without an answer we expected (before welcome or before the ack). */
  readonly closedEarly: number
  /**
   * Connections that ended before the dial was ready (TLS: the handshake never completed;
   * plain TCP: reset while connecting); retried after a short jittered backoff.
   */
  readonly notReady: number
  /** `error` frames other than busy, and nacks, by code. */
  readonly codes: Readonly<Record<string, number>>
  readonly peakRssMb: number
  readonly maxSampledRssMb: number
  readonly gatewayAlive: boolean
  /**
   * Kernel counters during the run (whole network namespace, so other processes' traffic counts
   * too): SYNs dropped because the listen backlog was full, and SYN cookies sent.
   */
  readonly listenOverflows: number
  readonly syncookiesSent: number
  /** CPU of the gateway process from the start until every device was answered (or the timeout), in ms. */
  readonly gatewayCpuMs: number
  /** CPU of this process (the devices) over the same interval, in ms. */
  readonly generatorCpuMs: number
  /**
   * Refusals with `error busy` by reason, and failed TLS handshakes by reason, from the
   * gateway's metrics at the end (undefined: the admin port did not answer in time).
   */
  readonly refusals: Readonly<Record<string, number>> | undefined
  readonly tlsFailures: Readonly<Record<string, number>> | undefined
}

interface Device {
  readonly id: string
  socket: Net.Socket | undefined
  /** A reconnect is scheduled (or the device is finished): ignore the current socket's close. */
  retiring: boolean
  welcomed: boolean
  answered: boolean
}

interface Frame {
  readonly type?: string
  readonly code?: string
  readonly retry?: boolean
  readonly retryAfterMs?: number
}

const jitter = () => 50 + Math.floor(Math.random() * 200)

/** Runs the storm against a fresh gateway and returns what it reached. */
export const runStorm = async (o: StormOptions): Promise<StormResult> => {
  checkFileLimit(o.devices)
  const dataDir = tempDir()
  const server = await startServer(gatewayArgv(o.flags), gatewayEnv(dataDir, {
    GATEWAY_MAX_CONNECTIONS: String(o.devices + 1000),
    GATEWAY_KEEPALIVE_MS: "120000", // devices stay silent after their ack; keep them for the whole run
    // every device comes from 127.0.0.1 here, where a fleet comes from many addresses: the
    // per-address cap on connections waiting for their hello is lifted out of the way
    GATEWAY_UNAUTHENTICATED_PER_SOURCE: String(o.devices),
    ...o.env
  }))
  const dial = o.dial ?? plainDial
  const idPrefix = o.idPrefix ?? "storm"
  let maxRssKb = statusKb(server.pid, "VmRSS")
  const sampler = setInterval(() => (maxRssKb = Math.max(maxRssKb, statusKb(server.pid, "VmRSS"))), 500)

  const devices: Array<Device> = []
  const welcomeHist = new Histogram()
  const codes: Record<string, number> = {}
  let welcomed = 0, acked = 0, nackedFinal = 0, attempts = 0, busy = 0, resets = 0, refused = 0, closedEarly = 0, notReady = 0
  let allWelcomedMs: number | undefined
  let allAnsweredMs: number | undefined
  let finished = false
  const kernelBefore = tcpExt()
  const cpuBefore = cpuMs(server.pid)
  const generatorBefore = process.cpuUsage()
  const t0 = performance.now()

  const result = await new Promise<StormResult>((resolve) => {
    const finish = () => {
      if (finished) return
      finished = true
      clearInterval(sampler)
      clearTimeout(deadline)
      maxRssKb = Math.max(maxRssKb, statusKb(server.pid, "VmRSS"))
      for (const d of devices) d.socket?.destroy()
      const gatewayCpuMs = cpuMs(server.pid) - cpuBefore
      const generator = process.cpuUsage(generatorBefore)
      const kernel = tcpExt()
      const delta = (name: string) => (kernel.get(name) ?? 0) - (kernelBefore.get(name) ?? 0)
      resolve({
        devices: o.devices, welcomed, acked, nackedFinal, allWelcomedMs, allAnsweredMs,
        welcomeP50Ms: Math.min(welcomeHist.percentile(0.5), welcomeHist.max),
        welcomeP99Ms: Math.min(welcomeHist.percentile(0.99), welcomeHist.max),
        attempts, busy, resets, refused, closedEarly, notReady, codes,
        peakRssMb: statusKb(server.pid, "VmHWM") / 1024, maxSampledRssMb: maxRssKb / 1024,
        gatewayAlive: server.child.exitCode === null && server.child.signalCode === null,
        listenOverflows: delta("ListenOverflows"),
        syncookiesSent: delta("SyncookiesSent"),
        gatewayCpuMs,
        generatorCpuMs: (generator.user + generator.system) / 1000,
        refusals: undefined,
        tlsFailures: undefined
      })
    }
    const deadline = setTimeout(finish, o.timeoutMs)

    const retire = (d: Device, afterMs: number) => {
      d.retiring = true
      d.socket?.destroy()
      if (!finished && !d.answered) setTimeout(() => connect(d), afterMs)
    }

    const send = (d: Device) =>
      d.socket?.write(`{"type":"telemetry","seq":1,"ts":${Date.now()},"body":{"metrics":{"t":1}}}\n`)

    const onFrame = (d: Device, f: Frame) => {
      if (f.type === "welcome") {
        if (!d.welcomed) {
          d.welcomed = true
          welcomeHist.record(performance.now() - t0)
          if (++welcomed === o.devices) allWelcomedMs = performance.now() - t0
        }
        send(d)
      } else if (f.type === "ack" || (f.type === "nack" && f.retry !== true)) {
        if (f.type === "ack") acked++
        else {
          nackedFinal++
          codes[`nack ${f.code}`] = (codes[`nack ${f.code}`] ?? 0) + 1
        }
        d.answered = true
        d.retiring = true // stays connected, silent, until the end
        if (acked + nackedFinal === o.devices) {
          allAnsweredMs = performance.now() - t0
          finish()
        }
      } else if (f.type === "nack") {
        codes[`nack ${f.code}`] = (codes[`nack ${f.code}`] ?? 0) + 1
        setTimeout(() => send(d), f.retryAfterMs ?? jitter())
      } else if (f.type === "error") {
        if (f.code === "busy") busy++
        else codes[`error ${f.code}`] = (codes[`error ${f.code}`] ?? 0) + 1
        retire(d, f.retryAfterMs ?? jitter()) // honoured exactly
      }
    }

    const connect = (d: Device) => {
      if (finished) return
      attempts++
      d.retiring = false
      let ready = false
      const socket = dial(server.port, d.id, () => {
        ready = true
        socket.write(`{"type":"hello","v":1,"device":"${d.id}","token":"t"}\n`)
      })
      d.socket = socket
      let rest = ""
      socket.on("data", (chunk: Buffer) => {
        const lines = (rest + chunk.toString("utf8")).split("\n")
        rest = lines.pop() ?? ""
        for (const line of lines) if (line !== "" && socket === d.socket) onFrame(d, JSON.parse(line) as Frame)
      })
      socket.on("error", (e: NodeJS.ErrnoException) => {
        if (e.code === "ECONNREFUSED") refused++
        else if (e.code === "ECONNRESET" || e.code === "EPIPE") resets++
        else codes[`socket ${e.code ?? e.message}`] = (codes[`socket ${e.code ?? e.message}`] ?? 0) + 1
      })
      socket.on("close", () => {
        if (socket !== d.socket || d.retiring || finished) return
        if (ready) closedEarly++
        else notReady++
        retire(d, jitter())
      })
    }

    for (let i = 0; i < o.devices; i++) {
      const d: Device = { id: `${idPrefix}-${i}`, socket: undefined, retiring: false, welcomed: false, answered: false }
      devices.push(d)
      connect(d)
    }
  })
  const metrics = await scrapeMetrics(server.adminPort)
  await stopServer(server)
  removeDir(dataDir)
  if (metrics.length === 0) return result
  return {
    ...result,
    refusals: byLabel(metrics, "gateway_admission_refusals_total", "reason"),
    tlsFailures: byLabel(metrics, "gateway_tls_handshake_failures_total", "reason")
  }
}

/** The non-zero values of counter `name` by the value of its label `label`. */
const byLabel = (metrics: ReadonlyArray<MetricSample>, name: string, label: string): Record<string, number> => {
  const out: Record<string, number> = {}
  for (const m of metrics) {
    const value = m.name === name ? new RegExp(`${label}="([^"]*)"`).exec(m.labels)?.[1] : undefined
    if (value !== undefined) out[value] = metricSum(metrics, name, [`${label}="${value}"`]) ?? 0
  }
  for (const [k, v] of Object.entries(out)) if (v === 0) delete out[k]
  return out
}

const entries = (counts: Readonly<Record<string, number>> | undefined) =>
  counts === undefined ? "not scraped" : Object.entries(counts).map(([k, v]) => `${k}: ${fmt(v)}`).join(", ") || "none"

const ms = (v: number | undefined) => (v === undefined ? "not reached" : `${fmt(v)} ms`)

/** The result as a markdown table. */
export const stormTable = (r: StormResult, timeoutMs: number): string => {
  const rows: Array<[string, string]> = [
    ["devices welcomed", `${fmt(r.welcomed)} / ${fmt(r.devices)}`],
    ["first messages acked (final nacks)", `${fmt(r.acked)} (${fmt(r.nackedFinal)})`],
    ["time until all welcomed", ms(r.allWelcomedMs)],
    ["time until all first messages answered", ms(r.allAnsweredMs)],
    ["welcome time per device p50 / p99", `${fmt(r.welcomeP50Ms)} / ${fmt(r.welcomeP99Ms)} ms`],
    ["connection attempts", fmt(r.attempts)],
    ["busy answers", fmt(r.busy)],
    ["resets / refused", `${fmt(r.resets)} / ${fmt(r.refused)}`],
    ["closed by the gateway without answer", fmt(r.closedEarly)],
    ["ended before the dial was ready (TLS: handshake not completed)", fmt(r.notReady)],
    ["busy refusals by reason (gateway metrics)", entries(r.refusals)],
    ["failed TLS handshakes by reason (gateway metrics)", entries(r.tlsFailures)],
    ["kernel: listen queue overflows / SYN cookies sent", `${fmt(r.listenOverflows)} / ${fmt(r.syncookiesSent)}`],
    ["other codes", Object.entries(r.codes).map(([k, v]) => `${k}: ${v}`).join(", ") || "none"],
    ["gateway peak RSS (VmHWM)", `${fmt(r.peakRssMb)} MB`],
    ["gateway RSS, max of 500 ms samples", `${fmt(r.maxSampledRssMb)} MB`],
    ["gateway CPU until all answered", `${fmt(r.gatewayCpuMs)} ms`],
    ["gateway alive at the end", r.gatewayAlive ? "yes" : "NO"]
  ]
  return [
    `\n### storm: ${fmt(r.devices)} devices connect at once, one telemetry frame each (give up after ${timeoutMs / 1000} s)`,
    "| measure | value |",
    "|---|---:|",
    ...rows.map(([k, v]) => `| ${k} | ${v} |`)
  ].join("\n")
}
