/**
 * The fleet simulator (`npm run simulate`, src/cli/simulate.ts) as an operator runs it: a child
 * process on real sockets against a real gateway process, its `--json` summary checked against
 * the gateway's SQLite store read back from disk (every acked frame stored exactly once, seqs
 * without a gap), through a SIGTERM drain and a SIGKILL with a restart on the same port, `busy`
 * refusals, registry tokens, JWT and mutual-TLS credentials, SIGINT and an address where
 * nothing listens.
 */
import { afterEach, describe, expect, it } from "@effect/vitest"
import { exportJWK, generateKeyPair } from "jose"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Path from "node:path"
import type { DeviceReport } from "../../src/cli/simulator/Device.ts"
import type { Summary } from "../../src/cli/simulator/Report.ts"
import { makePki } from "../support/certs.ts"
import { cleanupChildren, CWD, type GatewayProcess, NODE_ARGS, spawnGateway, tempDir } from "../support/childGateway.ts"
import { readMetric } from "../support/metrics.ts"
import { NODE } from "../support/process.ts"
import { type MessageRow, rows } from "../support/store.ts"

/** The npm script's command: `node --disable-warning=ExperimentalWarning src/cli/simulate.ts`. */
const SIMULATE = [...NODE_ARGS, "src/cli/simulate.ts"]

const simulators = new Set<ChildProcess.ChildProcess>()

afterEach(async () => {
  for (const child of simulators) if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL")
  simulators.clear()
  await cleanupChildren()
})

interface SimulatorRun {
  readonly child: ChildProcess.ChildProcess
  readonly done: Promise<{ readonly code: number | null; readonly stdout: string; readonly stderr: string }>
}

/** Starts the simulator as a child process. */
const startSimulator = (args: ReadonlyArray<string>): SimulatorRun => {
  const child = ChildProcess.spawn(NODE, [...SIMULATE, ...args], { cwd: CWD, stdio: ["ignore", "pipe", "pipe"] })
  simulators.add(child)
  let stdout = ""
  let stderr = ""
  child.stdout.setEncoding("utf8")
  child.stderr.setEncoding("utf8")
  child.stdout.on("data", (d: string) => (stdout += d))
  child.stderr.on("data", (d: string) => (stderr += d))
  const done = new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) =>
    child.once("exit", (code) => {
      // the pipes may still hold the end of the output
      setTimeout(() => resolve({ code, stdout, stderr }), 50)
    })
  )
  return { child, done }
}

/** Runs the simulator to its end and reads its `--json` summary. */
const simulate = async (args: ReadonlyArray<string>) => {
  const r = await startSimulator([...args, "--json"]).done
  return { ...r, summary: parseSummary(r.stdout, r.stderr) }
}

