/**
 * The data-frame fast path is held to the Schema contract: whatever it accepts, the Schema
 * accepts too, with the same decoded value; whatever it declines goes to the Schema.
 */
import { describe, expect, it } from "@effect/vitest"
import { Result, Schema } from "effect"
import { decodeDataFrame, EventFrame, fastDataFrame, SafeUint, TelemetryFrame } from "../../src/domain/Frames.ts"

const decodeTelemetry = Schema.decodeUnknownResult(TelemetryFrame)
const decodeEvent = Schema.decodeUnknownResult(EventFrame)

const maybe = <S extends Schema.Top>(s: S) => Schema.Union([s, Schema.Json, Schema.Undefined])
const Ts = Schema.Union([
  SafeUint,
  Schema.Literals(["2024-01-01T00:00:00Z", "2024-01-01T00:00:00.123+02:00", "2024-13-45T99:00:00Z", "yesterday", ""]),
  Schema.Json
])

const agrees = (kind: "telemetry" | "event", input: unknown) => {
  const fast = fastDataFrame(kind, input)
  if (fast === undefined) return true
  const slow: Result.Result<unknown, Schema.SchemaError> = kind === "telemetry" ? decodeTelemetry(input) : decodeEvent(input)
  expect(Result.isSuccess(slow)).toBe(true)
  if (Result.isSuccess(slow)) expect(fast).toEqual(slow.success)
  return true
}

const strip = <A extends Record<string, unknown>>(o: A) =>
  Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined))

describe("fast path", () => {
  it.prop("telemetry: never accepts what the Schema refuses, decodes the same value", {
    seq: maybe(SafeUint),
    ts: Ts,
    metrics: maybe(Schema.Record(Schema.String, Schema.Finite)),
    tags: maybe(Schema.Record(Schema.String, Schema.String)),
    trace: maybe(Schema.String),
    extra: maybe(Schema.Json)
  }, ({ extra, metrics, seq, tags, trace, ts }) =>
    agrees("telemetry", strip({ type: "telemetry", seq, ts, trace, extra, body: strip({ metrics, tags, extra }) })), {
    arbitrary: { runs: 300 }
  })

  it.prop("event: never accepts what the Schema refuses, decodes the same value", {
    seq: maybe(SafeUint),
    ts: Ts,
    name: maybe(Schema.String),
    severity: maybe(Schema.Literals(["info", "warning", "critical", "fatal"])),
    data: maybe(Schema.Record(Schema.String, Schema.Json))
  }, ({ data, name, seq, severity, ts }) =>
    agrees("event", strip({ type: "event", seq, ts, body: strip({ name, severity, data }) })), {
    arbitrary: { runs: 300 }
  })

  it("takes the usual frames and drops unknown fields like the Schema does", () => {
    const input = { type: "telemetry", seq: 7, ts: 1, body: { metrics: { t: 1.5 }, tags: { a: "b" }, x: 1 }, y: 2 }
    expect(fastDataFrame("telemetry", input)).toEqual({ type: "telemetry", seq: 7, ts: 1, body: { metrics: { t: 1.5 }, tags: { a: "b" } } })
    const ev = { type: "event", seq: 8, ts: "2024-01-01T00:00:00Z", body: { name: "n", severity: "warning", data: { k: [1] } } }
    expect(fastDataFrame("event", ev)).toEqual(ev)
  })

  it("declines what it is unsure of, and the Schema answers with a message", () => {
    const proto = JSON.parse(`{"type":"telemetry","seq":1,"ts":1,"body":{"metrics":{"__proto__":1}}}`) as unknown
    expect(fastDataFrame("telemetry", proto)).toBeUndefined()
    const bad = decodeDataFrame("telemetry", { type: "telemetry", seq: 1, ts: "2024-13-45T99:00:00Z", body: { metrics: {} } })
    expect(Result.isFailure(bad) && bad.failure).toContain("ts")
  })
})
