/**
 * The open-files limit against the connection cap, with the gateway as a child process under
 * `ulimit -n 256` and GATEWAY_MAX_CONNECTIONS=400: the start warns that the limit is below the
 * cap and lowers it (256 - 128 reserved = 128); 400 devices at once each get `welcome` or
 * `error busy` (none reset, closed silently or left unanswered), at most the cap are welcomed,
 * the admin port keeps answering (new connections each time), no accept fails, the process
 * stays up, and once the devices leave new ones are welcomed again.
 */
import { afterEach, describe, expect, it } from "@effect/vitest"
import * as Fs from "node:fs"
import * as Http from "node:http"
import * as Net from "node:net"
import { tempDir } from "../support/gateway.ts"
import { metricValue } from "../support/metrics.ts"
import { killChildren, logLines, messageOf, NODE, NODE_ARGS, type RunningGateway, startChild } from "../support/process.ts"

const LIMIT = 256
const MAX_CONNECTIONS = 400
const RESERVED = 128
const CAP = LIMIT - RESERVED
const DEVICES = 400

const dirs: Array<string> = []
const sockets: Array<Net.Socket> = []
const pollers: Array<{ readonly stop: () => Promise<unknown> }> = []

afterEach(async () => {
  for (const p of pollers.splice(0)) await p.stop()
  for (const s of sockets.splice(0)) s.destroy()
  await killChildren()
  for (const dir of dirs.splice(0)) Fs.rmSync(dir, { recursive: true, force: true })
})

/** One GET on a new connection (no keep-alive): status and body, or the error. */
const get = (port: number, path: string): Promise<{ status: number; body: string } | { error: string }> =>
  new Promise((resolve) => {
    const req = Http.get({ host: "127.0.0.1", port, path, agent: false, timeout: 3_000 }, (res) => {
      let body = ""
      res.setEncoding("utf8")
      res.on("data", (d: string) => (body += d))
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body }))
      res.on("error", (e) => resolve({ error: e.message }))
    })
    req.on("timeout", () => req.destroy(new Error("timeout")))
    req.on("error", (e) => resolve({ error: e.message }))
  })

