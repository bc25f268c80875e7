/**
 * Keeps a node's workers running. At start it forks worker 0 alone and waits until it listens
 * (so a bad stages file or a store that cannot open fails the start once, with that worker's
 * one line and exit code, and the schema is created by one process), then the others together.
 * A worker that dies after the start is logged and restarted after a jittered backoff
 * ({@link ./RestartPolicy.ts}); its devices reconnect to the same port and land on the workers
 * still listening. The drain sends SIGTERM to every worker, stops restarting, and waits for all
 * of them to exit. The state of each worker is read synchronously by the node's admin port.
 */
import { Clock, Deferred, Effect, Fiber, Metric, Option, Random } from "effect"
import * as ClusterMetrics from "./ClusterMetrics.ts"
import { NodeStartError } from "./NodeStartError.ts"
import { defaultPolicy, nextRestart, type RestartPolicy } from "./RestartPolicy.ts"
import type { Listening } from "./WorkerLink.ts"
import * as WorkerProcess from "./WorkerProcess.ts"

/** One worker slot as the admin port sees it. */
export interface WorkerView {
  readonly index: number
  /**
   * `starting`: forked, not listening yet; `listening`: serving; `restarting`: waiting out its
   * backoff; `stopped`: drained, or it failed the start.
   */
  readonly state: "starting" | "listening" | "restarting" | "stopped"
  /** Which worker process this is: unique among every worker this supervisor started (pids can be reused). */
  readonly incarnation: number | undefined
  readonly pid: number | undefined
  /** Its admin port on loopback while it is listening. */
  readonly adminPort: number | undefined
}

/** How to run the workers. */
export interface SupervisorOptions {
  readonly workers: number
  /** The environment of worker `index`. */
  readonly env: (index: number) => NodeJS.ProcessEnv
  /** How long the drain may take before the workers still running are killed. */
  readonly drainBudgetMs: number
  readonly policy?: RestartPolicy
}

/** The running supervisor. */
export interface Supervisor {
  /** Every slot, in index order. */
  readonly workers: () => ReadonlyArray<WorkerView>
  /** Starts the workers; succeeds once each has listened, fails if one exits before. */
  readonly start: Effect.Effect<void, NodeStartError>
  /** SIGTERM to every worker, no more restarts; waits for all to exit. Returns what failed (empty: all exited 0). */
  readonly drain: Effect.Effect<ReadonlyArray<string>>
  /** Sends `signal` to every running worker (SIGHUP: reload certificates and keys). */
  readonly signal: (signal: NodeJS.Signals) => void
}

interface Slot {
  readonly index: number
  state: WorkerView["state"]
  worker: WorkerProcess.WorkerProcess | undefined
  /** The number of its current worker process (see {@link WorkerView.incarnation}). */
  incarnation: number | undefined
  adminPort: number | undefined
  /** Completes the first time a worker of this slot listens. */
  readonly listened: Deferred.Deferred<void>
  /** How its last worker ended during the drain, and whether it was serving then. */
  stopped: Run | undefined
  fiber: Fiber.Fiber<void> | undefined
}

/** One worker process's life. */
interface Run {
  readonly pid: number
  readonly exit: WorkerProcess.WorkerExit
  readonly wasListening: boolean
  readonly uptimeMs: number
}

/** "exited with code 1" / "killed by SIGKILL". */
export const describeExit = (exit: WorkerProcess.WorkerExit): string =>
  exit.signal !== null ? `killed by ${exit.signal}` : exit.code !== null ? `exited with code ${exit.code}` : "could not be started"

