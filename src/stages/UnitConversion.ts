/**
 * Example stage: unit conversion. Renames telemetry metrics and converts their values linearly
 * (`to = from × scale + offset`, or a named preset), so downstream consumers see one unit per
 * metric whatever the firmware sends. Events pass unchanged. A conversion that would leave the
 * finite range rejects that message alone (`nack invalid`).
 */
import { Schema } from "effect"
import type { Envelope } from "../domain/Envelope.ts"
import { ValidationError } from "../domain/Errors.ts"
import * as Stage from "../pipeline/Stage.ts"

/** Common conversions by name. */
export const PRESETS = {
  fahrenheit_to_celsius: { scale: 5 / 9, offset: -32 * 5 / 9 },
  celsius_to_fahrenheit: { scale: 9 / 5, offset: 32 },
  psi_to_kpa: { scale: 6.894757293168361, offset: 0 },
  mph_to_kmh: { scale: 1.609344, offset: 0 },
  inch_to_mm: { scale: 25.4, offset: 0 }
} as const

/** One conversion rule, as written in code or in the stages file. */
export const Conversion = Schema.Struct({
  /** The metric as the device sends it. */
  from: Schema.String.check(Schema.isMinLength(1)),
  /** Its new name (default: unchanged). */
  to: Schema.optionalKey(Schema.String.check(Schema.isMinLength(1))),
  /** A named conversion; or give `scale` and `offset`. */
  preset: Schema.optionalKey(Schema.Literals(Object.keys(PRESETS) as Array<keyof typeof PRESETS>)),
  scale: Schema.optionalKey(Schema.Finite),
  offset: Schema.optionalKey(Schema.Finite)
})
export type Conversion = typeof Conversion.Type

/** The stage's options. */
export const Options = Schema.Struct({ conversions: Schema.Array(Conversion) })
export type Options = typeof Options.Type

interface Rule {
  readonly to: string
  readonly scale: number
  readonly offset: number
}

/**
 * Converts the metrics named in `options.conversions`; the others are kept as they are.
 * Generic in what it receives (fields added by earlier stages stay in the type).
 */
export const unitConversion = <A extends Envelope = Envelope>(options: Options): Stage.Stage<A, A, ValidationError> => {
  const rules = new Map<string, Rule>()
  for (const c of options.conversions) {
    const linear = c.preset === undefined ? { scale: c.scale ?? 1, offset: c.offset ?? 0 } : PRESETS[c.preset]
    rules.set(c.from, { to: c.to ?? c.from, ...linear })
  }
  const froms = [...rules.keys()]
  return Stage.map("unit-conversion", (e: A): Stage.Verdict<A, ValidationError> => {
    if (e.kind !== "telemetry") return e
    const metrics = e.body.metrics
    let touched = false
    for (let r = 0; r < froms.length && !touched; r++) touched = Object.hasOwn(metrics, froms[r]!)
    if (!touched) return e
    // no prototype: a metric may be named like an Object.prototype member (or __proto__)
    const converted: Record<string, number> = Object.create(null)
    for (const name in metrics) {
      const rule = rules.get(name)
      if (rule === undefined) {
        if (!Object.hasOwn(converted, name)) converted[name] = metrics[name]!
        continue
      }
      const value = metrics[name]! * rule.scale + rule.offset
      if (!Number.isFinite(value)) {
        return Stage.reject(new ValidationError({ message: `converting ${name} to ${rule.to} leaves the finite range` }))
      }
      converted[rule.to] = value
    }
    return { ...e, body: { ...e.body, metrics: converted } }
  })
}
