/**
 * The gateway's OTLP/protobuf encoding against OpenTelemetry JS's own serializers: the same
 * finished spans (message spans with and without a device parent, spans of `Effect.withSpan`
 * with links, events, every attribute type, a failure and an interruption) encoded both ways and
 * decoded by the test receiver's decoder (written from the OTLP protos) read the same.
 */
import { describe, expect, it } from "@effect/vitest"
import type { Attributes } from "@opentelemetry/api"
import { JsonTraceSerializer, ProtobufTraceSerializer } from "@opentelemetry/otlp-transformer"
import { defaultResource, resourceFromAttributes } from "@opentelemetry/resources"
import { Effect, Fiber, Tracer } from "effect"
import { type FinishedSpan, makeGatewayTracer } from "../../src/observability/GatewayTracer.ts"
import { makeProtobufEncoder } from "../../src/observability/OtlpProtobuf.ts"
import { toReadableSpan } from "../../src/observability/ReadableSpans.ts"
import { makeSampler } from "../../src/observability/TraceSampler.ts"
import { decodeJson, decodeProtobuf, type ReceivedSpan } from "./otlpReceiver.ts"

const DEVICE_TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

/** Finished spans of every shape the gateway makes. */
const makeSpans = async (): Promise<Array<FinishedSpan>> => {
  const spans: Array<FinishedSpan> = []
  const { tracer, startMessage } = makeGatewayTracer(makeSampler("always_on"), { ended: (s) => void spans.push(s) })
  const at = performance.now()
  const root = startMessage("telemetry", "dev-ü-1", 7, undefined, at)!
  const child = startMessage("event", "dev-2", 2 ** 40, DEVICE_TRACE, at)!
  child.attribute("stage.note", { nested: [1, 2] })
  child.event("held", BigInt(Date.now()) * 1_000_000n, { waitedMs: 3.5 })
  root.finish("committed", at + 1.25)
  child.finish("unavailable", at + 20)
  await Effect.runPromise(
    Effect.gen(function*() {
      yield* Effect.gen(function*() {
        yield* Effect.annotateCurrentSpan({ text: "a", int: 42, negative: -7, double: 2.5, yes: true, list: ["x", "y"] })
        yield* Effect.withSpan(Effect.void, "stage commit", { attributes: { "chunk.size": 2 } })
        const span = yield* Effect.currentSpan
        span.event("sink.retry", BigInt(Date.now()) * 1_000_000n, { "retry.attempt": 1 })
      }).pipe(Effect.withSpan("sink.batch", { kind: "client", links: [{ span: root, attributes: {} }, { span: child, attributes: { why: "linked" } }] }))
      yield* Effect.fail(new Error("disk full")).pipe(Effect.withSpan("sink.write", { kind: "client" }), Effect.ignore)
      const fiber = yield* Effect.forkChild(Effect.never.pipe(Effect.withSpan("gateway.connection", { kind: "server" })))
      yield* Effect.yieldNow
      yield* Fiber.interrupt(fiber)
    }).pipe(Effect.provideService(Tracer.Tracer, tracer))
  )
  return spans
}

/** A span as decoded, keyed for comparison (times to the microsecond: the two round them differently below it). */
const comparable = (s: ReceivedSpan) => ({
  ...s,
  startNs: undefined,
  endNs: undefined,
  startUs: Number(s.startNs / 1000n),
  endUs: Number(s.endNs / 1000n)
})
const byId = (spans: ReadonlyArray<ReceivedSpan>) => [...spans].sort((a, b) => a.spanId.localeCompare(b.spanId)).map(comparable)

