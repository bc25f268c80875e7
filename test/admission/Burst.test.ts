/**
 * A burst at ten times what the sink can take, made real by a stage (composed in code, as a
 * developer would) that lets the pipeline commit only ~`SINK_RATE` messages a second. The policy
 * under test: events are never shed and all get acked; telemetry is shed oldest first once the
 * memory budget's high watermark is passed; an idle device's pings are answered at once; every
 * frame gets exactly one answer, in send order; the messages held stay within the budget.
 */
import { afterEach, describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import type { Envelope } from "../../src/domain/Envelope.ts"
import { Pipeline } from "../../src/pipeline/Pipeline.ts"
import * as Stage from "../../src/pipeline/Stage.ts"
import { type Answer, Device } from "../support/client.ts"
import { startGateway, type TestGateway } from "../support/gateway.ts"

const running: Array<TestGateway> = []
const devices: Array<Device> = []
afterEach(async () => {
  for (const d of devices.splice(0)) d.end()
  for (const g of running.splice(0)) await g.stop()
})

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))
const MiB = 1024 * 1024

/** Messages a second the slowed pipeline commits (two batches are in flight at once). */
const SINK_RATE = 400

/** The slow sink: each batch waits as long as committing it at SINK_RATE would take. */
const slowSink = Pipeline.layer(
  Stage.chunk("slow-sink", (chunk: ReadonlyArray<Envelope>) =>
    Effect.as(Effect.sleep(Math.ceil((chunk.length * 2 * 1000) / SINK_RATE)), chunk))
)

const metric = async (adminPort: number, series: string) => {
  const text = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text()
  const line = text.split("\n").find((l) => l.startsWith(series + " "))
  return line === undefined ? 0 : Number(line.slice(line.lastIndexOf(" ") + 1))
}

const percentile = (xs: ReadonlyArray<number>, p: number) => {
  const sorted = [...xs].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] ?? 0
}

/** A ~300-byte telemetry body. */
const TAGS = { site: "burst", pad: "p".repeat(200) }

