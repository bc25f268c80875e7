import { describe, expect, it } from "@effect/vitest"
import { Result } from "effect"
import type { NackCode } from "../../src/domain/Errors.ts"
import {
  ackFrame,
  decodeDataFrame,
  decodeHello,
  errorFrame,
  goawayFrame,
  isTraceparent,
  nackFrame,
  PONG,
  toEpochMs,
  welcomeFrame
} from "../../src/domain/Frames.ts"

const telemetry = (over: Record<string, unknown> = {}) => ({
  type: "telemetry",
  seq: 1,
  ts: 1_700_000_000_000,
  body: { metrics: { temp: 21.5, rssi: -70 } },
  ...over
})

const event = (over: Record<string, unknown> = {}) => ({
  type: "event",
  seq: 2,
  ts: 1_700_000_000_000,
  body: { name: "door_open" },
  ...over
})

const hello = (over: Record<string, unknown> = {}) => ({
  type: "hello",
  v: 1,
  device: "sensor-01",
  token: "secret",
  ...over
})

/** How a failure message names the path of the offending value: `["body"]["name"]`. */
const path = (...keys: ReadonlyArray<string>) => keys.map((k) => `[${JSON.stringify(k)}]`).join("")

/** The failure message of a decode that must fail. */
const failureOf = <A>(r: Result.Result<A, string>): string => {
  if (Result.isSuccess(r)) return expect.unreachable(`expected a failure, got ${JSON.stringify(r.success)}`)
  return r.failure
}

const successOf = <A>(r: Result.Result<A, string>): A => {
  if (Result.isFailure(r)) return expect.unreachable(`expected a success, got: ${r.failure}`)
  return r.success
}

/** A gateway frame: one JSON line ending in exactly one "\n". */
const parseLine = (frame: string): Record<string, unknown> => {
  expect(frame.endsWith("\n")).toBe(true)
  expect(frame.indexOf("\n")).toBe(frame.length - 1)
  const parsed: unknown = JSON.parse(frame)
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    return expect.unreachable(`not a JSON object: ${frame}`)
  }
  return { ...parsed }
}

