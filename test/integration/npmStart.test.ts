/**
 * `npm start` as containers and service managers run it (`CMD ["npm", "start"]`): the signal
 * goes to npm, not to the gateway. Real npm from PATH, with the project's Node 24 first on PATH
 * as npm scripts have it, a temporary data directory and ports 0.
 *
 * Both failed before issue 8 (Hardening): npm ran the script through `sh -c`, and dash does not
 * exec the last command, so npm passed SIGTERM to the shell, which died at once; npm exited 143
 * and the gateway went on, orphaned, with its ports and store, and never drained. And nothing
 * noticed when npm itself was killed.
 */
import { afterEach, describe, expect, it } from "@effect/vitest"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Path from "node:path"
import { Device, telemetry } from "../support/client.ts"
import { tempDir } from "../support/gateway.ts"
import { childEnv, logLines, messageOf, ROOT } from "../support/process.ts"

const DRAIN_TIMEOUT_MS = 5_000

interface NpmStart {
  readonly npm: ChildProcess.ChildProcess
  /** stdout and stderr of npm and of the gateway (which shares them). */
  readonly output: () => string
  /** npm's exit code (null when a signal killed it). */
  readonly npmExited: Promise<number | null>
  /** Resolves when every writer of the output pipes is gone: npm and the gateway both exited. */
  readonly pipesClosed: Promise<void>
}

const started: Array<NpmStart> = []
const dirs: Array<string> = []

afterEach(async () => {
  // npm leads its own process group; whatever is left in it (an orphaned gateway) goes too
  for (const s of started.splice(0)) {
    if (s.npm.pid !== undefined && groupAlive(s.npm.pid)) process.kill(-s.npm.pid, "SIGKILL")
  }
  for (const dir of dirs.splice(0)) Fs.rmSync(dir, { recursive: true, force: true })
})

/** True while a process of group `pgid` exists (a zombie not yet reaped by init counts too). */
const groupAlive = (pgid: number): boolean => {
  try {
    process.kill(-pgid, 0)
    return true
  } catch {
    return false
  }
}

/** True while a process of group `pgid` is running: not a zombie that init has yet to reap (Linux /proc). */
const groupRunning = (pgid: number): boolean => {
  for (const entry of Fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue
    let stat: string
    try {
      stat = Fs.readFileSync(`/proc/${entry}/stat`, "utf8")
    } catch {
      continue // exited meanwhile
    }
    // pid (comm) state ppid pgrp …: comm may hold spaces, so read after its closing parenthesis
    const [state, , pgrp] = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
    if (Number(pgrp) === pgid && state !== "Z" && state !== "X") return true
  }
  return false
}

