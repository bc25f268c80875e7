/**
 * PROTOCOL.md rule by rule, over real sockets against an in-process gateway with a real SQLite
 * store. Each test names the rule it checks.
 */
import { afterEach, describe, expect, it } from "@effect/vitest"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { newEntry } from "../../src/auth/DeviceRegistry.ts"
import { type Answer, Device, event, telemetry } from "../support/client.ts"
import { startGateway, tempDir, type TestGateway } from "../support/gateway.ts"
import { rows } from "../support/store.ts"

const running: Array<TestGateway> = []
const devices: Array<Device> = []
const gateway = async (env: Record<string, string> = {}) => {
  const g = await startGateway(env)
  running.push(g)
  return g
}
const open = async (g: TestGateway, device: string, extra: Record<string, unknown> = {}) => {
  const r = await Device.open(g.port, device, extra)
  devices.push(r.d)
  return r
}
const connect = async (g: TestGateway) => {
  const d = await Device.connect(g.port)
  devices.push(d)
  return d
}

afterEach(async () => {
  for (const d of devices.splice(0)) d.end()
  for (const g of running.splice(0)) await g.stop()
})

describe("framing", () => {
  it("splits frames on \\n whatever the TCP chunking, tolerates \\r and ignores blank lines", async () => {
    const g = await gateway()
    const { d } = await open(g, "dev-framing")
    const bytes = Buffer.from(
      JSON.stringify(telemetry(1)) + "\r\n\n   \n" + JSON.stringify(telemetry(2)) + "\n" + JSON.stringify(event(3)) + "\n"
    )
    for (const b of bytes) d.socket.write(Buffer.from([b])) // one byte per write
    const answers = await d.take(3)
    expect(answers).toEqual([{ type: "ack", seq: 1 }, { type: "ack", seq: 2 }, { type: "ack", seq: 3 }])
  })

  it("refuses a frame over maxFrameBytes with frame_too_large and closes, buffering at most that much", async () => {
    const g = await gateway({ GATEWAY_MAX_FRAME_BYTES: "1024" })
    const { d, welcome } = await open(g, "dev-big")
    expect(welcome["maxFrameBytes"]).toBe(1024)
    // 8 MB without a newline: the gateway must refuse long before the end
    const chunk = Buffer.alloc(64 * 1024, 0x61)
    for (let i = 0; i < 128 && !d.socket.destroyed; i++) d.socket.write(chunk)
    const answer = await d.next()
    expect(answer).toMatchObject({ type: "error", code: "frame_too_large" })
    await d.closed
  })

  it("answers invalid UTF-8, non-JSON and non-object frames with error protocol and closes", async () => {
    const g = await gateway()
    for (const bad of [Buffer.from([0x7b, 0xff, 0xfe, 0x7d, 0x0a]), Buffer.from("not json\n"), Buffer.from("[1,2]\n")]) {
      const { d } = await open(g, "dev-bad")
      d.socket.write(bad)
      expect(await d.next()).toMatchObject({ type: "error", code: "protocol" })
      await d.closed
    }
  })

  it("answers the frames read before a fatal one first, then the error (same socket read)", async () => {
    const g = await gateway()
    const { d } = await open(g, "dev-fatal-mid")
    d.socket.write(
      JSON.stringify(telemetry(1, { t: 1 }, { ts: "nope" })) + "\n" + JSON.stringify(telemetry(2)) + "\n{oops\n" +
        JSON.stringify(telemetry(3)) + "\n"
    )
    // seq 1's nack is immediate, so it leaves before the error; seq 2 (valid) is committed but
    // its ack would come after the close; seq 3 is never read
    expect(await d.next()).toMatchObject({ type: "nack", seq: 1, code: "invalid" })
    expect(await d.next()).toMatchObject({ type: "error", code: "protocol" })
    await d.closed
    await new Promise((resolve) => setTimeout(resolve, 100))
    expect(rows(g.dataDir, "dev-fatal-mid").map((r) => r.seq)).toEqual([2])
  })

  it("reads nothing after a fatal frame sent with hello", async () => {
    const g = await gateway()
    const d = await connect(g)
    d.send({ type: "hello", v: 1, device: "dev-early-fatal", token: "t" }, telemetry(1), "{bad\n", telemetry(2))
    const welcome = await d.next()
    expect(welcome.type).toBe("welcome")
    expect(await d.next()).toMatchObject({ type: "error", code: "protocol" })
    await d.closed
    await new Promise((resolve) => setTimeout(resolve, 100))
    expect(rows(g.dataDir, "dev-early-fatal").map((r) => r.seq)).toEqual([1])
  })

  it("reads nothing after a bye sent with hello", async () => {
    const g = await gateway()
    const d = await connect(g)
    d.send({ type: "hello", v: 1, device: "dev-early-bye", token: "t" }, telemetry(1), { type: "bye" }, telemetry(2))
    expect((await d.next()).type).toBe("welcome")
    expect(await d.next()).toMatchObject({ type: "ack", seq: 1 })
    await d.closed
    expect(rows(g.dataDir, "dev-early-bye").map((r) => r.seq)).toEqual([1])
  })

  it("may answer several frames in one write and keeps the process up after bad input", async () => {
    const g = await gateway()
    const { d } = await open(g, "dev-many")
    d.send(...Array.from({ length: 50 }, (_, i) => telemetry(i)))
    const answers = await d.take(50)
    expect(answers.map((a) => a["seq"])).toEqual(Array.from({ length: 50 }, (_, i) => i))
  })
})

