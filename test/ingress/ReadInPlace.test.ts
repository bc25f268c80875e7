/**
 * Attacks on the in-place read (Connection.readInPlace, c52fa64): an open session's small read
 * handled in its socket's data event. Over real sockets: answer order and count per connection,
 * the window and the output buffer, held events and the pump, bye / half-close / fatal errors
 * right after an in-place read, TLS, drain, devices that do not read. Tests named "regression
 * (failed at 573a548)" showed a defect of that commit and pass on its fix.
 */
import { afterEach, describe, expect, it } from "@effect/vitest"
import * as Net from "node:net"
import * as Path from "node:path"
import { DatabaseSync } from "node:sqlite"
import * as Fs from "node:fs"
import * as Tls from "node:tls"
import { hasOpenssl, makePki } from "../support/certs.ts"
import { metricValue, scrape } from "../support/metrics.ts"
import { rows } from "../support/store.ts"
import { lingeringSockets } from "../../src/ingress/Closing.ts"
import { Device } from "../support/client.ts"
import { startGateway, tempDir, type TestGateway } from "../support/gateway.ts"
import { sleep, until } from "../support/poll.ts"

const running: Array<TestGateway> = []
const devices: Array<Device> = []
afterEach(async () => {
  for (const d of devices.splice(0)) d.end()
  for (const g of running.splice(0)) await g.stop()
})

/**
 * A device sends `bad` (a fatal frame), reads the error, keeps writing 1 MB a moment (its
 * send queue) and closes. Resolves with how long the gateway held the socket after the close.
 */
const fatalThenClose = async (g: TestGateway, device: string, bad: string) => {
  const { d } = await Device.open(g.port, device)
  devices.push(d)
  // let the fiber park for input (idle), so the next small read is handled in place
  d.send({ type: "ping" })
  expect(await d.next()).toEqual({ type: "pong" })
  const base = lingeringSockets()
  let reset = false
  d.socket.on("error", (e: NodeJS.ErrnoException) => (reset ||= e.code === "ECONNRESET"))
  d.send(bad)
  const err = await d.next()
  expect(lingeringSockets()).toBe(base + 1)
  d.socket.end(Buffer.alloc(1024 * 1024, "x"))
  const t0 = Date.now()
  // Closing.ts: the gateway reads and discards until the device's FIN, then lets go at once
  await until("lingering socket released", 15_000, async () => lingeringSockets() <= base)
  return { err, heldMs: Date.now() - t0, reset }
}

describe("in-place read: fatal errors", () => {
  it("control: a protocol error in a big read (through the fiber) releases the socket once the device closes", async () => {
    const g = await startGateway()
    running.push(g)
    const r = await fatalThenClose(g, "rip-fatal-big", "x".repeat(8_000) + "\n")
    expect(r.err).toMatchObject({ type: "error", code: "protocol" })
    expect({ releasedSoon: r.heldMs < 2_500, reset: r.reset }).toEqual({ releasedSoon: true, reset: false })
  })

  it("regression (failed at 573a548): a protocol error in an in-place read does not leave the lingering close paused (it was held its full 5 s though the device closed)", async () => {
    const g = await startGateway()
    running.push(g)
    const r = await fatalThenClose(g, "rip-fatal-small", "this is not json\n")
    expect(r.err).toMatchObject({ type: "error", code: "protocol" })
    expect({ releasedSoon: r.heldMs < 2_500, reset: r.reset }).toEqual({ releasedSoon: true, reset: false })
  })
})

// ---- a scripted device: sends a stream of frames cut at chosen places, checks its answers ----

type Step = { readonly kind: "telemetry" | "event" | "invalid" | "ping" }