describe("OTLP/protobuf encoding", () => {
  it("reads the same as OpenTelemetry JS's protobuf and JSON serializers, decoded from the wire", async () => {
    const spans = await makeSpans()
    expect(spans.map((s) => s.name).sort()).toEqual(
      ["gateway.connection", "ingest event", "ingest telemetry", "sink.batch", "sink.write", "stage commit"]
    )
    const resource = defaultResource().merge(resourceFromAttributes({ "service.name": "gw-test", "deployment.environment": "ci" }))
    const scope = { name: "iot-gateway" }
    const ours = decodeProtobuf(makeProtobufEncoder(resource.attributes as Attributes, scope)(spans))
    const readable = spans.map((s) => toReadableSpan(s, resource, scope))
    const theirs = decodeProtobuf(ProtobufTraceSerializer.serializeRequest(readable)!)
    const json = decodeJson(new TextDecoder().decode(JsonTraceSerializer.serializeRequest(readable)!))
    expect(ours).toHaveLength(6)
    // times within a microsecond of each other (a double of epoch nanoseconds is exact to ~0.25 µs)
    for (const [a, b] of byId(ours).map((s, i) => [s, byId(theirs)[i]!] as const)) {
      expect(Math.abs(a.startUs - b.startUs)).toBeLessThanOrEqual(1)
      expect(Math.abs(a.endUs - b.endUs)).toBeLessThanOrEqual(1)
    }
    const withoutTimes = (xs: ReadonlyArray<ReceivedSpan>) => byId(xs).map((s) => ({ ...s, startUs: 0, endUs: 0 }))
    expect(withoutTimes(ours)).toEqual(withoutTimes(theirs))
    expect(withoutTimes(ours)).toEqual(withoutTimes(json))

    // and what they read is what was made
    const get = (name: string) => ours.find((s) => s.name === name)!
    const root = get("ingest telemetry")
    expect(root).toMatchObject({
      kind: 2,
      parentSpanId: "",
      statusCode: 0,
      attributes: { "device.id": "dev-ü-1", "message.seq": 7, "message.kind": "telemetry", "message.outcome": "committed" }
    })
    expect(Number(root.endNs - root.startNs) / 1e6).toBeCloseTo(1.25, 2)
    const child = get("ingest event")
    expect(child).toMatchObject({
      traceId: "4bf92f3577b34da6a3ce929d0e0e4736",
      parentSpanId: "00f067aa0ba902b7",
      statusCode: 2,
      attributes: { "message.seq": 2 ** 40, "message.outcome": "unavailable", "stage.note": `{"nested":[1,2]}` },
      events: [{ name: "held", attributes: { waitedMs: 3.5 } }]
    })
    const batch = get("sink.batch")
    expect(batch).toMatchObject({
      kind: 3,
      parentSpanId: "",
      attributes: { text: "a", int: 42, negative: -7, double: 2.5, yes: true, list: ["x", "y"] },
      events: [{ name: "sink.retry", attributes: { "retry.attempt": 1 } }]
    })
    expect(batch.links).toEqual([{ traceId: root.traceId, spanId: root.spanId }, { traceId: child.traceId, spanId: child.spanId }])
    expect(get("stage commit")).toMatchObject({ traceId: batch.traceId, parentSpanId: batch.spanId, attributes: { "chunk.size": 2 } })
    expect(get("sink.write")).toMatchObject({ statusCode: 2, events: [{ name: "exception", attributes: { "exception.message": "disk full" } }] })
    expect(get("gateway.connection").attributes).toMatchObject({ "effect.fiber.interrupted": true })
    expect(root.resource).toMatchObject({ "service.name": "gw-test", "deployment.environment": "ci", "telemetry.sdk.language": "nodejs" })
    expect(root.scope).toBe("iot-gateway")
  })

  it("encodes a batch of thousands of spans (lengths past one and two varint bytes)", async () => {
    const spans: Array<FinishedSpan> = []
    const { startMessage } = makeGatewayTracer(makeSampler("always_on"), { ended: (s) => void spans.push(s) })
    const at = performance.now()
    for (let i = 0; i < 3_000; i++) startMessage("telemetry", `device-${"x".repeat(i % 300)}`, i, undefined, at)!.finish("committed", at)
    const decoded = decodeProtobuf(makeProtobufEncoder({ "service.name": "x" }, { name: "s" })(spans))
    expect(decoded).toHaveLength(3_000)
    expect(decoded.map((s) => s.attributes["message.seq"])).toEqual(spans.map((_, i) => i))
    expect(decoded[299]!.attributes["device.id"]).toBe(`device-${"x".repeat(299)}`)
    expect(new Set(decoded.map((s) => s.spanId)).size).toBe(3_000)
  })
})
