/**
 * The wire contract of PROTOCOL.md as `effect/Schema` values: the client frames a device sends,
 * their bodies, and the encoders for the frames the gateway writes. Decoding is synchronous
 * (`Schema.decodeUnknownResult`): the hot path never builds an Effect per frame.
 */
import { Result, Schema } from "effect"
import type { ErrorCode, NackCode } from "./Errors.ts"

/** Protocol version spoken by this gateway (the `v` of hello and welcome). */
export const PROTOCOL_VERSION = 1

/** Device ids: 1..128 of `[A-Za-z0-9_:-]` (no dot: ids become NATS subject tokens). */
export const DeviceId = Schema.String.check(
  Schema.isPattern(/^[A-Za-z0-9_:-]{1,128}$/, { message: "device must be 1..128 characters of [A-Za-z0-9_:-]" })
)

/** A non-negative safe integer: sequence numbers, epochs, epoch milliseconds. */
export const SafeUint = Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER }))

const RFC3339 = /^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?([Zz]|[+-](\d{2}):(\d{2}))$/

/**
 * The device times the gateway accepts, in either form: from 1970-01-01T00:00:00Z (epoch ms 0)
 * to 9999-12-31T23:59:59.999Z (the last instant a four-digit RFC 3339 year can name). One rule
 * for numbers and strings: a string names an instant, and that instant must be in the range.
 */
export const MIN_DEVICE_TS = 0
export const MAX_DEVICE_TS = 253_402_300_799_999

const DAYS_IN_MONTH = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
const isLeapYear = (y: number) => (y % 4 === 0 && y % 100 !== 0) || y % 400 === 0

/** An RFC 3339 timestamp naming a real instant (no 30 February, no hour 25), without the range check. */
const isRfc3339 = (s: string): boolean => {
  const m = RFC3339.exec(s)
  if (m === null) return false
  const [year, month, day, hour, minute, second] = [m[1], m[2], m[3], m[4], m[5], m[6]].map(Number) as [
    number, number, number, number, number, number
  ]
  // by hand: Date.UTC reads years 0..99 as 1900..1999 (0000-02-29 would not exist)
  const daysInMonth = month === 2 && isLeapYear(year) ? 29 : DAYS_IN_MONTH[month - 1] ?? 0
  return month >= 1 && month <= 12 && day >= 1 && day <= daysInMonth && hour <= 23 && minute <= 59 && second <= 60 &&
    Number(m[9] ?? 0) <= 23 && Number(m[10] ?? 0) <= 59
}

/** True for a number of epoch milliseconds the gateway accepts as device time. */
const isDeviceTimeMs = (ts: number): boolean => Number.isSafeInteger(ts) && ts >= MIN_DEVICE_TS && ts <= MAX_DEVICE_TS

/** True for an RFC 3339 string naming an instant the gateway accepts as device time. */
const isDeviceTimeString = (ts: string): boolean => isRfc3339(ts) && isDeviceTimeMs(toEpochMs(ts))

const TS_RANGE = "from 1970-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z"

/** Device time: epoch milliseconds or an RFC 3339 string (normalized by {@link toEpochMs}), within the range above. */
export const DeviceTime = Schema.Union([
  Schema.Int.check(Schema.isBetween({ minimum: MIN_DEVICE_TS, maximum: MAX_DEVICE_TS }, {
    message: `ts must be epoch milliseconds from 0 to ${MAX_DEVICE_TS} (${TS_RANGE})`
  })),
  Schema.String.check(
    Schema.makeFilter(isDeviceTimeString, { message: `ts must be epoch milliseconds or an RFC 3339 date-time ${TS_RANGE}` })
  )
])

/** Telemetry body: named numeric metrics and optional string tags. */
export const TelemetryBody = Schema.Struct({
  metrics: Schema.Record(Schema.String, Schema.Finite),
  tags: Schema.optionalKey(Schema.Record(Schema.String, Schema.String))
})
export type TelemetryBody = typeof TelemetryBody.Type