interface Script {
  /** The frames after hello, in send order. */
  readonly steps: ReadonlyArray<Step>
  /** Where the byte stream is cut into writes: "bytes" (one byte a write), "random" (1..600), "frames" (one frame a write). */
  readonly cut: "bytes" | "random" | "frames"
  /** The first `withHello` frames go in the same write as the hello. */
  readonly withHello?: number
  /** Ends with a bye (else: half-close when `halfClose`, else stays open). */
  readonly bye?: boolean
  readonly halfClose?: boolean
}

const frameOf = (step: Step, seq: number): string => {
  const ts = 1_700_000_000_000 + seq
  switch (step.kind) {
    case "telemetry":
      return JSON.stringify({ type: "telemetry", seq, ts, body: { metrics: { t: seq } } }) + "\n"
    case "event":
      return JSON.stringify({ type: "event", seq, ts, body: { name: "door", severity: "info" } }) + "\n"
    case "invalid":
      return JSON.stringify({ type: "telemetry", seq, ts, body: { metrics: { t: "not a number" } } }) + "\n"
    case "ping":
      return '{"type":"ping"}\n'
  }
}

/** Writes `pieces` one per turn of the event loop (so that the gateway sees many small reads). */
const writePaced = async (socket: Net.Socket, pieces: ReadonlyArray<string>) => {
  for (const p of pieces) {
    if (socket.destroyed) return
    if (!socket.write(p)) await new Promise<void>((resolve) => socket.once("drain", resolve))
    await new Promise<void>((resolve) => setImmediate(resolve))
  }
}

const cutStream = (text: string, cut: Script["cut"], frames: ReadonlyArray<string>, random: () => number) => {
  if (cut === "frames") return [...frames]
  const pieces: Array<string> = []
  let i = 0
  while (i < text.length) {
    const n = cut === "bytes" ? 1 : 1 + Math.floor(random() * 600)
    pieces.push(text.slice(i, i + n))
    i += n
  }
  return pieces
}

/** A tiny deterministic PRNG (mulberry32). */
const prng = (seed: number) => () => {
  seed |= 0
  seed = (seed + 0x6d2b79f5) | 0
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed)
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}

interface Outcome {
  readonly device: string
  /** Every line the gateway wrote after the welcome, parsed. */
  readonly answers: ReadonlyArray<Record<string, unknown>>
  /** Data seqs in send order and the kinds sent. */
  readonly sent: ReadonlyArray<number>
  readonly pings: number
  readonly closedByGateway: boolean
}

/**
 * Runs one scripted device to the end: every data frame answered (or the connection closed),
 * every ping answered. `connect` makes the socket (TCP or TLS).
 */
const runScript = async (
  connect: () => Promise<Net.Socket>,
  device: string,
  script: Script,
  seed: number,
  timeoutMs = 60_000,
  gate?: { readonly welcomed: () => void; readonly go: Promise<void> }
): Promise<Outcome> => {
  const socket = await connect()
  socket.setNoDelay(true)
  socket.setEncoding("utf8")
  const lines: Array<Record<string, unknown>> = []
  let buf = ""
  let closed = false
  socket.on("data", (d: string) => {
    buf += d
    let nl = buf.indexOf("\n")
    while (nl !== -1) {
      lines.push(JSON.parse(buf.slice(0, nl)) as Record<string, unknown>)
      buf = buf.slice(nl + 1)
      nl = buf.indexOf("\n")
    }
  })
  socket.on("error", () => undefined)
  socket.on("close", () => (closed = true))
  const frames: Array<string> = []
  const sent: Array<number> = []
  let pings = 0
  script.steps.forEach((step, i) => {
    frames.push(frameOf(step, i))
    if (step.kind === "ping") pings++
    else sent.push(i)
  })
  const hello = JSON.stringify({ type: "hello", v: 1, device, token: "t" }) + "\n"
  const first = script.withHello ?? 0
  socket.write(hello + frames.slice(0, first).join(""))
  const rest = frames.slice(first)
  const tail = script.bye === true ? ['{"type":"bye"}\n'] : []
  // wait for the welcome before the rest, so the fiber is parked and small reads go in place
  const deadline = Date.now() + timeoutMs
  while (lines.length === 0 && !closed && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5))
  if (lines[0]?.["type"] !== "welcome") throw new Error(`${device}: no welcome: ${JSON.stringify(lines[0])}`)
  if (gate !== undefined) {
    gate.welcomed()
    await gate.go
  }
  await writePaced(socket, [...cutStream(rest.join(""), script.cut, rest, prng(seed)), ...tail])
  if (script.halfClose === true) socket.end()
  const done = () => {
    let data = 0
    let pongs = 0
    for (const l of lines) {
      if (l["type"] === "ack" || l["type"] === "nack") data++
      else if (l["type"] === "pong") pongs++
    }
    return data >= sent.length && pongs >= pings
  }
  while (!done() && !closed && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10))
  if (script.bye === true || script.halfClose === true) {
    while (!closed && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10))
  }
  const closedByGateway = closed
  socket.destroy()
  return { device, answers: lines.slice(1), sent, pings, closedByGateway }
}

