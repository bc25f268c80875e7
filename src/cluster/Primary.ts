/**
 * The primary of a node with GATEWAY_WORKERS > 1 (DESIGN.md, Scale-out). It serves no device
 * itself: it binds the device port once with SO_REUSEPORT ({@link ./PortReservation.ts}, which
 * picks the port when GATEWAY_PORT=0), forks the workers, each the ordinary gateway on that port
 * ({@link ./WorkerEnv.ts}, {@link ./Supervisor.ts}), serves the node's admin port
 * ({@link ./NodeAdmin.ts}), and logs the node's one `listening` line (its `port` and
 * `adminPort`) once every worker listens.
 *
 * SIGHUP is passed on to every worker (each reloads its TLS certificates and JWT keys).
 * SIGTERM/SIGINT: `/readyz` turns 503, every worker gets SIGTERM and drains as a single gateway
 * does, nothing is restarted, and the primary exits 0 once all of them exited 0, or 1 with one
 * line naming those that did not. A start that fails (a port taken, a worker that exits before
 * listening) is one line and the exit code of the cause.
 */
import { Effect, Exit, Scope } from "effect"
import type { GatewayConfigShape } from "../config/GatewayConfig.ts"
import * as NodeAdmin from "./NodeAdmin.ts"
import type { NodeStartError } from "./NodeStartError.ts"
import * as PortReservation from "./PortReservation.ts"
import * as Supervisor from "./Supervisor.ts"
import { workerEnv } from "./WorkerEnv.ts"

/** Time a worker may need beyond GATEWAY_DRAIN_TIMEOUT_MS to close its store and exit. */
const EXIT_GRACE_MS = 15_000

/**
 * Runs the node until a signal, then drains it. `setExitCode` receives the process's exit code
 * when it is not 0 (the caller's runtime exits with it).
 */
export const run = (config: GatewayConfigShape, setExitCode: (code: number) => void): Effect.Effect<never> =>
  Effect.gen(function*() {
    const scope = yield* Scope.make()
    let supervisor: Supervisor.Supervisor | undefined
    let draining = false
    let startFailed = false

    const start = Effect.gen(function*() {
      const reservation = yield* PortReservation.reserve(config.host, config.port)
      // a fixed port was only bound to check it; a picked one is held until the workers hold it too
      if (config.port !== 0) yield* reservation.release
      const workers = yield* Supervisor.make({
        workers: config.workers,
        env: (index) => workerEnv(process.env, config, reservation.port, index),
        drainBudgetMs: config.drainTimeoutMs + EXIT_GRACE_MS
      })
      supervisor = workers
      const admin = yield* NodeAdmin.make({
        host: config.adminHost,
        port: config.adminPort,
        supervisor: workers,
        isDraining: () => draining
      })
      // SIGHUP (reload TLS certificates and JWT keys) goes on to the workers; the primary has none
      const hangup = () => workers.signal("SIGHUP")
      yield* Effect.acquireRelease(
        Effect.sync(() => process.on("SIGHUP", hangup)),
        () => Effect.sync(() => process.off("SIGHUP", hangup))
      )
      yield* workers.start
      yield* reservation.release
      yield* Effect.logInfo("listening").pipe(Effect.annotateLogs({
        port: reservation.port,
        adminPort: admin.port,
        host: config.host,
        sink: config.sink,
        workers: config.workers
      }))
    }).pipe(Scope.provide(scope))

    const failed = (error: NodeStartError) =>
      Effect.gen(function*() {
        startFailed = true
        setExitCode(error.exitCode)
        if (error.message !== "") yield* Effect.logError(`cannot start: ${error.message}`)
        return yield* Effect.interrupt
      })

    const drain = Effect.gen(function*() {
      draining = true
      if (supervisor !== undefined) {
        if (!startFailed) yield* Effect.logInfo("shutting down: draining the workers")
        const failures = yield* supervisor.drain
        if (startFailed) {
          // the start's own line said why
        } else if (failures.length > 0) {
          setExitCode(1)
          yield* Effect.logError("shutdown: not every worker drained").pipe(Effect.annotateLogs({ failures }))
        } else {
          yield* Effect.logInfo("shutdown complete: every worker drained")
        }
      }
      yield* Scope.close(scope, Exit.void)
    })

    return yield* start.pipe(
      Effect.catchTag("NodeStartError", failed),
      Effect.andThen(Effect.never),
      Effect.ensuring(drain)
    )
  })
