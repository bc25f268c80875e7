/**
 * Runs the gateway: reads the configuration (one clear line and exit 78 when it is bad), builds
 * the layers, and on SIGTERM/SIGINT drains them in order. Exits 0 when everything drained, 1
 * with a summary when the drain deadline cut it.
 */
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { Context, Effect, Exit, Layer, Logger, Scope } from "effect"
import { describeConfigError } from "./config/GatewayConfig.ts"
import * as Gateway from "./Gateway.ts"
import { Lifecycle } from "./Lifecycle.ts"

const EX_CONFIG = 78

let exitCode = 0

/** Logs the one line that explains a bad configuration, and exits 78. */
const badConfig = (line: string) =>
  Effect.logError(line).pipe(Effect.andThen(Effect.sync(() => (exitCode = EX_CONFIG))), Effect.andThen(Effect.interrupt))

const program = Effect.gen(function*() {
  const scope = yield* Scope.make()
  const services = yield* Layer.buildWithScope(Gateway.layer(), scope).pipe(
    Effect.catchTags({
      ConfigError: (e) => badConfig(describeConfigError(e)),
      StagesFileError: (e) => badConfig(`invalid configuration: ${e.message}`)
    })
  )
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

NodeRuntime.runMain(program.pipe(Effect.provide(logging)), {
  disableErrorReporting: false,
  teardown: (exit, onExit) => onExit(exitCode !== 0 ? exitCode : Exit.isSuccess(exit) || Exit.hasInterrupts(exit) ? 0 : 1)
})

