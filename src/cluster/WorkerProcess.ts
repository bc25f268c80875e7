/**
 * One worker process: the primary's own entry script, arguments and Node flags (so a gateway
 * composed in code forks its own pipeline, and `--max-semi-space-size` and the like apply to
 * every worker), forked with an IPC channel and the worker's environment. Its stdout and stderr
 * are the primary's, so the node's log stays one JSON object per line.
 *
 * Scoped: closing the scope of a worker that is still running kills it (SIGKILL), so a primary
 * that fails leaves no orphan behind; the orderly way out is a signal and waiting for `exited`.
 */
import { Deferred, Effect, Result, Schema } from "effect"
import * as ChildProcess from "node:child_process"
import { Listening } from "./WorkerLink.ts"

/** How a worker process ended. */
export interface WorkerExit {
  /** The exit code, null when a signal ended it (or it could not be started). */
  readonly code: number | null
  readonly signal: NodeJS.Signals | null
}

/** A running (or finished) worker process. */
export interface WorkerProcess {
  /** Its pid (-1 when the fork itself failed). */
  readonly pid: number
  /** Completes with its ports once it reported it is listening. */
  readonly listening: Deferred.Deferred<Listening>
  /** Completes when it has exited. */
  readonly exited: Deferred.Deferred<WorkerExit>
  /** Sends it a signal (nothing when it has exited). */
  readonly kill: (signal: NodeJS.Signals) => void
}

const decodeListening = Schema.decodeUnknownResult(Listening)

/** Forks a worker with `env`, for the lifetime of the scope. */
export const spawn = Effect.fn("WorkerProcess.spawn")(function*(env: NodeJS.ProcessEnv) {
  const listening = yield* Deferred.make<Listening>()
  const exited = yield* Deferred.make<WorkerExit>()
  const child = yield* Effect.acquireRelease(
    Effect.sync(() => {
      const child = ChildProcess.fork(process.argv[1]!, process.argv.slice(2), {
        execArgv: process.execArgv,
        env,
        stdio: ["ignore", "inherit", "inherit", "ipc"]
      })
      child.on("message", (message: unknown) => {
        const decoded = decodeListening(message)
        if (Result.isSuccess(decoded)) Deferred.doneUnsafe(listening, Effect.succeed(decoded.success))
      })
      child.once("exit", (code, signal) => Deferred.doneUnsafe(exited, Effect.succeed({ code, signal })))
      // a fork that failed never emits `exit`; other errors (a failed kill or send) change nothing
      child.on("error", () => {
        if (child.pid === undefined) Deferred.doneUnsafe(exited, Effect.succeed({ code: null, signal: null }))
      })
      return child
    }),
    (child) =>
      Effect.suspend(() => {
        if (Deferred.isDoneUnsafe(exited)) return Effect.void
        child.kill("SIGKILL")
        return Deferred.await(exited).pipe(Effect.timeoutOption("5 seconds"), Effect.asVoid)
      })
  )
  return {
    pid: child.pid ?? -1,
    listening,
    exited,
    kill: (signal) => {
      if (!Deferred.isDoneUnsafe(exited)) child.kill(signal)
    }
  } satisfies WorkerProcess
})
