/**
 * User stages in a running gateway, over real sockets with a real SQLite store: stages from the
 * stages file (selection by kind and device, order, options), fields they add reaching the
 * store, a stage's rejection or bug answering only its message, stages composed in code with a
 * service (a real HTTP inventory), and the per-stage metrics.
 */
import { afterEach, describe, expect, it } from "@effect/vitest"
import { Effect, Fiber, Layer } from "effect"
import * as Fs from "node:fs"
import * as Http from "node:http"
import type { AddressInfo } from "node:net"
import * as Path from "node:path"
import type { Envelope } from "../../src/domain/Envelope.ts"
import { Pipeline } from "../../src/pipeline/Pipeline.ts"
import * as Stage from "../../src/pipeline/Stage.ts"
import { DeviceDirectory, deviceMetadata } from "../../src/stages/DeviceMetadata.ts"
import { threshold } from "../../src/stages/Threshold.ts"
import { Device, event, telemetry } from "../support/client.ts"
import { startGateway, tempDir, type TestGateway } from "../support/gateway.ts"
import { deadLetters, rows } from "../support/store.ts"

const running: Array<TestGateway> = []
const devices: Array<Device> = []
const servers: Array<Http.Server> = []

afterEach(async () => {
  for (const d of devices.splice(0)) d.end()
  for (const g of running.splice(0)) await g.stop()
  for (const s of servers.splice(0)) await new Promise((resolve) => s.close(resolve))
})

const withStagesFile = async (stages: ReadonlyArray<unknown>) => {
  const dir = tempDir("gw-stages-")
  const file = Path.join(dir, "stages.json")
  Fs.writeFileSync(file, JSON.stringify({ stages }))
  const g = await startGateway({ GATEWAY_DATA_DIR: dir, GATEWAY_STAGES_FILE: file })
  running.push(g)
  return g
}

const open = async (g: TestGateway, device: string) => {
  const { d } = await Device.open(g.port, device)
  devices.push(d)
  return d
}

const stored = (g: TestGateway, device: string) =>
  rows(g.dataDir, device).map((r) => ({
    seq: r.seq,
    body: JSON.parse(r.body) as unknown,
    annotations: r.annotations === null ? null : JSON.parse(r.annotations) as unknown
  }))