/** Polls /readyz and /metrics every 100 ms until stopped; keeps every answer that was not a 200. */
const pollAdmin = (port: number) => {
  const failures: Array<string> = []
  let polls = 0
  let stopped = false
  const loop = (async () => {
    while (!stopped) {
      const [ready, metrics] = await Promise.all([get(port, "/readyz"), get(port, "/metrics")])
      polls++
      for (const [path, r] of [["/readyz", ready], ["/metrics", metrics]] as const) {
        if ("error" in r || r.status !== 200) failures.push(`${path}: ${JSON.stringify(r).slice(0, 200)}`)
      }
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
  })()
  const poller = {
    stop: async () => {
      stopped = true
      await loop
      return { polls, failures }
    }
  }
  pollers.push(poller)
  return poller
}

/** Sends a ping on a welcomed socket and resolves true when the pong comes (within 5 s). */
const pings = (socket: Net.Socket): Promise<boolean> =>
  new Promise((resolve) => {
    const timer = setTimeout(() => done(false), 5_000)
    const onData = (d: string | Buffer) => {
      if (String(d).includes('"type":"pong"')) done(true)
    }
    const done = (ok: boolean) => {
      clearTimeout(timer)
      socket.off("data", onData)
      resolve(ok)
    }
    socket.on("data", onData)
    socket.write('{"type":"ping"}\n')
  })

type Outcome = "welcome" | "busy" | `error ${string}` | "closed without a frame" | `socket ${string}` | "silent"

/** Connects and sends hello; resolves with the first thing that happened. A welcomed socket stays open. */
const device = (port: number, id: string, timeoutMs = 15_000): Promise<{ outcome: Outcome; frame?: Record<string, unknown> }> =>
  new Promise((resolve) => {
    const socket = Net.connect({ port, host: "127.0.0.1" })
    sockets.push(socket)
    let buffer = ""
    let done = false
    const settle = (outcome: Outcome, frame?: Record<string, unknown>) => {
      if (done) return
      done = true
      clearTimeout(timer)
      if (outcome !== "welcome") socket.destroy()
      resolve(frame === undefined ? { outcome } : { outcome, frame })
    }
    const timer = setTimeout(() => settle("silent"), timeoutMs)
    socket.setEncoding("utf8")
    socket.on("connect", () => socket.write(JSON.stringify({ type: "hello", v: 1, device: id, token: "t" }) + "\n"))
    socket.on("data", (d: string) => {
      buffer += d
      const nl = buffer.indexOf("\n")
      if (nl === -1) return
      const frame = JSON.parse(buffer.slice(0, nl)) as Record<string, unknown>
      if (frame["type"] === "welcome") settle("welcome", frame)
      else if (frame["type"] === "error" && frame["code"] === "busy") settle("busy", frame)
      else settle(`error ${String(frame["code"])}`, frame)
    })
    socket.on("error", (e: NodeJS.ErrnoException) => settle(`socket ${e.code ?? e.message}`))
    socket.on("close", () => settle("closed without a frame"))
  })

const count = <A extends string>(xs: ReadonlyArray<A>) => {
  const out: Record<string, number> = {}
  for (const x of xs) out[x] = (out[x] ?? 0) + 1
  return out
}

const metrics = async (g: RunningGateway) => {
  const r = await get(g.adminPort, "/metrics")
  if ("error" in r) {
    throw new Error(
      `/metrics: ${r.error} (gateway exit code ${g.child.exitCode}, signal ${g.child.signalCode}); its output:\n` +
        g.output().split("\n").slice(-80).join("\n")
    )
  }
  return r.body
}

describe("open-files limit", () => {
  it(`ulimit -n ${LIMIT}, GATEWAY_MAX_CONNECTIONS=${MAX_CONNECTIONS}: warns, caps at ${CAP}, answers every device, stays up`, async () => {
    const dataDir = tempDir("gw-nofile-")
    dirs.push(dataDir)
    const g = await startChild(
      dataDir,
      // this test is about descriptors: the 400 devices (one address, all at once) are let past
      // the caps on connections waiting for their hello
      { GATEWAY_MAX_CONNECTIONS: String(MAX_CONNECTIONS), GATEWAY_UNAUTHENTICATED_MAX: "1000", GATEWAY_UNAUTHENTICATED_PER_SOURCE: "1000" },
      ["bash", ["-c", `ulimit -n ${LIMIT} && exec "$0" "$@"`, NODE, ...NODE_ARGS, "src/main.ts"]]
    )

    // the start says the limit is below the cap, and what it does about it
    const warnings = logLines(g.output()).filter((l) => messageOf(l).includes("open-files limit below GATEWAY_MAX_CONNECTIONS"))
    expect(warnings).toHaveLength(1)
    expect(warnings[0]!.level).toMatch(/^WARN/)
    expect(warnings[0]!.annotations).toMatchObject({ openFilesLimit: LIMIT, maxConnections: MAX_CONNECTIONS, cap: CAP })

    const admin = pollAdmin(g.adminPort)
    const first = await Promise.all(Array.from({ length: DEVICES }, (_, i) => device(g.port, `dev-${i}`)))
    const outcomes = count(first.map((r) => r.outcome))
    const welcomed = outcomes["welcome"] ?? 0
    const busy = outcomes["busy"] ?? 0
    const text = await metrics(g)
    const seen = (name: string, labels: Record<string, string> = {}) => metricValue(text, name, labels)
    console.log(
      `${DEVICES} devices under ulimit -n ${LIMIT}: ${JSON.stringify(outcomes)}; gateway: ` +
        `${seen("gateway_connections_total", { result: "accepted" })} accepted, ` +
        `${seen("gateway_admission_refusals_total", { reason: "descriptors" })} refused busy, ` +
        `${seen("gateway_accept_errors_total")} accept errors, ${seen("gateway_connections_active")} active`
    )

    // every device answered: welcome or busy, nothing else
    expect({ ...outcomes, welcome: 0, busy: 0 }).toEqual({ welcome: 0, busy: 0 })
    expect(welcomed + busy).toBe(DEVICES)
    expect(welcomed).toBeLessThanOrEqual(CAP)
    expect(welcomed).toBeGreaterThan(0)
    for (const r of first.filter((r) => r.outcome === "busy")) {
      expect(r.frame?.["message"]).toBe("too many connections, retry later")
      expect(r.frame?.["retryAfterMs"]).toBeGreaterThanOrEqual(1_000)
    }
    // the welcomed connections are open and work
    const welcomedSockets = sockets.filter((s) => !s.destroyed)
    expect(welcomedSockets).toHaveLength(welcomed)
    expect(await Promise.all(welcomedSockets.slice(0, 10).map(pings))).toEqual(new Array(Math.min(10, welcomed)).fill(true))

    expect(metricValue(text, "gateway_connections_active")).toBe(welcomed)
    expect(metricValue(text, "gateway_admission_refusals_total", { reason: "descriptors" })).toBe(busy)
    expect(metricValue(text, "gateway_accept_errors_total")).toBe(0)

    // a second wave while full: still answered, still busy
    const second = await Promise.all(Array.from({ length: 50 }, (_, i) => device(g.port, `dev-late-${i}`)))
    expect(count(second.map((r) => r.outcome))).toEqual({ busy: 50 })

    const { polls, failures } = await admin.stop()
    expect(failures).toEqual([])
    expect(polls).toBeGreaterThan(0)
    expect(g.child.exitCode).toBeNull()

    // the devices leave: new devices are welcomed again
    for (const s of sockets.splice(0)) s.destroy()
    const deadline = Date.now() + 10_000
    while (metricValue(await metrics(g), "gateway_connections_active") > 0 && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
    const again = await Promise.all(Array.from({ length: 20 }, (_, i) => device(g.port, `dev-again-${i}`)))
    expect(count(again.map((r) => r.outcome))).toEqual({ welcome: 20 })
    expect(metricValue(await metrics(g), "gateway_accept_errors_total")).toBe(0)
    expect(g.child.exitCode).toBeNull()
  }, 40_000)
})
