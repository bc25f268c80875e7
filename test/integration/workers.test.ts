/**
 * A node of several workers (GATEWAY_WORKERS=2) as an operator runs it: one primary process,
 * two worker processes on the same device port, one SQLite store. Covers the port shared by
 * both workers and the node's metrics as their sum, a worker SIGKILLed under load (its devices
 * reconnect to the same port and resend; it is restarted; nothing acked is lost or stored
 * twice), and the SIGTERM drain of the whole node.
 */
import { afterEach, describe, expect, it } from "@effect/vitest"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Path from "node:path"
import { type Answer, Device, event, telemetry } from "../support/client.ts"
import { tempDir } from "../support/gateway.ts"
import { metricValue, scrape } from "../support/metrics.ts"
import { killChildren, type LogLine, logLines, messageOf, type RunningGateway, runToExit, startChild } from "../support/process.ts"
import { rows } from "../support/store.ts"
import { makePki } from "../support/certs.ts"

const dirs = new Set<string>()
/** Worker pids this file's nodes started, with the data dir each was given. */
const workerPids = new Map<number, string>()
const opened: Array<ResilientDevice> = []

/** True when `pid` still is a worker we started (not a process that got its pid since). */
const isOurWorker = (pid: number, dataDir: string) => {
  try {
    return Fs.readFileSync(`/proc/${pid}/environ`, "utf8").split("\0").includes(`GATEWAY_DATA_DIR=${dataDir}`)
  } catch {
    return false // gone
  }
}

afterEach(async () => {
  for (const d of opened.splice(0)) d.close()
  await killChildren()
  // a worker outlives a SIGKILLed primary until it notices (it then drains): do not wait for that
  for (const [pid, dataDir] of workerPids) if (isOurWorker(pid, dataDir)) process.kill(pid, "SIGKILL")
  workerPids.clear()
  for (const dir of dirs) Fs.rmSync(dir, { recursive: true, force: true })
  dirs.clear()
})

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

/** Polls `check` every 50 ms until it returns true, failing after `timeoutMs`. */
const until = async (what: string, timeoutMs: number, check: () => boolean | Promise<boolean>) => {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`)
    await sleep(50)
  }
}

/** Starts a node of two workers on a fresh data dir. */
const startNode = async (env: Record<string, string> = {}) => {
  const dataDir = tempDir("gw-workers-")
  dirs.add(dataDir)
  const node = await startChild(dataDir, { GATEWAY_WORKERS: "2", ...env }, undefined, 25_000)
  recordWorkers(node, dataDir)
  return { node, dataDir }
}

const recordWorkers = (node: RunningGateway, dataDir: string) => {
  for (const line of linesOf(node, "worker started")) workerPids.set(line.annotations?.["pid"] as number, dataDir)
}

const linesOf = (node: RunningGateway, message: string): Array<LogLine> =>
  logLines(node.output()).filter((l) => messageOf(l) === message)

/** The admin ports of the workers that logged `worker listening`, by worker index (the latest of each). */
const workerAdminPorts = (node: RunningGateway) => {
  const ports = new Map<number, number>()
  for (const l of linesOf(node, "worker listening")) ports.set(l.annotations?.["worker"] as number, l.annotations?.["adminPort"] as number)
  return ports
}

/** The pid of worker `index` (the latest started). */
const workerPid = (node: RunningGateway, index: number) => {
  const started = linesOf(node, "worker started").filter((l) => l.annotations?.["worker"] === index)
  return started[started.length - 1]?.annotations?.["pid"] as number | undefined
}

/** Resolves once everything the node's processes wrote is read ('exit' can come before the last lines). */
const outputEnded = (node: RunningGateway) =>
  new Promise<void>((resolve) => {
    const stdout = node.child.stdout
    if (stdout === null || stdout.readableEnded || stdout.destroyed) return resolve()
    stdout.once("close", () => resolve())
  })

const readyz = async (adminPort: number) => {
  const r = await fetch(`http://127.0.0.1:${adminPort}/readyz`)
  return { status: r.status, body: await r.text() }
}

