/**
 * Runs the gateway as a process: reads the configuration (one clear line and exit 78 when it is
 * bad), builds the layers, and on SIGTERM/SIGINT drains them in order. Exits 0 when everything
 * drained, 1 with a summary when the drain deadline cut it. `main.ts` runs it with the stages of
 * GATEWAY_STAGES_FILE; a gateway with stages composed in code runs it with its own pipeline.
 *
 * With GATEWAY_WORKERS > 1 this process becomes the node's primary instead
 * ({@link ./cluster/Primary.ts}): it forks that many workers of this same entry, each of which
 * runs the gateway. The gateway's modules are loaded only where the gateway runs, so the
 * primary stays small.
 */
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { Cause, Config, Context, Effect, Exit, Layer, Logger, Option, Scope } from "effect"
import * as Primary from "./cluster/Primary.ts"
import * as WorkerLink from "./cluster/WorkerLink.ts"
import { describeConfigError, GatewayConfig, type GatewayConfigShape } from "./config/GatewayConfig.ts"
import { StagesFileError } from "./config/StagesFile.ts"
import { Lifecycle } from "./Lifecycle.ts"
import { readTracingSettings } from "./observability/OtelEnv.ts"
import * as TraceLog from "./observability/TraceLog.ts"
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
  if (isTagged(error, "TlsFileError")) return cannotStart(`invalid configuration: ${error.message}`, EX_CONFIG)
  if (isTagged(error, "NatsStartError")) return cannotStart(`invalid configuration: ${lineOf(error)}`, EX_CONFIG) // src/sinks/nats
  if (isTagged(error, "AuthConfigError")) return cannotStart(`invalid configuration: ${error.message}`, EX_CONFIG) // src/auth/AuthConfigError.ts
  if (isTagged(error, "PostgresStartError")) return cannotStart(`invalid configuration: ${lineOf(error)}`, EX_CONFIG) // src/sinks/postgres
  if (isTagged(error, "RoutesError")) return cannotStart(`invalid configuration: ${error.message}`, EX_CONFIG) // src/sinks/routing/Routes.ts
  if (isTagged(error, "TracingConfigError")) return cannotStart(`invalid configuration: ${error.message}`, EX_CONFIG) // src/observability/OtelEnv.ts
  return cannotStart(`cannot start: ${reasonOf(error)}`, 1)
}

/** A tagged error of a module loaded only where the gateway runs (this process may be the primary). */
const isTagged = (error: unknown, tag: string): error is { readonly _tag: string; readonly message: string } =>
  typeof error === "object" && error !== null && (error as { readonly _tag?: unknown })._tag === tag &&
  typeof (error as { readonly message?: unknown }).message === "string"

/** An error's own one-line description (`line`), else its message. */
const lineOf = (error: { readonly message: string }): string => {
  const line = (error as { readonly line?: unknown }).line
  return typeof line === "string" ? line : error.message
}

/** The first non-empty message along an error's causes (a wrapper's own message may be empty). */
const reasonOf = (error: unknown): string => {
  for (let e: unknown = error, depth = 0; e !== undefined && e !== null && depth < 8; depth++) {
    if (e instanceof Error && e.message !== "") return e.message
    if (typeof e !== "object") return String(e)
    e = (e as { readonly cause?: unknown }).cause
  }
  const tag = typeof error === "object" && error !== null && "_tag" in error ? String(error._tag) : String(error)
  return `${tag} (no message)`
}

