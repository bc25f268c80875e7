/**
 * Overload and downstream trouble, made real: the test holds SQLite's write lock from its own
 * connection, so the gateway's writer really cannot commit (SQLITE_BUSY) until it is released.
 */
import { afterEach, describe, expect, it } from "@effect/vitest"
import * as Path from "node:path"
import { DatabaseSync } from "node:sqlite"
import { type Answer, Device, event, telemetry } from "../support/client.ts"
import { startGateway, type TestGateway } from "../support/gateway.ts"
import { holdWriteLock, rows } from "../support/store.ts"

const running: Array<TestGateway> = []
const cleanups: Array<() => void> = []
afterEach(async () => {
  for (const c of cleanups.splice(0)) c()
  for (const g of running.splice(0)) await g.stop()
})

const gateway = async (env: Record<string, string>) => {
  const g = await startGateway(env)
  running.push(g)
  return g
}

/** Takes SQLite's write lock on the gateway's store until the returned function is called. */
const lockStore = (g: TestGateway) => {
  const release = holdWriteLock(g.dataDir)
  cleanups.push(release)
  return release
}

const open = async (g: TestGateway, device: string) => {
  const r = await Device.open(g.port, device)
  cleanups.push(() => r.d.end())
  return r.d
}

const untilAnswers = async (d: Device, n: number, timeoutMs = 15_000) => {
  const answers: Array<Answer> = []
  const pongs: Array<Answer> = []
  while (answers.length < n) {
    const a = await d.next(timeoutMs)
    if (a.type === "pong") pongs.push(a)
    else answers.push(a)
  }
  return { answers, pongs }
}

describe("overload policy", () => {
  it("sheds the oldest telemetry with nack shed when the bulk lane is full, and still answers pings", async () => {
    const g = await gateway({ GATEWAY_BULK_QUEUE: "10", GATEWAY_BATCH_MAX: "5", GATEWAY_BATCH_LINGER_MS: "0" })
    const d = await open(g, "dev-shed")
    const release = lockStore(g)
    d.send(...Array.from({ length: 60 }, (_, i) => telemetry(i)))
    await new Promise((r) => setTimeout(r, 200))
    d.send({ type: "ping" })
    const pong = await d.next(1_000)
    // shed answers may precede the pong (they are written as they happen), so look for it
    const early: Array<Answer> = [pong]
    while (early[early.length - 1]!.type !== "pong") early.push(await d.next(1_000))
    release()
    const { answers } = await untilAnswers(d, 60 - (early.length - 1))
    const all = [...early.filter((a) => a.type !== "pong"), ...answers]
    expect(all.map((a) => a["seq"])).toEqual(Array.from({ length: 60 }, (_, i) => i))
    const shed = all.filter((a) => a.type === "nack")
    const acked = all.filter((a) => a.type === "ack")
    expect(shed.length).toBeGreaterThanOrEqual(60 - 10 - 2 * 5) // at most lane + two batches in flight survive
    for (const s of shed) expect(s).toMatchObject({ code: "shed", retry: false })
    // the newest messages survive: the shed ones are older than every acked one except those already in flight
    const lastShed = Math.max(...shed.map((s) => s["seq"] as number))
    expect(acked.filter((a) => (a["seq"] as number) > lastShed)).toHaveLength(10)
    expect(rows(g.dataDir, "dev-shed").map((r) => r.seq)).toEqual(acked.map((a) => a["seq"]))
  })

  it("never sheds events: a full critical lane holds them until the store takes them, pings answered", async () => {
    const g = await gateway({ GATEWAY_CRITICAL_QUEUE: "5", GATEWAY_BATCH_MAX: "5", GATEWAY_MAX_INFLIGHT: "64" })
    const d = await open(g, "dev-events")
    const release = lockStore(g)
    d.send(...Array.from({ length: 40 }, (_, i) => event(i)), { type: "ping" })
    expect(await d.next(2_000)).toEqual({ type: "pong" })
    await new Promise((r) => setTimeout(r, 400)) // depth gauges are sampled every 200 ms
    const metrics = await (await fetch(`http://127.0.0.1:${g.adminPort}/metrics`)).text()
    expect(metrics).toContain('gateway_queue_depth{lane="critical"} 5')
    d.send(...Array.from({ length: 200 }, (_, i) => event(40 + i)))
    await new Promise((r) => setTimeout(r, 300))
    release()
    const { answers } = await untilAnswers(d, 240)
    expect(answers.every((a) => a.type === "ack")).toBe(true)
    expect(answers.map((a) => a["seq"])).toEqual(Array.from({ length: 240 }, (_, i) => i))
    expect(rows(g.dataDir, "dev-events")).toHaveLength(240)
  })

  it("nacks unavailable (retry true, retryAfterMs) when the store stays down past the retry budget", async () => {
    const g = await gateway({ GATEWAY_STORE_RETRIES: "1" })
    const d = await open(g, "dev-down")
    const release = lockStore(g)
    d.send(telemetry(1), event(2))
    const answers = await d.take(2, 15_000)
    for (const [seq, a] of [[1, answers[0]], [2, answers[1]]] as const) {
      expect(a).toMatchObject({ type: "nack", seq, code: "unavailable", retry: true })
      expect(a!["retryAfterMs"]).toBeGreaterThan(0)
    }
    release()
    d.send(telemetry(1), event(2))
    expect(await d.take(2)).toEqual([{ type: "ack", seq: 1 }, { type: "ack", seq: 2 }])
    const metrics = await (await fetch(`http://127.0.0.1:${g.adminPort}/metrics`)).text()
    expect(metrics).toMatch(/gateway_errors_total\{class="TransientUpstreamError"\} [1-9]/)
    expect(metrics).toMatch(/gateway_sink_retries_total\{sink="sqlite"\} [1-9]/)
  })
})