/** The protocol's promises for one connection: one answer per data frame, in send order; a pong per ping. */
const checkOutcome = (o: Outcome) => {
  const dataAnswers = o.answers.filter((a) => a["type"] === "ack" || a["type"] === "nack")
  const errors = o.answers.filter((a) => a["type"] === "error")
  expect({ device: o.device, errors }).toEqual({ device: o.device, errors: [] })
  expect({ device: o.device, seqs: dataAnswers.map((a) => a["seq"]) }).toEqual({ device: o.device, seqs: o.sent })
  expect({ device: o.device, pongs: o.answers.filter((a) => a["type"] === "pong").length }).toEqual({ device: o.device, pongs: o.pings })
  return dataAnswers
}

const tcp = (port: number) => () =>
  new Promise<Net.Socket>((resolve, reject) => {
    const s = Net.connect({ port, host: "127.0.0.1" }, () => resolve(s))
    s.once("error", reject)
  })

/** Takes SQLite's write lock on and off (held `onMs`, free `offMs`) until the returned stop is called. */
const flapStoreLock = (g: TestGateway, onMs: number, offMs: number) => {
  const db = new DatabaseSync(Path.join(g.dataDir, "gateway.db"))
  let stopped = false
  let held = false
  const cycle = () => {
    if (stopped) return
    if (held) {
      db.exec("ROLLBACK")
      held = false
      setTimeout(cycle, offMs)
    } else {
      try {
        db.exec("BEGIN IMMEDIATE")
        held = true
      } catch {
        // the gateway holds it at this moment: try again
      }
      setTimeout(cycle, held ? onMs : 1)
    }
  }
  cycle()
  return () => {
    stopped = true
    if (held) db.exec("ROLLBACK")
    db.close()
  }
}

const mix = (n: number, random: () => number, weights = { telemetry: 6, event: 2, invalid: 1, ping: 1 }): Array<Step> => {
  const total = weights.telemetry + weights.event + weights.invalid + weights.ping
  return Array.from({ length: n }, () => {
    let r = random() * total
    for (const kind of ["telemetry", "event", "invalid", "ping"] as const) {
      r -= weights[kind]
      if (r < 0) return { kind }
    }
    return { kind: "telemetry" as const }
  })
}

/** Lets `n` devices start sending together, once each is welcomed. */
const barrier = (n: number) => {
  let left = n
  let open: () => void = () => undefined
  const go = new Promise<void>((resolve) => (open = resolve))
  return { welcomed: () => --left === 0 && open(), go }
}

const QUIET = { GATEWAY_DEVICE_MSGS_PER_SEC: "0", GATEWAY_DEVICE_BYTES_PER_SEC: "0" }

