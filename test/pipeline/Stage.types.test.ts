/**
 * Type tests: what the compiler accepts and refuses when stages are composed. Checked by `tsc`
 * (part of `npm test`): each `@ts-expect-error` line must fail to compile, or tsc reports the
 * directive as unused and the test command fails.
 */
import { Effect, Layer } from "effect"
import { describe, expectTypeOf, it } from "vitest"
import { GatewayConfig } from "../../src/config/GatewayConfig.ts"
import type { Envelope } from "../../src/domain/Envelope.ts"
import type { TransientUpstreamError, ValidationError } from "../../src/domain/Errors.ts"
import * as Gateway from "../../src/Gateway.ts"
import { MessageTracer } from "../../src/observability/Tracing.ts"
import { type Dedup, dedup } from "../../src/pipeline/Dedup.ts"
import { Pipeline } from "../../src/pipeline/Pipeline.ts"
import * as Stage from "../../src/pipeline/Stage.ts"
import { type RawData, validate } from "../../src/pipeline/Validate.ts"
import { DeviceDirectory, deviceMetadata, type WithMetadata } from "../../src/stages/DeviceMetadata.ts"
import { threshold, type WithAlerts } from "../../src/stages/Threshold.ts"
import { unitConversion } from "../../src/stages/UnitConversion.ts"

const convert = unitConversion({ conversions: [{ from: "temp_f", to: "temp_c", preset: "fahrenheit_to_celsius" }] })
const limits = threshold({ limits: [{ metric: "temp_c", above: 90 }] })
const enrich = deviceMetadata()

/** A stage that only makes sense after `device-metadata`: it reads `metadata`. */
const bySite = Stage.map("by-site", (e: WithMetadata) => (e.metadata?.["site"] === "lab" ? Stage.dropped : e))

describe("Stage types", () => {
  it("a pipeline goes from its first stage's input to its last stage's output", () => {
    expectTypeOf(Stage.andThen(validate, dedup())).toEqualTypeOf<Stage.Stage<RawData, Envelope, ValidationError, Dedup>>()
    expectTypeOf(convert.pipe(Stage.andThen(limits))).toEqualTypeOf<Stage.Stage<Envelope, WithAlerts, ValidationError>>()
  })

  it("errors and required services accumulate along the pipeline", () => {
    const p = convert.pipe(Stage.andThen(enrich), Stage.andThen(bySite))
    expectTypeOf(p).toEqualTypeOf<
      Stage.Stage<Envelope, WithMetadata, ValidationError | TransientUpstreamError, DeviceDirectory>
    >()
  })

  it("refuses a stage whose input the previous stage does not produce", () => {
    // @ts-expect-error — by-site needs `metadata`, which unit-conversion does not add
    Stage.andThen(convert, bySite)
    // @ts-expect-error — the same in pipe form
    convert.pipe(Stage.andThen(bySite))
    // @ts-expect-error — validate takes raw frames, not envelopes
    Stage.andThen(dedup<Envelope>(), validate)
    // after device-metadata it is fine
    expectTypeOf(Stage.andThen(enrich, bySite)).toEqualTypeOf<
      Stage.Stage<Envelope, WithMetadata, TransientUpstreamError, DeviceDirectory>
    >()
  })

  it("generic stages keep in the type what earlier stages added (inferred, no type argument)", () => {
    const p = enrich.pipe(Stage.andThen(threshold({ limits: [] })))
    expectTypeOf(p).toEqualTypeOf<
      Stage.Stage<Envelope, WithAlerts<WithMetadata>, TransientUpstreamError, DeviceDirectory>
    >()
    Stage.andThen(p, bySite) // by-site reads metadata: still there
    const plain = Stage.map("plain", (e: Envelope) => e) // written for plain envelopes, not generic
    // @ts-expect-error — a non-generic stage passes on `Envelope`: metadata is gone from the type
    enrich.pipe(Stage.andThen(plain), Stage.andThen(bySite))
  })

  it("refuses errors outside the taxonomy", () => {
    // @ts-expect-error — a stage fails messages with taxonomy errors only (or maps its own into them)
    Stage.map("bad", (_: Envelope) => Stage.reject(new Error("not a taxonomy error")))
    // @ts-expect-error — the same for chunk stages
    Stage.chunk("bad", (_: ReadonlyArray<Envelope>) => Effect.fail(new Error("nope")))
  })

  it("refuses user stages that do not take and give envelopes", () => {
    // @ts-expect-error — the user pipeline must end in envelopes the commit stage can write
    Pipeline.layer(Stage.map("seqs", (e: Envelope) => e.seq))
    // @ts-expect-error — and must accept any envelope
    Pipeline.layer(bySite)
  })

  it("a stage may hold resources: the pipeline layer provides their scope", () => {
    const pooled = Stage.unwrap(
      Effect.map(Effect.acquireRelease(Effect.succeed(new Map<string, string>()), () => Effect.void), (pool) =>
        Stage.map("pooled", (e: Envelope) => (pool.has(e.device) ? Stage.dropped : e)))
    )
    expectTypeOf(Pipeline.layer(pooled)).toEqualTypeOf<Layer.Layer<Pipeline, never, never>>()
  })

  it("refuses a gateway whose stages need a service nobody provides", () => {
    const pipeline = Pipeline.layer(Stage.andThen(convert, enrich))
    expectTypeOf(pipeline).toEqualTypeOf<Layer.Layer<Pipeline, never, DeviceDirectory>>()
    // @ts-expect-error — DeviceDirectory is not provided
    Gateway.layer(GatewayConfig.layer, MessageTracer.disabled, pipeline)
    // a layer that can fail at start (a missing inventory file) is accepted: run() reports it
    Gateway.layer(GatewayConfig.layer, MessageTracer.disabled, pipeline.pipe(Layer.provide(DeviceDirectory.file("devices.json"))))
    // provided: accepted
    Gateway.layer(
      GatewayConfig.layer,
      MessageTracer.disabled,
      pipeline.pipe(Layer.provide(DeviceDirectory.http({ url: "http://127.0.0.1:1/devices" })))
    )
  })
})
