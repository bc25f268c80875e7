/**
 * Group commit (GATEWAY_BATCH_INTERVAL_MS): a fleet's trickle, a frame per socket read from many
 * devices, is committed in few batches, not one transaction per read; a message alone is taken
 * at once; a backlog worth a batch does not wait for the interval. The interval is exaggerated
 * (1 s) so that what the assertions see is the interval's doing, not the machine's speed.
 */
import { afterEach, describe, expect, it } from "@effect/vitest"
import { type Answer, Device, telemetry } from "../support/client.ts"
import { startGateway, type TestGateway } from "../support/gateway.ts"
import { rows } from "../support/store.ts"

const running: Array<TestGateway> = []
const devices: Array<Device> = []
afterEach(async () => {
  for (const d of devices.splice(0)) d.end()
  for (const g of running.splice(0)) await g.stop()
})

const INTERVAL_MS = 1_000

/** The sink's batches so far, from `/metrics` (count and messages of gateway_sink_batch_size). */
const batches = async (g: TestGateway) => {
  const text = await (await fetch(`http://127.0.0.1:${g.adminPort}/metrics`)).text()
  const value = (name: string) => Number(new RegExp(`^${name}\\{sink="sqlite"\\} (\\S+)$`, "m").exec(text)?.[1] ?? 0)
  return { count: value("gateway_sink_batch_size_count"), messages: value("gateway_sink_batch_size_sum") }
}

const openFleet = async (g: TestGateway, n: number, prefix: string) => {
  const fleet = await Promise.all(Array.from({ length: n }, (_, i) => Device.open(g.port, `${prefix}-${i}`)))
  for (const { d } of fleet) devices.push(d)
  return fleet.map(({ d }) => d)
}

describe("group commit", () => {
  it("takes a lone message at once and gathers the frames that follow it into one batch", async () => {
    const g = await startGateway({ GATEWAY_BATCH_INTERVAL_MS: String(INTERVAL_MS) })
    running.push(g)
    const [first] = await openFleet(g, 1, "lone")
    const fleet = await openFleet(g, 40, "trickle")

    const sentFirst = performance.now()
    first!.send(telemetry(0))
    const a = await first!.next()
    const firstAckMs = performance.now() - sentFirst
    expect(a).toMatchObject({ type: "ack", seq: 0 })
    const before = await batches(g)

    // forty devices, one frame each, one write each, within the interval that follows
    const sentAt = performance.now()
    for (const d of fleet) d.send(telemetry(0))
    const answers: Array<Answer> = await Promise.all(fleet.map((d) => d.next(10_000)))
    const waitedMs = performance.now() - sentAt
    expect(answers.every((x) => x.type === "ack")).toBe(true)

    const after = await batches(g)
    expect(after.messages - before.messages).toBe(40)
    // one batch, or two if the writes straddled a take; never one per frame
    expect(after.count - before.count).toBeLessThanOrEqual(2)
    // they waited for the interval that began with the first message's batch
    expect(waitedMs + (sentAt - sentFirst)).toBeGreaterThanOrEqual(INTERVAL_MS - 50)
    // the first one did not (it was alone: taken at once)
    expect(firstAckMs).toBeLessThan(INTERVAL_MS - 100)
    expect(rows(g.dataDir).length).toBe(41)
  }, 30_000)

  it("does not hold a backlog worth a batch for the interval", async () => {
    const g = await startGateway({ GATEWAY_BATCH_INTERVAL_MS: String(INTERVAL_MS) })
    running.push(g)
    const [d] = await openFleet(g, 1, "backlog")
    d!.send(telemetry(0))
    await d!.next()
    // 600 frames in one write (past the 256 that make a batch worth taking at once)
    const sentAt = performance.now()
    d!.send(...Array.from({ length: 600 }, (_, i) => telemetry(i + 1)))
    const answers = await d!.take(600, 10_000)
    expect(answers.every((x) => x.type === "ack")).toBe(true)
    // taken without waiting for the interval that began with the first frame's batch a moment ago
    expect(performance.now() - sentAt).toBeLessThan(INTERVAL_MS * 0.8)
    expect(rows(g.dataDir).length).toBe(601)
  }, 30_000)
})
