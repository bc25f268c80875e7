/**
 * The gateway as an operator runs it: a real child process (`node src/main.ts`) on real sockets,
 * killed with real signals, its SQLite store read back from disk. Covers crash safety (SIGKILL
 * loses nothing acked), the SIGTERM drain, configuration errors and the device CLI.
 */
import { afterEach, describe, expect, it } from "@effect/vitest"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Path from "node:path"
import { type Answer, Device, event, telemetry } from "../support/client.ts"
import { cleanupChildren, CWD, gatewayEnv, NODE_ARGS, runToExit, spawnGateway, tempDir, withTimeout } from "../support/childGateway.ts"
import { rows } from "../support/store.ts"

afterEach(cleanupChildren)

/** Runs the device CLI to completion. */
const runCli = (args: ReadonlyArray<string>, env: Record<string, string> = {}) => {
  const r = ChildProcess.spawnSync(process.execPath, [...NODE_ARGS, "src/cli/devices.ts", ...args], {
    cwd: CWD,
    env: gatewayEnv("unused", env),
    encoding: "utf8",
    timeout: 15_000
  })
  return { code: r.status, stdout: r.stdout, stderr: r.stderr }
}


const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

// ---- load ----

/**
 * A device under load: keeps up to `window` data frames unanswered (every fifth an event),
 * checks that answers come in send order, one per frame, and stops sending at `goaway`.
 */
class LoadDevice {
  readonly acked: Array<number> = []
  readonly nacks: Array<Answer> = []
  /** Seqs sent and not yet answered, oldest first. */
  readonly pending: Array<number> = []
  /** Control frames received after welcome (goaway, error, ...). */
  readonly control: Array<Answer> = []
  /** Answers that did not match the oldest unanswered frame, or came after the connection ended. */
  readonly violations: Array<string> = []
  sent = 0
  /** Frames sent when goaway arrived (undefined before). */
  sentAtGoaway: number | undefined
  welcomed = false
  private stopped = false
  private buffer = ""
  readonly closed: Promise<void>
  readonly welcome: Promise<void>

  readonly id: string
  private readonly window: number
  private readonly socket: Net.Socket

  constructor(id: string, port: number, window: number) {
    this.id = id
    this.window = window
    const socket = Net.connect({ port, host: "127.0.0.1", noDelay: true })
    this.socket = socket
    let onWelcome: () => void = () => undefined
    let onFail: (e: Error) => void = () => undefined
    this.welcome = new Promise((resolve, reject) => {
      onWelcome = resolve
      onFail = reject
    })
    socket.setEncoding("utf8")
    socket.on("connect", () => socket.write(JSON.stringify({ type: "hello", v: 1, device: id, token: "t" }) + "\n"))
    socket.on("data", (d: string) => this.onData(d, onWelcome, onFail))
    socket.on("error", () => undefined)
    this.closed = new Promise((resolve) =>
      socket.on("close", () => {
        onFail(new Error(`${id}: closed before welcome`))
        resolve()
      })
    )
  }

  private onData(d: string, onWelcome: () => void, onFail: (e: Error) => void) {
    this.buffer += d
    let nl = this.buffer.indexOf("\n")
    while (nl !== -1) {
      const line = this.buffer.slice(0, nl)
      this.buffer = this.buffer.slice(nl + 1)
      nl = this.buffer.indexOf("\n")
      const frame = JSON.parse(line) as Answer
      if (!this.welcomed) {
        if (frame.type !== "welcome") onFail(new Error(`${this.id}: expected welcome, got ${line}`))
        this.welcomed = true
        onWelcome()
        continue
      }
      if (frame.type === "ack" || frame.type === "nack") {
        const expected = this.pending.shift()
        if (frame["seq"] !== expected) this.violations.push(`expected answer for ${expected}, got ${line}`)
        if (frame.type === "ack") this.acked.push(frame["seq"] as number)
        else this.nacks.push(frame)
      } else {
        this.control.push(frame)
        if (frame.type === "goaway") {
          this.stopped = true
          this.sentAtGoaway = this.sent
        }
      }
    }
    this.fill()
  }

  /** Starts sending. */
  start(): void {
    this.fill()
  }

  /** Stops sending (answers are still read). */
  stop(): void {
    this.stopped = true
  }