describe("session", () => {
  it("requires hello first: anything else is error protocol", async () => {
    const g = await gateway()
    const d = await connect(g)
    d.send(telemetry(1))
    expect(await d.next()).toMatchObject({ type: "error", code: "protocol" })
    await d.closed
  })

  it("closes with error timeout when no hello arrives within helloTimeoutMs", async () => {
    const g = await gateway({ GATEWAY_HELLO_TIMEOUT_MS: "200" })
    const d = await connect(g)
    const started = Date.now()
    expect(await d.next()).toMatchObject({ type: "error", code: "timeout" })
    expect(Date.now() - started).toBeGreaterThanOrEqual(150)
    await d.closed
  })

  it("refuses a bad hello (device id with a dot, unknown version) with error protocol", async () => {
    const g = await gateway()
    for (const hello of [
      { type: "hello", v: 1, device: "dev.1", token: "t" },
      { type: "hello", v: 2, device: "dev-1", token: "t" },
      { type: "hello", v: 1, device: "x".repeat(129), token: "t" }
    ]) {
      const d = await connect(g)
      d.send(hello)
      expect(await d.next()).toMatchObject({ type: "error", code: "protocol" })
      await d.closed
    }
  })

  it("welcome carries session, keepaliveMs, maxFrameBytes and lastSeq from the store, across restarts", async () => {
    const dataDir = tempDir()
    const g = await gateway({ GATEWAY_DATA_DIR: dataDir, GATEWAY_KEEPALIVE_MS: "20000" })
    const first = await open(g, "dev-last", { epoch: 3 })
    expect(first.welcome).toMatchObject({ type: "welcome", v: 1, keepaliveMs: 20000, maxFrameBytes: 65536, lastSeq: null })
    expect(typeof first.welcome["session"]).toBe("string")
    first.d.send(telemetry(5), event(9), telemetry(7))
    await first.d.take(3)
    first.d.end()
    await g.stop()
    const again = await gateway({ GATEWAY_DATA_DIR: dataDir })
    expect((await open(again, "dev-last", { epoch: 3 })).welcome["lastSeq"]).toBe(9)
    expect((await open(again, "dev-last", { epoch: 4 })).welcome["lastSeq"]).toBeNull()
  })

  it("closes a silent connection after keepaliveMs × 1.5 with error timeout; pings keep it alive", async () => {
    const g = await gateway({ GATEWAY_KEEPALIVE_MS: "200" })
    const { d } = await open(g, "dev-quiet")
    const { d: pinger } = await open(g, "dev-pinger")
    const started = Date.now()
    const timer = setInterval(() => pinger.send({ type: "ping" }), 100)
    try {
      expect(await d.next()).toMatchObject({ type: "error", code: "timeout" })
      expect(Date.now() - started).toBeGreaterThanOrEqual(250)
      await d.closed
      const pongs = await pinger.take(3)
      expect(pongs.every((p) => p.type === "pong")).toBe(true)
      expect(pinger.socket.destroyed).toBe(false)
    } finally {
      clearInterval(timer)
    }
  })

  it("a second connection of the same device replaces the first (error replaced)", async () => {
    const g = await gateway()
    const first = await open(g, "dev-twice")
    const second = await open(g, "dev-twice")
    expect(await first.d.next()).toMatchObject({ type: "error", code: "replaced" })
    await first.d.closed
    second.d.send(telemetry(1))
    expect(await second.d.next()).toEqual({ type: "ack", seq: 1 })
  })

  it("refuses connections above GATEWAY_MAX_CONNECTIONS with error busy and a jittered retryAfterMs", async () => {
    const g = await gateway({ GATEWAY_MAX_CONNECTIONS: "2", GATEWAY_BUSY_RETRY_MS: "1000" })
    await open(g, "dev-a")
    await open(g, "dev-b")
    const retries: Array<number> = []
    for (let i = 0; i < 6; i++) {
      const d = await connect(g)
      const answer = await d.next()
      expect(answer).toMatchObject({ type: "error", code: "busy" })
      retries.push(answer["retryAfterMs"] as number)
      await d.closed
    }
    for (const r of retries) expect(r >= 1000 && r < 2000).toBe(true)
    expect(new Set(retries).size).toBeGreaterThan(1)
  })

  it("bye: the gateway answers what is pending, then closes", async () => {
    const g = await gateway()
    const { d } = await open(g, "dev-bye")
    d.send(telemetry(1), telemetry(2), event(3), { type: "bye" })
    expect((await d.take(3)).map((a) => a["seq"])).toEqual([1, 2, 3])
    await d.closed
    expect(rows(g.dataDir, "dev-bye").map((r) => r.seq)).toEqual([1, 2, 3])
  })
})