describe("burst at 10x what the sink takes", () => {
  it("events all acked, telemetry shed oldest first, pings answered, one answer per frame, held bytes within the budget", async () => {
    const budget = 1 * MiB
    const g = await startGateway({ GATEWAY_MEMORY_BUDGET: String(budget), GATEWAY_BATCH_MAX: "64" }, undefined, slowSink)
    running.push(g)
    const DEVICES = 10
    const SECONDS = 3
    const perDevice = (SINK_RATE * 10) / DEVICES // frames a second each: 10x the sink in all
    const senders = await Promise.all(Array.from({ length: DEVICES }, async (_, i) => {
      const { d } = await Device.open(g.port, `burst-${i}`)
      devices.push(d)
      return d
    }))
    const { d: idle } = await Device.open(g.port, "idle")
    devices.push(idle)

    // each device sends one frame per write on its own schedule; every 20th is an event
    const sent: Array<Array<{ seq: number; kind: string }>> = senders.map(() => [])
    const until = performance.now() + SECONDS * 1000
    const ticks = senders.map(async (d, i) => {
      let seq = 0
      const start = performance.now() + (i * 1000) / perDevice / DEVICES
      while (performance.now() < until) {
        const due = start + (seq * 1000) / perDevice
        if (due > performance.now()) await sleep(due - performance.now())
        const kind = seq % 20 === 7 ? "event" : "telemetry"
        const body = kind === "event" ? { name: "door_open", severity: "critical" } : { metrics: { t: seq }, tags: TAGS }
        d.send({ type: kind, seq, ts: Date.now(), body })
        sent[i]!.push({ seq, kind })
        seq++
      }
    })
    const pings: Array<number> = []
    let maxHeld = 0
    const watch = (async () => {
      while (performance.now() < until) {
        const t0 = performance.now()
        idle.send({ type: "ping" })
        const pong = await idle.next(5_000)
        expect(pong.type).toBe("pong")
        pings.push(performance.now() - t0)
        maxHeld = Math.max(maxHeld, await metric(g.adminPort, 'gateway_memory_used_bytes{part="messages"}'))
        await sleep(50)
      }
    })()
    await Promise.all([...ticks, watch])

    // every frame gets exactly one answer, in send order; events are never shed
    let shed = 0
    let eventsAcked = 0
    for (let i = 0; i < DEVICES; i++) {
      const answers: Array<Answer> = await senders[i]!.take(sent[i]!.length, 30_000)
      expect(answers.map((a) => a["seq"])).toEqual(sent[i]!.map((s) => s.seq))
      for (let k = 0; k < answers.length; k++) {
        const a = answers[k]!
        if (sent[i]![k]!.kind === "event") {
          expect(a).toMatchObject({ type: "ack" })
          eventsAcked++
        } else if (a.type === "nack") {
          expect(a).toMatchObject({ code: "shed", retry: false })
          shed++
        } else {
          expect(a.type).toBe("ack")
        }
      }
      // oldest first: the newest telemetry of each device survives the burst
      const lastTelemetry = sent[i]!.map((s, k) => ({ ...s, k })).filter((s) => s.kind === "telemetry").at(-1)!
      expect(answers[lastTelemetry.k]!.type).toBe("ack")
      expect(await senders[i]!.silentFor(50)).toBe(true) // nothing more than one answer per frame
    }
    const offered = sent.reduce((n, s) => n + s.length, 0)
    expect(eventsAcked).toBe(sent.reduce((n, s) => n + s.filter((x) => x.kind === "event").length, 0))
    expect(shed).toBeGreaterThan(offered / 3) // most of the overload was shed, not queued without bound
    expect(maxHeld).toBeLessThanOrEqual(budget)
    expect(maxHeld).toBeGreaterThan(budget / 4) // the budget, not something else, was the bound
    expect(percentile(pings, 0.99)).toBeLessThan(100)
    expect(await metric(g.adminPort, 'gateway_messages_total{kind="telemetry",outcome="shed"}')).toBe(shed)
    console.log(
      `burst: offered ${offered}, shed ${shed}, events acked ${eventsAcked}, max held ${(maxHeld / 1024).toFixed(0)} KiB of ` +
        `${budget / 1024}, ping p50 ${percentile(pings, 0.5).toFixed(1)} ms p99 ${percentile(pings, 0.99).toFixed(1)} ms`
    )
  }, 45_000)

  it("telemetry that waited past GATEWAY_BULK_MAX_AGE_MS is shed, so event acks are not held behind a deep backlog", async () => {
    const maxAgeMs = 400
    const g = await startGateway({ GATEWAY_BULK_MAX_AGE_MS: String(maxAgeMs), GATEWAY_BATCH_MAX: "32" }, undefined, slowSink)
    running.push(g)
    const { d } = await Device.open(g.port, "aging")
    devices.push(d)
    // 2,000 frames in 1 s against a sink that commits 400 a second: a 5 s backlog unless shed by age
    const sentAt: Array<number> = []
    const kinds: Array<string> = []
    for (let seq = 0; seq < 2_000; seq++) {
      const kind = seq % 50 === 25 ? "event" : "telemetry"
      const body = kind === "event" ? { name: "door_open" } : { metrics: { t: seq } }
      d.send({ type: kind, seq, ts: Date.now(), body })
      sentAt.push(performance.now())
      kinds.push(kind)
      if (seq % 20 === 19) await sleep(10)
    }
    const answers: Array<{ a: Answer; at: number }> = []
    for (let i = 0; i < 2_000; i++) answers.push({ a: await d.next(10_000), at: performance.now() })
    expect(answers.map((x) => x.a["seq"])).toEqual(sentAt.map((_, i) => i))
    let shed = 0
    const eventDelays: Array<number> = []
    for (let i = 0; i < answers.length; i++) {
      const { a, at } = answers[i]!
      if (kinds[i] === "event") {
        expect(a.type).toBe("ack")
        eventDelays.push(at - sentAt[i]!)
      } else if (a.type === "nack") {
        expect(a).toMatchObject({ code: "shed" })
        shed++
      }
    }
    expect(shed).toBeGreaterThan(500)
    // without the age bound the last events would wait ~4 s behind the telemetry before them
    expect(Math.max(...eventDelays)).toBeLessThan(maxAgeMs + 1_500)
    console.log(`aging: shed ${shed} of ${kinds.filter((k) => k === "telemetry").length} telemetry, event ack max ${Math.max(...eventDelays).toFixed(0)} ms`)
  }, 30_000)
})