/** Event body: a named occurrence with an optional severity and free-form data. */
export const EventBody = Schema.Struct({
  name: Schema.String.check(Schema.isMinLength(1)),
  severity: Schema.optionalKey(Schema.Literals(["info", "warning", "critical"])),
  data: Schema.optionalKey(Schema.Record(Schema.String, Schema.Unknown))
})
export type EventBody = typeof EventBody.Type

/** The first frame of a session. */
export const Hello = Schema.Struct({
  type: Schema.Literal("hello"),
  v: Schema.Literal(PROTOCOL_VERSION),
  device: DeviceId,
  token: Schema.String.check(Schema.isMaxLength(4096)),
  epoch: Schema.optionalKey(SafeUint),
  /** The resume hint of the `goaway` that moved the device here (our addition; optional). */
  resume: Schema.optionalKey(Schema.String.check(Schema.isMaxLength(64)))
})
export type Hello = typeof Hello.Type

const dataFrame = <K extends "telemetry" | "event", B extends Schema.Top>(kind: K, body: B) =>
  Schema.Struct({
    type: Schema.Literal(kind),
    seq: SafeUint,
    ts: DeviceTime,
    body,
    trace: Schema.optionalKey(Schema.String)
  })

/** A telemetry frame: bulk data, may be shed under overload. */
export const TelemetryFrame = dataFrame("telemetry", TelemetryBody)
/** An event frame: critical data, never shed. */
export const EventFrame = dataFrame("event", EventBody)

/** The two kinds of data a device sends. */
export type Kind = "telemetry" | "event"

/** A validated data frame, whichever its kind. */
export interface DataFrame {
  readonly type: Kind
  readonly seq: number
  readonly ts: number | string
  readonly body: TelemetryBody | EventBody
  readonly trace?: string
}

const decodeTelemetry = Schema.decodeUnknownResult(TelemetryFrame)
const decodeEvent = Schema.decodeUnknownResult(EventFrame)
const decodeHelloFrame = Schema.decodeUnknownResult(Hello)

/**
 * Validates a parsed telemetry or event frame; the failure is a one-line message for
 * `nack invalid`. The Schemas above are the contract; {@link fastDataFrame} accepts the common,
 * clearly valid case without their per-field machinery (about 1.5 µs a frame), and anything it
 * does not accept goes through the Schema, whose verdict and message stand. A property test
 * holds the fast path to the Schema: it never accepts what the Schema refuses and it produces
 * the same value.
 */
export const decodeDataFrame = (kind: Kind, input: unknown): Result.Result<DataFrame, string> => {
  const fast = fastDataFrame(kind, input)
  if (fast !== undefined) return Result.succeed(fast)
  const result: Result.Result<DataFrame, Schema.SchemaError> = kind === "telemetry"
    ? decodeTelemetry(input)
    : decodeEvent(input)
  return Result.mapError(result, (e) => oneLine(e.message))
}

type Fields = Record<string, unknown>

const isPlainObject = (u: unknown): u is Fields =>
  typeof u === "object" && u !== null && Object.getPrototypeOf(u) === Object.prototype

const isDeviceTime = (ts: unknown): boolean =>
  typeof ts === "number" ? isDeviceTimeMs(ts) : typeof ts === "string" && isDeviceTimeString(ts)

/** True for a plain object whose own values all pass `valid` (no `__proto__` key). */
const isRecordOf = (u: unknown, valid: (v: unknown) => boolean): u is Fields => {
  if (!isPlainObject(u)) return false
  for (const key in u) {
    if (key === "__proto__" || !Object.hasOwn(u, key) || !valid(u[key])) return false
  }
  return true
}

const isFiniteNumber = (v: unknown) => typeof v === "number" && Number.isFinite(v)
const isString = (v: unknown) => typeof v === "string"
const isAnything = () => true
const SEVERITIES: ReadonlySet<unknown> = new Set(["info", "warning", "critical"])

/**
 * The fast path of {@link decodeDataFrame}: the decoded frame when `input` is clearly valid,
 * `undefined` to defer to the Schema (invalid, or unusual: the Schema decides).
 */