describe("decodeDataFrame", () => {
  it("accepts a valid telemetry frame", () => {
    const frame = successOf(decodeDataFrame("telemetry", telemetry({ body: { metrics: { t: 1 }, tags: { site: "a" } } })))
    expect(frame).toEqual({
      type: "telemetry",
      seq: 1,
      ts: 1_700_000_000_000,
      body: { metrics: { t: 1 }, tags: { site: "a" } }
    })
  })

  it("accepts a valid event frame, with severity, data and trace", () => {
    const trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    const input = event({ body: { name: "door_open", severity: "critical", data: { by: "x", n: [1] } }, trace })
    const frame = successOf(decodeDataFrame("event", input))
    expect(frame.type).toBe("event")
    expect(frame.body).toEqual({ name: "door_open", severity: "critical", data: { by: "x", n: [1] } })
    expect(frame.trace).toBe(trace)
    for (const severity of ["info", "warning", "critical"]) {
      successOf(decodeDataFrame("event", event({ body: { name: "x", severity } })))
    }
  })

  it("accepts seq 0 and 2^53-1", () => {
    expect(successOf(decodeDataFrame("telemetry", telemetry({ seq: 0 }))).seq).toBe(0)
    expect(successOf(decodeDataFrame("telemetry", telemetry({ seq: Number.MAX_SAFE_INTEGER }))).seq)
      .toBe(Number.MAX_SAFE_INTEGER)
  })

  it("rejects seq that is negative, fractional or above 2^53-1", () => {
    for (const seq of [-1, 1.5, 2 ** 53, Number.MAX_SAFE_INTEGER + 2, "1", null]) {
      expect(failureOf(decodeDataFrame("telemetry", telemetry({ seq }))), String(seq)).toContain(path("seq"))
      expect(failureOf(decodeDataFrame("event", event({ seq }))), String(seq)).toContain(path("seq"))
    }
  })

  it("rejects a frame of the other kind", () => {
    expect(failureOf(decodeDataFrame("event", telemetry()))).toContain(path("type"))
    expect(failureOf(decodeDataFrame("telemetry", event()))).toContain(path("type"))
  })

  it("accepts ts as an RFC 3339 string and normalizes it to epoch ms", () => {
    const cases: ReadonlyArray<readonly [string, number]> = [
      ["2024-01-01T00:00:00Z", 1_704_067_200_000],
      ["2024-01-01T02:00:00+02:00", 1_704_067_200_000],
      ["2023-12-31T19:00:00-05:00", 1_704_067_200_000],
      ["2024-01-01T00:00:00.250Z", 1_704_067_200_250]
    ]
    for (const [ts, ms] of cases) {
      const frame = successOf(decodeDataFrame("telemetry", telemetry({ ts })))
      expect(frame.ts).toBe(ts)
      expect(toEpochMs(frame.ts), ts).toBe(ms)
    }
    expect(toEpochMs(1_704_067_200_000)).toBe(1_704_067_200_000)
  })

  it("rejects ts that is neither epoch ms nor RFC 3339", () => {
    const notADate = "2024-13-45T99:99:99Z" // RFC 3339 in shape only
    for (const ts of ["yesterday", "2024-01-01", "2024-01-01T00:00:00", "1704067200000", notADate, -1, 1.5, true]) {
      expect(failureOf(decodeDataFrame("telemetry", telemetry({ ts }))), String(ts)).toContain(path("ts"))
    }
  })

  it("rejects dates that do not exist and accepts a leap second", () => {
    const frame = (ts: string) => ({ type: "telemetry", seq: 1, ts, body: { metrics: {} } })
    for (const ts of ["2024-02-30T00:00:00Z", "2023-02-29T00:00:00Z", "2024-01-01T24:00:00Z", "2024-01-01T00:00:00+25:00"]) {
      expect(Result.isFailure(decodeDataFrame("telemetry", frame(ts)))).toBe(true)
    }
    expect(Result.isSuccess(decodeDataFrame("telemetry", frame("2024-02-29T00:00:00Z")))).toBe(true)
    expect(toEpochMs("2016-12-31T23:59:60Z")).toBe(Date.parse("2017-01-01T00:00:00Z"))
  })

  it("rejects a metric value that is not a number, naming its path", () => {
    const message = failureOf(decodeDataFrame("telemetry", telemetry({ body: { metrics: { temp: "hot" } } })))
    expect(message).toContain(path("body", "metrics", "temp"))
    expect(message.includes("\n")).toBe(false)
  })

  it("rejects a telemetry body without metrics and tags that are not strings", () => {
    expect(failureOf(decodeDataFrame("telemetry", telemetry({ body: {} })))).toContain(path("body", "metrics"))
    expect(failureOf(decodeDataFrame("telemetry", telemetry({ body: { metrics: {}, tags: { a: 1 } } }))))
      .toContain(path("body", "tags", "a"))
  })

  it("rejects an event with an empty name", () => {
    expect(failureOf(decodeDataFrame("event", event({ body: { name: "" } })))).toContain(path("body", "name"))
    expect(failureOf(decodeDataFrame("event", event({ body: {} })))).toContain(path("body", "name"))
  })

  it("rejects a severity other than info, warning or critical", () => {
    for (const severity of ["debug", "INFO", "", 1]) {
      expect(failureOf(decodeDataFrame("event", event({ body: { name: "x", severity } }))), String(severity))
        .toContain(path("body", "severity"))
    }
  })
})

