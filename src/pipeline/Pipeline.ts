/**
 * The stages the persistence loop runs on each batch before the commit stage: your stages,
 * composed in code ({@link Pipeline.layer}) or chosen by the operator in a stages file
 * ({@link Pipeline.fromFile}, GATEWAY_STAGES_FILE). Empty by default.
 */
import { Context, Data, Effect, Layer, type Scope } from "effect"
import type { Envelope } from "../domain/Envelope.ts"
import * as Stage from "./Stage.ts"

/** The user pipeline cannot run as given (e.g. a stage takes a name the gateway's own stages have). */
export class PipelineError extends Data.TaggedError("PipelineError")<{
  readonly message: string
}> {}

/** The user stages: envelopes in, envelopes (possibly with added fields) out. */
export type UserStages = Stage.Stage<Envelope, Envelope, Stage.StageError>

/** The user pipeline service (its services already provided). */
export class Pipeline extends Context.Service<Pipeline, UserStages>()("gateway/Pipeline") {
  /** No stages: every message goes straight to the commit stage. */
  static readonly none = Layer.succeed(Pipeline, Stage.identity<Envelope>())

  /**
   * The pipeline from code. Its layer needs the services its stages need: a stage whose
   * service nobody provides leaves the requirement in the gateway's layer, which then cannot
   * be launched (a compile error). A stage's resources (`Scope`) live as long as this layer.
   */
  static layer<R>(stages: Stage.Stage<Envelope, Envelope, Stage.StageError, R>): Layer.Layer<Pipeline, never, Exclude<R, Scope.Scope>> {
    return Layer.effect(Pipeline, Effect.map(Effect.context<R>(), (context) => Stage.provideContext(stages, context)))
  }
}
