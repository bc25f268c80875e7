/**
 * The stages file (GATEWAY_STAGES_FILE): which stages run after ingest, in which order, for which
 * kinds and devices, with which options. JSON, validated at start; a bad file stops the gateway
 * with one line naming the file and the problem (exit 78).
 *
 * ```json
 * { "stages": [
 *   { "stage": "unit-conversion", "kinds": ["telemetry"], "devices": ["boiler-*"],
 *     "options": { "conversions": [{ "from": "temp_f", "to": "temp_c", "preset": "fahrenheit_to_celsius" }] } },
 *   { "stage": "threshold", "options": { "limits": [{ "metric": "temp_c", "above": 90, "severity": "critical" }] } }
 * ] }
 * ```
 */
import { Data, Effect, Schema } from "effect"
import { readJsonFile } from "./JsonFile.ts"

/** One entry of the file: a stage of the catalog, where it applies, and its options. */
export const StageSpec = Schema.Struct({
  /** The catalog name of the stage. */
  stage: Schema.String.check(Schema.isMinLength(1)),
  /** Kinds it applies to (default: all; an empty list would select nothing, so it is refused). */
  kinds: Schema.optionalKey(Schema.Array(Schema.Literals(["telemetry", "event"])).check(Schema.isMinLength(1))),
  /** Devices it applies to: exact ids or `prefix*` (default: all; not empty). */
  devices: Schema.optionalKey(Schema.Array(Schema.String.check(Schema.isMinLength(1))).check(Schema.isMinLength(1))),
  /** The stage's own options, checked by the stage's Schema. */
  options: Schema.optionalKey(Schema.Unknown)
})
export type StageSpec = typeof StageSpec.Type

/** The whole file. */
export const StagesFile = Schema.Struct({ stages: Schema.Array(StageSpec) })

/** The stages file is missing, not JSON, or does not describe a valid pipeline. */
export class StagesFileError extends Data.TaggedError("StagesFileError")<{
  readonly message: string
}> {}

// an unknown key is a typo to report, not to ignore
const decode = Schema.decodeUnknownResult(StagesFile, { onExcessProperty: "error" })

/** The largest stages file read (a stages file is a few KB; anything far larger is a mistake). */
export const MAX_STAGES_FILE_BYTES = 1024 * 1024

/** Reads and validates the stages file. */
export const read = (path: string): Effect.Effect<ReadonlyArray<StageSpec>, StagesFileError> =>
  readJsonFile(path, MAX_STAGES_FILE_BYTES).pipe(
    Effect.mapError((message) => new StagesFileError({ message: `GATEWAY_STAGES_FILE: ${message}` })),
    Effect.flatMap((json) => {
      const decoded = decode(json)
      return decoded._tag === "Success"
        ? Effect.succeed(decoded.success.stages)
        : Effect.fail(new StagesFileError({ message: `GATEWAY_STAGES_FILE: ${path}: ${oneLine(decoded.failure.message)}` }))
    })
  )

/** A multi-line Schema message on one line. */
export const oneLine = (message: string) => message.replace(/\s*\n\s*/g, " ")
