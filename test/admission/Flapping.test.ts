/**
 * Flapping bans in a running gateway (GATEWAY_FLAP_LIMIT=3, GATEWAY_FLAP_WINDOW_MS=10000,
 * GATEWAY_FLAP_BAN_MS=1500): the 4th connection of one device within the window gets
 * `error busy` with retryAfterMs = the ban (1500 ms), later ones the time left; other devices
 * are unaffected; after the ban the device is welcomed again; `gateway_flap_bans_total` counts
 * the ban once; hellos with a wrong token, and refusals the gateway caused (a device obeying
 * `busy`), do not count toward it.
 */
import { afterEach, describe, expect, it } from "@effect/vitest"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { newEntry } from "../../src/auth/DeviceRegistry.ts"
import { type Answer, Device, telemetry } from "../support/client.ts"
import { startGateway, tempDir, type TestGateway } from "../support/gateway.ts"
import { readMetric } from "../support/metrics.ts"

const FLAP = { GATEWAY_FLAP_LIMIT: "3", GATEWAY_FLAP_WINDOW_MS: "10000", GATEWAY_FLAP_BAN_MS: "1500" }
const BAN_MS = 1_500

const running: Array<TestGateway> = []
const devices: Array<Device> = []
const dirs: Array<string> = []

afterEach(async () => {
  for (const d of devices.splice(0)) d.end()
  for (const g of running.splice(0)) await g.stop()
  for (const dir of dirs.splice(0)) Fs.rmSync(dir, { recursive: true, force: true })
})

const gateway = async (env: Record<string, string>) => {
  const g = await startGateway({ ...FLAP, ...env })
  running.push(g)
  dirs.push(g.dataDir)
  return g
}

/** Connects, sends hello, and returns the first answer (the connection stays open when welcomed). */
const hello = async (g: TestGateway, device: string, token = "t"): Promise<{ d: Device; answer: Answer }> => {
  const d = await Device.connect(g.port)
  devices.push(d)
  d.send({ type: "hello", v: 1, device, token })
  return { d, answer: await d.next() }
}

/** A welcomed session, closed by us before the next connect (so no `replaced` in between). */
const session = async (g: TestGateway, device: string, token = "t") => {
  const { d, answer } = await hello(g, device, token)
  expect({ device, answer: answer.type }).toEqual({ device, answer: "welcome" })
  d.end()
  await d.closed
}

const expectBusy = (answer: Answer) => {
  expect(answer).toMatchObject({ type: "error", code: "busy" })
  const retry = answer["retryAfterMs"]
  if (typeof retry !== "number") return expect.unreachable(`no retryAfterMs in ${JSON.stringify(answer)}`)
  return retry
}

const bans = (g: TestGateway) => readMetric(g.adminPort, "gateway_flap_bans_total")
const flapRefusals = (g: TestGateway) => readMetric(g.adminPort, "gateway_admission_refusals_total", { reason: "flapping" })
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

