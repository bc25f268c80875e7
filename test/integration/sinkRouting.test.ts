/**
 * Several sinks through the router, end to end (a gateway process, the embedded SQLite store and
 * a private `nats-server -js`, never the shared one):
 * - GATEWAY_SINK=sqlite,nats: a message is acked once both hold it; NATS killed → `nack
 *   unavailable` naming nats, `/readyz` 503 naming it, SQLite already holding the message; the
 *   resend after the restart is acked and stored once in each;
 * - a routes file (events → sqlite, telemetry → nats) with NATS hung (SIGSTOP): events keep being
 *   acked at once while telemetry waits; the hung sink holds up nothing routed elsewhere;
 * - the breaker: NATS down → opens after GATEWAY_BREAKER_FAILURES batches (gauge 2, one log
 *   line, refusals without touching the sink), closes after the restart (gauge 0);
 * - device states with NATS alone: `welcome.lastSeq` is the highest message NATS confirmed.
 */
import { afterAll, afterEach, describe, expect, it } from "@effect/vitest"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { type Answer, Device, event, telemetry } from "../support/client.ts"
import { cleanupChildren, runToExit, spawnGateway, tempDir } from "../support/childGateway.ts"
import { scrape, metricValue } from "../support/metrics.ts"
import { requireNatsServer, startNatsServer, stopAllNatsServers, type NatsServer } from "../support/natsServer.ts"
import { readStream } from "../support/natsStream.ts"
import { logLines, messageOf } from "../support/process.ts"
import { rows } from "../support/store.ts"
import { readyz, sleep, until } from "../support/poll.ts"

requireNatsServer("The sink routing tests")

const servers: Array<NatsServer> = []
const devices: Array<Device> = []
afterEach(async () => {
  for (const d of devices.splice(0)) d.end()
  await cleanupChildren()
  for (const s of servers.splice(0)) {
    s.resume()
    await s.stop()
  }
})
afterAll(stopAllNatsServers)


const server = async () => {
  const s = await startNatsServer()
  servers.push(s)
  return s
}

const natsEnv = (s: NatsServer) => ({ NATS_URL: s.url, NATS_STREAM_CREATE: "true", NATS_ACK_TIMEOUT_MS: "1000", GATEWAY_STORE_RETRIES: "1", GATEWAY_OUTBOX: "off" })

const open = async (port: number, id: string) => {
  const { d, welcome } = await Device.open(port, id)
  devices.push(d)
  return { d, welcome }
}



const msgIds = async (s: NatsServer) => (await readStream(s.url, "DEVICES")).map((m) => m.msgId ?? "").sort()