/**
 * A device under load that survives losing its connection, as PROTOCOL.md asks of devices: it
 * sends `rate` data frames per second (every fifth an event) with at most `window` unanswered,
 * and when the connection drops it connects again to the same port and resends every
 * unanswered frame, in order. A nack that allows a retry is resent too. It stops sending at
 * `goaway` or `stop()`. (Paced, so that the test loads the node without starving the tests
 * that run beside it.)
 */
class ResilientDevice {
  /** Seqs acked (a `dup` ack included: it says the message is stored). */
  readonly acked = new Set<number>()
  /** Seqs sent on the current connection and not answered yet, oldest first. */
  private pending: Array<number> = []
  /** Answers out of order, and welcomes whose lastSeq is below a seq already acked. */
  readonly violations: Array<string> = []
  readonly control: Array<Answer> = []
  connections = 0
  private next = 0
  private stopped = false
  private closedForGood = false
  private socket: Net.Socket | undefined
  private welcomed = false
  private buffer = ""
  /** Frames it may still send in this tick. */
  private tokens = 0
  private readonly ticker: NodeJS.Timeout
  readonly id: string
  private readonly port: number
  private readonly window: number

  constructor(id: string, port: number, window: number, rate: number) {
    this.id = id
    this.port = port
    this.window = window
    const perTick = Math.max(1, Math.round(rate / 50))
    this.ticker = setInterval(() => {
      this.tokens = Math.min(2 * perTick, this.tokens + perTick)
      this.fill()
    }, 20)
    this.connect()
  }

  /** Frames sent and not answered yet. */
  get unanswered(): number {
    return this.pending.length
  }

  get goaway(): boolean {
    return this.control.some((f) => f.type === "goaway")
  }

  private connect(): void {
    if (this.closedForGood) return
    this.connections++
    this.welcomed = false
    this.buffer = ""
    const socket = Net.connect({ port: this.port, host: "127.0.0.1", noDelay: true })
    this.socket = socket
    socket.setEncoding("utf8")
    socket.on("connect", () => socket.write(JSON.stringify({ type: "hello", v: 1, device: this.id, token: "t" }) + "\n"))
    socket.on("data", (d: string) => this.onData(d))
    socket.on("error", () => undefined)
    socket.on("close", () => {
      if (this.socket !== socket) return
      this.socket = undefined
      // what was not answered is sent again on the next connection
      if (!this.closedForGood && (!this.stopped || this.pending.length > 0) && !this.goaway) setTimeout(() => this.connect(), 50)
    })
  }

  private onData(d: string): void {
    this.buffer += d
    let nl = this.buffer.indexOf("\n")
    while (nl !== -1) {
      const frame = JSON.parse(this.buffer.slice(0, nl)) as Answer
      this.buffer = this.buffer.slice(nl + 1)
      nl = this.buffer.indexOf("\n")
      if (!this.welcomed) {
        if (frame.type !== "welcome") {
          this.control.push(frame) // e.g. busy while a worker drains: the close reconnects
          continue
        }
        this.welcomed = true
        const lastSeq = frame["lastSeq"] as number | null
        const highest = Math.max(-1, ...this.acked)
        if (highest >= 0 && (lastSeq === null || lastSeq < highest)) {
          this.violations.push(`welcome lastSeq ${lastSeq} below ${highest}, already acked`)
        }
        this.write(this.pending) // resend, in order, what the last connection left unanswered
        continue
      }
      if (frame.type === "ack" || frame.type === "nack") {
        const expected = this.pending.shift()
        if (frame["seq"] !== expected) this.violations.push(`expected an answer for ${expected}, got ${JSON.stringify(frame)}`)
        if (frame.type === "ack") this.acked.add(frame["seq"] as number)
        else if (frame["retry"] === true && !this.goaway) this.write([frame["seq"] as number])
      } else {
        this.control.push(frame)
      }
    }
    this.fill()
  }

  private frame(seq: number) {
    return seq % 5 === 4 ? event(seq) : telemetry(seq, { temp: seq % 40 })
  }

