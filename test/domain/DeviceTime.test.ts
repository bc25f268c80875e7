/**
 * Device time (`ts`), one rule for both forms: epoch milliseconds or an RFC 3339 string, naming
 * an instant from 1970-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z. The fast path and the
 * Schema agree on every case (FastPath.test.ts holds them together in general).
 *
 * These failed before issue 8 (Hardening): a negative number was refused but a string before
 * 1970 was stored as a negative time (`0000-01-01T00:00:00Z` → -62167219200000), a number past
 * year 9999 was accepted, and `0000-02-29` was refused as a date that does not exist (year 0 is
 * a leap year; `Date.UTC` reads years 0..99 as 1900..1999).
 */
import { describe, expect, it } from "@effect/vitest"
import { Result, Schema } from "effect"
import { decodeDataFrame, fastDataFrame, TelemetryFrame, toEpochMs } from "../../src/domain/Frames.ts"

/** 9999-12-31T23:59:59.999Z */
const MAX_DEVICE_TS = 253_402_300_799_999

const frame = (ts: unknown) => ({ type: "telemetry", seq: 1, ts, body: { metrics: { t: 1 } } })
const schema = Schema.decodeUnknownResult(TelemetryFrame)

/** The verdict of the gateway's validation, checked against the Schema alone. */
const verdict = (ts: unknown): string => {
  const decoded = decodeDataFrame("telemetry", frame(ts))
  const bySchema = schema(frame(ts))
  expect(Result.isSuccess(bySchema), `Schema and decodeDataFrame disagree on ${String(ts)}`).toBe(Result.isSuccess(decoded))
  if (fastDataFrame("telemetry", frame(ts)) !== undefined) expect(Result.isSuccess(decoded)).toBe(true)
  return Result.isSuccess(decoded) ? `ok ${toEpochMs(decoded.success.ts)}` : `refused: ${decoded.failure}`
}

describe("device time range", () => {
  it("is 1970-01-01T00:00:00Z .. 9999-12-31T23:59:59.999Z, as numbers", () => {
    expect(MAX_DEVICE_TS).toBe(Date.parse("9999-12-31T23:59:59.999Z"))
    expect(verdict(0)).toBe("ok 0")
    expect(verdict(1_700_000_000_000)).toBe("ok 1700000000000")
    expect(verdict(MAX_DEVICE_TS)).toBe(`ok ${MAX_DEVICE_TS}`)
    for (const ts of [-1, MAX_DEVICE_TS + 1, Number.MAX_SAFE_INTEGER]) {
      expect(verdict(ts), String(ts)).toMatch(/^refused: ts must be epoch milliseconds from 0 to 253402300799999 .*at \["ts"\]/)
    }
  })

  it("is the same range as strings: the instant named, offsets included", () => {
    expect(verdict("1970-01-01T00:00:00Z")).toBe("ok 0")
    expect(verdict("1970-01-01T01:00:00+01:00")).toBe("ok 0")
    expect(verdict("9999-12-31T23:59:59.999Z")).toBe(`ok ${MAX_DEVICE_TS}`)
    expect(verdict("2024-02-29T12:00:00.5-05:00")).toBe(`ok ${Date.parse("2024-02-29T17:00:00.500Z")}`)
    for (
      const ts of [
        "0000-01-01T00:00:00Z",
        "0000-02-29T00:00:00Z",
        "1969-12-31T23:59:59.999Z",
        "1970-01-01T00:30:00+01:00", // 1969-12-31T23:30Z
        "9999-12-31T23:59:59-00:01", // 10000-01-01T00:00:59Z
        "9999-12-31T23:59:60Z" // a leap second after the last instant
      ]
    ) {
      expect(verdict(ts), ts).toMatch(
        /^refused: ts must be epoch milliseconds or an RFC 3339 date-time from 1970-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z at \["ts"\]/
      )
    }
  })

  it("counts leap years by the Gregorian rule in every century", () => {
    expect(verdict("2000-02-29T00:00:00Z")).toBe(`ok ${Date.parse("2000-02-29T00:00:00Z")}`)
    expect(verdict("2400-02-29T00:00:00Z")).toBe(`ok ${Date.parse("2400-02-29T00:00:00Z")}`)
    expect(verdict("2100-02-29T00:00:00Z")).toMatch(/^refused/)
    expect(verdict("1900-02-29T00:00:00Z")).toMatch(/^refused/)
  })
})