describe("sink routing", () => {
  it("GATEWAY_SINK=sqlite,nats: acked once both hold it; NATS down → nack unavailable naming it; the resend stored once in each", async () => {
    const s = await server()
    const dataDir = tempDir("gw-route-")
    const g = await spawnGateway(dataDir, { ...natsEnv(s), GATEWAY_SINK: "sqlite,nats", GATEWAY_BREAKER_FAILURES: "100" })
    const { d } = await open(g.port, "pump-1")
    d.send(telemetry(1), event(2))
    expect((await d.take(2)).map((a) => [a.type, a["seq"]]).sort()).toEqual([["ack", 1], ["ack", 2]])
    expect(rows(dataDir, "pump-1").map((r) => r.seq).sort()).toEqual([1, 2])
    expect(await msgIds(s)).toEqual(["pump-1:0:1", "pump-1:0:2"])

    await s.kill()
    d.send(telemetry(3))
    const [nack] = await d.take(1, 15_000)
    expect(nack).toEqual(expect.objectContaining({ type: "nack", seq: 3, code: "unavailable" }))
    expect(String(nack!["message"])).toMatch(/unavailable: nats: /)
    const down = await readyz(g.adminPort)
    expect(down.status).toBe(503)
    expect(down.body).toMatch(/^sink nats unavailable: /)
    expect(down.body).not.toMatch(/sink sqlite/)
    // SQLite took it: the resend will be its duplicate, and NATS's first copy
    expect(rows(dataDir, "pump-1").map((r) => r.seq).sort()).toEqual([1, 2, 3])

    await s.restart()
    await until("ready after NATS came back", 15_000, async () => (await readyz(g.adminPort)).status === 200)
    d.send(telemetry(3))
    const [ack] = await d.take(1, 10_000)
    expect(ack).toEqual(expect.objectContaining({ type: "ack", seq: 3 }))
    expect(ack!["dup"]).toBeUndefined() // NATS had not had it: not a duplicate of the route as a whole
    expect(rows(dataDir, "pump-1").map((r) => r.seq).sort()).toEqual([1, 2, 3])
    expect(await msgIds(s)).toEqual(["pump-1:0:1", "pump-1:0:2", "pump-1:0:3"])
  }, 60_000)

  it("routes file: NATS hung, events (routed to sqlite) are acked at once while telemetry (to nats) waits", async () => {
    const s = await server()
    const dataDir = tempDir("gw-route-")
    const routes = Path.join(dataDir, "..", "routes.json")
    Fs.writeFileSync(routes, JSON.stringify({ routes: [{ kinds: ["event"], sinks: ["sqlite"] }, { kinds: ["telemetry"], sinks: ["nats"] }] }))
    const g = await spawnGateway(dataDir, { ...natsEnv(s), GATEWAY_SINK: "sqlite", GATEWAY_ROUTES_FILE: routes, NATS_ACK_TIMEOUT_MS: "4000" })
    const { d: sensor } = await open(g.port, "sensor-1")
    const { d: door } = await open(g.port, "door-1")
    sensor.send(telemetry(1))
    door.send(event(1))
    expect((await sensor.take(1))[0]).toEqual(expect.objectContaining({ type: "ack", seq: 1 }))
    expect((await door.take(1))[0]).toEqual(expect.objectContaining({ type: "ack", seq: 1 }))
    expect(await msgIds(s)).toEqual(["sensor-1:0:1"])
    expect(rows(dataDir, "sensor-1")).toEqual([])
    expect(rows(dataDir, "door-1").map((r) => r.seq)).toEqual([1])

    await s.pause()
    // telemetry keeps arriving for the hung sink; events must not wait behind it
    let seq = 2
    const feeding = setInterval(() => sensor.send(telemetry(seq++)), 20)
    const took: Array<number> = []
    try {
      for (let k = 2; k <= 11; k++) {
        const sent = performance.now()
        door.send(event(k))
        const [a] = await door.take(1, 5_000)
        took.push(performance.now() - sent)
        expect(a).toEqual(expect.objectContaining({ type: "ack", seq: k }))
        await sleep(100)
      }
    } finally {
      clearInterval(feeding)
    }
    took.sort((a, b) => a - b)
    expect(took[Math.floor(took.length / 2)]).toBeLessThan(300) // median, on a busy 2-core machine
    expect(took[took.length - 1]).toBeLessThan(2_000)

    s.resume()
    // every telemetry frame is answered: acks once NATS answers, or nack unavailable to resend
    const answers: Array<Answer> = await sensor.take(seq - 2, 30_000)
    expect(answers.every((a) => a.type === "ack" || (a.type === "nack" && a["code"] === "unavailable"))).toBe(true)
    const acked = answers.filter((a) => a.type === "ack").map((a) => `sensor-1:0:${String(a["seq"])}`)
    const stored = new Set(await msgIds(s))
    for (const id of acked) expect(stored.has(id)).toBe(true)
  }, 60_000)

  it("breaker: opens after N failed batches (gauge 2, one line, sink untouched), closes once NATS is back (gauge 0)", async () => {
    const s = await server()
    const dataDir = tempDir("gw-route-")
    const g = await spawnGateway(dataDir, {
      ...natsEnv(s),
      GATEWAY_SINK: "nats",
      GATEWAY_BREAKER_FAILURES: "2",
      GATEWAY_BREAKER_OPEN_MS: "500"
    })
    const { d } = await open(g.port, "pump-2")
    d.send(telemetry(1))
    expect((await d.take(1))[0]).toEqual(expect.objectContaining({ type: "ack" }))
    expect(metricValue(await scrape(g.adminPort), "gateway_sink_breaker_state", { sink: "nats" })).toBe(0)

    await s.kill()
    for (let k = 2; k <= 5; k++) {
      d.send(telemetry(k))
      expect((await d.take(1, 15_000))[0]).toEqual(expect.objectContaining({ type: "nack", code: "unavailable" }))
    }
    expect(metricValue(await scrape(g.adminPort), "gateway_sink_breaker_state", { sink: "nats" })).toBe(2)
    const opened = logLines(g.output()).filter((l) => messageOf(l).startsWith("sink nats circuit open"))
    expect(opened.length).toBeGreaterThanOrEqual(1)
    expect((await readyz(g.adminPort)).body).toMatch(/sink nats unavailable: circuit open after \d+ failed batches/)

    await s.restart()
    // the next trial after the wait closes it; device traffic makes the trials
    await until("breaker closed", 20_000, async () => {
      d.send(telemetry(6))
      const [a] = await d.take(1, 10_000)
      return a!.type === "ack"
    })
    expect(metricValue(await scrape(g.adminPort), "gateway_sink_breaker_state", { sink: "nats" })).toBe(0)
    expect(logLines(g.output()).some((l) => messageOf(l) === "sink nats circuit closed")).toBe(true)
    expect((await readyz(g.adminPort)).status).toBe(200)
  }, 60_000)

  it("device states with NATS alone: welcome.lastSeq is the highest seq NATS confirmed, after a reconnect and after a restart", async () => {
    const s = await server()
    const dataDir = tempDir("gw-route-")
    const env = { ...natsEnv(s), GATEWAY_SINK: "nats" }
    const g = await spawnGateway(dataDir, env)
    const first = await open(g.port, "meter-1")
    expect(first.welcome["lastSeq"]).toBeNull()
    first.d.send(telemetry(1), telemetry(2), event(7))
    expect(await first.d.take(3)).toHaveLength(3)
    first.d.end()
    await sleep(200)
    const again = await open(g.port, "meter-1")
    expect(again.welcome["lastSeq"]).toBe(7)
    again.d.end()
    g.child.kill("SIGTERM")
    await new Promise((resolve) => g.child.once("exit", resolve))
    const g2 = await spawnGateway(dataDir, env)
    const later = await open(g2.port, "meter-1")
    expect(later.welcome["lastSeq"]).toBe(7)
  }, 60_000)

  it("SIGTERM with NATS hung: the exit waits for the drain budget, not for the PubAck timeout (attack finding: 14.7 s for a 3 s budget)", async () => {
    const s = await server()
    const g = await spawnGateway(tempDir("gw-route-"), {
      ...natsEnv(s),
      GATEWAY_SINK: "nats",
      NATS_ACK_TIMEOUT_MS: "20000",
      GATEWAY_DRAIN_TIMEOUT_MS: "2000"
    })
    const { d } = await open(g.port, "pump-9")
    d.send(telemetry(1))
    expect((await d.take(1))[0]).toEqual(expect.objectContaining({ type: "ack" }))
    await s.pause()
    d.send(...Array.from({ length: 50 }, (_, i) => telemetry(i + 2)))
    await sleep(300)
    const stopping = performance.now()
    g.child.kill("SIGTERM")
    await new Promise((resolve) => g.child.once("exit", resolve))
    expect(performance.now() - stopping).toBeLessThan(2_000 + 2_500) // the budget, its 500 ms floor, a loaded machine
  }, 60_000)

  it("a bad GATEWAY_SINK or routes file stops the start with one line naming it, exit 78", async () => {
    const dataDir = tempDir("gw-route-")
    const routes = Path.join(dataDir, "..", "routes.json")
    Fs.writeFileSync(routes, JSON.stringify({ routes: [{ kinds: ["event"], sinks: ["kafka"] }] }))
    for (const [env, line] of [
      [{ GATEWAY_SINK: "sqlite,kafka" }, /^invalid configuration: GATEWAY_SINK: expected sqlite, nats, postgres/],
      [{ GATEWAY_ROUTES_FILE: routes }, /^invalid configuration: GATEWAY_ROUTES_FILE: .*routes\.json: /]
    ] as const) {
      const run = await runToExit(dataDir, env)
      expect(run.code).toBe(78)
      const errors = logLines(run.output).filter((l) => l.level === "ERROR").map(messageOf)
      expect(errors).toEqual([expect.stringMatching(line)])
    }
  })
})
