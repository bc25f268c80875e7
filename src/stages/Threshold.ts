/**
 * Example stage: thresholds. Annotates telemetry whose metric crosses a configured limit with
 * an `alerts` field, which travels with the envelope to the sinks (SQLite: the `annotations`
 * column; JSON payloads: a top-level field), so consumers can act on it. Messages that cross
 * nothing, and events, pass unchanged (no `alerts` field, no copy).
 */
import { Schema } from "effect"
import type { Envelope } from "../domain/Envelope.ts"
import * as Stage from "../pipeline/Stage.ts"

/** How serious a crossing is. */
export const Severity = Schema.Literals(["info", "warning", "critical"])
export type Severity = typeof Severity.Type

/** A limit on one metric: crossing means strictly above `above` or strictly below `below`. */
export const Limit = Schema.Struct({
  metric: Schema.String.check(Schema.isMinLength(1)),
  above: Schema.optionalKey(Schema.Finite),
  below: Schema.optionalKey(Schema.Finite),
  severity: Schema.optionalKey(Severity)
})
export type Limit = typeof Limit.Type

/** The stage's options. */
export const Options = Schema.Struct({ limits: Schema.Array(Limit) })
export type Options = typeof Options.Type

/** One crossing, as consumers see it in `alerts`. */
export interface Alert {
  readonly metric: string
  readonly value: number
  readonly limit: number
  readonly crossed: "above" | "below"
  readonly severity: Severity
}

/** An envelope the threshold stage has seen: `alerts` is present when a limit was crossed. */
export type WithAlerts<E extends Envelope = Envelope> = E & { readonly alerts?: ReadonlyArray<Alert> }

/**
 * Adds `alerts` to telemetry that crosses one of `options.limits`. Generic in what it receives,
 * so fields added by earlier stages stay in the type: `threshold<WithMetadata>(…)`.
 */
export const threshold = <A extends Envelope = Envelope>(options: Options): Stage.Stage<A, WithAlerts<A>> => {
  // flat arrays: one pass per message, no iterator objects
  const metrics: Array<string> = []
  const limitsOf: Array<Array<Limit>> = []
  for (const limit of options.limits) {
    const at = metrics.indexOf(limit.metric)
    if (at === -1) {
      metrics.push(limit.metric)
      limitsOf.push([limit])
    } else limitsOf[at]!.push(limit)
  }
  return Stage.map("threshold", (e: A): WithAlerts<A> => {
    if (e.kind !== "telemetry") return e
    const values = e.body.metrics
    let alerts: Array<Alert> | undefined
    for (let m = 0; m < metrics.length; m++) {
      const metric = metrics[m]!
      const value = values[metric]
      if (value === undefined || !Object.hasOwn(values, metric)) continue
      for (const limit of limitsOf[m]!) {
        const severity = limit.severity ?? "warning"
        if (limit.above !== undefined && value > limit.above) {
          ;(alerts ??= []).push({ metric, value, limit: limit.above, crossed: "above", severity })
        }
        if (limit.below !== undefined && value < limit.below) {
          ;(alerts ??= []).push({ metric, value, limit: limit.below, crossed: "below", severity })
        }
      }
    }
    if (alerts === undefined) return e
    // a threshold stage earlier in the pipeline may have found crossings already: keep them
    const earlier = (e as WithAlerts<A>).alerts
    return { ...e, alerts: Array.isArray(earlier) ? [...earlier, ...alerts] : alerts }
  })
}
