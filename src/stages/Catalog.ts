/**
 * The stages an operator can name in the stages file, and the pipeline layer built from that
 * file. Adding a stage here is one line. Every entry turns its validated options into a stage
 * from envelopes to envelopes, so any order the file gives is well typed by construction;
 * stages that need more specific types are composed in code instead ({@link Pipeline.layer}).
 */
import { Effect, Layer, Option, Schema, type Scope } from "effect"
import { GatewayConfig } from "../config/GatewayConfig.ts"
import { oneLine, read, type StageSpec, StagesFileError } from "../config/StagesFile.ts"
import type { Envelope } from "../domain/Envelope.ts"
import { Pipeline, type UserStages } from "../pipeline/Pipeline.ts"
import * as Stage from "../pipeline/Stage.ts"
import * as DeviceMetadata from "./DeviceMetadata.ts"
import * as Threshold from "./Threshold.ts"
import * as UnitConversion from "./UnitConversion.ts"

/** A catalog entry: the options' Schema and how to make the stage from them. */
interface Entry {
  readonly make: (options: unknown) => Effect.Effect<UserStages, StagesFileError, Scope.Scope>
}

/** An entry for a stage that needs no service. */
const entry = <O>(options: Schema.Codec<O>, make: (options: O) => UserStages): Entry => ({
  make: (input) => Effect.map(decodeOptions(options, input), make)
})

const decodeOptions = <O>(schema: Schema.Codec<O>, input: unknown): Effect.Effect<O, StagesFileError> => {
  // an unknown option is a typo to report, not to ignore
  const decoded = Schema.decodeUnknownResult(schema, { onExcessProperty: "error" })(input ?? {})
  return decoded._tag === "Success"
    ? Effect.succeed(decoded.success)
    : Effect.fail(new StagesFileError({ message: oneLine(decoded.failure.message) }))
}

const isHttpUrl = (s: string) => URL.canParse(s) && /^https?:$/.test(new URL(s).protocol)

/** Options of `device-metadata` in the file: the stage's options plus where the inventory is. */
const DeviceMetadataOptions = Schema.Struct({
  ...DeviceMetadata.Options.fields,
  /** An inventory HTTP API (see {@link DeviceMetadata.DeviceDirectory.http}). */
  url: Schema.optionalKey(Schema.String.check(Schema.makeFilter(isHttpUrl, { message: "expected an http:// or https:// URL" }))),
  /** Or a JSON file of device records. */
  file: Schema.optionalKey(Schema.String),
  timeoutMs: Schema.optionalKey(Schema.Int.check(Schema.isGreaterThan(0)))
})

/** The catalog, by the name the stages file uses. */
export const catalog: Readonly<Record<string, Entry>> = {
  "unit-conversion": entry(UnitConversion.Options, UnitConversion.unitConversion),
  "threshold": entry(Threshold.Options, Threshold.threshold),
  "device-metadata": {
    make: (input) =>
      Effect.gen(function*() {
        const o = yield* decodeOptions(DeviceMetadataOptions, input)
        if (o.url !== undefined && o.file !== undefined) {
          return yield* new StagesFileError({ message: "give `url` or `file`, not both" })
        }
        const directory = o.url !== undefined
          ? DeviceMetadata.DeviceDirectory.http({ url: o.url, ...(o.timeoutMs === undefined ? {} : { timeoutMs: o.timeoutMs }) })
          : o.file !== undefined
          ? DeviceMetadata.DeviceDirectory.file(o.file)
          : undefined
        if (directory === undefined) return yield* new StagesFileError({ message: "needs `url` or `file`" })
        const context = yield* Layer.build(directory).pipe(
          Effect.mapError((e) => new StagesFileError({ message: e.message }))
        )
        return Stage.provideContext(DeviceMetadata.deviceMetadata(o), context)
      })
  }
}

/** The user stages described by `specs`, in order. */
const fromSpecs = (specs: ReadonlyArray<StageSpec>): Effect.Effect<UserStages, StagesFileError, Scope.Scope> =>
  Effect.gen(function*() {
    let pipeline: UserStages = Stage.identity<Envelope>()
    for (const [i, spec] of specs.entries()) {
      const where = `stages[${i}] (${spec.stage})`
      const entry = Object.hasOwn(catalog, spec.stage) ? catalog[spec.stage] : undefined
      if (entry === undefined) {
        return yield* new StagesFileError({
          message: `${where}: unknown stage; the catalog has ${Object.keys(catalog).join(", ")}`
        })
      }
      const stage = yield* entry.make(spec.options).pipe(
        Effect.mapError((e) => new StagesFileError({ message: `${where}: ${e.message}` }))
      )
      const selection = {
        ...(spec.kinds === undefined ? {} : { kinds: spec.kinds }),
        ...(spec.devices === undefined ? {} : { devices: spec.devices })
      }
      pipeline = Stage.andThen(pipeline, spec.kinds === undefined && spec.devices === undefined ? stage : Stage.when(stage, selection))
    }
    return pipeline
  })

/** The user pipeline from GATEWAY_STAGES_FILE; no stages when it is not set. */
export const layer: Layer.Layer<Pipeline, StagesFileError, GatewayConfig> = Layer.effect(
  Pipeline,
  Effect.gen(function*() {
    const config = yield* GatewayConfig
    if (Option.isNone(config.stagesFile)) return Stage.identity<Envelope>()
    const path = config.stagesFile.value
    const specs = yield* read(path)
    return yield* fromSpecs(specs).pipe(
      Effect.mapError((e) => new StagesFileError({ message: `GATEWAY_STAGES_FILE: ${path}: ${e.message}` }))
    )
  })
)
