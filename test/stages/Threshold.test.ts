import { describe, expect, it } from "@effect/vitest"
import { Effect, Schema } from "effect"
import type { Envelope } from "../../src/domain/Envelope.ts"
import * as Stage from "../../src/pipeline/Stage.ts"
import { type Alert, Options, threshold, type WithAlerts } from "../../src/stages/Threshold.ts"
import { eventEnvelope, telemetryEnvelope } from "../support/envelopes.ts"

const telemetry = (metrics: Record<string, number>, seq = 1, tags?: Record<string, string>) =>
  telemetryEnvelope("dev-threshold", seq, metrics, tags)

const event = (name: string, seq = 1) => eventEnvelope("dev-threshold", seq, name)

/** Builds the stage and runs one chunk through it synchronously; nothing may stop. */
const run = (options: Options, inputs: ReadonlyArray<Envelope>): ReadonlyArray<WithAlerts> => {
  const runner = Effect.runSync(Stage.build(threshold(options)))
  expect(runner.isSync).toBe(true)
  const outcome = runner.runSync(inputs)
  expect(outcome.stops).toEqual([])
  expect(outcome.passedAt).toBeUndefined()
  expect(outcome.passed).toHaveLength(inputs.length)
  return outcome.passed
}

const one = (options: Options, input: Envelope): WithAlerts => run(options, [input])[0]!

/** Asserts that `out` is `input` itself, with no `alerts` key. */
const expectUnchanged = (out: WithAlerts, input: Envelope) => {
  expect(out).toBe(input)
  expect("alerts" in out).toBe(false)
}

describe("threshold", () => {
  it("adds an alert when a metric is strictly above its limit, with severity warning by default", () => {
    const input = telemetry({ temp: 80.5, humidity: 40 }, 7, { site: "north" })
    const out = one({ limits: [{ metric: "temp", above: 80 }] }, input)
    expect(out.alerts).toEqual([{ metric: "temp", value: 80.5, limit: 80, crossed: "above", severity: "warning" }])
    // everything else is kept, and the input is not mutated
    const { alerts: _alerts, ...rest } = out
    expect(rest).toEqual(input)
    expect("alerts" in input).toBe(false)
  })

  it("adds an alert when a metric is strictly below its limit, with the configured severity", () => {
    const out = one({ limits: [{ metric: "battery", below: 3.3, severity: "critical" }] }, telemetry({ battery: 3.1 }))
    expect(out.alerts).toEqual([{ metric: "battery", value: 3.1, limit: 3.3, crossed: "below", severity: "critical" }])
  })

  it("does not alert on equality with a limit", () => {
    const options: Options = { limits: [{ metric: "temp", above: 80, below: 80 }, { metric: "zero", above: 0, below: 0 }] }
    const input = telemetry({ temp: 80, zero: -0 })
    expectUnchanged(one(options, input), input)
  })

  it("alerts on a band's two sides, not inside it", () => {
    const options: Options = { limits: [{ metric: "temp", above: 80, below: 10, severity: "info" }] }
    const inputs = [telemetry({ temp: 81 }, 1), telemetry({ temp: 9 }, 2), telemetry({ temp: 50 }, 3)]
    const [high, low, inside] = run(options, inputs)
    expect(high!.alerts).toEqual([{ metric: "temp", value: 81, limit: 80, crossed: "above", severity: "info" }])
    expect(low!.alerts).toEqual([{ metric: "temp", value: 9, limit: 10, crossed: "below", severity: "info" }])
    expectUnchanged(inside!, inputs[2]!)
  })

  it("reports every limit crossed on one metric", () => {
    const options: Options = {
      limits: [
        { metric: "temp", above: 50, severity: "info" },
        { metric: "temp", above: 80, severity: "critical" },
        { metric: "temp", above: 95 },
        { metric: "temp", below: 100 }
      ]
    }
    const out = one(options, telemetry({ temp: 90 }))
    const expected: Array<Alert> = [
      { metric: "temp", value: 90, limit: 50, crossed: "above", severity: "info" },
      { metric: "temp", value: 90, limit: 80, crossed: "above", severity: "critical" },
      { metric: "temp", value: 90, limit: 100, crossed: "below", severity: "warning" }
    ]
    expect(out.alerts).toHaveLength(expected.length)
    expect(out.alerts).toEqual(expect.arrayContaining(expected))
  })

  it("reports crossings on several metrics", () => {
    const options: Options = {
      limits: [
        { metric: "temp", above: 80 },
        { metric: "humidity", above: 90, severity: "info" },
        { metric: "battery", below: 3.3, severity: "critical" },
        { metric: "pressure", above: 2000 }
      ]
    }
    const out = one(options, telemetry({ battery: 3, humidity: 95, temp: 85, pressure: 1013 }))
    const expected: Array<Alert> = [
      { metric: "temp", value: 85, limit: 80, crossed: "above", severity: "warning" },
      { metric: "humidity", value: 95, limit: 90, crossed: "above", severity: "info" },
      { metric: "battery", value: 3, limit: 3.3, crossed: "below", severity: "critical" }
    ]
    expect(out.alerts).toHaveLength(expected.length)
    expect(out.alerts).toEqual(expect.arrayContaining(expected))
  })

  it("returns a message that crosses nothing unchanged (same object, no alerts key)", () => {
    const input = telemetry({ temp: 20, humidity: 50 })
    const out = one({ limits: [{ metric: "temp", above: 80, below: 0 }, { metric: "humidity", above: 90 }] }, input)
    expectUnchanged(out, input)
  })

  it("returns events unchanged (same object, no alerts key)", () => {
    const input = event("temp")
    expectUnchanged(one({ limits: [{ metric: "temp", above: -1e9 }, { metric: "name", below: 1e9 }] }, input), input)
  })

  it("ignores a limit on a metric absent from the message, including Object.prototype names", () => {
    const options: Options = {
      limits: [
        { metric: "pressure", above: 0 },
        { metric: "toString", above: -1e9 },
        { metric: "constructor", below: 1e9 },
        { metric: "__proto__", above: -1e9 }
      ]
    }
    const input = telemetry({ temp: 20 })
    expectUnchanged(one(options, input), input)
  })

  it("looks only at the message's own metrics, not inherited properties", () => {
    const inherited: Record<string, number> = Object.create({ temp: 999 }) as Record<string, number>
    inherited["humidity"] = 50
    const input = telemetry(inherited)
    expectUnchanged(one({ limits: [{ metric: "temp", above: 80 }, { metric: "humidity", above: 90 }] }, input), input)
  })

  it("checks metrics named like Object.prototype members when the message has them", () => {
    const input = telemetry({ toString: 5, constructor: -5 })
    const out = one(
      { limits: [{ metric: "toString", above: 1 }, { metric: "constructor", below: 0, severity: "critical" }] },
      input
    )
    expect(out.alerts).toHaveLength(2)
    expect(out.alerts).toEqual(expect.arrayContaining([
      { metric: "toString", value: 5, limit: 1, crossed: "above", severity: "warning" },
      { metric: "constructor", value: -5, limit: 0, crossed: "below", severity: "critical" }
    ]))
  })

  it("annotates only the crossing messages of a mixed chunk", () => {
    const inputs: ReadonlyArray<Envelope> = [
      telemetry({ temp: 81 }, 1),
      telemetry({ temp: 79 }, 2),
      event("overheat", 3),
      telemetry({ humidity: 99 }, 4),
      telemetry({ temp: 100 }, 5)
    ]
    const out = run({ limits: [{ metric: "temp", above: 80 }] }, inputs)
    expect(out[0]!.alerts).toEqual([{ metric: "temp", value: 81, limit: 80, crossed: "above", severity: "warning" }])
    expectUnchanged(out[1]!, inputs[1]!)
    expectUnchanged(out[2]!, inputs[2]!)
    expectUnchanged(out[3]!, inputs[3]!)
    expect(out[4]!.alerts).toEqual([{ metric: "temp", value: 100, limit: 80, crossed: "above", severity: "warning" }])
    expect(out.map((e) => e.seq)).toEqual([1, 2, 3, 4, 5])
  })

  it("returns every message unchanged with no limits", () => {
    const inputs = [telemetry({ temp: 1e9 }, 1), event("boot", 2)]
    const out = run({ limits: [] }, inputs)
    expectUnchanged(out[0]!, inputs[0]!)
    expectUnchanged(out[1]!, inputs[1]!)
  })
})

