/**
 * OTLP/protobuf encoding of an `ExportTraceServiceRequest` (opentelemetry/proto
 * collector/trace/v1 and trace/v1), written straight into one buffer sized for the batch: ids
 * as bytes (a message span's from the words it was drawn as, the others from their hex), times
 * as fixed64 from numbers, each nested message's length filled in once it is written (no sizing
 * pass). Message spans take a faster path (their constant parts as precomputed bytes, per kind
 * and per outcome). Fields at their proto3
 * default (zero counts) are left out, which decoders read the same. What OpenTelemetry JS's
 * serializer costs per span is several times this (bench/tracing.ts measures both), and a
 * collector reads the two alike (test/observability/OtlpProtobuf.test.ts decodes both).
 */
import type { Attributes, AttributeValue } from "@opentelemetry/api"
import type { Tracer } from "effect"
import {
  attributeValue,
  currentOrigin,
  EffectSpan,
  eventsOf,
  exitOf,
  FAILED_OUTCOMES,
  type FinishedSpan,
  MessageSpan,
  type SpanEventRecord,
  toEpochNanos
} from "./GatewayTracer.ts"
import { OTEL_KIND } from "./ReadableSpans.ts"

const VARINT = 0
const FIXED64 = 1
const LEN = 2
const FIXED32 = 5

/** The flags of a span or link: its W3C trace flags, and whether its parent (or target) is remote. */
const HAS_IS_REMOTE = 0x100
const IS_REMOTE = 0x200

const HEX_VALUE = new Uint8Array(128)
for (let i = 0; i < 10; i++) HEX_VALUE[48 + i] = i
for (let i = 0; i < 6; i++) HEX_VALUE[97 + i] = HEX_VALUE[65 + i] = 10 + i

const TWO_32 = 4294967296

/** A growing buffer with the protobuf wire primitives. */
class Writer {
  buf: Buffer
  pos = 0

  constructor(size = 1024) {
    this.buf = Buffer.allocUnsafe(size)
  }

  ensure(n: number): void {
    if (this.pos + n <= this.buf.length) return
    let size = this.buf.length * 2
    while (size < this.pos + n) size *= 2
    const next = Buffer.allocUnsafe(size)
    this.buf.copy(next, 0, 0, this.pos)
    this.buf = next
  }

  varint(n: number): void {
    this.ensure(10)
    const b = this.buf
    while (n >= 0x80) {
      b[this.pos++] = (n % 0x80) | 0x80
      n = Math.floor(n / 0x80)
    }
    b[this.pos++] = n
  }

  tag(field: number, wire: number): void {
    this.varint(field * 8 + wire)
  }

  fixed32(n: number): void {
    this.ensure(4)
    this.buf.writeUInt32LE(n >>> 0, this.pos)
    this.pos += 4
  }

  /** A non-negative number of nanoseconds as fixed64 (exact up to 2^53; above, to the double's precision). */
  fixed64(n: number): void {
    this.ensure(8)
    const hi = Math.floor(n / TWO_32)
    this.le32((n - hi * TWO_32) >>> 0)
    this.le32(hi >>> 0)
  }

  /** Four bytes, little-endian. */
  le32(n: number): void {
    const b = this.buf
    const p = this.pos
    b[p] = n
    b[p + 1] = n >>> 8
    b[p + 2] = n >>> 16
    b[p + 3] = n >>> 24
    this.pos = p + 4
  }

  double(x: number): void {
    this.ensure(8)
    this.buf.writeDoubleLE(x, this.pos)
    this.pos += 8
  }

  /** Length-delimited bytes decoded from `hex[from .. from + 2·bytes]`. */
  hexBytes(hex: string, from: number, bytes: number): void {
    this.ensure(bytes + 1)
    const b = this.buf
    b[this.pos++] = bytes
    for (let i = 0; i < bytes; i++) {
      const at = from + 2 * i
      b[this.pos++] = (HEX_VALUE[hex.charCodeAt(at) & 127]! << 4) | HEX_VALUE[hex.charCodeAt(at + 1) & 127]!
    }
  }

  /** Length-delimited bytes: the words `a, b, c, d` big-endian (a trace id). */
  traceId(a: number, b: number, c: number, d: number): void {
    this.ensure(17)
    const buf = this.buf
    let p = this.pos
    buf[p++] = 16
    p = putWord(buf, p, a)
    p = putWord(buf, p, b)
    p = putWord(buf, p, c)
    this.pos = putWord(buf, p, d)
  }

  /** Length-delimited bytes: the words `a, b` big-endian (a span id). */
  spanId(a: number, b: number): void {
    this.ensure(9)
    const buf = this.buf
    buf[this.pos] = 8
    this.pos = putWord(buf, putWord(buf, this.pos + 1, a), b)
  }