  private write(seqs: ReadonlyArray<number>): void {
    if (seqs.length === 0 || this.socket === undefined) return
    if (seqs !== this.pending) this.pending.push(...seqs)
    this.socket.write(seqs.map((s) => JSON.stringify(this.frame(s)) + "\n").join(""))
  }

  private fill(): void {
    if (this.stopped || this.goaway || !this.welcomed) return
    const fresh: Array<number> = []
    while (this.tokens > 0 && this.pending.length + fresh.length < this.window) {
      fresh.push(this.next++)
      this.tokens--
    }
    this.write(fresh)
  }

  start(): void {
    this.fill()
  }

  /** Sends nothing new; what is unanswered is still resent until answered. */
  stop(): void {
    this.stopped = true
  }

  close(): void {
    this.closedForGood = true
    clearInterval(this.ticker)
    this.socket?.destroy()
  }
}

/** `count` devices sending `rate` frames per second each. */
const startDevices = async (port: number, prefix: string, count: number, window: number, rate: number) => {
  const devices = Array.from({ length: count }, (_, i) => new ResilientDevice(`${prefix}-${i}`, port, window, rate))
  opened.push(...devices)
  for (const d of devices) d.start()
  await until("devices welcomed", 10_000, () => devices.every((d) => d.acked.size > 0))
  return devices
}

const totalAcked = (devices: ReadonlyArray<ResilientDevice>) => devices.reduce((n, d) => n + d.acked.size, 0)

/** Acked keys that are not stored exactly once, and keys stored more than once. */
const auditStore = (dataDir: string, devices: ReadonlyArray<ResilientDevice>) => {
  const counts = new Map<string, number>()
  for (const r of rows(dataDir)) {
    const key = `${r.device}:${r.epoch}:${r.seq}`
    counts.set(key, (counts.get(key) ?? 0) + 1)
  }
  const bad: Array<string> = []
  for (const d of devices) {
    for (const seq of d.acked) {
      const n = counts.get(`${d.id}:0:${seq}`) ?? 0
      if (n !== 1) bad.push(`${d.id}:0:${seq} stored ${n} times`)
    }
  }
  for (const [key, n] of counts) if (n !== 1) bad.push(`${key} stored ${n} times`)
  return bad
}

