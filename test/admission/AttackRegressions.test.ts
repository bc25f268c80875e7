/**
 * What an attack on the overload work found, each pinned by a test that failed before its fix:
 * devices that never read their answers must not hold the node's memory (and so shed everyone
 * else's telemetry); a device that obeys `busy` while the node refuses it is not banned for
 * flapping; an unfinished frame fed a byte at a time cannot pin buffers for ever; a resume
 * hint admits once.
 */
import { afterEach, describe, expect, it } from "@effect/vitest"
import * as Net from "node:net"
import { ResumeHints } from "../../src/admission/ResumeHint.ts"
import { type Answer, Device, telemetry } from "../support/client.ts"
import { startGateway, type TestGateway } from "../support/gateway.ts"
import { readMetric } from "../support/metrics.ts"

const running: Array<TestGateway> = []
const sockets: Array<Net.Socket> = []
const devices: Array<Device> = []
afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy()
  for (const d of devices.splice(0)) d.end()
  for (const g of running.splice(0)) await g.stop()
})

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))
const MiB = 1024 * 1024

const gateway = async (env: Record<string, string>) => {
  const g = await startGateway(env)
  running.push(g)
  return g
}

/** A device that says hello and then floods pings without ever reading. */
const nonReader = (port: number, id: string) =>
  new Promise<Net.Socket>((resolve) => {
    const socket = Net.connect({ port, host: "127.0.0.1" }, () => {
      socket.write(`{"type":"hello","v":1,"device":"${id}","token":"t"}\n`)
      const pings = '{"type":"ping"}\n'.repeat(4096)
      for (let i = 0; i < 60; i++) socket.write(pings) // 4 MB of pings: more pongs than the kernel buffers
      resolve(socket)
    })
    socket.pause() // never reads
    socket.on("error", () => undefined)
    sockets.push(socket)
  })

describe("attack regressions", () => {
  it("devices that never read their answers are closed, and do not make the node shed a well-behaved device's telemetry", async () => {
    const g = await gateway({ GATEWAY_MEMORY_BUDGET: String(16 * MiB), GATEWAY_KEEPALIVE_MS: "2000" })
    const hostile = await Promise.all(Array.from({ length: 20 }, (_, i) => nonReader(g.port, `deaf-${i}`)))
    await sleep(500)
    // each holds at most what stops its reading (64 KiB unsent), not 1 MiB: 20 of them are far
    // from the budget's high watermark
    expect(await readMetric(g.adminPort, "gateway_memory_used_bytes", { part: "buffers" })).toBeLessThan(20 * 300 * 1024)
    const { d } = await Device.open(g.port, "good")
    devices.push(d)
    for (let round = 0; round < 10; round++) {
      d.send(...Array.from({ length: 50 }, (_, i) => telemetry(round * 50 + i)))
      const answers: Array<Answer> = await d.take(50)
      for (const a of answers) expect(a.type).toBe("ack") // nothing shed
      await sleep(50)
    }
    // and each is closed at keepalive × 1.5 (its silence is its own: it does not read); a paused
    // client socket never notices, so look from the gateway's side
    // counted once their socket is gone: keepalive × 1.5 of silence, then up to 5 s in which the
    // close lingers for a device that does not read (Closing.ts): ~9 s, later on a loaded machine
    const deadline = Date.now() + 30_000
    const timedOut = () => readMetric(g.adminPort, "gateway_connections_total", { result: "timeout" })
    while (Date.now() < deadline && (await timedOut()) < hostile.length) await sleep(200)
    expect(await timedOut()).toBeGreaterThanOrEqual(hostile.length)
    await sleep(300)
    expect(await readMetric(g.adminPort, "gateway_memory_used_bytes", { part: "buffers" })).toBeLessThan(1 * MiB)
  }, 60_000)

  it("a device that obeys busy while the node refuses it is not banned for flapping", async () => {
    // accept rate 1 per 10 s, bucket of 1: after the first admission every hello is refused (rate)
    const g = await gateway({ GATEWAY_ACCEPT_RATE: "1", GATEWAY_ACCEPT_BURST: "1", GATEWAY_FLAP_LIMIT: "3", GATEWAY_BUSY_RETRY_MS: "10" })
    const first = await Device.open(g.port, "first")
    devices.push(first.d)
    for (let attempt = 0; attempt < 8; attempt++) {
      const d = await Device.connect(g.port)
      devices.push(d)
      d.send({ type: "hello", v: 1, device: "patient", token: "t" })
      const a = await d.next()
      expect(a).toMatchObject({ type: "error", code: "busy" })
      expect(a["message"]).not.toMatch(/banned/)
      await sleep(20)
    }
    expect(await readMetric(g.adminPort, "gateway_flap_bans_total")).toBe(0)
  })

  it("an unfinished frame fed a byte at a time is closed after keepalive × 1.5", async () => {
    const g = await gateway({ GATEWAY_KEEPALIVE_MS: "400" })
    const { d } = await Device.open(g.port, "dribbler")
    devices.push(d)
    const t0 = Date.now()
    const frame = JSON.stringify(telemetry(1))
    let i = 0
    const dribble = setInterval(() => d.socket.write(frame[i++ % (frame.length - 1)]!), 100) // never the newline
    try {
      const a = await d.next(5_000)
      expect(a).toMatchObject({ type: "error", code: "timeout" })
      expect(Date.now() - t0).toBeLessThan(2_000)
    } finally {
      clearInterval(dribble)
    }
  })

  it("a resume hint admits once", () => {
    const hints = new ResumeHints(Buffer.from("secret"))
    const hint = hints.issue("dev-1", 1_000)
    expect(hints.verify("dev-1", hint, 2_000)).toBe(true)
    expect(hints.verify("dev-1", hint, 2_001)).toBe(false)
    expect(new ResumeHints(Buffer.from("secret")).verify("dev-1", hint, 2_002)).toBe(true) // another process
  })
})