  /** A length-delimited UTF-8 string. */
  string(s: string): void {
    const n = s.length
    if (n < 128) {
      // ASCII (the usual case) in one pass; anything else by Buffer.write
      this.ensure(n + 1)
      const b = this.buf
      const start = this.pos
      b[start] = n
      let i = 0
      for (; i < n; i++) {
        const c = s.charCodeAt(i)
        if (c >= 128) break
        b[start + 1 + i] = c
      }
      if (i === n) {
        this.pos = start + 1 + n
        return
      }
    }
    const len = Buffer.byteLength(s, "utf8")
    this.varint(len)
    this.ensure(len)
    this.pos += this.buf.write(s, this.pos, len, "utf8")
  }

  raw(bytes: Uint8Array): void {
    const n = bytes.length
    this.ensure(n)
    if (n > 32) {
      this.buf.set(bytes, this.pos)
      this.pos += n
      return
    }
    const b = this.buf
    for (let i = 0; i < n; i++) b[this.pos++] = bytes[i]!
  }

  /**
   * Starts the nested message `field`: its tag, and one byte for its length, which {@link end}
   * fills in (moving the message when its length needs more than one byte).
   */
  begin(field: number): number {
    this.tag(field, LEN)
    this.ensure(1)
    return this.pos++
  }

  /** Like {@link begin}, with two bytes for the length (a message of 128 bytes to 16 KiB: nothing to move). */
  begin2(field: number): number {
    this.tag(field, LEN)
    this.ensure(2)
    const at = this.pos
    this.pos += 2
    return at
  }

  end2(at: number): void {
    const length = this.pos - at - 2
    if (length >= 0x80 && length < 0x4000) {
      this.buf[at] = (length & 0x7f) | 0x80
      this.buf[at + 1] = length >>> 7
      return
    }
    // shorter or longer than two bytes of length: move it to where one (or three) would put it
    this.buf.copyWithin(at + 1, at + 2, this.pos)
    this.pos--
    this.end(at)
  }

  end(at: number): void {
    const length = this.pos - at - 1
    if (length < 0x80) {
      this.buf[at] = length
      return
    }
    const size = varintSize(length)
    this.ensure(size - 1)
    this.buf.copyWithin(at + size, at + 1, this.pos)
    const end = this.pos + size - 1
    this.pos = at
    this.varint(length)
    this.pos = end
  }
}

const putWord = (buf: Uint8Array, p: number, w: number): number => {
  buf[p] = w >>> 24
  buf[p + 1] = w >>> 16
  buf[p + 2] = w >>> 8
  buf[p + 3] = w
  return p + 4
}

const varintSize = (n: number): number => {
  let size = 1
  while (n >= 0x80) {
    n = Math.floor(n / 0x80)
    size++
  }
  return size
}

/** The bytes of what `write` writes, for constant parts. */
const bytesOf = (write: (w: Writer) => void): Uint8Array => {
  const w = new Writer()
  write(w)
  return Uint8Array.from(w.buf.subarray(0, w.pos))
}

// ---- common.proto ----

/** An `AnyValue` as the nested message `field`. */
const writeAnyValue = (w: Writer, field: number, v: AttributeValue): void => {
  const at = w.begin(field)
  if (typeof v === "string") {
    w.tag(1, LEN)
    w.string(v)
  } else if (typeof v === "boolean") {
    w.tag(2, VARINT)
    w.varint(v ? 1 : 0)
  } else if (typeof v === "number") {
    if (Number.isInteger(v) && v >= 0 && v <= Number.MAX_SAFE_INTEGER) {
      w.tag(3, VARINT)
      w.varint(v)
    } else if (Number.isInteger(v) && v >= Number.MIN_SAFE_INTEGER) {
      // a negative int64: ten bytes of two's complement
      w.tag(3, VARINT)
      let x = BigInt.asUintN(64, BigInt(v))
      w.ensure(10)
      while (x >= 0x80n) {
        w.buf[w.pos++] = Number(x & 0x7fn) | 0x80
        x >>= 7n
      }
      w.buf[w.pos++] = Number(x)
    } else {
      w.tag(4, FIXED64)
      w.double(v)
    }
  } else if (Array.isArray(v)) {
    const array = w.begin(5)
    for (const item of v as ReadonlyArray<unknown>) {
      if (item === null || item === undefined) w.raw(EMPTY_ANY_VALUE)
      else writeAnyValue(w, 1, item as AttributeValue)
    }
    w.end(array)
  }
  w.end(at)
}

/** An empty `AnyValue` as field 1 of an `ArrayValue` (a null element). */
const EMPTY_ANY_VALUE = bytesOf((w) => {
  w.tag(1, LEN)
  w.varint(0)
})