describe("in-place read: one answer per data frame, in send order", () => {
  it("a window of 2 that fills at in-place reads while the store is locked on and off: every frame answered once, in order", async () => {
    const g = await startGateway({ ...QUIET, GATEWAY_MAX_INFLIGHT: "2", GATEWAY_CRITICAL_QUEUE: "1", GATEWAY_BATCH_MAX: "2" })
    running.push(g)
    const stop = flapStoreLock(g, 150, 40)
    try {
      const r = prng(1)
      const o = await runScript(tcp(g.port), "rip-window", { steps: mix(300, r), cut: "frames" }, 1)
      const answers = checkOutcome(o)
      expect(answers.some((a) => a["type"] === "ack")).toBe(true)
    } finally {
      stop()
    }
  }, 90_000)

  it("frames cut at every byte, events held on a critical lane of 1: every frame answered once, in order", async () => {
    const g = await startGateway({ ...QUIET, GATEWAY_MAX_INFLIGHT: "3", GATEWAY_CRITICAL_QUEUE: "1", GATEWAY_BATCH_MAX: "1" })
    running.push(g)
    const stop = flapStoreLock(g, 100, 30)
    try {
      const o = await runScript(tcp(g.port), "rip-bytes", { steps: mix(40, prng(2), { telemetry: 2, event: 4, invalid: 1, ping: 1 }), cut: "bytes" }, 2)
      checkOutcome(o)
    } finally {
      stop()
    }
  }, 90_000)

  it("hello and data in one write, then bye right after an in-place read: all answered, then closed without error", async () => {
    const g = await startGateway(QUIET)
    running.push(g)
    const o = await runScript(tcp(g.port), "rip-bye", { steps: mix(50, prng(3)), cut: "random", withHello: 10, bye: true }, 3)
    checkOutcome(o)
    expect(o.closedByGateway).toBe(true)
  }, 60_000)

  it("half-close right after in-place reads, with the window full: all answered, then closed", async () => {
    const g = await startGateway({ ...QUIET, GATEWAY_MAX_INFLIGHT: "1" })
    running.push(g)
    const stop = flapStoreLock(g, 200, 20)
    try {
      const o = await runScript(tcp(g.port), "rip-end", { steps: mix(30, prng(4)), cut: "frames", halfClose: true }, 4)
      checkOutcome(o)
      expect(o.closedByGateway).toBe(true)
    } finally {
      stop()
    }
  }, 60_000)

  it("40 devices at once, small lanes, a small memory budget, the store locked on and off: each connection's answers complete and in order", async () => {
    const g = await startGateway({
      ...QUIET,
      GATEWAY_MAX_INFLIGHT: "4",
      GATEWAY_CRITICAL_QUEUE: "2",
      GATEWAY_BULK_QUEUE: "8",
      GATEWAY_BATCH_MAX: "3",
      GATEWAY_MEMORY_BUDGET: String(1 << 20),
      GATEWAY_MEMORY_HIGH_PERCENT: "10"
    })
    running.push(g)
    const stop = flapStoreLock(g, 120, 40)
    try {
      const gate = barrier(40)
      const outcomes = await Promise.all(Array.from({ length: 40 }, (_, i) =>
        runScript(tcp(g.port), `rip-fleet-${i}`, { steps: mix(60, prng(100 + i)), cut: i % 3 === 0 ? "random" : "frames" }, 100 + i, 120_000, gate)
      ))
      let shed = 0
      for (const o of outcomes) shed += checkOutcome(o).filter((a) => a["code"] === "shed").length
      console.log("shed", shed)
    } finally {
      stop()
    }
  }, 150_000)
})

