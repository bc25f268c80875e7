/**
 * The `idle` scenario: what one idle connection costs in server RSS. For each server (the
 * gateway, and the raw `node:net` baseline of bench/baseline.ts for comparison) and each mode
 * (after hello/welcome; connected but no hello yet, the pre-auth cost), it starts a fresh
 * server, reads VmRSS, opens N connections (in waves, retrying `busy` after its retryAfterMs),
 * waits for things to settle, reads VmRSS again and reports (after − before) / open connections,
 * and the marginal cost: the same over the second half of the connections only.
 *
 *   npm run bench -- --only idle --connections 10000
 */
import * as Net from "node:net"
import {
  checkFileLimit,
  fmt,
  gatewayArgv,
  gatewayEnv,
  metricSum,
  type NodeFlags,
  removeDir,
  scrapeMetrics,
  type Server,
  sleep,
  startServer,
  statusKb,
  stopServer,
  tempDir
} from "./proc.ts"

/** What to run. */
export interface IdleOptions {
  readonly connections: number
  /** Wait after the last connection before reading RSS again. */
  readonly settleMs: number
  readonly flags: NodeFlags
}

/** One measured server and mode. */
export interface IdleRow {
  readonly server: string
  readonly hello: boolean
  /** Connections still open on the client side when RSS was read. */
  readonly open: number
  /** What the gateway's `gateway_connections_active` said (undefined for the baseline). */
  readonly serverOpen: number | undefined
  readonly beforeKb: number
  /** RSS with the first half of the connections open (the marginal cost is measured past it). */
  readonly midKb: number
  readonly afterKb: number
  readonly peakKb: number
  readonly busy: number
  readonly retries: number
  readonly rampMs: number
}

const WAVE = 500
const RAMP_LIMIT_MS = 60_000

/** Opens `n` connections (hello'd or not), `WAVE` at a time; resolves with the sockets still open. */
const openAll = async (port: number, n: number, hello: boolean, tag: string) => {
  const sockets: Array<Net.Socket> = []
  let busy = 0, retries = 0
  const deadline = performance.now() + RAMP_LIMIT_MS
  const one = (i: number): Promise<void> =>
    new Promise((resolve) => {
      const attempt = () => {
        if (performance.now() > deadline) return resolve()
        const socket = Net.connect({ port, host: "127.0.0.1", noDelay: true })
        let settled = false
        let retryIn = 0
        const ok = () => {
          if (settled) return
          settled = true
          sockets.push(socket)
          resolve()
        }
        socket.on("connect", () => {
          if (hello) socket.write(`{"type":"hello","v":1,"device":"${tag}-${i}","token":"t"}\n`)
          else setTimeout(() => (socket.destroyed ? undefined : ok()), 20) // a busy refusal comes right after accept
        })
        socket.on("data", (d: Buffer) => {
          const text = d.toString("utf8")
          if (text.includes('"welcome"')) return ok()
          const m = /"code":"busy".*"retryAfterMs":(\d+)/.exec(text)
          if (m !== null) busy++
          retryIn = m !== null ? Number(m[1]) : 100
          socket.destroy()
        })
        socket.on("error", () => (retryIn = retryIn || 50 + Math.floor(Math.random() * 200)))
        socket.on("close", () => {
          if (settled) return
          retries++
          setTimeout(attempt, retryIn || 100)
        })
      }
      attempt()
    })
  const t0 = performance.now()
  for (let start = 0; start < n; start += WAVE) {
    const wave: Array<Promise<void>> = []
    for (let i = start; i < Math.min(n, start + WAVE); i++) wave.push(one(i))
    await Promise.all(wave)
  }
  return { sockets, busy, retries, rampMs: performance.now() - t0 }
}

const measure = async (name: string, server: Server, hello: boolean, o: IdleOptions): Promise<IdleRow> => {
  await sleep(1_500) // let start-up garbage settle
  const beforeKb = statusKb(server.pid, "VmRSS")
  // in two halves: (after − before) / N is the whole cost, (after − mid) / (N/2) the marginal
  // one, without what is paid once (the young generation filled by the first connections' garbage)
  const half = Math.floor(o.connections / 2)
  const first = await openAll(server.port, half, hello, `idle-${hello ? "h" : "n"}`)
  await sleep(o.settleMs)
  const midKb = statusKb(server.pid, "VmRSS")
  const second = await openAll(server.port, o.connections - half, hello, `idle2-${hello ? "h" : "n"}`)
  const sockets = [...first.sockets, ...second.sockets]
  const busy = first.busy + second.busy
  const retries = first.retries + second.retries
  const rampMs = first.rampMs + second.rampMs
  await sleep(o.settleMs)
  const afterKb = statusKb(server.pid, "VmRSS")
  const peakKb = statusKb(server.pid, "VmHWM")
  const serverOpen = metricSum(await scrapeMetrics(server.adminPort), "gateway_connections_active")
  const open = sockets.filter((s) => !s.destroyed).length
  for (const s of sockets) s.destroy()
  await stopServer(server)
  return { server: name, hello, open, serverOpen, beforeKb, midKb, afterKb, peakKb, busy, retries, rampMs }
}

/** Runs the four measurements (gateway and baseline, with and without hello), each on a fresh server. */
export const runIdle = async (o: IdleOptions): Promise<Array<IdleRow>> => {
  checkFileLimit(o.connections)
  const rows: Array<IdleRow> = []
  for (const hello of [true, false]) {
    rows.push(await measure("raw node:net", await startServer(["bench/baseline.ts", "0"], {}), hello, o))
    const dataDir = tempDir()
    const gateway = await startServer(gatewayArgv(o.flags), gatewayEnv(dataDir, {
      GATEWAY_MAX_CONNECTIONS: String(o.connections + 1000),
      GATEWAY_KEEPALIVE_MS: "600000",
      GATEWAY_HELLO_TIMEOUT_MS: "600000",
      // admission is not what this measures: let the ramp through (harmless where not honoured)
      GATEWAY_ACCEPT_RATE: String(o.connections * 10),
      GATEWAY_ACCEPT_BURST: String(o.connections * 10)
    }))
    rows.push(await measure("gateway", gateway, hello, o))
    removeDir(dataDir)
  }
  return rows
}

/** The rows as a markdown table. */
export const idleTable = (rows: ReadonlyArray<IdleRow>, o: IdleOptions): string => [
  `\n### idle: RSS per idle connection, ${fmt(o.connections)} connections, read ${o.settleMs / 1000} s after the last one`,
  "| server | state | open (client / server) | RSS before MB | RSS after MB | **KB per connection** | KB per connection, second half (marginal) | peak RSS MB | ramp s | busy / retries |",
  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
  ...rows.map((r) =>
    `| ${r.server} | ${r.hello ? "after welcome" : "no hello (pre-auth)"} | ${fmt(r.open)} / ${r.serverOpen === undefined ? "–" : fmt(r.serverOpen)} | ${
      fmt(r.beforeKb / 1024, 1)
    } | ${fmt(r.afterKb / 1024, 1)} | **${fmt(r.open > 0 ? (r.afterKb - r.beforeKb) / r.open : 0, 2)}** | ${
      fmt(r.open > 1 ? (r.afterKb - r.midKb) / (r.open - Math.floor(r.open / 2)) : 0, 2)
    } | ${fmt(r.peakKb / 1024)} | ${
      fmt(r.rampMs / 1000, 1)
    } | ${r.busy} / ${r.retries} |`
  )
].join("\n")
