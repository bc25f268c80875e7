/**
 * GATEWAY_SINK=nats end to end: a gateway process writing into a private `nats-server -js`
 * (never the shared one). Acks only after the PubAck, each acked message in the stream exactly
 * once with its subject, `Nats-Msg-Id` and `traceparent`; a resend after a gateway restart (its
 * dedup memory gone) is acked `dup` by the stream's message id, not stored twice; the server
 * killed: `nack unavailable` and `/readyz` 503, restarted: acks again; a message the server
 * refuses (over its max_payload) is nacked alone and dead-lettered in the local SQLite store; a
 * missing stream without NATS_STREAM_CREATE stops the start with one line, exit 78.
 */
import { afterAll, afterEach, describe, expect, it } from "@effect/vitest"
import { type Answer, Device, event, telemetry } from "../support/client.ts"
import { cleanupChildren, runToExit, spawnGateway, tempDir } from "../support/childGateway.ts"
import { requireNatsServer, startNatsServer, stopAllNatsServers, type NatsServer } from "../support/natsServer.ts"
import { readStream } from "../support/natsStream.ts"
import { logLines, messageOf } from "../support/process.ts"
import { deadLetters } from "../support/store.ts"

requireNatsServer("The GATEWAY_SINK=nats tests")

const servers: Array<NatsServer> = []
const devices: Array<Device> = []
afterEach(async () => {
  for (const d of devices.splice(0)) d.end()
  await cleanupChildren()
  for (const s of servers.splice(0)) await s.stop()
})
afterAll(stopAllNatsServers)

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

const server = async (extraConfig?: string) => {
  const s = await startNatsServer(extraConfig === undefined ? {} : { extraConfig })
  servers.push(s)
  return s
}

const natsEnv = (s: NatsServer) => ({ GATEWAY_SINK: "nats", NATS_URL: s.url, NATS_STREAM_CREATE: "true", NATS_ACK_TIMEOUT_MS: "2000", GATEWAY_OUTBOX: "off" })

const open = async (port: number, id: string) => {
  const { d } = await Device.open(port, id)
  devices.push(d)
  return d
}

const readyz = async (adminPort: number) => (await fetch(`http://127.0.0.1:${adminPort}/readyz`)).status

const TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

describe("GATEWAY_SINK=nats", () => {
  it("acks after the PubAck; the stream holds each acked message once; a resend after a restart is a duplicate", async () => {
    const s = await server()
    const dataDir = tempDir("gw-nats-")
    const g = await spawnGateway(dataDir, natsEnv(s))
    const d = await open(g.port, "pump-7")
    d.send(telemetry(1), telemetry(2, { t: 2 }, { trace: TRACE }), event(3))
    const acks = await d.take(3)
    expect(acks.map((a) => [a.type, a["seq"]])).toEqual([["ack", 1], ["ack", 2], ["ack", 3]])
    // events go first (their lane is taken first): compare in key order
    const stored = (await readStream(s.url, "DEVICES")).sort((a, b) => (a.msgId ?? "").localeCompare(b.msgId ?? ""))
    expect(stored.map((m) => [m.subject, m.msgId])).toEqual([
      ["devices.telemetry.pump-7", "pump-7:0:1"],
      ["devices.telemetry.pump-7", "pump-7:0:2"],
      ["devices.event.pump-7", "pump-7:0:3"]
    ])
    // tracing is off here: the device's own traceparent travels as the header (none when it sent none)
    expect(stored.map((m) => m.traceparent)).toEqual([undefined, TRACE, undefined])
    d.end()

    // a new gateway process: its dedup window is empty, the stream's message id is not
    g.child.kill("SIGTERM")
    await new Promise((resolve) => g.child.once("exit", resolve))
    const again = await spawnGateway(dataDir, natsEnv(s))
    const r = await open(again.port, "pump-7")
    r.send(telemetry(2, { t: 2 }), telemetry(4))
    const answers = await r.take(2)
    expect(answers).toEqual([
      expect.objectContaining({ type: "ack", seq: 2, dup: true }),
      expect.objectContaining({ type: "ack", seq: 4 })
    ])
    expect((await readStream(s.url, "DEVICES")).map((m) => m.msgId).sort()).toEqual(["pump-7:0:1", "pump-7:0:2", "pump-7:0:3", "pump-7:0:4"])
  }, 60_000)

  it("the server down: nack unavailable and /readyz 503; back: ready and acking, nothing acked missing", async () => {
    const s = await server()
    const g = await spawnGateway(tempDir("gw-nats-"), natsEnv(s))
    const d = await open(g.port, "valve-1")
    d.send(telemetry(1))
    expect(await d.next()).toMatchObject({ type: "ack", seq: 1 })
    await s.kill()
    d.send(event(2))
    const down = await d.next(10_000)
    expect(down).toMatchObject({ type: "nack", seq: 2, code: "unavailable", retry: true })
    expect(await readyz(g.adminPort)).toBe(503)
    await s.restart()
    const until = Date.now() + 15_000
    while (Date.now() < until && (await readyz(g.adminPort)) !== 200) await sleep(200)
    expect(await readyz(g.adminPort)).toBe(200)
    d.send(event(2))
    expect(await d.next(10_000)).toMatchObject({ type: "ack", seq: 2 })
    expect((await readStream(s.url, "DEVICES")).map((m) => m.msgId)).toEqual(["valve-1:0:1", "valve-1:0:2"])
  }, 60_000)

  it("a message over the server's max_payload is nacked alone and dead-lettered locally", async () => {
    const s = await server("max_payload: 4096")
    const dataDir = tempDir("gw-nats-")
    const g = await spawnGateway(dataDir, natsEnv(s))
    const d = await open(g.port, "cam-3")
    d.send(telemetry(1), telemetry(2, { t: 1 }, { body: { metrics: { t: 1 }, tags: { blob: "x".repeat(6_000) } } }), telemetry(3))
    const answers: Array<Answer> = await d.take(3)
    expect(answers[0]).toMatchObject({ type: "ack", seq: 1 })
    expect(answers[1]).toMatchObject({ type: "nack", seq: 2, code: "invalid" })
    expect(answers[2]).toMatchObject({ type: "ack", seq: 3 })
    expect((await readStream(s.url, "DEVICES")).map((m) => m.msgId)).toEqual(["cam-3:0:1", "cam-3:0:3"])
    await sleep(100)
    const letters = deadLetters(dataDir)
    expect(letters).toHaveLength(1)
    expect(letters[0]).toMatchObject({ device: "cam-3", seq: 2 })
    expect(String(letters[0]!.reason)).toMatch(/^sink nats: /)
  }, 60_000)

  it("a missing stream without NATS_STREAM_CREATE stops the start: one line, exit 78", async () => {
    const s = await server()
    const { code, output } = await runToExit(tempDir("gw-nats-"), { GATEWAY_SINK: "nats", NATS_URL: s.url, NATS_STREAM: "NOPE" })
    expect(code).toBe(78)
    const errors = logLines(output).filter((l) => l.level === "ERROR").map(messageOf)
    expect(errors).toEqual([expect.stringMatching(/^invalid configuration: nats sink: NATS_STREAM: .*NOPE/)])
  }, 30_000)
})