describe("in-place read: events held for a full critical lane", () => {
  it("regression (failed at 573a548): more events in one small read than the critical lane holds, the store idle: all committed (the pump's offers ring the persistence loop's doorbell)", async () => {
    const g = await startGateway({ ...QUIET, GATEWAY_CRITICAL_QUEUE: "4", GATEWAY_DRAIN_TIMEOUT_MS: "1000" })
    running.push(g)
    const { d } = await Device.open(g.port, "rip-held")
    devices.push(d)
    d.send({ type: "ping" })
    expect(await d.next()).toEqual({ type: "pong" })
    // 10 events in one write (< 4 KiB: handled in place): 4 enter the lane, 6 are held and pumped
    d.send(...Array.from({ length: 10 }, (_, i) => ({ type: "event", seq: i, ts: 1_700_000_000_000, body: { name: "door" } })))
    const answers: Array<unknown> = []
    for (let i = 0; i < 10; i++) {
      const a = await d.next(5_000).catch(() => undefined)
      if (a === undefined) break
      answers.push(a)
    }
    expect(answers).toEqual(Array.from({ length: 10 }, (_, i) => ({ type: "ack", seq: i })))
  }, 30_000)
})

describe("in-place read: the window", () => {
  it("a device pipelining one frame per write is held to its window of 2 while the store is locked", async () => {
    const g = await startGateway({ ...QUIET, GATEWAY_MAX_INFLIGHT: "2" })
    running.push(g)
    const { d } = await Device.open(g.port, "rip-pipeline")
    devices.push(d)
    d.send({ type: "ping" })
    expect(await d.next()).toEqual({ type: "pong" })
    const db = new DatabaseSync(Path.join(g.dataDir, "gateway.db"))
    db.exec("BEGIN IMMEDIATE")
    try {
      const frames = Array.from({ length: 300 }, (_, seq) => JSON.stringify({ type: "telemetry", seq, ts: 1_700_000_000_000, body: { metrics: { v: seq } } }) + "\n")
      await writePaced(d.socket, frames)
      await sleep(600) // lane depth gauges are sampled every 200 ms
      const text = await scrape(g.adminPort)
      const queued = metricValue(text, "gateway_queue_depth", { lane: "bulk" })
      // 2 in flight (a batch at the locked store, or in the lane), plus at most the frames of the
      // read that filled the window
      expect(queued).toBeLessThanOrEqual(10)
    } finally {
      db.exec("ROLLBACK")
      db.close()
    }
    const answers = await d.take(300, 30_000)
    expect(answers.map((a) => a["seq"])).toEqual(Array.from({ length: 300 }, (_, i) => i))
  }, 60_000)
})

describe("in-place read: TLS", () => {
  it.skipIf(!hasOpenssl())("over TLS: window of 2, events held, frames cut at random, store locked on and off, then bye: complete and in order", async () => {
    const dir = tempDir("gw-rip-tls-")
    try {
      const pki = makePki(dir)
      const g = await startGateway({
        ...QUIET,
        GATEWAY_TLS_CERT: pki.server.cert,
        GATEWAY_TLS_KEY: pki.server.key,
        GATEWAY_MAX_INFLIGHT: "2",
        GATEWAY_CRITICAL_QUEUE: "1"
      })
      running.push(g)
      const ca = Fs.readFileSync(pki.ca.cert)
      const tls = () =>
        new Promise<Net.Socket>((resolve, reject) => {
          const s = Tls.connect({ port: g.port, host: "127.0.0.1", ca }, () => resolve(s))
          s.once("error", reject)
        })
      const stop = flapStoreLock(g, 120, 40)
      try {
        const outcomes = await Promise.all([
          runScript(tls, "rip-tls-0", { steps: mix(120, prng(7)), cut: "random", bye: true }, 7),
          runScript(tls, "rip-tls-1", { steps: mix(40, prng(8), { telemetry: 1, event: 3, invalid: 1, ping: 1 }), cut: "bytes", withHello: 3 }, 8)
        ])
        for (const o of outcomes) checkOutcome(o)
        expect(outcomes[0]!.closedByGateway).toBe(true)
      } finally {
        stop()
      }
    } finally {
      Fs.rmSync(dir, { recursive: true, force: true })
    }
  }, 120_000)
})