/** Runs `npm start` in the repository, as a process-group leader, with ports 0 and a fresh data directory. */
const npmStart = (): NpmStart => {
  const dataDir = tempDir("gw-npm-")
  dirs.push(dataDir)
  const env = childEnv(dataDir, {
    PATH: `${Path.join(ROOT, "node_modules/.bin")}${Path.delimiter}${process.env["PATH"] ?? ""}`,
    GATEWAY_DRAIN_TIMEOUT_MS: String(DRAIN_TIMEOUT_MS)
  })
  // whatever npm script runs this test, npm sets its own
  for (const key of Object.keys(env)) if (key.startsWith("npm_")) delete env[key]
  const npm = ChildProcess.spawn("npm", ["start"], { cwd: ROOT, env, detached: true, stdio: ["ignore", "pipe", "pipe"] })
  let output = ""
  npm.stdout!.setEncoding("utf8")
  npm.stderr!.setEncoding("utf8")
  npm.stdout!.on("data", (d: string) => (output += d))
  npm.stderr!.on("data", (d: string) => (output += d))
  const npmExited = new Promise<number | null>((resolve) => npm.once("exit", (code) => resolve(code)))
  const pipesClosed = new Promise<void>((resolve) => npm.once("close", () => resolve()))
  const s = { npm, output: () => output, npmExited, pipesClosed }
  started.push(s)
  return s
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

/** The gateway's bound ports, from its `listening` line. */
const listening = async (s: NpmStart) => {
  const deadline = Date.now() + 20_000
  while (Date.now() < deadline) {
    const line = logLines(s.output()).find((l) => messageOf(l) === "listening")
    const port = line?.annotations?.["port"]
    const adminPort = line?.annotations?.["adminPort"]
    if (typeof port === "number" && typeof adminPort === "number") return { port, adminPort }
    await sleep(25)
  }
  throw new Error(`no "listening" line within 20 s; output:\n${s.output()}`)
}

/** Resolves true when a connection to `port` is refused, false when it is accepted. */
const refused = (port: number) =>
  new Promise<boolean>((resolve) => {
    const socket = Net.connect({ port, host: "127.0.0.1" })
    socket.once("connect", () => {
      socket.destroy()
      resolve(false)
    })
    socket.once("error", () => resolve(true))
  })

/** Waits until both ports refuse connections; false when they still accept at `deadline`. */
const portsReleased = async (ports: { port: number; adminPort: number }, deadline: number) => {
  while (Date.now() < deadline) {
    if (await refused(ports.port) && await refused(ports.adminPort)) return true
    await sleep(50)
  }
  return false
}

/** Connects a device, has 5 messages acked, and keeps it connected (the drain has a device to send goaway). */
const withTraffic = async (port: number) => {
  const { d } = await Device.open(port, "npm-dev")
  d.send(telemetry(1), telemetry(2), telemetry(3), telemetry(4), telemetry(5))
  expect((await d.take(5)).map((a) => a.type)).toEqual(["ack", "ack", "ack", "ack", "ack"])
  return d
}

const messages = (output: string) => logLines(output).map(messageOf)

const withinMs = <A>(p: Promise<A>, ms: number): Promise<A | "timeout"> =>
  Promise.race([p, sleep(ms).then(() => "timeout" as const)])

describe("npm start", () => {
  it("SIGTERM to npm reaches the gateway: it drains, exits 0 (npm too), and its ports are released", async () => {
    const s = npmStart()
    const ports = await listening(s)
    const d = await withTraffic(ports.port)
    const signalledAt = Date.now()
    s.npm.kill("SIGTERM")
    const deadline = signalledAt + DRAIN_TIMEOUT_MS
    const code = await withinMs(s.npmExited, DRAIN_TIMEOUT_MS + 2_000)
    expect({ code, released: await portsReleased(ports, deadline) }).toEqual({ code: 0, released: true })
    await withinMs(s.pipesClosed, 2_000)
    expect(groupRunning(s.npm.pid!)).toBe(false)
    const lines = messages(s.output())
    expect(lines).toContain("shutting down: draining")
    expect(lines).toContain("shutdown complete: everything drained")
    expect(d.received().some((l) => l.includes(`"goaway"`))).toBe(true)
  }, 40_000)

  it("npm killed outright (SIGKILL): the gateway notices its parent is gone, drains and exits; ports released", async () => {
    const s = npmStart()
    const ports = await listening(s)
    const d = await withTraffic(ports.port)
    const killedAt = Date.now()
    s.npm.kill("SIGKILL")
    await s.npmExited
    // the gateway notices within a second, then drains within the drain timeout
    const deadline = killedAt + 1_000 + DRAIN_TIMEOUT_MS
    const closed = await withinMs(s.pipesClosed, deadline - Date.now() + 1_000)
    expect({ gatewayExited: closed !== "timeout", released: await portsReleased(ports, deadline) })
      .toEqual({ gatewayExited: true, released: true })
    expect(groupRunning(s.npm.pid!)).toBe(false)
    const lines = messages(s.output())
    expect(lines.some((m) => m.startsWith("parent process gone"))).toBe(true)
    expect(lines).toContain("shutting down: draining")
    expect(lines).toContain("shutdown complete: everything drained")
    expect(d.received().some((l) => l.includes(`"goaway"`))).toBe(true)
  }, 40_000)
})