const writeKeyValue = (w: Writer, field: number, key: string, value: AttributeValue): void => {
  const at = w.begin(field)
  w.tag(1, LEN)
  w.string(key)
  writeAnyValue(w, 2, value)
  w.end(at)
}

const writeAttributes = (w: Writer, field: number, attributes: Attributes | undefined): void => {
  if (attributes === undefined) return
  for (const key in attributes) {
    const v = attributes[key]
    if (v !== undefined && v !== null) writeKeyValue(w, field, key, v)
  }
}

// ---- trace.proto ----

const STATUS_ERROR = 2
const TWO_32N = BigInt(TWO_32)

/** Epoch nanoseconds as fixed64. */
const fixed64Big = (w: Writer, ns: bigint): void => {
  w.ensure(8)
  w.buf.writeUInt32LE(Number(ns % TWO_32N), w.pos)
  w.buf.writeUInt32LE(Number(ns / TWO_32N), w.pos + 4)
  w.pos += 8
}

/** A `Status` (field 15): `message` when failed, `code` ERROR. */
const writeStatus = (w: Writer, error: string | undefined): void => {
  const at = w.begin(15)
  if (error !== undefined) {
    w.tag(2, LEN)
    w.string(error)
    w.tag(3, VARINT)
    w.varint(STATUS_ERROR)
  }
  w.end(at)
}

const writeEvent = (w: Writer, e: SpanEventRecord): void => {
  const at = w.begin(11)
  w.tag(1, FIXED64)
  fixed64Big(w, e.timeNanos)
  w.tag(2, LEN)
  w.string(e.name)
  writeAttributes(w, 3, e.attributes)
  w.end(at)
}

/** A link (field 13) to a sampled span; a message span's ids are read from its traceparent. */
const writeLink = (w: Writer, link: Tracer.SpanLink): void => {
  const target = link.span
  const at = w.begin(13)
  if (target instanceof MessageSpan) {
    w.tag(1, LEN)
    w.traceId(target.t0, target.t1, target.t2, target.t3)
    w.tag(2, LEN)
    w.spanId(target.s0, target.s1)
  } else {
    w.tag(1, LEN)
    w.hexBytes(target.traceId, 0, 16)
    w.tag(2, LEN)
    w.hexBytes(target.spanId, 0, 8)
  }
  for (const key in link.attributes) {
    const v = attributeValue(link.attributes[key])
    if (v !== undefined && v !== null) writeKeyValue(w, 4, key, v)
  }
  w.tag(6, FIXED32)
  w.fixed32(1 | HAS_IS_REMOTE | (target._tag === "ExternalSpan" ? IS_REMOTE : 0))
  w.end(at)
}

/** A span of `Effect.withSpan`, as field 2 of `ScopeSpans`. */
const writeEffectSpan = (w: Writer, s: EffectSpan): void => {
  const at = w.begin(2)
  w.tag(1, LEN)
  w.hexBytes(s.traceId, 0, 16)
  w.tag(2, LEN)
  w.hexBytes(s.spanId, 0, 8)
  const parent = s.parent._tag === "Some" ? s.parent.value : undefined
  if (parent !== undefined) {
    w.tag(4, LEN)
    if (parent instanceof MessageSpan) w.hexBytes(parent.traceparent, 36, 8)
    else w.hexBytes(parent.spanId, 0, 8)
  }
  w.tag(5, LEN)
  w.string(s.name)
  w.tag(6, VARINT)
  w.varint(OTEL_KIND[s.kind] + 1)
  const status = s.status
  const end = status._tag === "Ended" ? status.endTime : status.startTime
  w.tag(7, FIXED64)
  fixed64Big(w, status.startTime)
  w.tag(8, FIXED64)
  fixed64Big(w, end)
  for (const [key, value] of s.attributes) {
    const v = attributeValue(value)
    if (v !== undefined && v !== null) writeKeyValue(w, 9, key, v)
  }
  const exit = exitOf(s)
  if (exit.interrupted) writeKeyValue(w, 9, "effect.fiber.interrupted", true)
  for (const e of eventsOf(s)) writeEvent(w, e)
  if (exit.error !== undefined) {
    writeEvent(w, { name: "exception", timeNanos: end, attributes: { "exception.type": exit.errorType, "exception.message": exit.error } })
  }
  for (const l of s.links) if (l.span.sampled) writeLink(w, l)
  writeStatus(w, exit.error)
  w.tag(16, FIXED32)
  w.fixed32(1 | HAS_IS_REMOTE | (parent?._tag === "ExternalSpan" ? IS_REMOTE : 0))
  w.end(at)
}

/** A `KeyValue`'s key field, for the message spans' fixed attributes. */
const keyField = (key: string): Uint8Array => bytesOf((w) => {
  w.tag(1, LEN)
  w.string(key)
})