describe("decodeHello", () => {
  it("accepts a valid hello, with and without epoch", () => {
    expect(successOf(decodeHello(hello()))).toEqual({ type: "hello", v: 1, device: "sensor-01", token: "secret" })
    expect(successOf(decodeHello(hello({ epoch: 3 }))).epoch).toBe(3)
    successOf(decodeHello(hello({ device: "A-z_0:9" })))
    successOf(decodeHello(hello({ device: "d".repeat(128) })))
  })

  it("rejects a device id with a dot, other characters, empty or 129 characters", () => {
    for (const device of ["a.b", "sensor.01", "a b", "ä", "", "d".repeat(129)]) {
      expect(failureOf(decodeHello(hello({ device }))), device).toContain(path("device"))
    }
  })

  it("rejects another protocol version", () => {
    expect(failureOf(decodeHello(hello({ v: 2 })))).toContain(path("v"))
    expect(failureOf(decodeHello(hello({ v: "1" })))).toContain(path("v"))
  })

  it("rejects a bad epoch, a missing or oversized token and a non-hello", () => {
    expect(failureOf(decodeHello(hello({ epoch: -1 })))).toContain(path("epoch"))
    expect(failureOf(decodeHello(hello({ epoch: 0.5 })))).toContain(path("epoch"))
    expect(failureOf(decodeHello(hello({ token: "t".repeat(4097) })))).toContain(path("token"))
    successOf(decodeHello(hello({ token: "t".repeat(4096) })))
    expect(failureOf(decodeHello({ type: "hello", v: 1, device: "d" }))).toContain(path("token"))
    expect(failureOf(decodeHello(hello({ type: "telemetry" })))).toContain(path("type"))
  })
})

describe("isTraceparent", () => {
  it("accepts a version-00 traceparent with non-zero ids", () => {
    expect(isTraceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")).toBe(true)
    expect(isTraceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")).toBe(true)
  })

  it("rejects zero ids, other versions, upper case and bad lengths", () => {
    for (
      const s of [
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ""
      ]
    ) expect(isTraceparent(s), s).toBe(false)
  })
})

describe("gateway frames", () => {
  it("ack", () => {
    expect(parseLine(ackFrame(42, false))).toEqual({ type: "ack", seq: 42 })
    expect(parseLine(ackFrame(42, true))).toEqual({ type: "ack", seq: 42, dup: true })
    expect(parseLine(ackFrame(Number.MAX_SAFE_INTEGER, false)).seq).toBe(Number.MAX_SAFE_INTEGER)
  })

  it("nack: retry is true only for rate_limited and unavailable", () => {
    const codes: ReadonlyArray<readonly [NackCode, boolean]> = [
      ["invalid", false],
      ["forbidden", false],
      ["rate_limited", true],
      ["shed", false],
      ["unavailable", true]
    ]
    for (const [code, retry] of codes) {
      expect(parseLine(nackFrame(7, code, "why"))).toEqual({ type: "nack", seq: 7, code, retry, message: "why" })
    }
    expect(parseLine(nackFrame(7, "rate_limited", "slow down", 250))).toEqual({
      type: "nack",
      seq: 7,
      code: "rate_limited",
      retry: true,
      message: "slow down",
      retryAfterMs: 250
    })
  })

  it("nack and error escape their message into one JSON line", () => {
    const message = "bad \"quote\" \\ back\nslash\r\ttab \u0001 é"
    expect(parseLine(nackFrame(1, "invalid", message)).message).toBe(message)
    expect(parseLine(errorFrame("protocol", message)).message).toBe(message)
  })

  it("error, with and without retryAfterMs", () => {
    expect(parseLine(errorFrame("frame_too_large", "too big"))).toEqual({
      type: "error",
      code: "frame_too_large",
      message: "too big"
    })
    expect(parseLine(errorFrame("busy", "try later", 1500))).toEqual({
      type: "error",
      code: "busy",
      message: "try later",
      retryAfterMs: 1500
    })
  })

  it("welcome, pong and goaway", () => {
    expect(parseLine(welcomeFrame("s-1", 30_000, 65_536, null))).toEqual({
      type: "welcome",
      v: 1,
      session: "s-1",
      keepaliveMs: 30_000,
      maxFrameBytes: 65_536,
      lastSeq: null
    })
    expect(parseLine(welcomeFrame("s-2", 1000, 64, 17)).lastSeq).toBe(17)
    expect(parseLine(PONG)).toEqual({ type: "pong" })
    expect(parseLine(goawayFrame(2000))).toEqual({ type: "goaway", reason: "shutdown", retryAfterMs: 2000 })
  })
})