  private fill(): void {
    if (this.stopped || !this.welcomed || this.socket.destroyed) return
    let out = ""
    while (this.pending.length < this.window) {
      const seq = this.sent++
      out += JSON.stringify(seq % 5 === 4 ? event(seq) : telemetry(seq, { temp: seq % 40, n: seq })) + "\n"
      this.pending.push(seq)
    }
    if (out.length > 0) this.socket.write(out)
  }

  destroy(): void {
    this.socket.destroy()
  }
}

const startLoad = async (port: number, prefix: string, connections = 20, window = 64) => {
  const devices = Array.from({ length: connections }, (_, i) => new LoadDevice(`${prefix}-${i}`, port, window))
  await withTimeout(Promise.all(devices.map((d) => d.welcome)), 10_000, "devices not welcomed")
  for (const d of devices) d.start()
  return devices
}

/** Rows of the store as "device:epoch:seq" → number of rows. */
const storedKeys = (dataDir: string) => {
  const counts = new Map<string, number>()
  for (const r of rows(dataDir)) {
    const key = `${r.device}:${r.epoch}:${r.seq}`
    counts.set(key, (counts.get(key) ?? 0) + 1)
  }
  return counts
}

/** Acked keys that are not stored exactly once. */
const missingOrDuplicated = (devices: ReadonlyArray<LoadDevice>, stored: ReadonlyMap<string, number>) => {
  const bad: Array<string> = []
  for (const d of devices) {
    for (const seq of d.acked) {
      const n = stored.get(`${d.id}:0:${seq}`) ?? 0
      if (n !== 1) bad.push(`${d.id}:0:${seq} stored ${n} times`)
    }
  }
  return bad
}

const totalAcked = (devices: ReadonlyArray<LoadDevice>) => devices.reduce((n, d) => n + d.acked.length, 0)

// ---- tests ----