/** A supervisor whose workers live as long as the scope (closing it kills those still running). */
export const make = Effect.fn("Supervisor.make")(function*(options: SupervisorOptions) {
  const policy = options.policy ?? defaultPolicy
  const scope = yield* Effect.scope
  const slots: Array<Slot> = Array.from({ length: options.workers }, (_, index) => ({
    index,
    state: "starting",
    worker: undefined,
    incarnation: undefined,
    adminPort: undefined,
    listened: Deferred.makeUnsafe<void>(),
    stopped: undefined,
    fiber: undefined
  }))
  const draining = yield* Deferred.make<void>()
  const startFailed = yield* Deferred.make<{ readonly index: number; readonly exit: WorkerProcess.WorkerExit }>()
  let started = false
  let forked = 0

  const countListening = Effect.suspend(() =>
    Metric.update(ClusterMetrics.workers, slots.filter((s) => s.state === "listening").length))

  /** Runs one worker process of `slot` until it exits. */
  const runOnce = (slot: Slot) =>
    Effect.scoped(Effect.gen(function*() {
      const worker = yield* WorkerProcess.spawn(options.env(slot.index))
      const startedAt = yield* Clock.currentTimeMillis
      slot.worker = worker
      slot.incarnation = forked++
      slot.state = "starting"
      yield* Effect.logInfo("worker started").pipe(Effect.annotateLogs({ worker: slot.index, pid: worker.pid }))
      if (Deferred.isDoneUnsafe(draining)) worker.kill("SIGTERM") // the drain began while it was being forked
      const ports = yield* Effect.raceFirst(
        Effect.map(Deferred.await(worker.listening), Option.some),
        Effect.as(Deferred.await(worker.exited), Option.none<Listening>())
      )
      if (Option.isSome(ports)) {
        slot.state = "listening"
        slot.adminPort = ports.value.adminPort
        yield* countListening
        yield* Deferred.succeed(slot.listened, undefined)
      }
      const exit = yield* Deferred.await(worker.exited)
      const wasListening = slot.state === "listening"
      slot.worker = undefined
      slot.incarnation = undefined
      slot.adminPort = undefined
      slot.state = "stopped"
      yield* countListening
      return { pid: worker.pid, exit, wasListening, uptimeMs: (yield* Clock.currentTimeMillis) - startedAt } satisfies Run
    }))

  /** Keeps `slot` running: restarts its worker until the drain (or until it fails the start). */
  const runSlot = (slot: Slot): Effect.Effect<void> =>
    Effect.gen(function*() {
      let failures = 0
      while (true) {
        const run = yield* runOnce(slot)
        if (Deferred.isDoneUnsafe(draining)) {
          slot.stopped = run
          return
        }
        if (!started) {
          yield* Deferred.succeed(startFailed, { index: slot.index, exit: run.exit })
          return
        }
        const restart = nextRestart(policy, failures, run.uptimeMs, yield* Random.next)
        failures = restart.failures
        slot.state = "restarting"
        yield* Metric.update(ClusterMetrics.workerRestarts, 1)
        yield* Effect.logWarning("worker exited; restarting").pipe(Effect.annotateLogs({
          worker: slot.index,
          pid: run.pid,
          code: run.exit.code,
          signal: run.exit.signal,
          uptimeMs: run.uptimeMs,
          restartInMs: restart.delayMs
        }))
        const drained = yield* Effect.raceFirst(
          Effect.as(Effect.sleep(restart.delayMs), false),
          Effect.as(Deferred.await(draining), true)
        )
        if (drained) {
          slot.state = "stopped"
          return
        }
      }
    })

  const fork = (slot: Slot) => Effect.map(Effect.forkIn(runSlot(slot), scope), (fiber) => void (slot.fiber = fiber))

  /** Succeeds when every slot of `group` has listened; fails as soon as a worker exits before. */
  const awaitListening = (group: ReadonlyArray<Slot>) =>
    Effect.raceFirst(
      Effect.forEach(group, (s) => Deferred.await(s.listened), { discard: true }),
      Effect.flatMap(Deferred.await(startFailed), ({ index, exit }) =>
        Effect.fail(
          exit.code === 78 // a configuration error: the worker's own line says which variable
            ? new NodeStartError({ message: "", exitCode: 78 })
            : new NodeStartError({
              message: `worker ${index} ${describeExit(exit)} before listening`,
              exitCode: exit.code !== null && exit.code !== 0 ? exit.code : 1
            })
        ))
    )

  const start = Effect.gen(function*() {
    const [first, ...rest] = slots
    yield* fork(first!)
    yield* awaitListening([first!])
    yield* Effect.forEach(rest, fork, { discard: true })
    yield* awaitListening(rest)
    started = true
  })

  const drain = Effect.gen(function*() {
    yield* Deferred.succeed(draining, undefined)
    for (const s of slots) s.worker?.kill("SIGTERM")
    const fibers = slots.flatMap((s) => (s.fiber === undefined ? [] : [s.fiber]))
    const failures: Array<string> = []
    const killed = new Set<number>()
    const done = yield* Fiber.awaitAll(fibers).pipe(Effect.timeoutOption(options.drainBudgetMs))
    if (Option.isNone(done)) {
      for (const s of slots) {
        if (s.worker === undefined) continue
        killed.add(s.index)
        failures.push(`worker ${s.index} (pid ${s.worker.pid}) still running at the drain deadline: killed`)
        s.worker.kill("SIGKILL")
      }
      yield* Fiber.awaitAll(fibers).pipe(Effect.timeoutOption("5 seconds"))
    }
    for (const s of slots) {
      const run = s.stopped
      if (run === undefined || killed.has(s.index) || !run.wasListening || run.exit.code === 0) continue
      failures.push(`worker ${s.index} (pid ${run.pid}) ${describeExit(run.exit)}`)
    }
    return failures
  })

  return {
    workers: () =>
      slots.map((s) => ({ index: s.index, state: s.state, incarnation: s.incarnation, pid: s.worker?.pid, adminPort: s.adminPort })),
    start,
    drain,
    signal: (signal) => {
      for (const s of slots) s.worker?.kill(signal)
    }
  } satisfies Supervisor
})
