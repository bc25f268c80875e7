/**
 * Which sinks take which messages. The simple case is `GATEWAY_SINK`: one sink, or several
 * separated by commas, each taking every message (`GATEWAY_SINK=nats,postgres`). Rules come from
 * the routes file (`GATEWAY_ROUTES_FILE`), tried in order, the first that matches a message
 * deciding its sinks; a message no rule matches goes to `default` (or to `GATEWAY_SINK`):
 *
 * ```json
 * { "routes": [
 *     { "kinds": ["event"], "devices": ["pump-*"], "sinks": ["postgres", "nats"] },
 *     { "kinds": ["telemetry"], "sinks": ["nats"] } ],
 *   "default": ["sqlite"] }
 * ```
 *
 * Devices are exact ids or `prefix*` (as in the stages file). A message is acked once every sink
 * it is routed to has committed it. A bad file stops the start with one line (exit 78).
 */
import { Data, Effect, Schema } from "effect"
import { readJsonFile } from "../../config/JsonFile.ts"
import { oneLine } from "../../config/StagesFile.ts"
import type { Kind } from "../../domain/Frames.ts"
import { matcher, type Selectable } from "../../pipeline/Stage.ts"

/** The sinks the gateway has drivers for. */
export const SINK_NAMES = ["sqlite", "nats", "postgres"] as const
/** A sink's name. */
export type SinkName = (typeof SINK_NAMES)[number]

const SinkList = Schema.Array(Schema.Literals(SINK_NAMES)).check(Schema.isMinLength(1))

/** One rule: the messages it matches (all kinds and devices when left out) and their sinks. */
export const RouteRule = Schema.Struct({
  kinds: Schema.optionalKey(Schema.Array(Schema.Literals(["telemetry", "event"])).check(Schema.isMinLength(1))),
  devices: Schema.optionalKey(Schema.Array(Schema.String.check(Schema.isMinLength(1))).check(Schema.isMinLength(1))),
  sinks: SinkList
})
export type RouteRule = typeof RouteRule.Type

/** The routes file. */
export const RoutesFile = Schema.Struct({ routes: Schema.Array(RouteRule), default: Schema.optionalKey(SinkList) })
export type RoutesFile = typeof RoutesFile.Type

/** The routes file or `GATEWAY_SINK` is wrong. */
export class RoutesError extends Data.TaggedError("RoutesError")<{ readonly message: string }> {}

/** The largest routes file read. */
export const MAX_ROUTES_FILE_BYTES = 256 * 1024

const decode = Schema.decodeUnknownResult(RoutesFile, { onExcessProperty: "error" })

/** Reads and validates the routes file. */
export const readRoutesFile = (path: string): Effect.Effect<RoutesFile, RoutesError> =>
  readJsonFile(path, MAX_ROUTES_FILE_BYTES).pipe(
    Effect.mapError((message) => new RoutesError({ message: `GATEWAY_ROUTES_FILE: ${message}` })),
    Effect.flatMap((json) => {
      const decoded = decode(json)
      return decoded._tag === "Success"
        ? Effect.succeed(decoded.success)
        : Effect.fail(new RoutesError({ message: `GATEWAY_ROUTES_FILE: ${path}: ${oneLine(decoded.failure.message)}` }))
    })
  )

/** `GATEWAY_SINK` as a list of sinks: `sqlite`, `nats`, `nats,postgres`. */
export const parseSinkList = (text: string): Effect.Effect<ReadonlyArray<SinkName>, RoutesError> => {
  const names = text.split(",").map((s) => s.trim())
  const unknown = names.filter((n) => !(SINK_NAMES as ReadonlyArray<string>).includes(n))
  if (names.length === 0 || unknown.length > 0) {
    return Effect.fail(new RoutesError({ message: `GATEWAY_SINK: expected ${SINK_NAMES.join(", ")} or several separated by commas, got ${JSON.stringify(text)}` }))
  }
  return Effect.succeed([...new Set(names as Array<SinkName>)])
}

/** Routes compiled for the hot path: each message's route is an index into {@link routes}. */
export interface RouteTable {
  /** The distinct sink sets messages are routed to; `routes[routeOf(e)]` are `e`'s sinks. */
  readonly routes: ReadonlyArray<ReadonlyArray<SinkName>>
  /** Every sink some route names (the drivers to start). */
  readonly sinks: ReadonlyArray<SinkName>
  /** The route of one message. */
  readonly routeOf: (e: Selectable) => number
}

/** The table of `rules` (first match wins), with `fallback` for messages no rule matches. */
export const compile = (rules: ReadonlyArray<RouteRule>, fallback: ReadonlyArray<SinkName>): RouteTable => {
  const routes: Array<ReadonlyArray<SinkName>> = []
  const indexOf = (sinks: ReadonlyArray<SinkName>) => {
    const key = [...new Set(sinks)].sort()
    const at = routes.findIndex((r) => r.length === key.length && r.every((s, i) => s === key[i]))
    if (at >= 0) return at
    routes.push(key)
    return routes.length - 1
  }
  const tests = rules.map((rule) => ({
    matches: matcher([{ ...(rule.kinds ? { kinds: rule.kinds as ReadonlyArray<Kind> } : {}), ...(rule.devices ? { devices: rule.devices } : {}) }]),
    route: indexOf(rule.sinks)
  }))
  const fallbackRoute = indexOf(fallback)
  const sinks = [...new Set(routes.flat())]
  return {
    routes,
    sinks,
    routeOf: tests.length === 0 ? () => fallbackRoute : (e) => {
      for (const t of tests) if (t.matches(e)) return t.route
      return fallbackRoute
    }
  }
}