describe("GATEWAY_WORKERS=2", () => {
  it("both workers serve the one port; the node's metrics are their sum", async () => {
    const { node, dataDir } = await startNode()
    expect(linesOf(node, "listening")).toHaveLength(1)
    // a worker's own line may reach the pipe just after the node's (once on CI): wait for both
    await until("both workers' listening lines", 5_000, () => workerAdminPorts(node).size === 2)
    const perWorker = workerAdminPorts(node)
    expect([...perWorker.keys()].sort()).toEqual([0, 1])

    const devices: Array<Device> = []
    for (let i = 0; i < 24; i++) devices.push((await Device.open(node.port, `share-${i}`)).d)
    await until("connections counted", 5_000, async () => metricValue(await scrape(node.adminPort), "gateway_connections_active") === 24)
    // the kernel spread them: each worker holds some (all 24 on one worker: p = 2^-23)
    const active = await Promise.all([...perWorker.values()].map(async (p) => metricValue(await scrape(p), "gateway_connections_active")))
    expect(active.every((n) => n > 0)).toBe(true)
    expect(active.reduce((a, b) => a + b, 0)).toBe(24)

    for (const d of devices) d.send(...Array.from({ length: 8 }, (_, i) => (i % 4 === 3 ? event(i) : telemetry(i))))
    const answers = await Promise.all(devices.map((d) => d.take(8)))
    expect(answers.flat().filter((a) => a.type !== "ack")).toEqual([])

    const text = await scrape(node.adminPort)
    const committed = metricValue(text, "gateway_messages_total", { outcome: "committed" })
    expect(committed).toBe(24 * 8)
    expect(metricValue(text, "gateway_messages_total", { kind: "event", outcome: "committed" })).toBe(24 * 2)
    expect(metricValue(text, "gateway_ingest_to_commit_latency_seconds_count")).toBe(24 * 8)
    expect(metricValue(text, "gateway_workers")).toBe(2)
    expect(metricValue(text, "gateway_worker_restarts_total")).toBe(0)
    expect(text.match(/^# TYPE gateway_messages_total /gm)).toHaveLength(1)
    const workers = await Promise.all([...perWorker.values()].map(async (p) => metricValue(await scrape(p), "gateway_messages_total", { outcome: "committed" })))
    expect(workers.reduce((a, b) => a + b, 0)).toBe(committed)
    expect(await readyz(node.adminPort)).toEqual({ status: 200, body: "ready\n" })

    for (const d of devices) d.end()
    const stored = rows(dataDir)
    expect(stored).toHaveLength(24 * 8)
    // each message names the worker that stored it
    expect(new Set(stored.map((r) => r.gateway.replace(/.*-(w\d)$/, "$1")))).toEqual(new Set(["w0", "w1"]))
  }, 60_000)

  it("a worker SIGKILLed under load: its devices reconnect and resend, it is restarted, nothing acked is lost", async () => {
    const { node, dataDir } = await startNode()
    const devices = await startDevices(node.port, "kill", 16, 32, 300)
    await sleep(1_500)
    const victim = workerPid(node, 1)!
    const ackedBeforeKill = totalAcked(devices)
    const connectionsBefore = devices.reduce((n, d) => n + d.connections, 0)
    process.kill(victim, "SIGKILL")

    await until("worker 1 restarted and listening", 20_000, () =>
      workerPid(node, 1) !== victim && linesOf(node, "worker listening").filter((l) => l.annotations?.["worker"] === 1).length === 2)
    recordWorkers(node, dataDir)
    await until("node ready again", 10_000, async () => (await readyz(node.adminPort)).status === 200)
    await sleep(1_000) // load on both workers again
    for (const d of devices) d.stop()
    await until("every frame answered", 15_000, () => devices.every((d) => d.unanswered === 0))
    for (const d of devices) d.close()

    const exited = linesOf(node, "worker exited; restarting")
    expect(exited.map((l) => [l.annotations?.["worker"], l.annotations?.["pid"], l.annotations?.["signal"]])).toEqual([[1, victim, "SIGKILL"]])
    expect(devices.reduce((n, d) => n + d.connections, 0)).toBeGreaterThan(connectionsBefore) // the victim's devices came back
    expect(devices.flatMap((d) => d.violations)).toEqual([])
    expect(totalAcked(devices)).toBeGreaterThan(ackedBeforeKill)
    expect(ackedBeforeKill).toBeGreaterThan(1_000)
    const text = await scrape(node.adminPort)
    expect(metricValue(text, "gateway_worker_restarts_total")).toBe(1)
    expect(metricValue(text, "gateway_workers")).toBe(2)

    node.child.kill("SIGTERM")
    expect(await node.exited).toBe(0)
    expect(auditStore(dataDir, devices)).toEqual([])
  }, 60_000)

  it("SIGTERM to the primary drains both workers under load and exits 0", async () => {
    const { node, dataDir } = await startNode()
    const devices = await startDevices(node.port, "term", 16, 32, 300)
    await sleep(1_000)
    const ackedBeforeTerm = totalAcked(devices)
    node.child.kill("SIGTERM")
    const code = await node.exited
    await outputEnded(node)
    await until("connections closed", 5_000, () => devices.every((d) => d.goaway && d.unanswered === 0))
    for (const d of devices) d.close()

    expect({ code, output: code === 0 ? "" : node.output() }).toEqual({ code: 0, output: "" })
    expect(devices.every((d) => d.control.filter((f) => f.type === "goaway").length === 1)).toBe(true)
    expect(devices.flatMap((d) => d.violations)).toEqual([])
    expect(linesOf(node, "shutdown complete: everything drained")).toHaveLength(2) // each worker
    expect(linesOf(node, "shutdown complete: every worker drained")).toHaveLength(1)
    // every frame was answered (the wait above) and every ack is in the store (below); acks after
    // the signal depend on what was in flight at that instant (none, once, on a loaded CI machine)
    expect(totalAcked(devices)).toBeGreaterThanOrEqual(ackedBeforeTerm)
    expect(auditStore(dataDir, devices)).toEqual([])
  }, 60_000)

  it("a second node on the device port of a running node does not start (SO_REUSEPORT would let it share)", async () => {
    const { node } = await startNode()
    const dataDir = tempDir("gw-workers-second-")
    dirs.add(dataDir)
    // before: it bound the port beside the first node's workers and both served it
    const second = await runToExit(dataDir, { GATEWAY_WORKERS: "2", GATEWAY_PORT: String(node.port) })
    expect(second.code).toBe(1)
    expect(logLines(second.output).filter((l) => l.level === "ERROR").map(messageOf)).toEqual([expect.stringMatching(/^cannot start: device port .*EADDRINUSE/)])
    expect(node.child.exitCode).toBeNull()
  }, 30_000)

  it("a bad configuration fails the node's start with one line and exit 78", async () => {
    const dataDir = tempDir("gw-workers-config-")
    dirs.add(dataDir)
    // checked by the primary before any worker exists
    const bad = await runToExit(dataDir, { GATEWAY_WORKERS: "2", GATEWAY_BATCH_MAX: "abc" })
    expect(bad.code).toBe(78)
    expect(logLines(bad.output).map(messageOf)).toEqual(['invalid configuration: expected an integer from 1 to 9007199254740991 at ["GATEWAY_BATCH_MAX"]'])
    // found by worker 0 (the stages file is read where the gateway runs): its line, its exit code, no other worker started
    const stagesFile = Path.join(dataDir, "stages.json")
    Fs.writeFileSync(stagesFile, JSON.stringify({ stages: [{ stage: "threshold", options: { limits: [{ metric: 5 }] } }] }))
    const stages = await runToExit(dataDir, { GATEWAY_WORKERS: "2", GATEWAY_STAGES_FILE: stagesFile })
    expect(stages.code).toBe(78)
    const lines = logLines(stages.output)
    expect(lines.filter((l) => l.level === "ERROR").map(messageOf)).toEqual([expect.stringContaining("invalid configuration: GATEWAY_STAGES_FILE")])
    expect(lines.filter((l) => messageOf(l) === "worker started").map((l) => l.annotations?.["worker"])).toEqual([0])
    expect(lines.map(messageOf)).not.toContain("listening")
  }, 30_000)

  it("SIGHUP to the primary reaches the workers: the node stays up and new TLS handshakes get the new certificate", async () => {
    const pkiDir = tempDir("gw-workers-pki-")
    dirs.add(pkiDir)
    const { ca, server } = makePki(pkiDir)
    const cert = Path.join(pkiDir, "gw.crt")
    const key = Path.join(pkiDir, "gw.key")
    Fs.copyFileSync(server.cert, cert)
    Fs.copyFileSync(server.key, key)
    const { node } = await startNode({ GATEWAY_TLS_CERT: cert, GATEWAY_TLS_KEY: key })
    const cnOf = async () => {
      const d = await Device.connectTls(node.port, { ca: Fs.readFileSync(ca.cert) })
      const cn = d.peerCertificateCn()
      d.end()
      return cn
    }
    expect(await cnOf()).toBe("gateway.test")
    const next = ca.issue("server-next", "gateway-next.test", ["IP:127.0.0.1"])
    Fs.copyFileSync(next.cert, cert)
    Fs.copyFileSync(next.key, key)
    node.child.kill("SIGHUP") // before: the primary had no handler, and SIGHUP killed it
    await sleep(300) // well before the 2 s file poll
    expect(node.child.exitCode).toBeNull()
    // each worker answers a share of the connections: both must have reloaded
    const cns = new Set<string | undefined>()
    for (let i = 0; i < 20; i++) cns.add(await cnOf())
    expect([...cns]).toEqual(["gateway-next.test"])
  }, 30_000)
})
