/**
 * Traces over OTLP/HTTP to a real local receiver (a node:http server decoding what it gets), from
 * an in-process gateway on real sockets configured by the standard OTEL_* variables, in both
 * encodings: the span tree of a message (an `ingest` span continuing the device's trace, a
 * `sink.batch` span linking it, a span per stage inside the batch, a `sink.write` span linking
 * the batch's commit stage), its attributes (device, seq, kind, outcome), the resource of OTEL_SERVICE_NAME and
 * OTEL_RESOURCE_ATTRIBUTES, the headers of OTEL_EXPORTER_OTLP_HEADERS, and the stored
 * traceparent naming the message's span.
 */
import { afterEach, describe, expect, it } from "@effect/vitest"
import type { Envelope } from "../../src/domain/Envelope.ts"
import * as Tracing from "../../src/observability/Tracing.ts"
import { Pipeline } from "../../src/pipeline/Pipeline.ts"
import * as Stage from "../../src/pipeline/Stage.ts"
import { Device, event, telemetry } from "../support/client.ts"
import { startGateway } from "../support/gateway.ts"
import { rows } from "../support/store.ts"
import { type OtlpReceiver, type ReceivedSpan, startReceiver } from "./otlpReceiver.ts"

const saved = { ...process.env }
const receivers: Array<OtlpReceiver> = []
afterEach(async () => {
  for (const k of Object.keys(process.env)) if (k.startsWith("OTEL_") && saved[k] === undefined) delete process.env[k]
  for (const r of receivers.splice(0)) await r.close()
})

const DEVICE_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
const DEVICE_SPAN_ID = "00f067aa0ba902b7"

/** A stage that drops seq 3 (answered ack, not stored): its message's outcome is `dropped`. */
const dropThree = Pipeline.layer(Stage.map("drop-three", (e: Envelope) => (e.seq === 3 ? Stage.dropped : e)))

const one = (spans: ReadonlyArray<ReceivedSpan>, name: string, where: (s: ReceivedSpan) => boolean = () => true) => {
  const found = spans.filter((s) => s.name === name && where(s))
  expect({ name, count: found.length }).toEqual({ name, count: 1 })
  return found[0]!
}