describe("store rejections", () => {
  it("a message the store refuses is nacked and dead-lettered alone; the rest of its batch commits", async () => {
    const g = await gateway({ GATEWAY_BATCH_LINGER_MS: "20" })
    const db = new DatabaseSync(Path.join(g.dataDir, "gateway.db"))
    cleanups.push(() => db.close())
    // a real refusal by the store: a trigger raising a constraint error for one key
    db.exec(`CREATE TRIGGER refuse_13 BEFORE INSERT ON messages WHEN NEW.seq = 13
             BEGIN SELECT RAISE(ABORT, 'seq 13 refused by policy'); END`)
    const d = await open(g, "dev-reject")
    d.send(telemetry(12), telemetry(13), event(14))
    const [a, b, c] = await d.take(3)
    expect(a).toEqual({ type: "ack", seq: 12 })
    expect(b).toMatchObject({ type: "nack", seq: 13, code: "invalid", retry: false })
    expect(String(b!["message"])).toContain("seq 13 refused by policy")
    expect(c).toEqual({ type: "ack", seq: 14 })
    expect(rows(g.dataDir, "dev-reject").map((r) => r.seq)).toEqual([12, 14])
    const dead = db.prepare("SELECT device, seq, reason FROM dead_letters").all()
    expect(dead).toEqual([{ device: "dev-reject", seq: 13, reason: "seq 13 refused by policy" }])
    const metrics = await (await fetch(`http://127.0.0.1:${g.adminPort}/metrics`)).text()
    expect(metrics).toContain('gateway_messages_total{kind="telemetry",outcome="rejected"} 1')
    expect(metrics).toMatch(/gateway_errors_total\{class="PermanentPersistenceError"\} [1-9]/)
  })
})

describe("graceful shutdown", () => {
  it("readiness goes false, devices get goaway, in-flight work is answered before the close", async () => {
    const g = await gateway({ GATEWAY_DRAIN_TIMEOUT_MS: "10000" })
    const d = await open(g, "dev-drain")
    const release = lockStore(g)
    d.send(telemetry(1), event(2))
    await new Promise((r) => setTimeout(r, 100))
    const stopping = g.stop()
    expect(await d.next()).toMatchObject({ type: "goaway", reason: "shutdown" })
    const ready = await fetch(`http://127.0.0.1:${g.adminPort}/readyz`)
    expect(ready.status).toBe(503)
    d.send(telemetry(3)) // after goaway: refused, not queued
    d.send({ type: "ping" })
    release()
    const rest = await d.take(4)
    expect(rest.filter((a) => a.type === "pong")).toHaveLength(1)
    const data = rest.filter((a) => a.type !== "pong")
    expect(data.slice(0, 2)).toEqual([{ type: "ack", seq: 1 }, { type: "ack", seq: 2 }])
    expect(data[2]).toMatchObject({ type: "nack", seq: 3, code: "unavailable", retry: true })
    expect(await d.next()).toMatchObject({ type: "error", code: "shutdown" })
    await stopping
    await d.closed
  })

  it("refuses new connections while draining", async () => {
    const g = await gateway({ GATEWAY_DRAIN_TIMEOUT_MS: "5000" })
    const d = await open(g, "dev-hold")
    const release = lockStore(g)
    d.send(telemetry(1))
    await new Promise((r) => setTimeout(r, 100))
    const stopping = g.stop()
    await d.next() // goaway
    const late = await Device.connect(g.port).then(
      async (c) => (await c.next(2_000)).type,
      () => "refused"
    )
    expect(["busy", "refused"]).toContain(late)
    release()
    await stopping
  })
})
