/**
 * Resume hints across a drain: a device moved by `goaway` shows the hint in its next hello and
 * is admitted ahead of new connections on a node whose accept rate is spent (GATEWAY_ACCEPT_RATE=1,
 * GATEWAY_ACCEPT_BURST=1: after one admission every new hello is `busy`), on another node
 * sharing GATEWAY_RESUME_SECRET or on the next process over the same data directory (the
 * `resume.key` file). Another device's hint, garbage, a hint from another secret, or a hint shown
 * a second time is refused.
 */
import { afterEach, describe, expect, it } from "@effect/vitest"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { type Answer, Device, telemetry } from "../support/client.ts"
import { startGateway, tempDir, type TestGateway } from "../support/gateway.ts"
import { readMetric } from "../support/metrics.ts"

const SECRET = "a fleet-wide resume secret, the same on every node"
/** One admission, then 1 per second: every new hello within the second after it is refused. */
const SPENT = { GATEWAY_ACCEPT_RATE: "1", GATEWAY_ACCEPT_BURST: "1" }

const running: Array<TestGateway> = []
const devices: Array<Device> = []
const dirs: Array<string> = []

afterEach(async () => {
  for (const d of devices.splice(0)) d.end()
  for (const g of running.splice(0)) await g.stop()
  for (const dir of dirs.splice(0)) Fs.rmSync(dir, { recursive: true, force: true })
})

const gateway = async (env: Record<string, string>) => {
  const g = await startGateway(env)
  running.push(g)
  dirs.push(g.dataDir)
  return g
}

/** Connects, sends hello (with `resume` when given) and returns the first answer. */
const hello = async (g: TestGateway, device: string, resume?: unknown): Promise<{ d: Device; answer: Answer }> => {
  const d = await Device.connect(g.port)
  devices.push(d)
  d.send({ type: "hello", v: 1, device, token: "t", ...(resume === undefined ? {} : { resume }) })
  return { d, answer: await d.next() }
}

/** Opens `device` on `g`, drains `g` and returns the `resume` hint of the goaway the device got. */
const hintFromDrain = async (g: TestGateway, device: string): Promise<string> => {
  const { d, answer } = await hello(g, device)
  expect(answer.type).toBe("welcome")
  d.send(telemetry(1))
  expect(await d.next()).toEqual({ type: "ack", seq: 1 })
  const stopped = g.stop()
  const goaway = await d.next()
  expect(goaway).toMatchObject({ type: "goaway", reason: "shutdown" })
  expect(typeof goaway["retryAfterMs"]).toBe("number")
  const resume = goaway["resume"]
  if (typeof resume !== "string") return expect.unreachable(`goaway without a resume hint: ${JSON.stringify(goaway)}`)
  expect(resume.length).toBeLessThanOrEqual(64)
  expect(await d.next()).toMatchObject({ type: "error", code: "shutdown" })
  await stopped
  return resume
}

const isBusyRate = (answer: Answer) => {
  expect(answer).toMatchObject({ type: "error", code: "busy" })
  expect(answer["message"]).toMatch(/too many new connections/)
  expect(answer["retryAfterMs"]).toBeGreaterThan(0)
}

const rateRefusals = (g: TestGateway) => readMetric(g.adminPort, "gateway_admission_refusals_total", { reason: "rate" })

describe("resume hints", () => {
  it("a device drained from node A is admitted by node B (shared secret) past B's spent accept rate; others are not", async () => {
    const a = await gateway({ GATEWAY_RESUME_SECRET: SECRET })
    const b = await gateway({ GATEWAY_RESUME_SECRET: SECRET, ...SPENT })
    const hint = await hintFromDrain(a, "dev-x")

    // B admits one new device, then its bucket is empty for a second
    const refusedBefore = await rateRefusals(b)
    const first = await hello(b, "dev-b-first")
    expect(first.answer.type).toBe("welcome")
    const [fresh, resumed, thief, garbage] = await Promise.all([
      hello(b, "dev-new"), // no hint: busy (rate)
      hello(b, "dev-x", hint), // its own hint: welcome
      hello(b, "dev-y", hint), // dev-x's hint used by dev-y: busy
      hello(b, "dev-z", "not-a-hint") // garbage: busy
    ])
    expect(resumed.answer.type).toBe("welcome")
    isBusyRate(fresh.answer)
    isBusyRate(thief.answer)
    isBusyRate(garbage.answer)
    // a hint admits once: shown again (a second connection of dev-x), it is refused like no hint
    const again = await hello(b, "dev-x", hint)
    isBusyRate(again.answer)
    expect((await rateRefusals(b)) - refusedBefore).toBe(4)

    // the resumed session is a normal one
    resumed.d.send(telemetry(2))
    expect(await resumed.d.next()).toEqual({ type: "ack", seq: 2 })
  })

  it("a hint from a node with another secret is refused", async () => {
    const a = await gateway({ GATEWAY_RESUME_SECRET: "one secret" })
    const b = await gateway({ GATEWAY_RESUME_SECRET: "another secret", ...SPENT })
    const hint = await hintFromDrain(a, "dev-x")
    expect((await hello(b, "dev-b-first")).answer.type).toBe("welcome")
    isBusyRate((await hello(b, "dev-x", hint)).answer)
  })

  it("without GATEWAY_RESUME_SECRET, the next gateway on the same data directory honours the last one's hints (resume.key)", async () => {
    const dataDir = tempDir("gw-resume-dir-")
    dirs.push(dataDir)
    const first = await gateway({ GATEWAY_DATA_DIR: dataDir })
    const hint = await hintFromDrain(first, "dev-x")
    const key = Path.join(dataDir, "resume.key")
    expect(Fs.statSync(key).mode & 0o777).toBe(0o600)

    // the next process on the same directory, its accept rate spent
    const next = await gateway({ GATEWAY_DATA_DIR: dataDir, ...SPENT })
    expect((await hello(next, "dev-filler")).answer.type).toBe("welcome")
    const [resumed, fresh] = await Promise.all([hello(next, "dev-x", hint), hello(next, "dev-new")])
    expect(resumed.answer.type).toBe("welcome")
    isBusyRate(fresh.answer)

    // a gateway on another directory has another key: the hint means nothing there
    const elsewhere = await gateway({ ...SPENT })
    expect((await hello(elsewhere, "dev-filler")).answer.type).toBe("welcome")
    isBusyRate((await hello(elsewhere, "dev-x", hint)).answer)
  })
})
