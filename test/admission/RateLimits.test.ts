/**
 * Per-device rate limits in a running gateway: a registry class's limits (5 msgs/s) and the
 * configured default (GATEWAY_DEVICE_BYTES_PER_SEC): frames over the limit are answered
 * `nack rate_limited` (retry true, retryAfterMs > 0) in send order, the frame after the wait
 * passes, `gateway_messages_total{outcome="rate_limited"}` counts them; a registry naming an
 * undefined class stops the start.
 */
import { afterEach, describe, expect, it } from "@effect/vitest"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { type DeviceEntry, newEntry } from "../../src/auth/DeviceRegistry.ts"
import { type Answer, Device, event, telemetry } from "../support/client.ts"
import { startGateway, tempDir, type TestGateway } from "../support/gateway.ts"
import { readMetric } from "../support/metrics.ts"
import { killChildren, logLines, messageOf, runToExit } from "../support/process.ts"

const running: Array<TestGateway> = []
const devices: Array<Device> = []
const dirs: Array<string> = []

afterEach(async () => {
  for (const d of devices.splice(0)) d.end()
  for (const g of running.splice(0)) await g.stop()
  await killChildren()
  for (const dir of dirs.splice(0)) Fs.rmSync(dir, { recursive: true, force: true })
})

const dir = () => {
  const d = tempDir("gw-rate-")
  dirs.push(d)
  return d
}

const gateway = async (env: Record<string, string>) => {
  const g = await startGateway(env)
  running.push(g)
  dirs.push(g.dataDir)
  return g
}

const open = async (g: TestGateway, device: string, token = "t") => {
  const r = await Device.open(g.port, device, { token })
  devices.push(r.d)
  return r.d
}

/** Writes a registry file and returns its path. */
const registry = (devices: ReadonlyArray<DeviceEntry>, classes?: Record<string, { msgsPerSec: number; bytesPerSec: number }>) => {
  const file = Path.join(dir(), "devices.json")
  Fs.writeFileSync(file, JSON.stringify(classes === undefined ? { devices } : { devices, classes }))
  return file
}

const rateLimited = (kind: "telemetry" | "event", g: TestGateway) =>
  readMetric(g.adminPort, "gateway_messages_total", { kind, outcome: "rate_limited" })

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

/** A telemetry frame whose JSON is exactly `bytes` bytes long (newline excluded). */
const telemetryOfSize = (seq: number, bytes: number) => {
  const base = JSON.stringify(telemetry(seq, { t: seq }, { pad: "" }))
  const frame = JSON.stringify(telemetry(seq, { t: seq }, { pad: "x".repeat(bytes - base.length) }))
  expect(Buffer.byteLength(frame)).toBe(bytes)
  return frame + "\n"
}

const expectRateLimited = (answer: Answer, seq: number, maxWait: number) => {
  expect(answer).toMatchObject({ type: "nack", seq, code: "rate_limited", retry: true })
  const wait = answer["retryAfterMs"]
  if (typeof wait !== "number") return expect.unreachable(`no retryAfterMs: ${JSON.stringify(answer)}`)
  expect(Number.isInteger(wait)).toBe(true)
  expect(wait).toBeGreaterThan(0)
  expect(wait).toBeLessThanOrEqual(maxWait)
  return wait
}

