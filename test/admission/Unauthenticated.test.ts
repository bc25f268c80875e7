/**
 * What clients without a credential may take (issue "Hardening", defects 1 and 7), against a
 * gateway with a device registry on real sockets: connections not yet welcomed have their own
 * cap (node-wide: the oldest is closed to make room; per source address: refused), so a
 * slowloris holding sockets open before its hello cannot keep a registered device out; an address that fails authentication too often is
 * refused for the rest of the window; every failure is counted and logged (rate-limited) with
 * the claimed device id and the peer address.
 */
import { afterEach, describe, expect, it } from "@effect/vitest"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { newEntry } from "../../src/auth/DeviceRegistry.ts"
import { type Answer, Device } from "../support/client.ts"
import { cleanupChildren, spawnGateway, tempDir as childDir } from "../support/childGateway.ts"
import { startGateway, tempDir, type TestGateway } from "../support/gateway.ts"
import { readMetric } from "../support/metrics.ts"
import { logLines, messageOf } from "../support/process.ts"

const running: Array<TestGateway> = []
const devices: Array<Device> = []
const dirs: Array<string> = []

afterEach(async () => {
  for (const d of devices.splice(0)) d.end()
  for (const g of running.splice(0)) await g.stop()
  for (const dir of dirs.splice(0)) Fs.rmSync(dir, { recursive: true, force: true })
  await cleanupChildren()
})

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

/** A registry with one device; its path and the device's token. */
const registry = (dir: string) => {
  const { entry, token } = newEntry("meter-1", ["telemetry", "event"])
  const file = Path.join(dir, "devices.json")
  Fs.writeFileSync(file, JSON.stringify({ devices: [entry] }))
  return { file, token }
}

const gateway = async (env: Record<string, string>) => {
  const dir = tempDir("gw-unauth-")
  dirs.push(dir)
  const { file, token } = registry(dir)
  const g = await startGateway({ GATEWAY_DEVICES: file, GATEWAY_HELLO_TIMEOUT_MS: "20000", ...env })
  running.push(g)
  return { g, token }
}

const connect = async (port: number, from?: string) => {
  const d = await Device.connect(port, from)
  devices.push(d)
  return d
}

/** Sockets that send a blank line every 200 ms and never a hello (a slowloris). */
const slowloris = async (port: number, n: number, from?: string) => {
  const socks: Array<Device> = []
  for (let i = 0; i < n; i++) socks.push(await connect(port, from))
  const drip = setInterval(() => {
    for (const s of socks) if (!s.socket.destroyed) s.socket.write("\n")
  }, 200)
  await sleep(100)
  return { socks, stop: () => clearInterval(drip) }
}

const hello = async (port: number, device: string, token: string, from?: string): Promise<Answer> => {
  const d = await connect(port, from)
  d.send({ type: "hello", v: 1, device, token })
  return d.next()
}

