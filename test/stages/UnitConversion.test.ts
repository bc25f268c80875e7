import { describe, expect, it } from "@effect/vitest"
import { Effect, Schema } from "effect"
import type { Envelope } from "../../src/domain/Envelope.ts"
import * as Stage from "../../src/pipeline/Stage.ts"
import { Options, PRESETS, unitConversion } from "../../src/stages/UnitConversion.ts"
import { eventEnvelope, telemetryEnvelope } from "../support/envelopes.ts"

const telemetry = (metrics: Record<string, number>, tags?: Record<string, string>, seq = 1) =>
  telemetryEnvelope("dev-units", seq, metrics, tags)

const event = (name: string, seq = 1) => eventEnvelope("dev-units", seq, name)

/** Builds the stage and runs one chunk through it synchronously. */
const run = (options: Options, inputs: ReadonlyArray<Envelope>) => {
  const runner = Effect.runSync(Stage.build(unitConversion(options)))
  expect(runner.isSync).toBe(true)
  return runner.runSync(inputs)
}

/** Runs one message that must pass, and returns what the stage passed on. */
const one = (options: Options, input: Envelope): Envelope => {
  const outcome = run(options, [input])
  expect(outcome.stops).toEqual([])
  expect(outcome.passed).toHaveLength(1)
  return outcome.passed[0]!
}

const metricsOf = (e: Envelope): Readonly<Record<string, number>> => {
  if (e.kind !== "telemetry") return expect.unreachable(`expected telemetry, got ${e.kind}`)
  return e.body.metrics
}

const decodeOptions = Schema.decodeUnknownResult(Options)

