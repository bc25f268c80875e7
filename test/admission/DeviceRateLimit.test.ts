/**
 * Per-device rate limits (messages and bytes per second): DeviceRateLimit.ts promises that a
 * frame over either limit gets "the retryAfterMs after which it would pass". These tests hold it
 * to that, on its own and over a real socket: a refused frame spends from neither bucket, and is
 * told the wait for both limits. (They failed before fc76a34, when a frame refused by the
 * message limit kept the bytes it had taken and a frame refused by the byte limit was told the
 * byte wait only.)
 */
import { afterEach, describe, expect, it } from "@effect/vitest"
import { Schema } from "effect"
import * as Arbitrary from "effect/Arbitrary"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { DeviceRateLimit } from "../../src/admission/DeviceRateLimit.ts"
import { newEntry } from "../../src/auth/DeviceRegistry.ts"
import { Device, telemetry } from "../support/client.ts"
import { startGateway, tempDir, type TestGateway } from "../support/gateway.ts"

const int = (minimum: number, maximum: number) => Schema.Int.check(Schema.isBetween({ minimum, maximum }))

/** One frame: `size` is a fraction of the byte limit (so never larger than the bucket); `retry`: resend the refused one after its wait. */
const Op = Schema.Struct({ dt: int(0, 1_500), size: int(1, 1_000), retry: Schema.Boolean })

describe("DeviceRateLimit", () => {
  it("no limiter when both limits are off; one limit alone works", () => {
    expect(DeviceRateLimit.of({ msgsPerSec: 0, bytesPerSec: 0 }, 0)).toBeUndefined()
    const msgs = DeviceRateLimit.of({ msgsPerSec: 2, bytesPerSec: 0 }, 0)!
    expect([msgs.admit(10_000_000, 0), msgs.admit(1, 0)]).toEqual([0, 0])
    expect(msgs.admit(1, 0)).toBe(500)
    const bytes = DeviceRateLimit.of({ msgsPerSec: 0, bytesPerSec: 1000 }, 0)!
    for (let i = 0; i < 10; i++) expect(bytes.admit(100, 0)).toBe(0)
    expect(bytes.admit(100, 0)).toBe(100)
  })

  it("a frame refused by the message limit does not spend the byte budget: it passes after its wait", () => {
    const limit = new DeviceRateLimit({ msgsPerSec: 5, bytesPerSec: 1000 }, 0)
    for (let i = 0; i < 5; i++) expect(limit.admit(10, 0)).toBe(0) // 5 messages, 50 bytes
    const wait = limit.admit(900, 0) // 950 bytes are there; no message token for 200 ms
    expect(wait).toBe(200)
    // 200 ms later: a message token, and 950 + 200 bytes (capped at 1000) ≥ 900
    expect(limit.admit(900, wait)).toBe(0)
  })

  it("a frame refused by the byte limit is told the wait for both limits", () => {
    const limit = new DeviceRateLimit({ msgsPerSec: 1, bytesPerSec: 1000 }, 0)
    expect(limit.admit(10, 0)).toBe(0) // the second's only message
    const wait = limit.admit(995, 0) // 5 bytes short (5 ms), but no message for 1000 ms
    expect(wait).toBeGreaterThanOrEqual(1000)
    expect(limit.admit(995, wait)).toBe(0)
  })

  it.prop(
    "whatever came before, a refused frame passes when resent after the wait it was told",
    {
      msgsPerSec: int(1, 50),
      bytesPerSec: int(100, 10_000),
      ops: Arbitrary.array(Arbitrary.schema(Op), { minLength: 1, maxLength: 80 })
    },
    ({ bytesPerSec, msgsPerSec, ops }) => {
      const limit = new DeviceRateLimit({ msgsPerSec, bytesPerSec }, 0)
      let t = 0
      let refused: { readonly size: number; readonly wait: number } | undefined
      for (const op of ops) {
        if (op.retry && refused !== undefined) {
          t += refused.wait
          const again = limit.admit(refused.size, t)
          expect({ frame: refused, again }).toEqual({ frame: refused, again: 0 })
          refused = undefined
          continue
        }
        t += op.dt
        const size = Math.max(1, Math.floor((op.size / 1_000) * bytesPerSec))
        const wait = limit.admit(size, t)
        refused = wait > 0 ? { size, wait } : undefined
      }
    },
    { arbitrary: { runs: 300 } }
  )
})

// ---- the same over a socket ----

const running: Array<TestGateway> = []
const devices: Array<Device> = []

afterEach(async () => {
  for (const d of devices.splice(0)) d.end()
  for (const g of running.splice(0)) {
    await g.stop()
    Fs.rmSync(g.dataDir, { recursive: true, force: true })
  }
})

describe("rate_limited over a socket", () => {
  it("a frame nacked rate_limited is acked when resent after its retryAfterMs", async () => {
    const dir = tempDir("gw-rate-bug-")
    const dev = newEntry("dev-mixed", ["telemetry"])
    const file = Path.join(dir, "devices.json")
    Fs.writeFileSync(file, JSON.stringify({
      devices: [{ ...dev.entry, class: "mixed" }],
      classes: { mixed: { msgsPerSec: 5, bytesPerSec: 1000 } }
    }))
    const g = await startGateway({ GATEWAY_DEVICES: file, GATEWAY_HOST: "127.0.0.1", GATEWAY_DATA_DIR: dir })
    running.push(g)
    const { d } = await Device.open(g.port, "dev-mixed", { token: dev.token })
    devices.push(d)
    // five small frames use the second's 5 messages and < 400 bytes; then a 600-byte frame: the
    // byte budget has room for it (> 600 left), the message budget has none for 200 ms
    const small = [1, 2, 3, 4, 5].map((seq) => telemetry(seq))
    expect(small.reduce((n, f) => n + Buffer.byteLength(JSON.stringify(f)), 0)).toBeLessThan(400)
    const base = JSON.stringify(telemetry(6, { t: 6 }, { pad: "" })).length
    const big = telemetry(6, { t: 6 }, { pad: "x".repeat(600 - base) })
    expect(Buffer.byteLength(JSON.stringify(big))).toBe(600)
    d.send(...small, big)
    const answers = await d.take(6)
    expect(answers.slice(0, 5).map((a) => a.type)).toEqual(["ack", "ack", "ack", "ack", "ack"])
    expect(answers[5]).toMatchObject({ type: "nack", seq: 6, code: "rate_limited", retry: true })
    const wait = answers[5]!["retryAfterMs"] as number
    await new Promise((resolve) => setTimeout(resolve, wait + 5))
    d.send(big)
    expect(await d.next()).toEqual({ type: "ack", seq: 6 })
  })
})