describe("user stages from the stages file", () => {
  it("converts and annotates selected telemetry; consumers see the result in the store", async () => {
    const g = await withStagesFile([
      {
        stage: "unit-conversion",
        kinds: ["telemetry"],
        devices: ["boiler-*"],
        options: { conversions: [{ from: "temp_f", to: "temp_c", preset: "fahrenheit_to_celsius" }] }
      },
      { stage: "threshold", options: { limits: [{ metric: "temp_c", above: 90, severity: "critical" }] } }
    ])
    const boiler = await open(g, "boiler-1")
    boiler.send(telemetry(1, { temp_f: 212, rpm: 5 }), telemetry(2, { temp_f: 50 }), event(3))
    expect(await boiler.take(3)).toEqual([
      { type: "ack", seq: 1 },
      { type: "ack", seq: 2 },
      { type: "ack", seq: 3 }
    ])
    const fan = await open(g, "fan-1")
    fan.send(telemetry(1, { temp_f: 212 }))
    expect(await fan.next()).toEqual({ type: "ack", seq: 1 })

    const boilerRows = stored(g, "boiler-1")
    expect(boilerRows[0]).toEqual({
      seq: 1,
      body: { metrics: { temp_c: 100, rpm: 5 } },
      annotations: { alerts: [{ metric: "temp_c", value: 100, limit: 90, crossed: "above", severity: "critical" }] }
    })
    expect(boilerRows[1]).toEqual({ seq: 2, body: { metrics: { temp_c: 10 } }, annotations: null })
    expect(boilerRows[2]!.annotations).toBeNull()
    // not selected by unit-conversion: stored as sent, and temp_c never appears to threshold
    expect(stored(g, "fan-1")).toEqual([{ seq: 1, body: { metrics: { temp_f: 212 } }, annotations: null }])

    const text = await (await fetch(`http://127.0.0.1:${g.adminPort}/metrics`)).text()
    for (
      const needle of [
        'gateway_stage_messages_total{stage="validate",result="passed"} 4',
        'gateway_stage_messages_total{stage="unit-conversion",result="passed"} 4',
        'gateway_stage_messages_total{stage="threshold",result="passed"} 4',
        'gateway_stage_messages_total{stage="commit",result="settled"} 4',
        'gateway_stage_duration_seconds_bucket{stage="threshold",le="+Inf"}'
      ]
    ) expect(text).toContain(needle)
  })

  it("a stage's rejection answers only that message, dead-lettered; the rest of the batch commits", async () => {
    const g = await withStagesFile([
      { stage: "unit-conversion", options: { conversions: [{ from: "big", scale: 1e10 }] } }
    ])
    const d = await open(g, "dev-reject")
    d.send(telemetry(1, { big: 1 }), telemetry(2, { big: 1e300 }), telemetry(3, { big: 2 }))
    const answers = await d.take(3)
    expect(answers[0]).toEqual({ type: "ack", seq: 1 })
    expect(answers[1]).toMatchObject({ type: "nack", seq: 2, code: "invalid", retry: false })
    expect(String(answers[1]!["message"])).toContain("finite range")
    expect(answers[2]).toEqual({ type: "ack", seq: 3 })
    expect(stored(g, "dev-reject").map((r) => r.seq)).toEqual([1, 3])
    // kept for operators, as it entered the pipeline, before the nack was sent
    const dead = deadLetters(g.dataDir)
    expect(dead.map((r) => [r.device, r.seq, r.kind])).toEqual([["dev-reject", 2, "telemetry"]])
    expect(dead[0]!.reason).toMatch(/^stage unit-conversion: converting big to big leaves the finite range/)
    expect(JSON.parse(dead[0]!.envelope)).toMatchObject({ device: "dev-reject", seq: 2, body: { metrics: { big: 1e300 } } })
    const text = await (await fetch(`http://127.0.0.1:${g.adminPort}/metrics`)).text()
    expect(text).toContain('gateway_stage_errors_total{stage="unit-conversion",class="ValidationError"} 1')
  })

  it("refuses a user stage that takes the name of one of the gateway's own", async () => {
    const impostor = Stage.map("validate", (e: Envelope) => e)
    await expect(startGateway({}, undefined, Pipeline.layer(impostor))).rejects.toThrow(/may not be named validate/)
  })

  it("refuses to start on a stages file naming an unknown stage or bad options", async () => {
    const dir = tempDir("gw-stages-bad-")
    const file = Path.join(dir, "stages.json")
    Fs.writeFileSync(file, JSON.stringify({ stages: [{ stage: "no-such-stage" }] }))
    await expect(startGateway({ GATEWAY_DATA_DIR: dir, GATEWAY_STAGES_FILE: file })).rejects.toThrow(
      /stages\[0\] \(no-such-stage\): unknown stage; the catalog has unit-conversion, threshold, device-metadata/
    )
    Fs.writeFileSync(file, JSON.stringify({ stages: [{ stage: "threshold", options: { limits: [{ above: 1 }] } }] }))
    await expect(startGateway({ GATEWAY_DATA_DIR: dir, GATEWAY_STAGES_FILE: file })).rejects.toThrow(/stages\[0\] \(threshold\)/)
    Fs.writeFileSync(file, "{ not json")
    await expect(startGateway({ GATEWAY_DATA_DIR: dir, GATEWAY_STAGES_FILE: file })).rejects.toThrow(/is not JSON/)
    const refused = [
      [{ stage: "constructor" }, /stages\[0\] \(constructor\): unknown stage/],
      [{ stage: "threshold", options: { limitz: [] } }, /stages\[0\] \(threshold\): .*limitz/],
      [{ stage: "threshold", typo: 1, options: { limits: [] } }, /typo/],
      [{ stage: "device-metadata", options: { url: "inventory.local/devices" } }, /expected an http:\/\/ or https:\/\/ URL/],
      [{ stage: "device-metadata", options: { url: "http://x/", file: "/tmp/x.json" } }, /not both/],
      [{ stage: "device-metadata", options: {} }, /needs `url` or `file`/],
      [{ stage: "threshold", kinds: [], options: { limits: [] } }, /kinds/]
    ] as const
    for (const [spec, message] of refused) {
      Fs.writeFileSync(file, JSON.stringify({ stages: [spec] }))
      await expect(startGateway({ GATEWAY_DATA_DIR: dir, GATEWAY_STAGES_FILE: file })).rejects.toThrow(message)
    }
  })
})

