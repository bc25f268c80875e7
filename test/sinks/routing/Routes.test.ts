/**
 * Routes: `GATEWAY_SINK` lists and the routes file, compiled; first matching rule wins, the rest
 * go to the default; a bad list or file is one line naming the variable.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { compile, parseSinkList, readRoutesFile } from "../../../src/sinks/routing/Routes.ts"
import { tempDir } from "../../support/gateway.ts"

const write = (json: unknown) => {
  const file = Path.join(tempDir("gw-routes-"), "routes.json")
  Fs.writeFileSync(file, typeof json === "string" ? json : JSON.stringify(json))
  return file
}

describe("Routes", () => {
  it.effect("GATEWAY_SINK: one sink or several, duplicates folded; anything else refused naming the variable", () =>
    Effect.gen(function*() {
      expect(yield* parseSinkList("sqlite")).toEqual(["sqlite"])
      expect(yield* parseSinkList("nats, postgres,nats")).toEqual(["nats", "postgres"])
      const bad = yield* Effect.flip(parseSinkList("nats,kafka"))
      expect(bad.message).toMatch(/^GATEWAY_SINK: expected sqlite, nats, postgres .*"nats,kafka"/)
      expect((yield* Effect.flip(parseSinkList(""))).message).toMatch(/^GATEWAY_SINK/)
    }))

  it("first matching rule wins; kinds and device prefixes; the rest to the default; equal sink sets share a route", () => {
    const table = compile([
      { kinds: ["event"], devices: ["pump-*"], sinks: ["postgres", "nats"] },
      { kinds: ["telemetry"], devices: ["pump-7"], sinks: ["sqlite"] },
      { devices: ["boiler-*"], sinks: ["nats", "postgres"] }
    ], ["sqlite"])
    const sinksOf = (kind: "telemetry" | "event", device: string) => table.routes[table.routeOf({ kind, device })]
    expect(sinksOf("event", "pump-1")).toEqual(["nats", "postgres"])
    expect(sinksOf("telemetry", "pump-1")).toEqual(["sqlite"])
    expect(sinksOf("telemetry", "pump-7")).toEqual(["sqlite"])
    expect(sinksOf("telemetry", "boiler-2")).toEqual(["nats", "postgres"])
    expect(sinksOf("event", "fan-1")).toEqual(["sqlite"])
    expect(table.routes).toHaveLength(2)
    expect([...table.sinks].sort()).toEqual(["nats", "postgres", "sqlite"])
  })

  it.effect("the routes file: read and checked; unknown sinks, unknown keys, empty lists and non-JSON refused with one line", () =>
    Effect.gen(function*() {
      const good = yield* readRoutesFile(write({ routes: [{ kinds: ["event"], sinks: ["postgres"] }], default: ["nats"] }))
      expect(good).toEqual({ routes: [{ kinds: ["event"], sinks: ["postgres"] }], default: ["nats"] })
      for (const bad of [
        { routes: [{ sinks: ["kafka"] }] },
        { routes: [{ sinks: ["nats"], kind: ["event"] }] },
        { routes: [{ sinks: [] }] },
        { routes: [{ devices: [], sinks: ["nats"] }] },
        "{ not json"
      ]) {
        const error = yield* Effect.flip(readRoutesFile(write(bad)))
        expect(error.message).toMatch(/^GATEWAY_ROUTES_FILE: /)
        expect(error.message).not.toContain("\n")
      }
      const missing = yield* Effect.flip(readRoutesFile("/nonexistent/routes.json"))
      expect(missing.message).toMatch(/^GATEWAY_ROUTES_FILE: cannot read/)
    }))
})
