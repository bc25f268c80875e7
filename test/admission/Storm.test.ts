/**
 * A reconnection storm against an in-process gateway with GATEWAY_ACCEPT_RATE=500,
 * GATEWAY_ACCEPT_BURST=200, GATEWAY_BUSY_RETRY_MS=200: 5,000 devices (2,000 when CI is set),
 * in a worker thread, connect at once, honour `error busy` by reconnecting after retryAfterMs,
 * then send one telemetry frame. Every device is eventually welcomed and its frame answered exactly once;
 * admissions follow the bucket (burst, then the rate); the busy answers all come from the rate
 * rule, carry retryAfterMs of at least GATEWAY_BUSY_RETRY_MS, spread over a window sized to the
 * backlog (the refusals of the last second over the rate); and a device connected before the
 * storm (pinging from its own thread) keeps getting its pongs and acks quickly throughout.
 */
import { afterEach, describe, expect, it } from "@effect/vitest"
import * as Fs from "node:fs"
import { startGateway, type TestGateway } from "../support/gateway.ts"
import { metricValue, scrape } from "../support/metrics.ts"
import { type RunningPinger, startPinger } from "../support/pingWorker.ts"
import { type RunningStorm, runStorm } from "../support/stormWorker.ts"

/** The issue asks for 5,000 (about 20 s here); CI machines run 2,000. */
const DEVICES = process.env["CI"] === undefined ? 5_000 : 2_000
const RATE = 500
const BURST = 200
const BUSY_RETRY_MS = 200

const running: Array<TestGateway> = []
const pingers: Array<RunningPinger> = []
const storms: Array<RunningStorm> = []

afterEach(async () => {
  for (const s of storms.splice(0)) await s.close()
  for (const p of pingers.splice(0)) await p.stop().catch(() => undefined)
  for (const g of running.splice(0)) {
    await g.stop()
    Fs.rmSync(g.dataDir, { recursive: true, force: true })
  }
})

const quantile = (xs: ReadonlyArray<number>, q: number) => {
  const sorted = [...xs].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!
}

/** The most values of `times` (ms, any order) within any span of `spanMs`. */
const peakWithin = (times: ReadonlyArray<number>, spanMs: number) => {
  const sorted = [...times].sort((a, b) => a - b)
  let peak = 0
  for (let i = 0, j = 0; i < sorted.length; i++) {
    while (sorted[j]! <= sorted[i]! - spanMs) j++
    peak = Math.max(peak, i - j + 1)
  }
  return peak
}