describe("user stages composed in code", () => {
  it("a stage's bug on one message nacks it unavailable (retry); a dropped message is acked, not stored", async () => {
    const buggy = Stage.map("buggy", (e: Envelope) => {
      if (e.seq === 2) throw new Error("bug on seq 2")
      return e.seq === 3 ? Stage.dropped : e
    })
    const g = await startGateway({}, undefined, Pipeline.layer(buggy))
    running.push(g)
    const d = await open(g, "dev-bug")
    d.send(telemetry(1), telemetry(2), telemetry(3), telemetry(4))
    const answers = await d.take(4)
    expect(answers[0]).toEqual({ type: "ack", seq: 1 })
    expect(answers[1]).toMatchObject({ type: "nack", seq: 2, code: "unavailable", retry: true, retryAfterMs: 5000 })
    expect(String(answers[1]!["message"])).toContain("bug on seq 2")
    expect(answers[2]).toEqual({ type: "ack", seq: 3 })
    expect(answers[3]).toEqual({ type: "ack", seq: 4 })
    expect(stored(g, "dev-bug").map((r) => r.seq)).toEqual([1, 4])
    expect(deadLetters(g.dataDir)).toEqual([]) // a bug is retried by the device, not dead-lettered
    // the gateway stays up and keeps serving
    d.send(telemetry(5))
    expect(await d.next()).toEqual({ type: "ack", seq: 5 })
  })

  it("a stage that changes the key, or adds a value JSON cannot hold, costs only that message", async () => {
    const rogue = Stage.map("rogue", (e: Envelope) =>
      e.seq === 2 ? { ...e, seq: 99 } : e.seq === 3 ? { ...e, counter: 10n } : e.seq === 4 ? { ...e, note: undefined }
      : e.seq === 5 ? { ...e, gateway: "forged\u0001row" }
      : e.seq === 6 ? (null as unknown as Envelope) // past the types, as plain JS could
      : e)
    const g = await startGateway({}, undefined, Pipeline.layer(rogue))
    running.push(g)
    const d = await open(g, "dev-rogue")
    d.send(telemetry(1), telemetry(2), telemetry(3), telemetry(4), telemetry(5), telemetry(6))
    const answers = await d.take(6)
    expect(answers[4]).toMatchObject({ type: "nack", seq: 5, code: "unavailable" })
    expect(answers[5]).toMatchObject({ type: "nack", seq: 6, code: "unavailable" })
    // what cannot be stored is kept as a dead letter, BigInt and all
    const dead = deadLetters(g.dataDir)
    expect(dead.map((r) => [r.seq, r.reason.includes("cannot be stored as JSON")])).toEqual([[3, true]])
    expect(JSON.parse(dead[0]!.envelope)).toMatchObject({ seq: 3, counter: "10n" })
    expect(answers[0]).toEqual({ type: "ack", seq: 1 })
    expect(answers[1]).toMatchObject({ type: "nack", seq: 2, code: "unavailable", retry: true })
    expect(String(answers[1]!["message"])).toContain("a stage changed what it may not")
    expect(answers[2]).toMatchObject({ type: "nack", seq: 3, code: "invalid" })
    expect(String(answers[2]!["message"])).toContain("BigInt")
    expect(answers[3]).toEqual({ type: "ack", seq: 4 })
    expect(stored(g, "dev-rogue")).toEqual([
      { seq: 1, body: { metrics: { t: 1 } }, annotations: null },
      { seq: 4, body: { metrics: { t: 4 } }, annotations: null } // a field set to undefined is no annotation
    ])
  })

  it("a stage's resources are acquired once at start and released at shutdown, after the drain", async () => {
    const events: Array<string> = []
    const pooled = Stage.unwrap(
      Effect.map(
        Effect.acquireRelease(Effect.sync(() => events.push("acquired")), () => Effect.sync(() => events.push("released"))),
        () => Stage.map("pooled", (e: Envelope) => (events.push(`seq ${e.seq}`), e))
      )
    )
    const g = await startGateway({}, undefined, Pipeline.layer(pooled))
    const d = await open(g, "dev-pooled")
    d.send(telemetry(1))
    expect(await d.next()).toEqual({ type: "ack", seq: 1 })
    expect(events).toEqual(["acquired", "seq 1"])
    await g.stop()
    expect(events).toEqual(["acquired", "seq 1", "released"])
  })

  it("an interruption inside a stage nacks its message; the connection's later messages are answered", async () => {
    const joins = Stage.chunk("joins", (chunk: ReadonlyArray<Envelope>) =>
      Effect.gen(function*() {
        if (chunk.some((e) => e.seq === 2)) {
          const helper = yield* Effect.forkChild(Effect.never)
          yield* Fiber.interrupt(helper)
          yield* Fiber.join(helper)
        }
        return chunk
      }))
    const g = await startGateway({}, undefined, Pipeline.layer(joins))
    running.push(g)
    const d = await open(g, "dev-joins")
    d.send(telemetry(1))
    expect(await d.next()).toEqual({ type: "ack", seq: 1 })
    d.send(telemetry(2))
    expect(await d.next()).toMatchObject({ type: "nack", seq: 2, code: "unavailable", retry: true })
    d.send(telemetry(3))
    expect(await d.next()).toEqual({ type: "ack", seq: 3 })
  })

  it("a stage with a service: metadata from a real HTTP inventory, cached, stored with the message", async () => {
    let requests = 0
    const server = Http.createServer((req, res) => {
      requests++
      const ids = new URL(req.url ?? "/", "http://x").searchParams.get("ids")?.split(",") ?? []
      const known: Record<string, Record<string, string>> = {}
      for (const id of ids) if (id.startsWith("site-a-")) known[id] = { site: "a", model: "m1" }
      res.setHeader("content-type", "application/json")
      res.end(JSON.stringify(known))
    })
    servers.push(server)
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/devices`
    const pipeline = Pipeline.layer(
      deviceMetadata({ ttlMs: 60_000 }).pipe(Stage.andThen(threshold({ limits: [{ metric: "t", above: 100 }] })))
    ).pipe(Layer.provide(DeviceDirectory.http({ url })))
    const g = await startGateway({}, undefined, pipeline)
    running.push(g)
    const known = await open(g, "site-a-1")
    known.send(telemetry(1, { t: 1 }))
    expect(await known.next()).toEqual({ type: "ack", seq: 1 })
    known.send(telemetry(2, { t: 200 }))
    expect(await known.next()).toEqual({ type: "ack", seq: 2 })
    const unknown = await open(g, "other-1")
    unknown.send(telemetry(1))
    expect(await unknown.next()).toEqual({ type: "ack", seq: 1 })

    expect(stored(g, "site-a-1")).toEqual([
      { seq: 1, body: { metrics: { t: 1 } }, annotations: { metadata: { site: "a", model: "m1" } } },
      {
        seq: 2,
        body: { metrics: { t: 200 } },
        annotations: {
          metadata: { site: "a", model: "m1" },
          alerts: [{ metric: "t", value: 200, limit: 100, crossed: "above", severity: "warning" }]
        }
      }
    ])
    expect(stored(g, "other-1")[0]!.annotations).toEqual({ metadata: null })
    expect(requests).toBe(2) // site-a-1 once (then cached), other-1 once
  })
})
