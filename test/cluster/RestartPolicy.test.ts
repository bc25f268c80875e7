/** The restart backoff: doubling from 100 ms with 0.8..1.2 jitter, capped at 5 s, reset after a healthy run. */
import { describe, expect, it } from "@effect/vitest"
import { Schema } from "effect"
import { defaultPolicy, nextRestart } from "../../src/cluster/RestartPolicy.ts"

describe("RestartPolicy", () => {
  it("doubles per consecutive short-lived run, up to 5 s", () => {
    const delays: Array<number> = []
    let failures = 0
    for (let i = 0; i < 8; i++) {
      const r = nextRestart(defaultPolicy, failures, 50, 0.5)
      delays.push(r.delayMs)
      failures = r.failures
    }
    expect(delays).toEqual([100, 200, 400, 800, 1600, 3200, 5000, 5000])
  })

  it("starts over after a worker ran healthy for a while", () => {
    expect(nextRestart(defaultPolicy, 6, 10_000, 0.5)).toEqual({ delayMs: 100, failures: 1 })
    expect(nextRestart(defaultPolicy, 6, 9_999, 0.5).delayMs).toBe(5_000)
  })

  it.prop("jitter stays within 0.8..1.2 of the step and under the cap", {
    failures: Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 100 })),
    random: Schema.Number.check(Schema.isBetween({ minimum: 0, maximum: 0.999999 }))
  }, ({ failures, random }) => {
    const { delayMs } = nextRestart(defaultPolicy, failures, 0, random)
    const step = 100 * 2 ** Math.min(failures, 30)
    expect(delayMs).toBeGreaterThanOrEqual(Math.min(5_000, Math.floor(step * 0.8)))
    expect(delayMs).toBeLessThanOrEqual(Math.min(5_000, Math.ceil(step * 1.2)))
  })
})