describe("tracing", () => {
  for (const protocol of ["http/protobuf", "http/json"] as const) {
    it(`exports the span tree of each message over ${protocol}, and stores the traceparent naming its span`, async () => {
      const receiver = await startReceiver()
      receivers.push(receiver)
      Object.assign(process.env, {
        OTEL_EXPORTER_OTLP_ENDPOINT: receiver.endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL: protocol,
        OTEL_SERVICE_NAME: "gw-test",
        OTEL_RESOURCE_ATTRIBUTES: "deployment.environment=test,service.name=overridden",
        OTEL_EXPORTER_OTLP_HEADERS: "x-tenant=t1,authorization=Bearer abc==",
        OTEL_EXPORTER_OTLP_TRACES_HEADERS: "x-tenant=traces"
      })
      const g = await startGateway({}, Tracing.layerFromEnv("iot-gateway"), dropThree)
      const { d } = await Device.open(g.port, "dev-traced")
      d.send(
        telemetry(1, { t: 1 }, { trace: `00-${DEVICE_TRACE_ID}-${DEVICE_SPAN_ID}-01` }),
        telemetry(2),
        event(3),
        telemetry(4, { t: 4 }, { trace: "00-not-a-traceparent" })
      )
      expect(await d.take(4)).toEqual([
        { type: "ack", seq: 1 },
        { type: "ack", seq: 2 },
        { type: "ack", seq: 3 },
        { type: "ack", seq: 4 }
      ])
      d.end()
      await g.stop() // flushes the export
      expect(receiver.errors).toEqual([])
      expect(receiver.requests.length).toBeGreaterThan(0)
      for (const r of receiver.requests) {
        expect(r.path).toBe("/v1/traces")
        expect(r.contentType).toBe(protocol === "http/json" ? "application/json" : "application/x-protobuf")
        // the traces-specific header wins over the general one; the others come through
        expect(r.headers["x-tenant"]).toBe("traces")
        expect(r.headers["authorization"]).toBe("Bearer abc==")
      }
      const spans = receiver.spans()

      // one ingest span per message, with its attributes and outcome
      const ingest = spans.filter((s) => s.name.startsWith("ingest "))
      expect(ingest.map((s) => [s.name, s.attributes["message.seq"]]).sort((a, b) => Number(a[1]) - Number(b[1]))).toEqual([
        ["ingest telemetry", 1],
        ["ingest telemetry", 2],
        ["ingest event", 3],
        ["ingest telemetry", 4]
      ])
      for (const s of ingest) {
        expect(s.kind).toBe(2) // server
        expect(s.attributes).toMatchObject({ "device.id": "dev-traced", "message.kind": s.name.slice(7) })
        expect(s.statusCode).toBe(0)
        expect(s.resource).toMatchObject({ "service.name": "gw-test", "deployment.environment": "test" })
        expect(s.endNs).toBeGreaterThan(s.startNs)
        // wall-clock times, not a monotonic clock's
        expect(Math.abs(Number(s.startNs / 1_000_000n) - Date.now())).toBeLessThan(60_000)
      }
      const bySeq = (seq: number) => one(spans, seq === 3 ? "ingest event" : "ingest telemetry", (s) => s.attributes["message.seq"] === seq)
      expect([1, 2, 3, 4].map((seq) => bySeq(seq).attributes["message.outcome"])).toEqual(["committed", "committed", "dropped", "committed"])
      // the device's trace is continued; the others start their own; an invalid trace is ignored
      const continued = bySeq(1)
      expect(continued.traceId).toBe(DEVICE_TRACE_ID)
      expect(continued.parentSpanId).toBe(DEVICE_SPAN_ID)
      for (const seq of [2, 3, 4]) {
        expect(bySeq(seq).parentSpanId).toBe("")
        expect(bySeq(seq).traceId).not.toBe(DEVICE_TRACE_ID)
      }

      // the stored traceparent names the message's span
      const stored = rows(g.dataDir, "dev-traced")
      expect(stored.map((r) => r.seq)).toEqual([1, 2, 4]) // 3 was dropped by the stage
      for (const r of stored) {
        const span = bySeq(r.seq)
        expect(r.traceparent).toBe(`00-${span.traceId}-${span.spanId}-01`)
      }

      // a sink batch links its messages; each stage of it is a child span
      const batches = spans.filter((s) => s.name === "sink.batch")
      expect(batches.length).toBeGreaterThanOrEqual(1)
      for (const b of batches) expect(b.kind).toBe(3) // client
      const linked = batches.flatMap((b) => b.links)
      for (const s of ingest) expect(linked).toContainEqual({ traceId: s.traceId, spanId: s.spanId })
      for (const name of ["stage drop-three", "stage commit"]) {
        const stageSpans = spans.filter((s) => s.name === name)
        expect({ name, some: stageSpans.length > 0 }).toEqual({ name, some: true })
        for (const s of stageSpans) {
          const parent = batches.find((b) => b.spanId === s.parentSpanId)
          expect(parent?.traceId).toBe(s.traceId)
        }
      }
      const writes = spans.filter((s) => s.name === "sink.write")
      expect(writes.length).toBeGreaterThanOrEqual(1)
      expect(writes[0]!.attributes).toMatchObject({ "sink.name": "sqlite" })
      // the write links the span it was asked from: its batch's commit stage
      const commits = spans.filter((s) => s.name === "stage commit")
      for (const w of writes) {
        expect(w.links.length).toBeGreaterThanOrEqual(1)
        for (const l of w.links) {
          const commit = commits.find((c) => c.spanId === l.spanId)
          expect(batches.map((b) => b.spanId)).toContain(commit?.parentSpanId)
        }
      }
      expect(writes.flatMap((w) => w.links.map((l) => l.spanId)).sort()).toEqual(commits.map((c) => c.spanId).sort())
      const connection = one(spans, "gateway.connection")
      expect(connection.kind).toBe(2)
    })
  }
})