describe("unauthenticated connections", () => {
  it("a slowloris cannot keep a registered device out: connections before their welcome have their own cap", async () => {
    // before: 50 such sockets took all 50 slots and the device got `error busy`
    const { g, token } = await gateway({ GATEWAY_MAX_CONNECTIONS: "50" })
    const loris = await slowloris(g.port, 60)
    try {
      // a quarter of the cap may wait for their hello; the rest were refused busy (the first
      // ones had waited less than a second: no one to evict yet)
      const refused = loris.socks.filter((s) => s.received().some((l) => l.includes('"busy"')))
      expect(refused.length).toBe(60 - 12)
      expect(await readMetric(g.adminPort, "gateway_admission_refusals_total", { reason: "unauthenticated" })).toBe(48)
      // a second later the device connects: the oldest waiting socket is closed to make room
      await sleep(1_000)
      expect(await hello(g.port, "meter-1", token)).toMatchObject({ type: "welcome" })
      expect(await readMetric(g.adminPort, "gateway_admission_refusals_total", { reason: "evicted" })).toBe(1)
      await sleep(50)
      expect(loris.socks.filter((s) => s.received().some((l) => l.includes('"busy"'))).length).toBe(49)
    } finally {
      loris.stop()
    }
  })

  it("one address holds at most GATEWAY_UNAUTHENTICATED_PER_SOURCE of them; another address is not affected", async () => {
    const { g, token } = await gateway({ GATEWAY_UNAUTHENTICATED_PER_SOURCE: "5", GATEWAY_UNAUTHENTICATED_MAX: "100" })
    const loris = await slowloris(g.port, 6, "127.0.0.1")
    try {
      const busy = loris.socks.filter((s) => s.received().some((l) => l.includes('"busy"')))
      expect(busy).toHaveLength(1)
      expect(await readMetric(g.adminPort, "gateway_admission_refusals_total", { reason: "source" })).toBe(1)
      expect(await hello(g.port, "meter-1", token, "127.0.0.2")).toMatchObject({ type: "welcome" })
      // a welcomed connection no longer counts: the address gets its slots back as sessions open
      loris.socks[0]!.end()
      await sleep(100)
      expect(await hello(g.port, "meter-1", token, "127.0.0.1")).toMatchObject({ type: "welcome" })
    } finally {
      loris.stop()
    }
  })

  it("an address with too many failed authentications is refused busy until its window ends; others are not", async () => {
    const { g, token } = await gateway({ GATEWAY_AUTH_FAIL_LIMIT: "3", GATEWAY_AUTH_FAIL_WINDOW_MS: "1500" })
    for (let i = 0; i < 4; i++) expect(await hello(g.port, "meter-1", `guess-${i}`)).toMatchObject({ type: "error", code: "auth" })
    // the 4th failure crossed the limit: even the right token from that address waits
    const blocked = await hello(g.port, "meter-1", token)
    expect(blocked).toMatchObject({ type: "error", code: "busy" })
    expect(blocked["retryAfterMs"]).toBeGreaterThan(0)
    expect(blocked["retryAfterMs"]).toBeLessThanOrEqual(1_500)
    expect(await hello(g.port, "meter-1", token, "127.0.0.2")).toMatchObject({ type: "welcome" })
    expect(await readMetric(g.adminPort, "gateway_auth_failures_total")).toBe(4)
    expect(await readMetric(g.adminPort, "gateway_auth_source_blocks_total")).toBe(1)
    await sleep(Number(blocked["retryAfterMs"]) + 50)
    expect(await hello(g.port, "meter-1", token)).toMatchObject({ type: "welcome" })
  })
})

describe("audit trail", () => {
  it("logs failed authentications with device and peer, at most ten a second plus one summary", async () => {
    const dir = childDir("gw-audit-")
    const { file } = registry(dir)
    // (the 300 connect at once from one address: above the per-address cap of 256 some would get busy, not fail)
    const g = await spawnGateway(dir, { GATEWAY_DEVICES: file, GATEWAY_AUTH_FAIL_LIMIT: "100000", GATEWAY_UNAUTHENTICATED_PER_SOURCE: "100000" })
    // before: 5,000 wrong-token hellos left no log line at all
    const n = 300
    await Promise.all(Array.from({ length: n }, async (_, i) => {
      const d = await Device.connect(g.port)
      d.send({ type: "hello", v: 1, device: `intruder-${i}`, token: "wrong" })
      await d.next().catch(() => undefined)
      d.end()
    }))
    // every failure is in a line or a summary once the summaries are flushed (once a second; a loaded machine may take longer)
    const count = () => {
      const lines = logLines(g.output())
      const detailed = lines.filter((l) => messageOf(l) === "authentication failed")
      const summaries = lines.filter((l) => messageOf(l).startsWith("more authentication failures"))
      const summarized = summaries.reduce((sum, l) => sum + Number((l["annotations"] as Record<string, unknown>)["failures"]), 0)
      return { detailed, summaries, summarized }
    }
    for (const deadline = Date.now() + 10_000; Date.now() < deadline;) {
      const { detailed, summarized } = count()
      if (detailed.length + summarized >= n) break
      await sleep(200)
    }
    const { detailed, summaries, summarized } = count()
    expect(detailed.length).toBeGreaterThanOrEqual(10)
    expect(detailed[0]).toMatchObject({ annotations: expect.objectContaining({ peer: expect.stringContaining("127.0.0.1"), reason: "credential" }) })
    expect(String((detailed[0]!["annotations"] as Record<string, unknown>)["device"])).toMatch(/^intruder-/)
    const flushes = summaries.length + 1
    expect(detailed.length).toBeLessThanOrEqual(10 * (flushes + 1))
    expect(detailed.length + summarized).toBe(n)
  })
})