describe("in-place read: drain and devices that do not read", () => {
  it("stop while 12 devices stream one frame per write (and keep writing after goaway): answers in order, never twice, every ack stored", async () => {
    const g = await startGateway({ ...QUIET, GATEWAY_DRAIN_TIMEOUT_MS: "3000", GATEWAY_MAX_INFLIGHT: "8" })
    running.push(g)
    const streams = await Promise.all(Array.from({ length: 12 }, async (_, i) => {
      const { d } = await Device.open(g.port, `rip-drain-${i}`)
      devices.push(d)
      let sent = 0
      let closed = false
      void d.closed.then(() => (closed = true))
      const writing = (async () => {
        for (; sent < 5_000 && !closed && !d.socket.destroyed; sent++) {
          const seq = sent
          d.send(seq % 5 === 4 ? { type: "event", seq, ts: 1_700_000_000_000, body: { name: "e" } } : { type: "telemetry", seq, ts: 1_700_000_000_000, body: { metrics: { v: seq } } })
          if (seq % 7 === 0) d.send({ type: "ping" })
          await new Promise<void>((resolve) => setImmediate(resolve))
        }
      })()
      return { d, writing, sentCount: () => sent, device: `rip-drain-${i}` }
    }))
    await sleep(300)
    await g.stop()
    for (const s of streams) {
      await s.writing
      await s.d.closed
      const answers = s.d.received().map((l) => JSON.parse(l) as Record<string, unknown>)
      const data = answers.filter((a) => a["type"] === "ack" || a["type"] === "nack")
      // one answer per frame, in send order: the answered seqs are 0, 1, 2, ... (a prefix of what was sent)
      expect({ device: s.device, ok: data.every((a, j) => a["seq"] === j) }).toEqual({ device: s.device, ok: true })
      expect(data.length).toBeLessThanOrEqual(s.sentCount())
      expect(answers.filter((a) => a["type"] === "goaway")).toHaveLength(1)
      const acked = data.filter((a) => a["type"] === "ack").map((a) => a["seq"])
      const stored = new Set(rows(g.dataDir, s.device).map((r) => r.seq))
      expect(acked.filter((seq) => !stored.has(seq as number))).toEqual([])
      const nacked = data.filter((a) => a["type"] === "nack")
      for (const n of nacked) expect(n).toMatchObject({ code: "unavailable", retry: true })
    }
  }, 60_000)

  it("a device that sends pings in small writes and never reads its pongs is closed; another device is served meanwhile", async () => {
    const g = await startGateway({ ...QUIET, GATEWAY_KEEPALIVE_MS: "1000" })
    running.push(g)
    const { d: good } = await Device.open(g.port, "rip-good")
    devices.push(good)
    const { d: bad } = await Device.open(g.port, "rip-deaf")
    devices.push(bad)
    bad.socket.pause() // never reads again
    const ping = '{"type":"ping"}\n'.repeat(200) // 3.2 KB a write: handled in place
    let stopped = false
    const flooding = (async () => {
      while (!stopped && !bad.socket.destroyed) {
        if (!bad.socket.write(ping)) {
          await Promise.race([new Promise((r) => bad.socket.once("drain", r)), sleep(200)])
        }
        await new Promise<void>((resolve) => setImmediate(resolve))
      }
    })()
    try {
      // the good device keeps its session: a ping answered every 300 ms while the deaf one floods
      const active = async () => metricValue(await scrape(g.adminPort), "gateway_connections_active")
      let seq = 0
      await until("the deaf device closed", 30_000, async () => {
        good.send({ type: "telemetry", seq, ts: 1_700_000_000_000, body: { metrics: { v: seq } } })
        expect(await good.next(10_000)).toEqual({ type: "ack", seq })
        seq++
        return (await active()) === 1
      })
      // its unsent pongs were not left to grow: the gateway's own memory is fine
      expect(process.memoryUsage().rss).toBeLessThan(1024 * 1024 * 1024)
    } finally {
      stopped = true
      bad.end()
      await flooding
    }
  }, 60_000)
})