describe("reconnection storm", () => {
  it(`${DEVICES} devices at once: all welcomed and acked at the accept rate, busy retries spread, the connected device unaffected`, async () => {
    const g = await startGateway({
      GATEWAY_ACCEPT_RATE: String(RATE),
      GATEWAY_ACCEPT_BURST: String(BURST),
      GATEWAY_BUSY_RETRY_MS: String(BUSY_RETRY_MS),
      GATEWAY_KEEPALIVE_MS: "120000", // the storm's devices stay silent after their ack
      // this test is about the accept rate: every device comes from 127.0.0.1 (like a fleet
      // behind one NAT address) and they all connect at once, so the caps on connections
      // waiting for their hello are lifted out of the way
      GATEWAY_UNAUTHENTICATED_MAX: "10000",
      GATEWAY_UNAUTHENTICATED_PER_SOURCE: "10000"
    })
    running.push(g)
    // a device connected before the storm, pinging every 50 ms and sending every 200 ms from its
    // own thread (so it keeps sending while the gateway's loop is busy)
    const veteran = startPinger({ port: g.port, device: "dev-veteran", pingEveryMs: 50, dataEveryMs: 200 })
    pingers.push(veteran)
    await veteran.ready
    // let the bucket win back the veteran's token: the storm meets a full bucket of BURST
    await new Promise((resolve) => setTimeout(resolve, 2_000 / RATE + 5))
    const before = await scrape(g.adminPort)

    const started = performance.now()
    const storm = runStorm({ port: g.port, devices: DEVICES, prefix: "storm", timeoutMs: 45_000 })
    storms.push(storm)
    const result = await storm.result
    const elapsed = performance.now() - started
    pingers.splice(pingers.indexOf(veteran), 1)
    const vet = await veteran.stop()
    const after = await scrape(g.adminPort)
    const delta = (name: string, labels: Record<string, string> = {}) =>
      metricValue(after, name, labels) - metricValue(before, name, labels)
    const busy = result.busyRetries
    const minRetry = Math.min(...busy)
    const maxRetry = Math.max(...busy)
    // the refusals of the busiest second (as the devices saw them): what the window is sized to
    const peakRefusals = peakWithin(result.busyTimes, 1_000)
    const backlogWindowMs = (peakRefusals / RATE) * 1000
    console.log(
      `storm of ${DEVICES}: all answered in ${result.doneMs?.toFixed(0)} ms; ${busy.length} busy (peak ${peakRefusals}/s), ` +
        `retryAfterMs ${minRetry}..${maxRetry}, at most ${result.maxAttempts} connections per device; ` +
        `veteran pong p50 ${quantile(vet.pongs, 0.5).toFixed(1)} p95 ${quantile(vet.pongs, 0.95).toFixed(1)} p99 ${quantile(vet.pongs, 0.99).toFixed(1)} ` +
        `max ${Math.max(...vet.pongs).toFixed(1)} ms, ack p50 ${quantile(vet.acks, 0.5).toFixed(1)} ` +
        `p95 ${quantile(vet.acks, 0.95).toFixed(1)} max ${Math.max(...vet.acks).toFixed(1)} ms`
    )

    // every device welcomed, its frame acked, exactly one answer, nothing unexpected
    expect({
      welcomed: result.welcomed,
      acked: result.acked,
      violations: result.violations.slice(0, 5),
      done: result.doneMs !== undefined
    }).toEqual({ welcomed: DEVICES, acked: DEVICES, violations: [], done: true })
    // no connection ended without its answer, none was reset
    expect({ unanswered: result.unanswered, socketErrors: result.socketErrors }).toEqual({ unanswered: 0, socketErrors: {} })
    expect(delta("gateway_messages_total", { kind: "telemetry", outcome: "committed" })).toBeGreaterThanOrEqual(DEVICES)

    // the busy answers: all from the accept-rate rule, each retryAfterMs at least GATEWAY_BUSY_RETRY_MS
    // every device past the bucket is refused at least once; the bucket refills while the first
    // hellos are handled (up to a second of them on a loaded machine)
    expect(busy.length).toBeGreaterThanOrEqual(DEVICES - BURST - RATE)
    expect(result.busyMessages).toEqual({ "too many new connections, retry later": busy.length })
    expect(delta("gateway_admission_refusals_total", { reason: "rate" })).toBe(busy.length)
    expect(delta("gateway_admission_refusals_total")).toBe(busy.length)
    expect(minRetry).toBeGreaterThanOrEqual(BUSY_RETRY_MS)

    // spread over a window sized to the backlog, far wider than the bare [200, 400) ms
    expect(maxRetry - minRetry).toBeGreaterThanOrEqual(Math.max(5 * BUSY_RETRY_MS, 0.5 * backlogWindowMs))
    expect(maxRetry).toBeLessThan(BUSY_RETRY_MS + 2 * backlogWindowMs + 500)
    // and not bunched: almost every 100 ms of the range holds some
    const bins = new Set(busy.map((r) => Math.floor((r - minRetry) / 100)))
    expect(bins.size).toBeGreaterThanOrEqual(0.8 * Math.ceil((maxRetry - minRetry) / 100))
    // so the devices came back at about the rate: few refusals per device
    expect(busy.length).toBeLessThan(4 * DEVICES)

    // admissions follow the bucket: by any moment t of the storm at most BURST + RATE × t were
    // welcomed (a device sees its welcome after the admission, so this holds on its clock too),
    // and the whole storm takes at least the rate's time
    const times = [...result.welcomeTimes].sort((a, b) => a - b)
    const overBucket = times.filter((t, i) => i + 1 > BURST + 1 + (RATE * t) / 1000)
    expect(overBucket).toEqual([])
    expect(times[times.length - 1]!).toBeGreaterThanOrEqual((0.9 * (DEVICES - BURST) / RATE) * 1000)
    expect(elapsed).toBeLessThan(40_000)

    // the device that was there before: its pongs and acks kept coming, quickly, one answer each
    expect({ other: vet.other, unanswered: vet.unanswered }).toEqual({ other: [], unanswered: 0 })
    expect(vet.pongs.length).toBeGreaterThan(elapsed / 50 / 2)
    expect(vet.acks.length).toBeGreaterThan(elapsed / 200 / 2)
    expect(quantile(vet.pongs, 0.5)).toBeLessThan(20)
    expect(quantile(vet.pongs, 0.95)).toBeLessThan(200)
    // the tail waits for the turns in which thousands of hellos arrive together (hellos are
    // handled as they come, without time slices): p99 0.15-0.5 s, max 0.2-0.6 s measured here on
    // a loaded 2-core machine; bounded, never starved
    expect(Math.max(...vet.pongs)).toBeLessThan(2_000)
    // acks wait for commits that share the sink with the storm's first messages
    expect(quantile(vet.acks, 0.5)).toBeLessThan(50)
    expect(quantile(vet.acks, 0.95)).toBeLessThan(1_000)
    expect(Math.max(...vet.acks)).toBeLessThan(3_000)
  }, 50_000)
})
