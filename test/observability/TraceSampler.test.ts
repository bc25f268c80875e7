/**
 * The sampler as plain functions, against OpenTelemetry JS's own samplers: the same decision for
 * the same trace id (ratio) and the same parent flag (parent-based), a root's trace id drawn with
 * the hash it was decided on, and ids that are valid W3C ids.
 */
import { describe, expect, it } from "@effect/vitest"
import { context, SpanKind, trace, TraceFlags } from "@opentelemetry/api"
import {
  AlwaysOffSampler,
  AlwaysOnSampler,
  ParentBasedSampler,
  type Sampler as OtelSampler,
  SamplingDecision,
  TraceIdRatioBasedSampler
} from "@opentelemetry/sdk-trace-base"
import { isTraceparent } from "../../src/domain/Frames.ts"
import {
  childTraceparent,
  decideRoot,
  IDS,
  makeSampler,
  ratioBound,
  rootTraceparent,
  SAMPLER_NAMES,
  type SamplerName,
  sampleTraceparent,
  traceIdHash
} from "../../src/observability/TraceSampler.ts"

const hex = (bytes: number) => Array.from(crypto.getRandomValues(new Uint8Array(bytes)), (b) => b.toString(16).padStart(2, "0")).join("")

/** OpenTelemetry JS's sampler for a name and ratio (as its `OTEL_TRACES_SAMPLER` reading builds it). */
const otelSampler = (name: SamplerName, ratio: number): OtelSampler => {
  switch (name) {
    case "always_on":
      return new AlwaysOnSampler()
    case "always_off":
      return new AlwaysOffSampler()
    case "traceidratio":
      return new TraceIdRatioBasedSampler(ratio)
    case "parentbased_always_on":
      return new ParentBasedSampler({ root: new AlwaysOnSampler() })
    case "parentbased_always_off":
      return new ParentBasedSampler({ root: new AlwaysOffSampler() })
    case "parentbased_traceidratio":
      return new ParentBasedSampler({ root: new TraceIdRatioBasedSampler(ratio) })
  }
}

/** OpenTelemetry's decision for a span whose remote parent is `traceparent`. */
const otelDecides = (sampler: OtelSampler, traceparent: string): boolean => {
  const traceId = traceparent.slice(3, 35)
  const parent = trace.setSpanContext(context.active(), {
    traceId,
    spanId: traceparent.slice(36, 52),
    traceFlags: parseInt(traceparent.slice(53, 55), 16) & TraceFlags.SAMPLED,
    isRemote: true
  })
  return sampler.shouldSample(parent, traceId, "ingest telemetry", SpanKind.SERVER, {}, []).decision === SamplingDecision.RECORD_AND_SAMPLED
}

describe("TraceSampler", () => {
  it("decides a device's traceparent as OpenTelemetry JS's sampler of the same name does", () => {
    for (const name of SAMPLER_NAMES) {
      for (const ratio of [0, 0.01, 0.25, 0.5, 0.9, 1]) {
        const ours = makeSampler(name, ratio)
        const theirs = otelSampler(name, ratio)
        let disagreements = 0
        let sampled = 0
        for (let i = 0; i < 400; i++) {
          const tp = `00-${hex(16)}-${hex(8)}-${i % 2 === 0 ? "01" : "00"}`
          const decision = sampleTraceparent(ours, tp)
          if (decision !== otelDecides(theirs, tp)) disagreements++
          if (decision) sampled++
        }
        expect({ name, ratio, disagreements }).toEqual({ name, ratio, disagreements: 0 })
        // the decisions are not trivially all the same where the sampler must split them
        if (name === "traceidratio" && ratio === 0.5) expect(sampled).toBeGreaterThan(120)
        if (name === "traceidratio" && ratio === 0.5) expect(sampled).toBeLessThan(280)
      }
    }
  })

  it("hashes a trace id as OpenTelemetry JS's ratio sampler (its words XORed) and bounds it the same way", () => {
    expect(traceIdHash("00000001000000020000000400000008")).toBe(15)
    expect(traceIdHash("ffffffff00000000ffffffff00000000")).toBe(0)
    expect(traceIdHash("DEADBEEF000000000000000000000000")).toBe(0xdeadbeef)
    expect(ratioBound(1)).toBe(0x100000000)
    expect(ratioBound(0)).toBe(0)
    expect(ratioBound(0.5)).toBe(Math.floor(0.5 * 0xffffffff))
    // parent-based samplers follow the sampled bit, whatever other flag bits are set
    expect(sampleTraceparent(makeSampler("parentbased_always_off"), `00-${hex(16)}-${hex(8)}-03`)).toBe(true)
    expect(sampleTraceparent(makeSampler("parentbased_always_on"), `00-${hex(16)}-${hex(8)}-02`)).toBe(false)
  })

  it("decides a root before drawing its ids, and gives it a trace id with the hash it was decided on", () => {
    for (const ratio of [0.01, 0.3, 1]) {
      const sampler = makeSampler("traceidratio", ratio)
      let sampled = 0
      const n = 20_000
      for (let i = 0; i < n; i++) {
        if (!decideRoot(sampler)) continue
        sampled++
        const tp = rootTraceparent()
        expect(isTraceparent(tp)).toBe(true)
        expect(tp.endsWith("-01")).toBe(true)
        // the id's own hash is under the bound: the OTel sampler would sample it too
        expect(traceIdHash(tp.slice(3, 35))).toBeLessThan(sampler.bound)
        expect(otelDecides(new TraceIdRatioBasedSampler(ratio), tp)).toBe(true)
      }
      // the share sampled is the ratio (within 5 standard deviations)
      const sd = Math.sqrt(n * ratio * (1 - ratio))
      expect(Math.abs(sampled - n * ratio)).toBeLessThanOrEqual(5 * sd + 1)
    }
    expect(decideRoot(makeSampler("always_off"))).toBe(false)
    expect(decideRoot(makeSampler("parentbased_always_off"))).toBe(false)
  })

  it("makes distinct, valid ids; a child keeps its parent's trace id; the words match the text", () => {
    const seen = new Set<string>()
    for (let i = 0; i < 2_000; i++) {
      decideRoot(makeSampler("always_on"))
      const tp = rootTraceparent()
      const words = Array.from(IDS, (w) => w.toString(16).padStart(8, "0")).join("")
      expect(words).toBe(tp.slice(3, 35) + tp.slice(36, 52))
      seen.add(tp.slice(36, 52))
      const parent = `00-${hex(16)}-${hex(8)}-01`
      const child = childTraceparent(parent)
      expect(isTraceparent(child)).toBe(true)
      expect(child.slice(3, 35)).toBe(parent.slice(3, 35))
      expect(child.slice(36, 52)).not.toBe(parent.slice(36, 52))
      expect(Array.from(IDS, (w) => w.toString(16).padStart(8, "0")).join("")).toBe(child.slice(3, 35) + child.slice(36, 52))
    }
    expect(seen.size).toBe(2_000)
  })
})
