/**
 * Test support: a local OTLP/HTTP trace receiver (a `node:http` server on port 0) that answers
 * 200 at once and decodes what it was sent, in either encoding: `application/json` (OTLP/JSON)
 * and `application/x-protobuf` (decoded here by field number from the OTLP trace protos:
 * opentelemetry/proto/collector/trace/v1 and trace/v1), into one shape. Each request is kept
 * with its path, content type and headers.
 */
import * as Http from "node:http"
import type { AddressInfo } from "node:net"
import * as Zlib from "node:zlib"

/** An attribute value as decoded. */
export type AttributeValue = string | number | boolean | ReadonlyArray<unknown> | null

/** One span as received. */
export interface ReceivedSpan {
  readonly traceId: string
  readonly spanId: string
  /** Empty when the span is a root. */
  readonly parentSpanId: string
  readonly name: string
  /** OTLP kind: 1 internal, 2 server, 3 client, 4 producer, 5 consumer. */
  readonly kind: number
  readonly startNs: bigint
  readonly endNs: bigint
  readonly attributes: Readonly<Record<string, AttributeValue>>
  readonly events: ReadonlyArray<{ readonly name: string; readonly attributes: Readonly<Record<string, AttributeValue>> }>
  readonly links: ReadonlyArray<{ readonly traceId: string; readonly spanId: string }>
  /** 0 unset, 1 ok, 2 error. */
  readonly statusCode: number
  /** The resource's attributes and the scope's name it came with. */
  readonly resource: Readonly<Record<string, AttributeValue>>
  readonly scope: string
}

/** One export request. */
export interface ReceivedRequest {
  /** `performance.now()` when it was received. */
  readonly at: number
  readonly path: string
  readonly contentType: string
  readonly headers: Http.IncomingHttpHeaders
  readonly spans: ReadonlyArray<ReceivedSpan>
}

/** A running receiver. */
export interface OtlpReceiver {
  readonly port: number
  /** `http://127.0.0.1:<port>` (the value of OTEL_EXPORTER_OTLP_ENDPOINT). */
  readonly endpoint: string
  readonly requests: Array<ReceivedRequest>
  /** Every span received so far. */
  readonly spans: () => Array<ReceivedSpan>
  /** Bodies that could not be decoded (a test should expect none). */
  readonly errors: Array<string>
  readonly close: () => Promise<void>
}

// ---- protobuf wire format ----

class Reader {
  pos = 0
  readonly buf: Uint8Array
  constructor(buf: Uint8Array) {
    this.buf = buf
  }
  done(): boolean {
    return this.pos >= this.buf.length
  }
  varint(): bigint {
    let result = 0n
    let shift = 0n
    while (true) {
      if (this.pos >= this.buf.length) throw new Error("truncated varint")
      const b = this.buf[this.pos++]!
      result |= BigInt(b & 0x7f) << shift
      if ((b & 0x80) === 0) return result
      shift += 7n
    }
  }
  bytes(): Uint8Array {
    const n = Number(this.varint())
    if (this.pos + n > this.buf.length) throw new Error("truncated bytes")
    const out = this.buf.subarray(this.pos, this.pos + n)
    this.pos += n
    return out
  }
  fixed64(): bigint {
    const view = new DataView(this.buf.buffer, this.buf.byteOffset + this.pos, 8)
    this.pos += 8
    return view.getBigUint64(0, true)
  }
  double(): number {
    const view = new DataView(this.buf.buffer, this.buf.byteOffset + this.pos, 8)
    this.pos += 8
    return view.getFloat64(0, true)
  }
  fixed32(): number {
    const view = new DataView(this.buf.buffer, this.buf.byteOffset + this.pos, 4)
    this.pos += 4
    return view.getUint32(0, true)
  }
  /** Calls `on(field, wireType)` for each field; `on` must consume the value or return false to skip it. */
  fields(on: (field: number, wire: number) => boolean): void {
    while (!this.done()) {
      const tag = Number(this.varint())
      const field = tag >>> 3
      const wire = tag & 7
      if (!on(field, wire)) this.skip(wire)
    }
  }
  skip(wire: number): void {
    if (wire === 0) this.varint()
    else if (wire === 1) this.pos += 8
    else if (wire === 2) this.bytes()
    else if (wire === 5) this.pos += 4
    else throw new Error(`unsupported wire type ${wire}`)
  }
}

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex")
const text = (b: Uint8Array) => Buffer.from(b).toString("utf8")