const KEY_DEVICE = keyField("device.id")
const KEY_SEQ = keyField("message.seq")

/** The constant part of a message span of each kind: name, span kind (server), `message.kind`. */
const kindPart = (kind: "telemetry" | "event"): Uint8Array =>
  bytesOf((w) => {
    w.tag(5, LEN)
    w.string(`ingest ${kind}`)
    w.tag(6, VARINT)
    w.varint(OTEL_KIND.server + 1)
    writeKeyValue(w, 9, "message.kind", kind)
  })
const KIND_PART: Record<"telemetry" | "event", Uint8Array> = { telemetry: kindPart("telemetry"), event: kindPart("event") }

const outcomeParts = new Map<string, Uint8Array>()

/** The part of a message span that follows from its outcome: `message.outcome`, and the status (ERROR when the gateway failed it). */
const outcomePart = (outcome: string | undefined): Uint8Array => {
  const key = outcome ?? ""
  let bytes = outcomeParts.get(key)
  if (bytes === undefined) {
    bytes = bytesOf((w) => {
      if (outcome !== undefined) writeKeyValue(w, 9, "message.outcome", outcome)
      writeStatus(w, outcome !== undefined && FAILED_OUTCOMES.has(outcome) ? outcome : undefined)
    })
    // outcomes are a small set; anything past it is encoded each time
    if (outcomeParts.size < 64) outcomeParts.set(key, bytes)
  }
  return bytes
}

const FLAGS_ROOT = bytesOf((w) => {
  w.tag(16, FIXED32)
  w.fixed32(1 | HAS_IS_REMOTE)
})
const FLAGS_REMOTE_PARENT = bytesOf((w) => {
  w.tag(16, FIXED32)
  w.fixed32(1 | HAS_IS_REMOTE | IS_REMOTE)
})

/** A message span, from its own fields, as field 2 of `ScopeSpans`. */
const writeMessageSpan = (w: Writer, m: MessageSpan, origin: number): void => {
  const at = w.begin2(2)
  w.tag(1, LEN)
  w.traceId(m.t0, m.t1, m.t2, m.t3)
  w.tag(2, LEN)
  w.spanId(m.s0, m.s1)
  const parent = m.parentTraceparent
  if (parent !== undefined) {
    w.tag(4, LEN)
    w.hexBytes(parent, 36, 8)
  }
  w.raw(KIND_PART[m.messageKind])
  w.tag(7, FIXED64)
  w.fixed64(toEpochNanos(m.startAt, origin))
  w.tag(8, FIXED64)
  w.fixed64(toEpochNanos(m.endAt, origin))
  const device = w.begin(9)
  w.raw(KEY_DEVICE)
  const value = w.begin(2)
  w.tag(1, LEN)
  w.string(m.device)
  w.end(value)
  w.end(device)
  const seq = w.begin(9)
  w.raw(KEY_SEQ)
  writeAnyValue(w, 2, m.seq)
  w.end(seq)
  if (m.extra !== undefined) {
    for (const [key, value] of m.extra) {
      const v = attributeValue(value)
      if (v !== undefined && v !== null) writeKeyValue(w, 9, key, v)
    }
  }
  if (m.events !== undefined) for (const e of m.events) writeEvent(w, e)
  w.raw(outcomePart(m.outcome))
  w.raw(parent === undefined ? FLAGS_ROOT : FLAGS_REMOTE_PARENT)
  w.end2(at)
}

/**
 * The encoder of the spans of one resource and instrumentation scope: `spans` as an OTLP/protobuf
 * `ExportTraceServiceRequest` (one `ResourceSpans`, one `ScopeSpans`).
 */
export const makeProtobufEncoder = (
  resource: Attributes,
  scope: { readonly name: string; readonly version?: string }
): (spans: ReadonlyArray<FinishedSpan>) => Uint8Array => {
  const resourceField = bytesOf((w) => {
    const at = w.begin(1)
    writeAttributes(w, 1, resource)
    w.end(at)
  })
  const scopeField = bytesOf((w) => {
    const at = w.begin(1)
    w.tag(1, LEN)
    w.string(scope.name)
    if (scope.version !== undefined && scope.version !== "") {
      w.tag(2, LEN)
      w.string(scope.version)
    }
    w.end(at)
  })
  return (spans) => {
    const w = new Writer(1024 + 256 * spans.length)
    const origin = currentOrigin()
    const rs = w.begin(1)
    w.raw(resourceField)
    const ss = w.begin(2)
    w.raw(scopeField)
    for (const s of spans) {
      if (s instanceof MessageSpan) writeMessageSpan(w, s, origin)
      else writeEffectSpan(w, s)
    }
    w.end(ss)
    w.end(rs)
    return w.buf.subarray(0, w.pos)
  }
}