describe("flapping", () => {
  it("bans the 4th connection within the window for GATEWAY_FLAP_BAN_MS; others unaffected; welcomed after the ban", async () => {
    const g = await gateway({})
    // the first ban of this process: the counter is process-wide, and nothing banned before
    expect(await bans(g)).toBe(0)
    const refusalsBefore = await flapRefusals(g)

    for (let i = 0; i < 3; i++) await session(g, "dev-flappy")
    const fourth = await hello(g, "dev-flappy")
    const bannedAt = Date.now()
    const retry = expectBusy(fourth.answer)
    expect(retry).toBeLessThanOrEqual(BAN_MS)
    expect(retry).toBeGreaterThanOrEqual(BAN_MS - 100)
    expect(fourth.answer["message"]).toMatch(/reconnects too often/)
    await fourth.d.closed

    // while banned: busy with the time left, and no second ban
    await sleep(200)
    const fifth = await hello(g, "dev-flappy")
    const left = expectBusy(fifth.answer)
    expect(left).toBeLessThanOrEqual(BAN_MS - 150)
    expect(left).toBeGreaterThan(0)

    // another device is not affected, and sends as usual
    const calm = await hello(g, "dev-calm")
    expect(calm.answer.type).toBe("welcome")
    calm.d.send(telemetry(1))
    expect(await calm.d.next()).toEqual({ type: "ack", seq: 1 })

    expect(await bans(g)).toBe(1)
    expect((await flapRefusals(g)) - refusalsBefore).toBe(2)

    // after the ban (it ends bannedAt + 1500): welcomed, and its data flows
    await sleep(Math.max(0, bannedAt + BAN_MS + 50 - Date.now()))
    const back = await hello(g, "dev-flappy")
    expect(back.answer.type).toBe("welcome")
    back.d.send(telemetry(1))
    expect(await back.d.next()).toEqual({ type: "ack", seq: 1 })
    expect(await bans(g)).toBe(1)
  })

  it("obeying busy is not flapping: refusals the gateway caused do not count toward the ban", async () => {
    // one admission per second, and a ban from the 2nd admitted connection within the window
    const g = await gateway({ GATEWAY_FLAP_LIMIT: "1", GATEWAY_ACCEPT_RATE: "1", GATEWAY_ACCEPT_BURST: "1", GATEWAY_BUSY_RETRY_MS: "100" })
    const bansBefore = await bans(g)
    expect((await hello(g, "dev-filler")).answer.type).toBe("welcome") // takes the second's token
    let refusals = 0
    let answer: Answer = { type: "none" }
    for (let attempt = 0; attempt < 10; attempt++) {
      const r = await hello(g, "dev-patient")
      answer = r.answer
      if (answer.type === "welcome") break
      expect(answer["message"]).toMatch(/too many new connections/)
      refusals++
      await r.d.closed
      await sleep(expectBusy(answer)) // exactly as told
    }
    // refused, came back as told, welcomed: the refusals were not connections of its own
    expect(refusals).toBeGreaterThanOrEqual(1)
    expect(answer.type).toBe("welcome")
    expect((await bans(g)) - bansBefore).toBe(0)
    // its next admitted connection within the window is one too many
    await sleep(1_050) // a token
    const second = await hello(g, "dev-patient")
    expect(expectBusy(second.answer)).toBe(BAN_MS)
    expect(second.answer["message"]).toMatch(/reconnects too often/)
    expect((await bans(g)) - bansBefore).toBe(1)
  })

  it("hellos with a wrong token do not count toward the ban (registry)", async () => {
    const dir = tempDir("gw-flap-registry-")
    dirs.push(dir)
    const flappy = newEntry("dev-flappy", ["telemetry"])
    const calm = newEntry("dev-calm", ["telemetry"])
    const file = Path.join(dir, "devices.json")
    Fs.writeFileSync(file, JSON.stringify({ devices: [flappy.entry, calm.entry] }))
    const g = await gateway({ GATEWAY_DEVICES: file, GATEWAY_HOST: "127.0.0.1" })
    const bansBefore = await bans(g)

    // far more than the limit of wrong credentials for the device: refused as auth, not counted
    for (let i = 0; i < 6; i++) {
      const { d, answer } = await hello(g, "dev-flappy", flappy.token.slice(1) + "x")
      expect(answer).toMatchObject({ type: "error", code: "auth" })
      await d.closed
    }
    // the token of another device is a wrong token too
    const stolen = await hello(g, "dev-flappy", calm.token)
    expect(stolen.answer).toMatchObject({ type: "error", code: "auth" })

    // so the device still has its 3 connections in the window...
    for (let i = 0; i < 3; i++) await session(g, "dev-flappy", flappy.token)
    // ...and the 4th is the one banned
    const fourth = await hello(g, "dev-flappy", flappy.token)
    const retry = expectBusy(fourth.answer)
    expect(retry).toBeLessThanOrEqual(BAN_MS)
    expect(retry).toBeGreaterThanOrEqual(BAN_MS - 100)
    // a wrong token during the ban is still an auth failure (auth comes before admission)
    expect((await hello(g, "dev-flappy", "nope")).answer).toMatchObject({ type: "error", code: "auth" })

    // the other device is welcomed
    const other = await hello(g, "dev-calm", calm.token)
    expect(other.answer.type).toBe("welcome")
    expect((await bans(g)) - bansBefore).toBe(1)
  })
})