const anyValue = (buf: Uint8Array): AttributeValue => {
  let out: AttributeValue = null
  const r = new Reader(buf)
  r.fields((field, wire) => {
    if (field === 1 && wire === 2) out = text(r.bytes())
    else if (field === 2 && wire === 0) out = r.varint() !== 0n
    else if (field === 3 && wire === 0) out = Number(BigInt.asIntN(64, r.varint()))
    else if (field === 4 && wire === 1) out = r.double()
    else if (field === 5 && wire === 2) {
      const values: Array<unknown> = []
      const a = new Reader(r.bytes())
      a.fields((f, w) => (f === 1 && w === 2 ? (values.push(anyValue(a.bytes())), true) : false))
      out = values
    } else return false
    return true
  })
  return out
}

const keyValue = (buf: Uint8Array, into: Record<string, AttributeValue>) => {
  let key = ""
  let value: AttributeValue = null
  const r = new Reader(buf)
  r.fields((field, wire) => {
    if (field === 1 && wire === 2) key = text(r.bytes())
    else if (field === 2 && wire === 2) value = anyValue(r.bytes())
    else return false
    return true
  })
  into[key] = value
}

const protoSpan = (buf: Uint8Array, resource: Record<string, AttributeValue>, scope: string): ReceivedSpan => {
  const span = {
    traceId: "",
    spanId: "",
    parentSpanId: "",
    name: "",
    kind: 0,
    startNs: 0n,
    endNs: 0n,
    attributes: {} as Record<string, AttributeValue>,
    events: [] as Array<{ name: string; attributes: Record<string, AttributeValue> }>,
    links: [] as Array<{ traceId: string; spanId: string }>,
    statusCode: 0,
    resource,
    scope
  }
  const r = new Reader(buf)
  r.fields((field) => {
    switch (field) {
      case 1:
        span.traceId = hex(r.bytes())
        return true
      case 2:
        span.spanId = hex(r.bytes())
        return true
      case 4:
        span.parentSpanId = hex(r.bytes())
        return true
      case 5:
        span.name = text(r.bytes())
        return true
      case 6:
        span.kind = Number(r.varint())
        return true
      case 7:
        span.startNs = r.fixed64()
        return true
      case 8:
        span.endNs = r.fixed64()
        return true
      case 9:
        keyValue(r.bytes(), span.attributes)
        return true
      case 11: {
        const e = { name: "", attributes: {} as Record<string, AttributeValue> }
        const er = new Reader(r.bytes())
        er.fields((f, w) => {
          if (f === 2 && w === 2) e.name = text(er.bytes())
          else if (f === 3 && w === 2) keyValue(er.bytes(), e.attributes)
          else return false
          return true
        })
        span.events.push(e)
        return true
      }
      case 13: {
        const l = { traceId: "", spanId: "" }
        const lr = new Reader(r.bytes())
        lr.fields((f, w) => {
          if (f === 1 && w === 2) l.traceId = hex(lr.bytes())
          else if (f === 2 && w === 2) l.spanId = hex(lr.bytes())
          else return false
          return true
        })
        span.links.push(l)
        return true
      }
      case 15: {
        const sr = new Reader(r.bytes())
        sr.fields((f, w) => (f === 3 && w === 0 ? ((span.statusCode = Number(sr.varint())), true) : false))
        return true
      }
      default:
        return false
    }
  })
  return span
}

/** Decodes an `ExportTraceServiceRequest` in protobuf. */
export const decodeProtobuf = (buf: Uint8Array): Array<ReceivedSpan> => {
  const spans: Array<ReceivedSpan> = []
  const top = new Reader(buf)
  top.fields((field, wire) => {
    if (field !== 1 || wire !== 2) return false
    const rs = new Reader(top.bytes())
    const resource: Record<string, AttributeValue> = {}
    const scopeSpans: Array<Uint8Array> = []
    rs.fields((f, w) => {
      if (f === 1 && w === 2) {
        const rr = new Reader(rs.bytes())
        rr.fields((ff, ww) => (ff === 1 && ww === 2 ? (keyValue(rr.bytes(), resource), true) : false))
      } else if (f === 2 && w === 2) scopeSpans.push(rs.bytes())
      else return false
      return true
    })
    for (const ss of scopeSpans) {
      let scope = ""
      const sr = new Reader(ss)
      const raw: Array<Uint8Array> = []
      sr.fields((f, w) => {
        if (f === 1 && w === 2) {
          const ir = new Reader(sr.bytes())
          ir.fields((ff, ww) => (ff === 1 && ww === 2 ? ((scope = text(ir.bytes())), true) : false))
        } else if (f === 2 && w === 2) raw.push(sr.bytes())
        else return false
        return true
      })
      for (const s of raw) spans.push(protoSpan(s, resource, scope))
    }
    return true
  })
  return spans
}

// ---- OTLP/JSON ----