describe("unitConversion", () => {
  it("renames and converts a metric linearly (to = from × scale + offset)", () => {
    const input = telemetry({ raw_temp: 10 })
    const out = one({ conversions: [{ from: "raw_temp", to: "temp", scale: 2, offset: 1 }] }, input)
    expect(metricsOf(out)).toEqual({ temp: 21 })
    expect(out).not.toBe(input)
    // the input is not mutated
    expect(input.body.metrics).toEqual({ raw_temp: 10 })
  })

  it("defaults scale to 1 and offset to 0, and keeps the name when `to` is absent", () => {
    const options: Options = {
      conversions: [
        { from: "a", scale: 3 },
        { from: "b", offset: -5 },
        { from: "c", to: "c_renamed" }
      ]
    }
    const out = one(options, telemetry({ a: 2, b: 2, c: 7 }))
    expect(metricsOf(out)).toEqual({ a: 6, b: -3, c_renamed: 7 })
  })

  it("converts with the fahrenheit_to_celsius preset", () => {
    const options: Options = { conversions: [{ from: "temp_f", to: "temp_c", preset: "fahrenheit_to_celsius" }] }
    const cases: ReadonlyArray<readonly [number, number]> = [[32, 0], [212, 100], [-40, -40], [98.6, 37], [0, -17.7778]]
    for (const [f, c] of cases) {
      const metrics = metricsOf(one(options, telemetry({ temp_f: f })))
      expect(Object.keys(metrics)).toEqual(["temp_c"])
      expect(metrics["temp_c"]).toBeCloseTo(c, 4)
    }
  })

  it("converts with the other presets", () => {
    const options: Options = {
      conversions: [
        { from: "t", preset: "celsius_to_fahrenheit" },
        { from: "p", to: "p_kpa", preset: "psi_to_kpa" },
        { from: "v", to: "v_kmh", preset: "mph_to_kmh" },
        { from: "l", to: "l_mm", preset: "inch_to_mm" }
      ]
    }
    const metrics = metricsOf(one(options, telemetry({ t: 100, p: 1, v: 60, l: 2 })))
    expect(metrics["t"]).toBeCloseTo(212, 9)
    expect(metrics["p_kpa"]).toBeCloseTo(6.894757, 5)
    expect(metrics["v_kmh"]).toBeCloseTo(96.56064, 9)
    expect(metrics["l_mm"]).toBeCloseTo(50.8, 9)
    expect(Object.keys(metrics).sort()).toEqual(["l_mm", "p_kpa", "t", "v_kmh"])
  })

  it("a preset wins over scale and offset given with it", () => {
    const out = one(
      { conversions: [{ from: "x", preset: "inch_to_mm", scale: 1000, offset: 1000 }] },
      telemetry({ x: 1 })
    )
    expect(metricsOf(out)["x"]).toBeCloseTo(PRESETS.inch_to_mm.scale, 9)
  })

  it("leaves unconverted metrics, tags and the other fields untouched", () => {
    const input = telemetry({ raw: 1, humidity: 55.5, battery: 3.7 }, { site: "north", fw: "1.2" }, 42)
    const out = one({ conversions: [{ from: "raw", to: "pressure", scale: 10 }] }, input)
    expect(metricsOf(out)).toEqual({ pressure: 10, humidity: 55.5, battery: 3.7 })
    if (out.kind !== "telemetry") return expect.unreachable("expected telemetry")
    expect(out.body.tags).toEqual({ site: "north", fw: "1.2" })
    const { body: _ignored, ...rest } = out
    const { body: _ignoredInput, ...restInput } = input
    expect(rest).toEqual(restInput)
  })

  it("passes events unchanged (the same object)", () => {
    const input = event("door_open")
    const out = one({ conversions: [{ from: "door_open", scale: 2 }] }, input)
    expect(out).toBe(input)
  })

  it("returns the same object when no metric matches a rule", () => {
    const input = telemetry({ humidity: 40, battery: 3.3 }, { site: "south" })
    const out = one({ conversions: [{ from: "temp_f", preset: "fahrenheit_to_celsius" }] }, input)
    expect(out).toBe(input)
  })

  it("returns every message unchanged with no rules at all", () => {
    const inputs = [telemetry({ a: 1 }), event("boot", 2)]
    const outcome = run({ conversions: [] }, inputs)
    expect(outcome.passed).toHaveLength(2)
    expect(outcome.passed[0]).toBe(inputs[0])
    expect(outcome.passed[1]).toBe(inputs[1])
  })

  it("the converted value wins when the target name also exists, whatever the key order", () => {
    const options: Options = { conversions: [{ from: "temp_f", to: "temp", preset: "fahrenheit_to_celsius" }] }
    const sourceFirst = metricsOf(one(options, telemetry({ temp_f: 212, temp: 1 })))
    const targetFirst = metricsOf(one(options, telemetry({ temp: 1, temp_f: 212 })))
    for (const metrics of [sourceFirst, targetFirst]) {
      expect(Object.keys(metrics)).toEqual(["temp"])
      expect(metrics["temp"]).toBeCloseTo(100, 9)
    }
  })

  it("applies rules to the names as received (a swap swaps)", () => {
    const options: Options = { conversions: [{ from: "a", to: "b", scale: 10 }, { from: "b", to: "a", scale: 100 }] }
    expect(metricsOf(one(options, telemetry({ a: 1, b: 2 })))).toEqual({ a: 200, b: 10 })
    expect(metricsOf(one(options, telemetry({ b: 2, a: 1 })))).toEqual({ a: 200, b: 10 })
  })

  it("keeps metrics named like Object.prototype members", () => {
    const input = telemetry({ toString: 1, constructor: 2, hasOwnProperty: 3, raw: 4 })
    const out = one({ conversions: [{ from: "raw", to: "cooked", scale: 2 }] }, input)
    const metrics = metricsOf(out)
    expect(metrics["toString"]).toBe(1)
    expect(metrics["constructor"]).toBe(2)
    expect(metrics["hasOwnProperty"]).toBe(3)
    expect(metrics["cooked"]).toBe(8)
    expect(Object.keys(metrics).sort()).toEqual(["constructor", "cooked", "hasOwnProperty", "toString"])
    expect(JSON.parse(JSON.stringify(metrics))).toEqual({ toString: 1, constructor: 2, hasOwnProperty: 3, cooked: 8 })
  })

  it("converts from and to metrics named like Object.prototype members, and __proto__", () => {
    const metrics: Record<string, number> = { constructor: 5, valueOf: 1 }
    Object.defineProperty(metrics, "__proto__", { value: 7, enumerable: true, writable: true, configurable: true })
    const out = one(
      { conversions: [{ from: "constructor", to: "toString", scale: 2 }, { from: "__proto__", to: "proto", scale: 3 }] },
      telemetry(metrics)
    )
    const converted = metricsOf(out)
    expect(Object.hasOwn(converted, "toString")).toBe(true)
    expect(converted["toString"]).toBe(10)
    expect(converted["valueOf"]).toBe(1)
    expect(converted["proto"]).toBe(21)
    expect(Object.hasOwn(converted, "constructor")).toBe(false)
    expect(Object.hasOwn(converted, "__proto__")).toBe(false)
    expect(Object.keys(converted).sort()).toEqual(["proto", "toString", "valueOf"])
  })

  it("keeps an unconverted metric named __proto__ as a plain metric", () => {
    const metrics: Record<string, number> = { raw: 1 }
    Object.defineProperty(metrics, "__proto__", { value: 7, enumerable: true, writable: true, configurable: true })
    const converted = metricsOf(one({ conversions: [{ from: "raw", to: "cooked", scale: 2 }] }, telemetry(metrics)))
    expect(Object.hasOwn(converted, "__proto__")).toBe(true)
    expect(Object.getOwnPropertyDescriptor(converted, "__proto__")?.value).toBe(7)
    expect(Object.keys(converted).sort()).toEqual(["__proto__", "cooked"])
    expect(JSON.stringify(converted)).toContain("\"__proto__\":7")
  })

  it("rejects only the message whose conversion leaves the finite range, with a ValidationError", () => {
    const inputs: ReadonlyArray<Envelope> = [
      telemetry({ x: 1 }, undefined, 1),
      telemetry({ x: 1e308, other: 1 }, undefined, 2),
      event("boot", 3),
      telemetry({ x: -1e308 }, undefined, 4),
      telemetry({ x: 2, y: 1e308 }, undefined, 5)
    ]
    const outcome = run({ conversions: [{ from: "x", to: "x10", scale: 10 }] }, inputs)
    expect(outcome.passed).toHaveLength(3)
    expect(outcome.passedAt).toEqual([0, 2, 4])
    expect(metricsOf(outcome.passed[0]!)).toEqual({ x10: 10 })
    expect(outcome.passed[1]).toBe(inputs[2])
    expect(metricsOf(outcome.passed[2]!)).toEqual({ x10: 20, y: 1e308 })
    expect(outcome.stoppedAt).toEqual([1, 3])
    expect(outcome.stoppedBy).toEqual(["unit-conversion", "unit-conversion"])
    for (const stop of outcome.stops) {
      expect(stop).toBeInstanceOf(Stage.Rejected)
      if (!(stop instanceof Stage.Rejected)) return expect.unreachable("expected a rejection")
      expect(stop.error._tag).toBe("ValidationError")
      expect(stop.error.message).toContain("x10")
    }
  })

  it("rejects an offset that overflows, too", () => {
    const outcome = run(
      { conversions: [{ from: "x", offset: 1e308 }] },
      [telemetry({ x: 1.7e308 }, undefined, 1), telemetry({ x: 0 }, undefined, 2)]
    )
    expect(outcome.passedAt).toEqual([1])
    expect(metricsOf(outcome.passed[0]!)).toEqual({ x: 1e308 })
    expect(outcome.stoppedAt).toEqual([0])
    const stop = outcome.stops[0]
    if (!(stop instanceof Stage.Rejected)) return expect.unreachable("expected a rejection")
    expect(stop.error._tag).toBe("ValidationError")
  })

  it.prop(
    "a linear rule to a fresh name gives value × scale + offset and keeps the number of metrics",
    {
      value: Schema.Finite.check(Schema.isBetween({ minimum: -1e6, maximum: 1e6 })),
      others: Schema.Array(Schema.Finite.check(Schema.isBetween({ minimum: -1e6, maximum: 1e6 }))),
      scale: Schema.Finite.check(Schema.isBetween({ minimum: -1e3, maximum: 1e3 })),
      offset: Schema.Finite.check(Schema.isBetween({ minimum: -1e6, maximum: 1e6 }))
    },
    ({ offset, others, scale, value }) => {
      const metrics: Record<string, number> = {}
      others.forEach((v, i) => {
        metrics[`m${i}`] = v
      })
      metrics["reading"] = value
      const out = metricsOf(one({ conversions: [{ from: "reading", to: "reading_si", scale, offset }] }, telemetry(metrics)))
      expect(Number.isFinite(out["reading_si"])).toBe(true)
      expect(out["reading_si"]).toBe(value * scale + offset)
      expect(Object.hasOwn(out, "reading")).toBe(false)
      expect(Object.keys(out)).toHaveLength(Object.keys(metrics).length)
      others.forEach((v, i) => {
        expect(out[`m${i}`]).toBe(v)
      })
    },
    { arbitrary: { runs: 200 } }
  )
})

describe("unitConversion Options", () => {
  it("accepts valid options", () => {
    const decoded = decodeOptions({
      conversions: [
        { from: "temp_f", to: "temp_c", preset: "fahrenheit_to_celsius" },
        { from: "raw", scale: 0.1, offset: -3 },
        { from: "rename_only", to: "renamed" }
      ]
    })
    expect(decoded._tag).toBe("Success")
  })

  it("rejects bad options", () => {
    const bad: ReadonlyArray<unknown> = [
      { conversions: [{ from: "t", preset: "kelvin_to_celsius" }] },
      { conversions: [{ from: "" }] },
      { conversions: [{ from: "t", to: "" }] },
      { conversions: [{ from: "t", scale: Number.POSITIVE_INFINITY }] },
      { conversions: [{ from: "t", offset: Number.NaN }] },
      { conversions: [{ from: "t", scale: "2" }] },
      { conversions: [{ to: "t" }] },
      { conversions: "fahrenheit_to_celsius" },
      {}
    ]
    for (const input of bad) {
      expect(decodeOptions(input)._tag, JSON.stringify(input)).toBe("Failure")
    }
  })
})