describe("per-device rate limits", () => {
  it("a registry class of 5 msgs/s: 20 frames in one write → 5 acks, then 15 rate_limited, in order; after the wait one passes", async () => {
    const slow = newEntry("dev-slow", ["telemetry", "event"])
    const plain = newEntry("dev-plain", ["telemetry"])
    const file = registry([{ ...slow.entry, class: "slow" }, plain.entry], { slow: { msgsPerSec: 5, bytesPerSec: 0 } })
    // the defaults (for devices without a class): 5000 msgs/s, 1000 bytes/s
    const g = await gateway({ GATEWAY_DEVICES: file, GATEWAY_HOST: "127.0.0.1", GATEWAY_DEVICE_BYTES_PER_SEC: "1000" })
    const telemetryBefore = await rateLimited("telemetry", g)
    const eventsBefore = await rateLimited("event", g)

    const d = await open(g, "dev-slow", slow.token)
    d.send(...Array.from({ length: 20 }, (_, i) => telemetry(i + 1)))
    const answers = await d.take(20)
    // every frame answered once, in send order
    expect(answers.map((a) => a["seq"])).toEqual(Array.from({ length: 20 }, (_, i) => i + 1))
    expect(answers.slice(0, 5)).toEqual([1, 2, 3, 4, 5].map((seq) => ({ type: "ack", seq })))
    const waits = answers.slice(5).map((a, i) => expectRateLimited(a, i + 6, 200)) // one message per 200 ms
    expect(await d.silentFor(50)).toBe(true)
    expect((await rateLimited("telemetry", g)) - telemetryBefore).toBe(15)

    // after the wait it was told, the next frame passes; the limit still holds behind it (for events too)
    await sleep(Math.max(...waits))
    d.send(telemetry(21), ...[22, 23, 24, 25, 26].map((seq) => event(seq)))
    const behind = await d.take(6)
    expect(behind.map((a) => a["seq"])).toEqual([21, 22, 23, 24, 25, 26])
    expect(behind[0]).toEqual({ type: "ack", seq: 21 })
    const eventNacks = behind.slice(1).filter((a) => a.type === "nack")
    expect(eventNacks.length).toBeGreaterThanOrEqual(1)
    for (const n of eventNacks) expectRateLimited(n, n["seq"] as number, 200)
    // acks first, then nacks: what passed is a prefix
    expect(behind.slice(1).findIndex((a) => a.type === "nack")).toBe(5 - eventNacks.length)
    expect((await rateLimited("event", g)) - eventsBefore).toBe(eventNacks.length)

    // the class replaces the defaults: no byte limit, so 2500 bytes at once pass (the default is 1000/s)
    await sleep(1_000)
    d.send(Array.from({ length: 5 }, (_, i) => telemetryOfSize(27 + i, 500)).join(""))
    expect(await d.take(5)).toEqual([27, 28, 29, 30, 31].map((seq) => ({ type: "ack", seq })))

    // a device without a class gets the defaults: 1000 bytes/s of 100-byte frames → 10 pass
    const p = await open(g, "dev-plain", plain.token)
    p.send(Array.from({ length: 20 }, (_, i) => telemetryOfSize(i + 1, 100)).join(""))
    const plainAnswers = await p.take(20)
    expect(plainAnswers.slice(0, 10)).toEqual(Array.from({ length: 10 }, (_, i) => ({ type: "ack", seq: i + 1 })))
    plainAnswers.slice(10).forEach((a, i) => expectRateLimited(a, i + 11, 100))
    expect((await rateLimited("telemetry", g)) - telemetryBefore).toBe(25)
  })

  it("the configured default GATEWAY_DEVICE_BYTES_PER_SEC=2000: 500-byte frames → 4 pass, then rate_limited", async () => {
    const g = await gateway({ GATEWAY_DEVICE_BYTES_PER_SEC: "2000" })
    const before = await rateLimited("telemetry", g)
    const d = await open(g, "dev-bytes")
    d.send(Array.from({ length: 10 }, (_, i) => telemetryOfSize(i + 1, 500)).join(""))
    const answers = await d.take(10)
    expect(answers.slice(0, 4)).toEqual([1, 2, 3, 4].map((seq) => ({ type: "ack", seq })))
    // 500 bytes at 2000 bytes/s: 250 ms
    const waits = answers.slice(4).map((a, i) => expectRateLimited(a, i + 5, 250))
    expect((await rateLimited("telemetry", g)) - before).toBe(6)

    // the limit is per device: another device at the same time is not affected
    const other = await open(g, "dev-bytes-2")
    other.send(Array.from({ length: 4 }, (_, i) => telemetryOfSize(i + 1, 500)).join(""))
    expect(await other.take(4)).toEqual([1, 2, 3, 4].map((seq) => ({ type: "ack", seq })))

    // after the wait, the next 500 bytes pass
    await sleep(Math.max(...waits))
    d.send(telemetryOfSize(11, 500))
    expect(await d.next()).toEqual({ type: "ack", seq: 11 })
    // and small frames still count against the bytes: 2000 bytes/s of 100-byte frames is 20/s
    await sleep(1_000) // the bucket is full again: 2000 bytes
    d.send(Array.from({ length: 25 }, (_, i) => telemetryOfSize(12 + i, 100)).join(""))
    const small = await d.take(25)
    expect(small.filter((a) => a.type === "ack")).toHaveLength(20)
    expect(small.slice(20).every((a) => a.type === "nack" && a["code"] === "rate_limited")).toBe(true)
  })

  it("a registry device naming an undefined class stops the start: exit 78 (bad configuration), one line naming the device and the class", async () => {
    const entry = newEntry("dev-classless", ["telemetry"]).entry
    const file = registry([{ ...entry, class: "fast" }], { slow: { msgsPerSec: 5, bytesPerSec: 0 } })
    const { code, output } = await runToExit(dir(), { GATEWAY_DEVICES: file, GATEWAY_HOST: "127.0.0.1" })
    expect({ code, output }).toEqual({ code: 78, output: expect.any(String) })
    const errors = logLines(output).filter((l) => l.level === "ERROR")
    expect(errors).toHaveLength(1)
    const line = messageOf(errors[0]!)
    expect(line).toMatch(/^invalid configuration: GATEWAY_DEVICES: /)
    expect(line).toContain("dev-classless")
    expect(line).toContain('"fast"')
    expect(output).not.toContain('"message":"listening"')
    // no "classes" at all is the same mistake
    const bare = registry([{ ...entry, class: "slow" }])
    const second = await runToExit(dir(), { GATEWAY_DEVICES: bare, GATEWAY_HOST: "127.0.0.1" })
    expect(second.code).toBe(78)
    expect(logLines(second.output).filter((l) => l.level === "ERROR").map(messageOf)).toEqual([
      expect.stringContaining("names class \"slow\"")
    ])
  })
})