describe("data frames", () => {
  it("acks only what is committed: every acked frame is in the store with the normalized envelope", async () => {
    const g = await gateway()
    const { d } = await open(g, "dev-store", { epoch: 2 })
    const trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    d.send(
      telemetry(1, { temp: 21.5 }, { trace }),
      { type: "event", seq: 2, ts: "2024-01-01T00:00:00+01:00", body: { name: "door_open", data: { door: 3 } } }
    )
    expect(await d.take(2)).toEqual([{ type: "ack", seq: 1 }, { type: "ack", seq: 2 }])
    const stored = rows(g.dataDir, "dev-store")
    expect(stored).toHaveLength(2)
    expect(stored[0]).toMatchObject({ epoch: 2, seq: 1, kind: "telemetry", device_ts: 1_700_000_000_001, gateway: "test-gw", traceparent: trace })
    expect(JSON.parse(stored[0]!.body)).toEqual({ metrics: { temp: 21.5 } })
    expect(stored[1]).toMatchObject({ seq: 2, kind: "event", device_ts: Date.parse("2023-12-31T23:00:00Z") })
    expect(Math.abs(stored[1]!.received_at - Date.now())).toBeLessThan(10_000)
  })

  it("nacks an invalid body with code invalid (retry false) and keeps the connection", async () => {
    const g = await gateway()
    const { d } = await open(g, "dev-invalid")
    d.send(
      telemetry(1, { temp: "warm" }),
      { type: "event", seq: 2, ts: 1, body: { name: "" } },
      { type: "telemetry", seq: 3, ts: "yesterday", body: { metrics: {} } },
      telemetry(4)
    )
    const [a, b, c, ok] = await d.take(4)
    for (const [n, answer] of [[1, a], [2, b], [3, c]] as const) {
      expect(answer).toMatchObject({ type: "nack", seq: n, code: "invalid", retry: false })
      expect(typeof answer!["message"]).toBe("string")
    }
    expect(ok).toEqual({ type: "ack", seq: 4 })
    expect(rows(g.dataDir, "dev-invalid").map((r) => r.seq)).toEqual([4])
  })

  it("ignores a malformed trace: it is never stored and cannot smuggle rows into the batch", async () => {
    const g = await gateway({ GATEWAY_BATCH_LINGER_MS: "20" })
    const { d } = await open(g, "dev-smuggler")
    const forged = "x\u0002victim\u00010\u000199\u0001event\u00011\u00012\u0001gw\u0001\u0001{\"name\":\"forged\"}"
    d.send(telemetry(1, { t: 1 }, { trace: forged }), telemetry(2), telemetry(3, { t: 3 }, { trace: "not-a-traceparent" }))
    expect(await d.take(3)).toEqual([1, 2, 3].map((seq) => ({ type: "ack", seq })))
    const stored = rows(g.dataDir)
    expect(stored.map((r) => [r.device, r.seq, r.traceparent])).toEqual([
      ["dev-smuggler", 1, null],
      ["dev-smuggler", 2, null],
      ["dev-smuggler", 3, null]
    ])
  })

  it("a data frame without a usable seq cannot be answered: error protocol", async () => {
    const g = await gateway()
    const { d } = await open(g, "dev-noseq")
    d.send({ type: "telemetry", seq: -1, ts: 1, body: { metrics: {} } })
    expect(await d.next()).toMatchObject({ type: "error", code: "protocol" })
    await d.closed
  })

  it("acks resends with dup:true and writes each key once, inside and beyond the dedup window", async () => {
    const g = await gateway({ GATEWAY_DEDUP_WINDOW: "32" })
    const { d } = await open(g, "dev-dup")
    d.send(...Array.from({ length: 100 }, (_, i) => telemetry(i)))
    await d.take(100)
    d.send(telemetry(99), telemetry(98), telemetry(0), telemetry(5)) // 99, 98 in the window; 0, 5 beyond it
    expect(await d.take(4)).toEqual([99, 98, 0, 5].map((seq) => ({ type: "ack", seq, dup: true })))
    const stored = rows(g.dataDir, "dev-dup")
    expect(stored).toHaveLength(100)
    // a reconnect (new session) resending everything still writes nothing twice
    d.end()
    const again = await open(g, "dev-dup")
    again.d.send(...Array.from({ length: 100 }, (_, i) => telemetry(i)))
    const answers = await again.d.take(100)
    expect(answers.every((a) => a.type === "ack" && a["dup"] === true)).toBe(true)
    expect(rows(g.dataDir, "dev-dup")).toHaveLength(100)
  })

  it("keeps epochs apart: the same seq in a new epoch is a new message", async () => {
    const g = await gateway()
    const first = await open(g, "dev-epoch", { epoch: 1 })
    first.d.send(telemetry(1))
    expect(await first.d.next()).toEqual({ type: "ack", seq: 1 })
    const second = await open(g, "dev-epoch", { epoch: 2 })
    second.d.send(telemetry(1))
    expect(await second.d.next()).toEqual({ type: "ack", seq: 1 })
    expect(rows(g.dataDir, "dev-epoch").map((r) => [r.epoch, r.seq])).toEqual([[1, 1], [2, 1]])
  })

  it("answers every data frame exactly once, in the order sent, whatever the mix", async () => {
    const g = await gateway({ GATEWAY_BATCH_MAX: "7" })
    const { d } = await open(g, "dev-order")
    const frames: Array<object> = []
    for (let seq = 0; seq < 300; seq++) {
      frames.push(seq % 13 === 0 ? telemetry(seq, { bad: "x" }) : seq % 3 === 0 ? event(seq) : telemetry(seq))
      if (seq % 50 === 0) frames.push({ type: "ping" })
    }
    d.send(...frames)
    const answers: Array<Answer> = []
    while (answers.length < 300) {
      const a = await d.next()
      if (a.type !== "pong") answers.push(a)
    }
    expect(answers.map((a) => a["seq"])).toEqual(Array.from({ length: 300 }, (_, i) => i))
    expect(answers.filter((a) => a.type === "nack").map((a) => a["seq"])).toEqual(
      Array.from({ length: 300 }, (_, i) => i).filter((i) => i % 13 === 0)
    )
    expect(await d.silentFor(200)).toBe(true)
  })
})

