/**
 * Store and forward end to end (a gateway process, GATEWAY_SINK=nats with the outbox on, as by
 * default; a private `nats-server -js`, never the shared one):
 * - NATS killed under load: devices keep getting acks (from the outbox, committed before the
 *   ack), `/readyz` stays 200 and says the outbox holds messages; restarted: the outbox drains
 *   (one log line), and the stream holds every acked message exactly once, each device's in
 *   seq order;
 * - the gateway stopped with a full outbox and started again: the new process forwards it;
 * - the outbox full (GATEWAY_OUTBOX_MAX_BYTES): `nack unavailable` "outbox full", `/readyz` 503.
 */
import { afterAll, afterEach, describe, expect, it } from "@effect/vitest"
import { type Answer, Device, telemetry } from "../support/client.ts"
import { cleanupChildren, spawnGateway, tempDir } from "../support/childGateway.ts"
import { metricValue, scrape } from "../support/metrics.ts"
import { requireNatsServer, startNatsServer, stopAllNatsServers, type NatsServer } from "../support/natsServer.ts"
import { readStream } from "../support/natsStream.ts"
import { logLines, messageOf } from "../support/process.ts"
import { readyz, sleep, until } from "../support/poll.ts"

requireNatsServer("The outbox tests")

const servers: Array<NatsServer> = []
const devices: Array<Device> = []
afterEach(async () => {
  for (const d of devices.splice(0)) d.end()
  await cleanupChildren()
  for (const s of servers.splice(0)) await s.stop()
})
afterAll(stopAllNatsServers)




const env = (s: NatsServer) => ({
  GATEWAY_SINK: "nats",
  NATS_URL: s.url,
  NATS_STREAM_CREATE: "true",
  NATS_ACK_TIMEOUT_MS: "1000",
  GATEWAY_STORE_RETRIES: "1",
  GATEWAY_BREAKER_OPEN_MS: "500"
})

/** Sends `count` telemetry frames from `from`, `perTick` every 20 ms; resolves with every answer. */
const pace = async (d: Device, from: number, count: number, perTick = 5): Promise<Array<Answer>> => {
  for (let seq = from; seq < from + count; seq += perTick) {
    const frames = []
    for (let k = seq; k < Math.min(seq + perTick, from + count); k++) frames.push(telemetry(k))
    d.send(...frames)
    await sleep(20)
  }
  return d.take(count, 30_000)
}

/** The stream's message ids of `device`, in stream order, as seqs. */
const storedSeqs = async (s: NatsServer, device: string) =>
  (await readStream(s.url, "DEVICES"))
    .map((m) => m.msgId ?? "")
    .filter((id) => id.startsWith(`${device}:`))
    .map((id) => Number(id.split(":")[2]))

describe("outbox (store and forward)", () => {
  it("NATS killed under load: acks go on from the outbox, ready says so; restarted: drained, each acked message once, in order", async () => {
    const s = await startNatsServer()
    servers.push(s)
    const g = await spawnGateway(tempDir("gw-outbox-"), env(s))
    const opened = await Promise.all(["a", "b", "c"].map((k) => Device.open(g.port, `meter-${k}`)))
    const ds = opened.map((o) => o.d)
    devices.push(...ds)
    expect((await Promise.all(ds.map((d) => pace(d, 1, 50)))).flat().every((a) => a.type === "ack")).toBe(true)

    await s.kill()
    const during = (await Promise.all(ds.map((d) => pace(d, 51, 300)))).flat()
    expect(during.filter((a) => a.type !== "ack")).toEqual([])
    const metrics = await scrape(g.adminPort)
    expect(metricValue(metrics, "gateway_outbox_messages", { sink: "nats" })).toBeGreaterThan(0)
    const ready = await readyz(g.adminPort)
    expect(ready.status).toBe(200)
    expect(ready.body).toMatch(/^ready\nsink nats: .*outbox \d+ messages/)
    expect(logLines(g.output()).some((l) => messageOf(l).startsWith("outbox takes nats's traffic"))).toBe(true)

    await s.restart()
    // new traffic meanwhile must not overtake what waits in the outbox
    const after = (await Promise.all(ds.map((d) => pace(d, 351, 100)))).flat()
    expect(after.filter((a) => a.type !== "ack")).toEqual([])
    await until("outbox drained", 30_000, async () => metricValue(await scrape(g.adminPort), "gateway_outbox_messages", { sink: "nats" }) === 0)
    expect(logLines(g.output()).some((l) => /^outbox drained: \d+ messages forwarded to nats/.test(messageOf(l)))).toBe(true)
    for (const k of ["a", "b", "c"]) {
      const seqs = await storedSeqs(s, `meter-${k}`)
      expect(seqs).toHaveLength(450)
      expect(new Set(seqs).size).toBe(450)
      const inversions = seqs.filter((x, i) => i > 0 && x < seqs[i - 1]!)
      expect({ device: k, inversions }).toEqual({ device: k, inversions: [] })
    }
    expect((await readyz(g.adminPort)).body).toBe("ready\n")
  }, 120_000)

  it("stopped with messages in the outbox: the next process forwards them", async () => {
    const s = await startNatsServer()
    servers.push(s)
    const dataDir = tempDir("gw-outbox-")
    const g = await spawnGateway(dataDir, env(s))
    const { d } = await Device.open(g.port, "meter-r")
    devices.push(d)
    expect((await pace(d, 1, 10)).every((a) => a.type === "ack")).toBe(true)
    await s.kill()
    expect((await pace(d, 11, 200)).every((a) => a.type === "ack")).toBe(true)
    d.end()
    g.child.kill("SIGTERM")
    await new Promise((resolve) => g.child.once("exit", resolve))

    await s.restart()
    const again = await spawnGateway(dataDir, env(s))
    // (read while the forwarder writes, a read can disagree with the stream's count: tried again)
    await until("forwarded by the new process", 30_000, async () => (await storedSeqs(s, "meter-r").catch(() => [])).length === 210)
    expect(logLines(again.output()).some((l) => /^outbox holds \d+ messages for nats from an earlier run/.test(messageOf(l)))).toBe(true)
    const seqs = await storedSeqs(s, "meter-r")
    expect(seqs).toEqual(Array.from({ length: 210 }, (_, i) => i + 1))
  }, 120_000)

  it("the outbox full: nack unavailable (outbox full), /readyz 503", async () => {
    const s = await startNatsServer()
    servers.push(s)
    const g = await spawnGateway(tempDir("gw-outbox-"), { ...env(s), GATEWAY_OUTBOX_MAX_BYTES: String(1024 * 1024) })
    const { d } = await Device.open(g.port, "meter-f")
    devices.push(d)
    await s.kill()
    const metrics = Object.fromEntries(Array.from({ length: 400 }, (_, k) => [`metric_${k}`, k + 0.5]))
    const big = (seq: number) => telemetry(seq, metrics)
    let refused: Answer | undefined
    for (let seq = 1; seq < 400 && refused === undefined; seq += 10) {
      d.send(...Array.from({ length: 10 }, (_, k) => big(seq + k)))
      refused = (await d.take(10, 20_000)).find((a) => a.type === "nack")
    }
    expect(refused).toEqual(expect.objectContaining({ type: "nack", code: "unavailable" }))
    expect(String(refused!["message"])).toMatch(/outbox full/)
    const ready = await readyz(g.adminPort)
    expect(ready.status).toBe(503)
    expect(ready.body).toMatch(/sink nats unavailable: .*outbox/)
  }, 60_000)
})