describe("threshold Options", () => {
  const decode = Schema.decodeUnknownResult(Options)

  it("accepts valid options", () => {
    expect(decode({ limits: [{ metric: "temp", above: 80, below: -10, severity: "critical" }, { metric: "rh" }] })._tag)
      .toBe("Success")
  })

  it("rejects bad options", () => {
    const bad: ReadonlyArray<unknown> = [
      { limits: [{ metric: "temp", above: 80, severity: "fatal" }] },
      { limits: [{ metric: "", above: 80 }] },
      { limits: [{ metric: "temp", above: Number.POSITIVE_INFINITY }] },
      { limits: [{ metric: "temp", below: "10" }] },
      { limits: [{ above: 80 }] },
      {}
    ]
    for (const input of bad) expect(decode(input)._tag, JSON.stringify(input)).toBe("Failure")
  })
})

describe("threshold stages in a row", () => {
  it("a second threshold stage adds its alerts to the first's", () => {
    const first = threshold({ limits: [{ metric: "a", above: 1 }] })
    const second = threshold({ limits: [{ metric: "b", below: 0, severity: "critical" }] })
    const runner = Effect.runSync(Stage.build(first.pipe(Stage.andThen(second))))
    const out = runner.runSync([telemetry({ a: 5, b: -1 }), telemetry({ a: 0, b: -1 }, 2)]).passed
    expect(out[0]!.alerts).toEqual([
      { metric: "a", value: 5, limit: 1, crossed: "above", severity: "warning" },
      { metric: "b", value: -1, limit: 0, crossed: "below", severity: "critical" }
    ])
    expect(out[1]!.alerts).toEqual([{ metric: "b", value: -1, limit: 0, crossed: "below", severity: "critical" }])
  })
})