export const fastDataFrame = (kind: Kind, input: unknown): DataFrame | undefined => {
  if (!isPlainObject(input) || input["type"] !== kind) return undefined
  const { seq, ts, body, trace } = input
  if (typeof seq !== "number" || !Number.isSafeInteger(seq) || seq < 0 || !isDeviceTime(ts) || !isPlainObject(body)) {
    return undefined
  }
  if (trace !== undefined && typeof trace !== "string") return undefined
  let decoded: TelemetryBody | EventBody
  if (kind === "telemetry") {
    const { metrics, tags } = body
    if (!isRecordOf(metrics, isFiniteNumber) || (tags !== undefined && !isRecordOf(tags, isString))) return undefined
    decoded = tags === undefined
      ? { metrics: metrics as Record<string, number> }
      : { metrics: metrics as Record<string, number>, tags: tags as Record<string, string> }
  } else {
    const { name, severity, data } = body
    if (typeof name !== "string" || name.length === 0) return undefined
    if (severity !== undefined && !SEVERITIES.has(severity)) return undefined
    if (data !== undefined && !isRecordOf(data, isAnything)) return undefined
    decoded = {
      name,
      ...(severity === undefined ? {} : { severity: severity as "info" | "warning" | "critical" }),
      ...(data === undefined ? {} : { data })
    }
  }
  const frame = { type: kind, seq, ts: ts as number | string, body: decoded }
  return trace === undefined ? frame : { ...frame, trace }
}

/** Validates a parsed hello frame. */
export const decodeHello = (input: unknown): Result.Result<Hello, string> =>
  Result.mapError(decodeHelloFrame(input), (e) => oneLine(e.message))

const oneLine = (message: string) => message.replace(/\s*\n\s*/g, " ")

/** Normalizes validated device time to epoch milliseconds. */
export const toEpochMs = (ts: number | string): number =>
  typeof ts === "number" ? ts : Date.parse(ts.replace(/:60(?=[.Zz+-])/, ":59")) + (/:60(?=[.Zz+-])/.test(ts) ? 1000 : 0)

/** True for a well-formed W3C traceparent (version 00, non-zero ids). */
export const isTraceparent = (s: string): boolean =>
  /^00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$/.test(s)

// ---- gateway frames: hand-built strings (no JSON.stringify on the ack path) ----

/** `welcome`: the session is open. */
export const welcomeFrame = (session: string, keepaliveMs: number, maxFrameBytes: number, lastSeq: number | null) =>
  `{"type":"welcome","v":${PROTOCOL_VERSION},"session":"${session}","keepaliveMs":${keepaliveMs},"maxFrameBytes":${maxFrameBytes},"lastSeq":${lastSeq}}\n`

/** `ack`: seq is durably committed (`dup` when it had been before). */
export const ackFrame = (seq: number, dup: boolean) =>
  dup ? `{"type":"ack","seq":${seq},"dup":true}\n` : `{"type":"ack","seq":${seq}}\n`

/** `nack`: seq was not committed. */
export const nackFrame = (seq: number, code: NackCode, message: string, retryAfterMs?: number) =>
  `{"type":"nack","seq":${seq},"code":"${code}","retry":${code === "rate_limited" || code === "unavailable"},"message":${
    JSON.stringify(message)
  }${retryAfterMs === undefined ? "" : `,"retryAfterMs":${retryAfterMs}`}}\n`

/** `pong`: the answer to `ping`. */
export const PONG = `{"type":"pong"}\n`

/**
 * `goaway`: the gateway is draining; reconnect after `retryAfterMs`. `resume` (our addition) is
 * a hint the device may send back in its next hello to be admitted ahead of new devices.
 */
export const goawayFrame = (retryAfterMs: number, resume?: string) =>
  `{"type":"goaway","reason":"shutdown","retryAfterMs":${retryAfterMs}${resume === undefined ? "" : `,"resume":"${resume}"`}}\n`

/** `error`: fatal for the connection; the gateway closes after it. */
export const errorFrame = (code: ErrorCode, message: string, retryAfterMs?: number) =>
  `{"type":"error","code":"${code}","message":${JSON.stringify(message)}${
    retryAfterMs === undefined ? "" : `,"retryAfterMs":${retryAfterMs}`
  }}\n`
