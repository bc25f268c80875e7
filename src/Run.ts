/**
 * Runs the gateway as a process: reads the configuration (one clear line and exit 78 when it is
 * bad), builds the layers, and on SIGTERM/SIGINT drains them in order. Exits 0 when everything
 * drained, 1 with a summary when the drain deadline cut it. `main.ts` runs it with the stages of
 * GATEWAY_STAGES_FILE; a gateway with stages composed in code runs it with its own pipeline.
 */
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { Config, Context, Effect, Exit, Layer, Logger, Scope } from "effect"
import { describeConfigError, GatewayConfig } from "./config/GatewayConfig.ts"
import { StagesFileError } from "./config/StagesFile.ts"
import * as Gateway from "./Gateway.ts"
import { Lifecycle } from "./Lifecycle.ts"
import * as Tracing from "./observability/Tracing.ts"
import type { Pipeline } from "./pipeline/Pipeline.ts"

const EX_CONFIG = 78

let exitCode = 0

/** Logs one line that explains why the gateway cannot start, and exits with `code`. */
const cannotStart = (line: string, code: number) =>
  Effect.logError(line).pipe(Effect.andThen(Effect.sync(() => (exitCode = code))), Effect.andThen(Effect.interrupt))

/** The one line for a start failure: bad configuration (exit 78), or anything a pipeline's layer failed with (exit 1). */
const startFailure = (error: unknown) => {
  if (error instanceof Config.ConfigError) return cannotStart(describeConfigError(error), EX_CONFIG)
  if (error instanceof StagesFileError) return cannotStart(`invalid configuration: ${error.message}`, EX_CONFIG)
  const message = error instanceof Error ? error.message : String(error)
  return cannotStart(`cannot start: ${message}`, 1)
}

const program = <E>(pipeline: Layer.Layer<Pipeline, E, GatewayConfig> | undefined) => Effect.gen(function*() {
  const scope = yield* Scope.make()
  const gateway = Gateway.layer(GatewayConfig.layer, Tracing.layerFromEnv("iot-gateway"), pipeline)
  const services = yield* Layer.buildWithScope(gateway, scope).pipe(Effect.catch(startFailure))
  const lifecycle = Context.get(services, Lifecycle)
  return yield* Effect.never.pipe(
    Effect.ensuring(Effect.gen(function*() {
      yield* Effect.logInfo("shutting down: draining")
      yield* Scope.close(scope, Exit.void)
      const cuts = lifecycle.cuts()
      if (cuts.length > 0) {
        exitCode = 1
        yield* Effect.logError("shutdown cut by GATEWAY_DRAIN_TIMEOUT_MS").pipe(Effect.annotateLogs({ cuts }))
      } else {
        yield* Effect.logInfo("shutdown complete: everything drained")
      }
    }))
  )
})

const logging = Logger.layer([process.stdout.isTTY ? Logger.consolePretty() : Logger.consoleJson])

/** Runs the gateway with `pipeline` as its user stages (default: GATEWAY_STAGES_FILE) until a signal. */
export const run = <E = never>(pipeline?: Layer.Layer<Pipeline, E, GatewayConfig>): void =>
  NodeRuntime.runMain(program(pipeline).pipe(Effect.provide(logging)), {
    disableErrorReporting: false,
    teardown: (exit, onExit) => onExit(exitCode !== 0 ? exitCode : Exit.isSuccess(exit) || Exit.hasInterrupts(exit) ? 0 : 1)
  })