interface JsonAnyValue {
  readonly stringValue?: string
  readonly boolValue?: boolean
  readonly intValue?: number | string
  readonly doubleValue?: number
  readonly arrayValue?: { readonly values?: ReadonlyArray<JsonAnyValue> }
}
interface JsonKeyValue {
  readonly key: string
  readonly value: JsonAnyValue
}
interface JsonSpan {
  readonly traceId: string
  readonly spanId: string
  readonly parentSpanId?: string
  readonly name: string
  readonly kind: number
  readonly startTimeUnixNano: string | number
  readonly endTimeUnixNano: string | number
  readonly attributes?: ReadonlyArray<JsonKeyValue>
  readonly events?: ReadonlyArray<{ readonly name: string; readonly attributes?: ReadonlyArray<JsonKeyValue> }>
  readonly links?: ReadonlyArray<{ readonly traceId: string; readonly spanId: string }>
  readonly status?: { readonly code?: number }
}
interface JsonExport {
  readonly resourceSpans: ReadonlyArray<{
    readonly resource?: { readonly attributes?: ReadonlyArray<JsonKeyValue> }
    readonly scopeSpans: ReadonlyArray<{ readonly scope?: { readonly name?: string }; readonly spans: ReadonlyArray<JsonSpan> }>
  }>
}

const jsonValue = (v: JsonAnyValue): AttributeValue =>
  v.stringValue !== undefined ? v.stringValue
  : v.boolValue !== undefined ? v.boolValue
  : v.intValue !== undefined ? Number(v.intValue)
  : v.doubleValue !== undefined ? v.doubleValue
  : v.arrayValue !== undefined ? (v.arrayValue.values ?? []).map(jsonValue)
  : null

const jsonAttributes = (kvs: ReadonlyArray<JsonKeyValue> | undefined) => {
  const out: Record<string, AttributeValue> = {}
  for (const kv of kvs ?? []) out[kv.key] = jsonValue(kv.value)
  return out
}

/** Decodes an `ExportTraceServiceRequest` in OTLP/JSON. */
export const decodeJson = (body: string): Array<ReceivedSpan> => {
  const parsed = JSON.parse(body) as JsonExport
  const spans: Array<ReceivedSpan> = []
  for (const rs of parsed.resourceSpans) {
    const resource = jsonAttributes(rs.resource?.attributes)
    for (const ss of rs.scopeSpans) {
      for (const s of ss.spans) {
        spans.push({
          traceId: s.traceId,
          spanId: s.spanId,
          parentSpanId: s.parentSpanId ?? "",
          name: s.name,
          kind: s.kind,
          startNs: BigInt(s.startTimeUnixNano),
          endNs: BigInt(s.endTimeUnixNano),
          attributes: jsonAttributes(s.attributes),
          events: (s.events ?? []).map((e) => ({ name: e.name, attributes: jsonAttributes(e.attributes) })),
          links: (s.links ?? []).map((l) => ({ traceId: l.traceId, spanId: l.spanId })),
          statusCode: s.status?.code ?? 0,
          resource,
          scope: ss.scope?.name ?? ""
        })
      }
    }
  }
  return spans
}

/** Starts a receiver on 127.0.0.1, port 0; it answers each request after `delayMs` (at once by default). */
export const startReceiver = async (options: { readonly delayMs?: number } = {}): Promise<OtlpReceiver> => {
  const requests: Array<ReceivedRequest> = []
  const errors: Array<string> = []
  const server = Http.createServer((req, res) => {
    const chunks: Array<Buffer> = []
    req.on("data", (d: Buffer) => chunks.push(d))
    req.on("end", () => {
      const raw = Buffer.concat(chunks)
      const contentType = String(req.headers["content-type"] ?? "")
      try {
        const body = req.headers["content-encoding"] === "gzip" ? Zlib.gunzipSync(raw) : raw
        const spans = contentType.startsWith("application/json") ? decodeJson(body.toString("utf8")) : decodeProtobuf(body)
        requests.push({ at: performance.now(), path: req.url ?? "", contentType, headers: req.headers, spans })
      } catch (e) {
        errors.push(`${contentType}: ${e instanceof Error ? e.message : String(e)}`)
      }
      const answer = () => {
        if (res.destroyed) return
        res.writeHead(200, { "content-type": contentType.startsWith("application/json") ? "application/json" : "application/x-protobuf" })
        res.end(contentType.startsWith("application/json") ? "{}" : "")
      }
      if (options.delayMs === undefined) answer()
      else setTimeout(answer, options.delayMs).unref()
    })
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const port = (server.address() as AddressInfo).port
  return {
    port,
    endpoint: `http://127.0.0.1:${port}`,
    requests,
    errors,
    spans: () => requests.flatMap((r) => r.spans),
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections()
        server.close(() => resolve())
      })
  }
}