describe("gateway process", () => {
  it("SIGKILL under load loses nothing acked", async () => {
    const dataDir = tempDir("gw-proc-kill-")
    const gw = await spawnGateway(dataDir)
    const devices = await startLoad(gw.port, "kill")
    await sleep(1_500)
    gw.child.kill("SIGKILL")
    await withTimeout(gw.exited, 5_000, "gateway did not die")
    for (const d of devices) d.stop()
    await withTimeout(Promise.all(devices.map((d) => d.closed)), 5_000, "connections not closed")

    expect(devices.flatMap((d) => d.violations)).toEqual([])
    expect(totalAcked(devices)).toBeGreaterThan(1_000)
    const stored = storedKeys(dataDir)
    expect(missingOrDuplicated(devices, stored)).toEqual([])
    expect([...stored.values()].filter((n) => n !== 1)).toEqual([])

    // Restarted on the same store, each device learns the highest seq committed for it.
    const again = await spawnGateway(dataDir)
    for (const d of devices) {
      const committed = rows(dataDir, d.id).filter((r) => r.epoch === 0).map((r) => r.seq)
      const highestCommitted = committed.length === 0 ? null : Math.max(...committed)
      const { d: client, welcome } = await Device.open(again.port, d.id)
      client.end()
      expect({ device: d.id, lastSeq: welcome["lastSeq"] }).toEqual({ device: d.id, lastSeq: highestCommitted })
      if (d.acked.length > 0) expect(highestCommitted).toBeGreaterThanOrEqual(Math.max(...d.acked))
    }
  })

  it("SIGTERM drains under load", async () => {
    const dataDir = tempDir("gw-proc-term-")
    const gw = await spawnGateway(dataDir)
    const devices = await startLoad(gw.port, "term")
    await sleep(1_000)
    const ackedBeforeTerm = totalAcked(devices)
    gw.child.kill("SIGTERM")
    const code = await withTimeout(gw.exited, 15_000, "gateway did not exit after SIGTERM")
    await withTimeout(Promise.all(devices.map((d) => d.closed)), 5_000, "connections not closed")

    expect({ code, output: code === 0 ? "" : gw.output() }).toEqual({ code: 0, output: "" })
    expect(ackedBeforeTerm).toBeGreaterThan(1_000)
    for (const d of devices) {
      const goaways = d.control.filter((f) => f.type === "goaway")
      expect(goaways).toHaveLength(1)
      const goaway = goaways[0]!
      expect(goaway["reason"]).toBe("shutdown")
      expect(Number.isInteger(goaway["retryAfterMs"]) && (goaway["retryAfterMs"] as number) >= 0).toBe(true)
      // nothing new after goaway
      expect(d.sent).toBe(d.sentAtGoaway)
      // every frame sent got exactly one answer, in order, before the connection closed
      expect({ device: d.id, violations: d.violations, unanswered: d.pending }).toEqual({
        device: d.id,
        violations: [],
        unanswered: []
      })
      expect(d.acked.length + d.nacks.length).toBe(d.sent)
      // nacks during a drain only ask the device to come back
      expect(d.nacks.filter((n) => n["code"] !== "unavailable" || n["retry"] !== true)).toEqual([])
      // the only other control frame allowed is the final `error shutdown`
      expect(d.control.filter((f) => f.type !== "goaway" && !(f.type === "error" && f["code"] === "shutdown"))).toEqual([])
    }
    const stored = storedKeys(dataDir)
    expect(missingOrDuplicated(devices, stored)).toEqual([])
    expect(totalAcked(devices)).toBeGreaterThan(ackedBeforeTerm)
  })

  it("bad configuration fails with one clear line", async () => {
    for (const [name, value] of [["GATEWAY_PORT", "99999"], ["GATEWAY_BATCH_MAX", "abc"]] as const) {
      const dataDir = tempDir("gw-proc-config-")
      const { code, output } = await runToExit(dataDir, { [name]: value })
      expect({ name, code }).toEqual({ name, code: 78 })
      const lines = output.split("\n").filter((l) => l.includes("invalid configuration") && l.includes(name))
      expect({ name, lines: lines.length, output }).toEqual({ name, lines: 1, output })
      expect(output).not.toContain("listening")
    }
    const dataDir = tempDir("gw-proc-stages-")
    const stagesFile = Path.join(dataDir, "stages.json")
    Fs.writeFileSync(stagesFile, JSON.stringify({ stages: [{ stage: "threshold", options: { limits: [{ metric: 5 }] } }] }))
    const { code, output } = await runToExit(dataDir, { GATEWAY_STAGES_FILE: stagesFile })
    expect(code).toBe(78)
    const lines = output.split("\n").filter((l) => l.includes("invalid configuration") && l.includes("GATEWAY_STAGES_FILE"))
    expect({ lines: lines.length, output }).toEqual({ lines: 1, output })
    expect(lines[0]).toContain("stages[0] (threshold)")
    expect(output).not.toContain('"message":"listening"')
  })

  it("device CLI", async () => {
    const dir = tempDir("gw-proc-cli-")
    const file = Path.join(dir, "devices.json")
    const added = runCli(["add", "dev-a", "--kinds", "telemetry", "--file", file])
    expect({ code: added.code, stderr: added.stderr }).toEqual({ code: 0, stderr: expect.stringContaining("dev-a") })
    const token = added.stdout.trim()
    expect(added.stdout).toBe(token + "\n")
    expect(token).toMatch(/^[A-Za-z0-9_-]{32}$/)
    expect(Fs.statSync(file).mode & 0o777).toBe(0o600)
    const registry = JSON.parse(Fs.readFileSync(file, "utf8")) as { devices: Array<{ id: string; kinds: Array<string> }> }
    expect(registry.devices.map((d) => [d.id, d.kinds])).toEqual([["dev-a", ["telemetry"]]])
    expect(JSON.stringify(registry)).not.toContain(token)

    const bad = runCli(["add", "bad.id", "--file", file])
    expect(bad.code).toBe(2)
    expect(bad.stdout).toBe("")
    expect(bad.stderr.trim().split("\n")).toHaveLength(1)
    expect(runCli(["add", "dev-b", "--kinds", "telemetry,alarm", "--file", file]).code).toBe(2)
    expect((JSON.parse(Fs.readFileSync(file, "utf8")) as { devices: Array<unknown> }).devices).toHaveLength(1)

    const gw = await spawnGateway(dir, { GATEWAY_DEVICES: file })

    const { d, welcome } = await Device.open(gw.port, "dev-a", { token })
    expect(welcome.type).toBe("welcome")
    d.send(telemetry(1))
    expect(await d.next()).toEqual({ type: "ack", seq: 1 })
    d.send(event(2))
    expect(await d.next()).toMatchObject({ type: "nack", seq: 2, code: "forbidden", retry: false })
    d.end()

    for (const [device, credential] of [["dev-a", token.slice(1) + "x"], ["nobody", token]] as const) {
      const c = await Device.connect(gw.port)
      c.send({ type: "hello", v: 1, device, token: credential })
      expect(await c.next()).toMatchObject({ type: "error", code: "auth" })
      await withTimeout(c.closed, 5_000, `${device}: connection not closed after error auth`)
    }
  })
})
