/**
 * The simulator's side of the wire (PROTOCOL.md): data frames built by string concatenation (no
 * JSON.stringify per frame), chosen deterministically from (device, frame number) so that a
 * resend is byte for byte the frame first sent, and the gateway's answers read with a fast path
 * for the common `ack`.
 */

/** A 32-bit integer hash of two integers (murmur3 finalizer); the same inputs give the same output. */
export const mix = (a: number, b: number): number => {
  let h = Math.imul(a ^ 0x9e3779b9, 0x85ebca6b) ^ Math.imul((b + 0x165667b1) | 0, 0xc2b2ae35)
  h ^= h >>> 16
  h = Math.imul(h, 0x7feb352d)
  h ^= h >>> 15
  h = Math.imul(h, 0x846ca68b)
  h ^= h >>> 16
  return h >>> 0
}

const TWO_32 = 4294967296
const TRACE_SALT = 0x5bd1e995

/** True when frame `n` of device `device` is an event (a stable draw: the fraction `ratio` of frames). */
export const isEvent = (device: number, n: number, ratio: number): boolean =>
  ratio > 0 && mix(device, n) / TWO_32 < ratio

/** True when frame `n` of device `device` carries a `trace` (a stable draw: the fraction `ratio` of frames). */
export const isTraced = (device: number, n: number, ratio: number): boolean =>
  ratio > 0 && mix(device ^ TRACE_SALT, n) / TWO_32 < ratio

const hex8 = (x: number): string => (x >>> 0).toString(16).padStart(8, "0")

/**
 * A W3C traceparent for frame `n` of device `device`: trace id = the run's 16 hex digits, the
 * device's and the frame's 8 each; span id from both. Never all zeros (the run id is not).
 */
export const traceparent = (runId: string, device: number, n: number): string =>
  `00-${runId}${hex8(device)}${hex8(n)}-${hex8(mix(device, n ^ TRACE_SALT) | 1)}${hex8(mix(n, device))}-01`

/** 16 random hex digits, not all zeros: the trace-id prefix of one simulator run. */
export const newRunId = (): string => {
  for (;;) {
    const id = hex8(Math.random() * TWO_32) + hex8(Math.random() * TWO_32)
    if (!/^0+$/.test(id)) return id
  }
}

const EVENTS = [
  `{"name":"door_open","severity":"info","data":{"door":`,
  `{"name":"low_battery","severity":"warning","data":{"cell":`,
  `{"name":"overheat","severity":"critical","data":{"sensor":`
] as const

const cents = (x: number): string => String(Math.round(x) / 100)

/**
 * One data frame, newline-terminated: telemetry `{"metrics":{temp,humidity,battery},"tags":{fw}}`
 * or an event (`door_open` / `low_battery` / `overheat`), with `trace` when given.
 */
export const dataFrame = (
  event: boolean,
  seq: number,
  ts: number,
  device: number,
  n: number,
  trace: string | undefined
): string => {
  const h = mix(n, device)
  const body = event
    ? `${EVENTS[h % 3]!}${h % 8}}}`
    : `{"metrics":{"temp":${cents(1500 + (h % 1500))},"humidity":${cents(3000 + ((h >>> 11) % 4000))},"battery":${
      cents(330 + ((h >>> 22) % 90))
    }},"tags":{"fw":"sim-1"}}`
  return `{"type":"${event ? "event" : "telemetry"}","seq":${seq},"ts":${ts},"body":${body}${
    trace === undefined ? "" : `,"trace":"${trace}"`
  }}\n`
}

/** The `hello` line (PROTOCOL.md, Session), with the `resume` hint of a `goaway` when there is one. */
export const helloFrame = (device: string, token: string, epoch: number, resume: string | undefined): string =>
  `{"type":"hello","v":1,"device":${JSON.stringify(device)},"token":${JSON.stringify(token)},"epoch":${epoch}${
    resume === undefined ? "" : `,"resume":${JSON.stringify(resume)}`
  }}\n`

/** The `ping` line. */
export const PING = `{"type":"ping"}\n`
/** The `bye` line. */
export const BYE = `{"type":"bye"}\n`

const ACK_PREFIX = `{"type":"ack","seq":`

/**
 * The seq of a plain `ack` line as the gateway writes it (`{"type":"ack","seq":N...`), or -1 for
 * any other line (then read it with {@link parseAnswer}).
 */
export const ackSeq = (line: string): number => {
  if (!line.startsWith(ACK_PREFIX)) return -1
  let seq = 0
  let i = ACK_PREFIX.length
  const start = i
  for (; i < line.length; i++) {
    const c = line.charCodeAt(i)
    if (c < 48 || c > 57) break
    seq = seq * 10 + (c - 48)
  }
  return i === start ? -1 : seq
}

/** True when an `ack` line says `"dup":true`. */
export const isDupAck = (line: string): boolean => line.includes(`"dup":true`)

/** A gateway frame, read. */
export type Answer =
  | { readonly type: "welcome"; readonly lastSeq: number | null; readonly keepaliveMs: number }
  | { readonly type: "ack"; readonly seq: number; readonly dup: boolean }
  | {
    readonly type: "nack"
    readonly seq: number
    readonly code: string
    /** The nack's `retry` (undefined when absent). */
    readonly retry: boolean | undefined
    readonly retryAfterMs: number | undefined
  }
  | { readonly type: "goaway"; readonly retryAfterMs: number | undefined; readonly resume: string | undefined }
  | { readonly type: "error"; readonly code: string; readonly message: string; readonly retryAfterMs: number | undefined }
  | { readonly type: "pong" }
  | { readonly type: "unknown"; readonly line: string }

const num = (o: Record<string, unknown>, k: string): number | undefined => {
  const v = o[k]
  return typeof v === "number" && Number.isFinite(v) ? v : undefined
}
const str = (o: Record<string, unknown>, k: string): string | undefined => {
  const v = o[k]
  return typeof v === "string" ? v : undefined
}

/** Reads one line from the gateway (any frame type; unknown or malformed lines are `unknown`). */
export const parseAnswer = (line: string): Answer => {
  let json: unknown
  try {
    json = JSON.parse(line)
  } catch {
    return { type: "unknown", line }
  }
  if (typeof json !== "object" || json === null || Array.isArray(json)) return { type: "unknown", line }
  const o = json as Record<string, unknown>
  switch (o["type"]) {
    case "welcome":
      return { type: "welcome", lastSeq: num(o, "lastSeq") ?? null, keepaliveMs: num(o, "keepaliveMs") ?? 30_000 }
    case "ack": {
      const seq = num(o, "seq")
      return seq === undefined ? { type: "unknown", line } : { type: "ack", seq, dup: o["dup"] === true }
    }
    case "nack": {
      const seq = num(o, "seq")
      return seq === undefined
        ? { type: "unknown", line }
        : {
          type: "nack",
          seq,
          code: str(o, "code") ?? "unknown",
          retry: typeof o["retry"] === "boolean" ? o["retry"] : undefined,
          retryAfterMs: num(o, "retryAfterMs")
        }
    }
    case "goaway":
      return { type: "goaway", retryAfterMs: num(o, "retryAfterMs"), resume: str(o, "resume") }
    case "error":
      return { type: "error", code: str(o, "code") ?? "unknown", message: str(o, "message") ?? "", retryAfterMs: num(o, "retryAfterMs") }
    case "pong":
      return { type: "pong" }
    default:
      return { type: "unknown", line }
  }
}