const parseSummary = (stdout: string, stderr: string): Summary => {
  try {
    return JSON.parse(stdout) as Summary
  } catch {
    throw new Error(`no JSON summary; stdout:\n${stdout}\nstderr:\n${stderr}`)
  }
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

/**
 * Checks the store against the summary: each device's rows are exactly its seqs firstSeq..lastSeq,
 * once each (so no acked frame is missing and none is stored twice), and they add up to the acks.
 */
const expectStoreMatches = (dataDir: string, summary: Summary, prefix: string): Array<MessageRow> => {
  const stored = rows(dataDir).filter((r) => r.device.startsWith(prefix))
  const byDevice = new Map<string, Array<number>>()
  for (const r of stored) {
    const seqs = byDevice.get(r.device) ?? []
    seqs.push(r.seq)
    byDevice.set(r.device, seqs)
  }
  const reports: ReadonlyArray<DeviceReport> = summary.perDevice ?? []
  expect(reports.length).toBe(summary.devices)
  for (const d of reports) {
    expect(d.acked, d.device).toBe(d.produced)
    const expected = d.firstSeq === null || d.lastSeq === null
      ? []
      : Array.from({ length: d.lastSeq - d.firstSeq + 1 }, (_, i) => d.firstSeq! + i)
    expect(byDevice.get(d.device) ?? [], d.device).toEqual(expected)
  }
  expect(stored.length).toBe(summary.frames.acked)
  return stored
}

/** A port where nothing listens (bound, then closed). */
const closedPort = async (): Promise<number> => {
  const server = Net.createServer()
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const port = (server.address() as Net.AddressInfo).port
  await new Promise<void>((resolve) => server.close(() => resolve()))
  return port
}

describe("simulate", () => {
  it("50 devices × 20/s with registry tokens: every frame acked, each stored exactly once; a rerun goes on from welcome.lastSeq", async () => {
    const dir = tempDir("sim-registry-")
    const registry = Path.join(dir, "devices.json")
    const tokens = Path.join(dir, "tokens.txt")
    const provision = await startSimulator(["provision", "--devices", "50", "--prefix", "reg-", "--registry", registry, "--tokens-out", tokens]).done
    expect(provision.code, provision.stderr).toBe(0)
    expect(Fs.statSync(tokens).mode & 0o777).toBe(0o600)
    expect(Fs.readFileSync(tokens, "utf8").split("\n").filter((l) => l.startsWith("reg-")).length).toBe(50)

    const dataDir = tempDir("sim-data-")
    const gw = await spawnGateway(dataDir, { GATEWAY_DEVICES: registry })
    const common = ["--port", String(gw.port), "--devices", "50", "--prefix", "reg-", "--tokens", tokens, "--per-device"]
    const { code, stderr, summary } = await simulate([...common, "--rate", "20", "--duration", "3", "--events", "0.1", "--trace-ratio", "0.1"])
    expect(code, stderr).toBe(0)
    expect(summary.complete).toBe(true)
    expect(summary.allAnswered).toBe(true)
    // 50 devices × 20/s × 3 s, less the frames due before a device's boot (connect-rate 1000/s: 50 ms)
    expect(summary.frames.produced).toBeGreaterThanOrEqual(2900)
    expect(summary.frames.produced).toBeLessThanOrEqual(3000)
    expect(summary.frames.acked).toBe(summary.frames.produced)
    expect(summary.frames.sent).toBe(summary.frames.produced)
    expect(summary.frames.dupAcks).toBe(0)
    expect(summary.frames.unexpected).toBe(0)
    expect(summary.nacks).toEqual({})
    expect(summary.sessions.devicesConnected).toBe(50)
    expect(summary.sessions.errors).toEqual({})
    expect(summary.latencyMs.p50).toBeGreaterThan(0)
    expect(summary.latencyMs.p99).toBeGreaterThanOrEqual(summary.latencyMs.p50)
    expect(summary.latencyMs.max).toBeGreaterThanOrEqual(summary.latencyMs.p99)
    // progress lines on stderr, one a second
    expect(stderr.split("\n").filter((l) => /connected \d+\/50 {2}acked \d+\/s/.test(l)).length).toBeGreaterThanOrEqual(2)

    const stored = expectStoreMatches(dataDir, summary, "reg-")
    for (const d of summary.perDevice ?? []) expect(d.firstSeq).toBe(1)
    expect(stored.filter((r) => r.kind === "event").length).toBe(summary.frames.events)
    expect(summary.frames.events).toBeGreaterThan(100)
    expect(stored.filter((r) => r.traceparent !== null).length).toBe(summary.frames.traced)
    expect(summary.frames.traced).toBeGreaterThan(100)
    for (const r of stored) expect(Math.abs(r.received_at - r.device_ts)).toBeLessThan(10_000)

    // the same devices again: their seqs go on after the last one stored (welcome.lastSeq)
    const again = await simulate([...common, "--rate", "10", "--duration", "1"])
    expect(again.code, again.stderr).toBe(0)
    expect(again.summary.complete).toBe(true)
    expect(again.summary.frames.dupAcks).toBe(0)
    const before = new Map((summary.perDevice ?? []).map((d) => [d.device, d.lastSeq]))
    for (const d of again.summary.perDevice ?? []) expect(d.firstSeq, d.device).toBe(before.get(d.device)! + 1)
    const all = rows(dataDir).filter((r) => r.device.startsWith("reg-"))
    expect(all.length).toBe(summary.frames.acked + again.summary.frames.acked)
    expect(new Set(all.map((r) => `${r.device}/${r.seq}`)).size).toBe(all.length)
  }, 60_000)

  it("gateway drained by SIGTERM (goaway) and started again on the same port: the devices reconnect with the resume hint, nothing acked is lost or doubled", async () => {
    const dataDir = tempDir("sim-restart-")
    const a = await spawnGateway(dataDir, { GATEWAY_ID: "gw-a" })
    const sim = startSimulator([
      "--port", String(a.port), "--devices", "50", "--rate", "20", "--duration", "6", "--drain", "15", "--prefix", "rs-",
      "--json", "--per-device"
    ])
    await sleep(2_000)
    a.child.kill("SIGTERM")
    expect(await a.exited).toBe(0)
    const b = await spawnGateway(dataDir, { GATEWAY_ID: "gw-b", GATEWAY_PORT: String(a.port) })
    const r = await sim.done
    const summary = parseSummary(r.stdout, r.stderr)
    expect(r.code, r.stderr).toBe(0)
    expect(summary.complete).toBe(true)
    expect(summary.frames.acked).toBe(summary.frames.produced)
    expect(summary.frames.unexpected).toBe(0)
    expect(summary.sessions.goaways).toBe(50)
    // goaway's retryAfterMs is 1–2 s: no device came back sooner
    expect(summary.sessions.goawayWaitMinMs).toBeGreaterThanOrEqual(1_000)
    expect(summary.sessions.reconnects).toBeGreaterThanOrEqual(50)
    expect(summary.sessions.resumeHellos).toBeGreaterThanOrEqual(50)
    expect(summary.sessions.devicesConnected).toBe(50)
    const stored = expectStoreMatches(dataDir, summary, "rs-")
    expect(stored.filter((row) => row.gateway === "gw-a").length).toBeGreaterThan(500)
    expect(stored.filter((row) => row.gateway === "gw-b").length).toBeGreaterThan(500)
    b.child.kill("SIGTERM")
    expect(await b.exited).toBe(0)
  }, 60_000)

  it("gateway SIGKILLed with frames in flight and started again: the unanswered frames are resent with their seqs, stored once", async () => {
    const dataDir = tempDir("sim-kill-")
    // a linger keeps frames in flight (written, not yet answered) at any moment
    const env = { GATEWAY_BATCH_LINGER_MS: "40" }
    const a = await spawnGateway(dataDir, env)
    const sim = startSimulator([
      "--port", String(a.port), "--devices", "50", "--rate", "20", "--duration", "6", "--drain", "15", "--prefix", "kl-",
      "--max-backoff", "1", "--json", "--per-device"
    ])
    await sleep(2_000)
    a.child.kill("SIGKILL")
    await a.exited
    await sleep(500)
    await spawnGateway(dataDir, { ...env, GATEWAY_PORT: String(a.port) })
    const r = await sim.done
    const summary = parseSummary(r.stdout, r.stderr)
    expect(r.code, r.stderr).toBe(0)
    expect(summary.complete).toBe(true)
    expect(summary.frames.resent).toBeGreaterThan(0)
    expect(summary.frames.writes).toBe(summary.frames.sent + summary.frames.resent)
    expect(summary.sessions.reconnects).toBeGreaterThanOrEqual(50)
    expect(summary.sessions.socketErrors["ECONNREFUSED"] ?? 0).toBeGreaterThan(0)
    expectStoreMatches(dataDir, summary, "kl-")
  }, 60_000)

  it("a gateway that admits 10 sessions a second refuses with busy: the devices wait retryAfterMs and all connect", async () => {
    const dataDir = tempDir("sim-busy-")
    const gw = await spawnGateway(dataDir, { GATEWAY_ACCEPT_RATE: "10", GATEWAY_ACCEPT_BURST: "5", GATEWAY_BUSY_RETRY_MS: "200" })
    const started = Date.now()
    const { code, stderr, summary } = await simulate([
      "--port", String(gw.port), "--devices", "40", "--rate", "5", "--duration", "6", "--drain", "15", "--prefix", "bz-",
      "--connect-rate", "0", "--per-device"
    ])
    const seconds = (Date.now() - started) / 1000
    expect(code, stderr).toBe(0)
    expect(summary.sessions.devicesConnected).toBe(40)
    expect(summary.sessions.busy).toBeGreaterThan(0)
    // every refusal was the gateway's, counted by it
    expect(summary.sessions.busy).toBe(await readMetric(gw.adminPort, "gateway_admission_refusals_total"))
    // honouring retryAfterMs (≥ GATEWAY_BUSY_RETRY_MS): no device came back sooner, so none hammered
    expect(summary.sessions.busyWaitMinMs).toBeGreaterThanOrEqual(200)
    expect(summary.sessions.busy).toBeLessThan(40 * seconds * 5)
    expect(summary.sessions.attempts).toBe(40 + summary.sessions.busy)
    expect(summary.complete).toBe(true)
    expectStoreMatches(dataDir, summary, "bz-")
  }, 60_000)

  it("JWT credentials signed with the fleet key, and mutual TLS with a certificate per device", async () => {
    const dir = tempDir("sim-creds-")
    const { publicKey, privateKey } = await generateKeyPair("ES256", { extractable: true })
    const kid = "fleet-test"
    Fs.writeFileSync(Path.join(dir, "fleet.jwks.json"), JSON.stringify({ keys: [{ ...(await exportJWK(publicKey)), kid, alg: "ES256", use: "sig" }] }))
    Fs.writeFileSync(Path.join(dir, "fleet.key.json"), JSON.stringify({ ...(await exportJWK(privateKey)), kid }))
    const jwtData = tempDir("sim-jwt-")
    const jwtGw = await spawnGateway(jwtData, { GATEWAY_JWKS_FILE: Path.join(dir, "fleet.jwks.json"), GATEWAY_JWT_ISSUER: "https://fleet.test" })
    const jwt = await simulate([
      "--port", String(jwtGw.port), "--devices", "10", "--rate", "10", "--duration", "1.5", "--prefix", "jw-", "--events", "0.2",
      "--jwt-key", Path.join(dir, "fleet.key.json"), "--jwt-issuer", "https://fleet.test", "--per-device"
    ])
    expect(jwt.code, jwt.stderr).toBe(0)
    expect(jwt.summary.complete).toBe(true)
    expect(jwt.summary.nacks).toEqual({})
    expect(jwt.summary.frames.events).toBeGreaterThan(0)
    expectStoreMatches(jwtData, jwt.summary, "jw-")

    // a token for another issuer is refused: the devices stop (no retry storm), exit 1
    const refused = await simulate([
      "--port", String(jwtGw.port), "--devices", "3", "--rate", "10", "--duration", "3", "--prefix", "jx-",
      "--jwt-key", Path.join(dir, "fleet.key.json"), "--jwt-issuer", "https://other.test"
    ])
    expect(refused.code).toBe(1)
    expect(refused.summary.sessions.gaveUp).toEqual({ auth: 3 })
    expect(refused.summary.sessions.attempts).toBe(3)
    expect(refused.stderr).toContain("error auth")

    const pki = makePki(dir)
    for (let i = 0; i < 5; i++) pki.ca.issue(`tl-${i}`, `tl-${i}`)
    const tlsData = tempDir("sim-tls-")
    const tlsGw = await spawnGateway(tlsData, { GATEWAY_TLS_CERT: pki.server.cert, GATEWAY_TLS_KEY: pki.server.key, GATEWAY_TLS_CA: pki.ca.cert })
    const tls = await simulate([
      "--port", String(tlsGw.port), "--devices", "5", "--rate", "10", "--duration", "1.5", "--prefix", "tl-",
      "--tls", "--ca", pki.ca.cert, "--certs", pki.ca.dir, "--per-device"
    ])
    expect(tls.code, tls.stderr).toBe(0)
    expect(tls.summary.complete).toBe(true)
    expect(tls.summary.sessions.devicesConnected).toBe(5)
    expectStoreMatches(tlsData, tls.summary, "tl-")
  }, 60_000)

  it("nacks by code: rate_limited frames are resent after retryAfterMs, forbidden ones are counted and never resent", async () => {
    const dir = tempDir("sim-nacks-")
    const registry = Path.join(dir, "devices.json")
    const tokens = Path.join(dir, "tokens.txt")
    const provision = await startSimulator([
      "provision", "--devices", "10", "--prefix", "nk-", "--registry", registry, "--tokens-out", tokens, "--kinds", "telemetry"
    ]).done
    expect(provision.code, provision.stderr).toBe(0)
    const dataDir = tempDir("sim-nacks-data-")
    const gw = await spawnGateway(dataDir, { GATEWAY_DEVICES: registry, GATEWAY_DEVICE_MSGS_PER_SEC: "10" })
    const { code, stderr, summary } = await simulate([
      "--port", String(gw.port), "--devices", "10", "--rate", "15", "--events", "0.2", "--duration", "3", "--drain", "20",
      "--prefix", "nk-", "--tokens", tokens, "--per-device"
    ])
    expect(code, stderr).toBe(0)
    expect(summary.complete).toBe(true)
    expect(summary.nacks["rate_limited"] ?? 0).toBeGreaterThan(0)
    expect(summary.frames.resent).toBeGreaterThanOrEqual(summary.nacks["rate_limited"] ?? 0)
    // every event refused once, for good; every telemetry frame acked
    expect(summary.nacks["forbidden"]).toBe(summary.frames.events)
    expect(summary.frames.rejected).toBe(summary.frames.events)
    expect(summary.frames.acked).toBe(summary.frames.telemetry)
    expect(summary.frames.events).toBeGreaterThan(20)
    const stored = rows(dataDir).filter((r) => r.device.startsWith("nk-"))
    expect(stored.length).toBe(summary.frames.acked)
    expect(new Set(stored.map((r) => `${r.device}/${r.seq}`)).size).toBe(stored.length)
    expect(stored.every((r) => r.kind === "telemetry")).toBe(true)
    for (const d of summary.perDevice ?? []) {
      const seqs = stored.filter((r) => r.device === d.device).map((r) => r.seq)
      expect(seqs.length).toBe(d.acked)
      expect(d.acked + d.rejected).toBe(d.produced)
      for (const seq of seqs) expect(seq >= d.firstSeq! && seq <= d.lastSeq!).toBe(true)
    }
  }, 60_000)

  it("a device slower than the keepalive pings: no session times out", async () => {
    const dataDir = tempDir("sim-keepalive-")
    const gw = await spawnGateway(dataDir, { GATEWAY_KEEPALIVE_MS: "1000" })
    const { code, stderr, summary } = await simulate([
      "--port", String(gw.port), "--devices", "5", "--rate", "0.25", "--duration", "5", "--prefix", "ka-", "--per-device"
    ])
    expect(code, stderr).toBe(0)
    expect(summary.sessions.pings).toBeGreaterThan(5)
    expect(summary.sessions.errors).toEqual({})
    expect(summary.sessions.reconnects).toBe(0)
    expect(summary.sessions.connectedAtEnd).toBe(5)
    expect(summary.complete).toBe(true)
    expectStoreMatches(dataDir, summary, "ka-")
  }, 30_000)

  it("SIGINT ends the run early: the answers are awaited and the summary printed", async () => {
    const dataDir = tempDir("sim-int-")
    const gw: GatewayProcess = await spawnGateway(dataDir)
    const sim = startSimulator(["--port", String(gw.port), "--devices", "20", "--rate", "10", "--duration", "60", "--prefix", "in-", "--per-device"])
    await sleep(1_500)
    const signalled = Date.now()
    sim.child.kill("SIGINT")
    const r = await sim.done
    expect(Date.now() - signalled).toBeLessThan(5_000)
    expect(r.code, r.stderr).toBe(0)
    expect(r.stdout).toContain("(interrupted)")
    expect(r.stdout).toContain("every sent frame was answered")
    expect(r.stdout).toMatch(/sessions {3}20\/20 devices connected/)
    const acked = Number(/acked (\d+)/.exec(r.stdout)?.[1])
    expect(acked).toBeGreaterThan(100)
    expect(rows(dataDir).filter((row) => row.device.startsWith("in-")).length).toBe(acked)
  }, 30_000)

  it("exits 1 when nothing listens at the address", async () => {
    const port = await closedPort()
    const started = Date.now()
    const { code, stderr, summary } = await simulate(["--port", String(port), "--devices", "5", "--duration", "30"])
    expect(code).toBe(1)
    expect(Date.now() - started).toBeLessThan(15_000)
    expect(stderr).toContain(`could not connect to 127.0.0.1:${port}`)
    expect(summary.aborted).toContain("ECONNREFUSED")
    expect(summary.sessions.devicesConnected).toBe(0)
  }, 30_000)
})