describe("auth", () => {
  it("checks tokens from GATEWAY_DEVICES: error auth on a bad token or unknown device, nack forbidden by kind", async () => {
    const dir = tempDir()
    const sensor = newEntry("sensor-1", ["telemetry"])
    const file = Path.join(dir, "devices.json")
    Fs.writeFileSync(file, JSON.stringify({ devices: [sensor.entry] }))
    const g = await gateway({ GATEWAY_DEVICES: file })
    const good = await open(g, "sensor-1", { token: sensor.token })
    good.d.send(telemetry(1), event(2), telemetry(3))
    const [a, b, c] = await good.d.take(3)
    expect(a).toEqual({ type: "ack", seq: 1 })
    expect(b).toMatchObject({ type: "nack", seq: 2, code: "forbidden", retry: false })
    expect(c).toEqual({ type: "ack", seq: 3 })
    for (const [device, token] of [["sensor-1", "wrong"], ["ghost", sensor.token]] as const) {
      const d = await connect(g)
      d.send({ type: "hello", v: 1, device, token })
      expect(await d.next()).toMatchObject({ type: "error", code: "auth" })
      await d.closed
    }
  })
})

describe("admin", () => {
  it("serves /healthz, /readyz and Prometheus /metrics with the core metrics", async () => {
    const g = await gateway()
    const { d } = await open(g, "dev-metrics")
    d.send(telemetry(1), event(2), telemetry(3, { bad: "x" }))
    await d.take(3)
    const get = (path: string) => fetch(`http://127.0.0.1:${g.adminPort}${path}`)
    expect((await get("/healthz")).status).toBe(200)
    expect((await get("/readyz")).status).toBe(200)
    const text = await (await get("/metrics")).text()
    for (
      const needle of [
        "gateway_connections_active 1",
        'gateway_messages_total{kind="telemetry",outcome="committed"}',
        'gateway_messages_total{kind="event",outcome="committed"}',
        'gateway_messages_total{kind="telemetry",outcome="invalid"}',
        'gateway_queue_depth{lane="critical"}',
        'gateway_queue_capacity{lane="bulk"}',
        "gateway_ingest_to_commit_latency_seconds_bucket",
        'gateway_errors_total{class="ValidationError"}',
        'gateway_connections_total{result="accepted"}'
      ]
    ) expect(text).toContain(needle)
  })
})