/** The gateway in this process, until a signal drains it. */
const gateway = <E>(config: GatewayConfigShape, pipeline: Layer.Layer<Pipeline, E, GatewayConfig> | undefined) =>
  Effect.gen(function*() {
    const Gateway = yield* Effect.promise(() => import("./Gateway.ts"))
    const scope = yield* Scope.make()
    const layer = Gateway.layer(Layer.succeed(GatewayConfig, config), undefined, pipeline)
    // a typed failure or a defect (a throw, a listen error) alike: one line, not a stack trace
    const services = yield* Layer.buildWithScope(layer, scope).pipe(
      Effect.catchCause((cause) => Cause.hasInterruptsOnly(cause) ? Effect.failCause(cause) : startFailure(Cause.squash(cause)))
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

/** How often a gateway started by npm checks that npm is still its parent. */
const PARENT_POLL_MS = 500

/**
 * Started by an npm script (`npm start`; npm sets `npm_lifecycle_event`), the gateway is npm's
 * child: the script `exec`s node, so npm passes SIGTERM/SIGINT straight to it and waits for its
 * drain. If npm dies without passing a signal on (SIGKILL, a crash), the gateway would keep its
 * ports and store, orphaned: it notices that its parent changed (it was re-parented) and drains
 * as on SIGTERM. Only under npm: a gateway left running on purpose (`nohup`, a shell that exits)
 * is not stopped. Workers of a node watch their primary through their IPC channel instead.
 */
const watchNpmParent = (): void => {
  const npmScript = process.env["npm_lifecycle_event"]
  const isWorker = process.env[WorkerLink.WORKER_INDEX] !== undefined && process.send !== undefined
  if (npmScript === undefined || isWorker) return
  const parent = process.ppid
  // a plain timer, kept out of the program's fibers (it must not change how a start runs or fails)
  const timer = setInterval(() => {
    if (process.ppid === parent) return
    clearInterval(timer)
    Effect.runFork(
      Effect.logWarning("parent process gone (npm exited without passing a signal on): draining as on SIGTERM").pipe(
        Effect.annotateLogs({ parent, npmScript }),
        Effect.provide(logging),
        Effect.ensuring(Effect.sync(() => process.kill(process.pid, "SIGTERM")))
      )
    )
  }, PARENT_POLL_MS)
  timer.unref()
}

const program = <E>(pipeline: Layer.Layer<Pipeline, E, GatewayConfig> | undefined) =>
  Effect.gen(function*() {
    const config = yield* Effect.service(GatewayConfig).pipe(Effect.provide(GatewayConfig.layer), Effect.catch(startFailure))
    if (config.workers > 1) {
      // the workers read the OTEL_* variables too: a wrong one stops the node here, once
      yield* Effect.try({ try: () => readTracingSettings("iot-gateway"), catch: (e) => e }).pipe(Effect.catch(startFailure))
      return yield* Primary.run(config, (code) => (exitCode = code))
    }
    // a worker of a node: every line it logs says which
    const worker = yield* WorkerLink.workerIndex
    return yield* Option.isSome(worker)
      ? gateway(config, pipeline).pipe(Effect.annotateLogs({ worker: worker.value }))
      : gateway(config, pipeline)
  })

// JSON lines carry trace_id and span_id when a span is current (src/observability/TraceLog.ts)
const logging = Logger.layer([process.stdout.isTTY ? Logger.consolePretty() : TraceLog.consoleJson])

/**
 * Runs the gateway with `pipeline` as its user stages (default: GATEWAY_STAGES_FILE) until a
 * signal; with GATEWAY_WORKERS > 1, runs the node's primary, whose workers run this same entry.
 */
export const run = <E = never>(pipeline?: Layer.Layer<Pipeline, E, GatewayConfig>): void => {
  // SIGHUP means "reload certificates and keys": never the default (death), even before the
  // modules that reload have started (a renewal hook racing the start, or a worker's restart)
  process.on("SIGHUP", () => undefined)
  watchNpmParent()
  NodeRuntime.runMain(program(pipeline).pipe(Effect.provide(logging)), {
    disableErrorReporting: false,
    teardown: (exit, onExit) => {
      const code = exitCode !== 0 ? exitCode : Exit.isSuccess(exit) || Exit.hasInterrupts(exit) ? 0 : 1
      // stdout and stderr may be pipes, written asynchronously: exit once the last lines are out
      let pending = 2
      const done = () => {
        if (--pending === 0) onExit(code)
      }
      process.stdout.write("", done)
      process.stderr.write("", done)
    }
  })
}
