/**
 * The worker's side of its link to the primary (GATEWAY_WORKERS > 1). A worker is the ordinary
 * gateway, forked by the primary with an IPC channel and GATEWAY_WORKER_INDEX set. Once both of
 * its ports are bound it reports them ({@link Listening}); when the channel closes (the primary
 * is gone) it drains and exits as on SIGTERM, so no orphan keeps serving the shared port.
 */
import { Config, Effect, Option, Schema } from "effect"

/** The message a worker sends its primary once it is listening. */
export const Listening = Schema.Struct({
  type: Schema.Literal("listening"),
  /** The device port (the node's, shared through SO_REUSEPORT). */
  port: Schema.Int,
  /** The worker's own admin port on loopback, which the primary scrapes. */
  adminPort: Schema.Int
})

/** A decoded {@link Listening} message. */
export type Listening = typeof Listening.Type

/** The variable through which the primary tells a worker its index. */
export const WORKER_INDEX = "GATEWAY_WORKER_INDEX"

/** This process's worker index: set when a primary forked it (GATEWAY_WORKER_INDEX and an IPC channel). */
export const workerIndex: Effect.Effect<Option.Option<number>> = Config.option(Config.Int(WORKER_INDEX)).pipe(
  Effect.map((index) => (process.send === undefined ? Option.none() : index)),
  Effect.orElseSucceed(() => Option.none<number>())
)

/**
 * In a worker: sends the bound ports to the primary, and from then on turns the loss of the
 * primary into a SIGTERM to itself (a graceful drain). Returns false, doing nothing, in a process
 * that is not a worker.
 */
export const reportListening = Effect.fn("WorkerLink.reportListening")(function*(ports: {
  readonly port: number
  readonly adminPort: number
}) {
  if (Option.isNone(yield* workerIndex)) return false
  yield* Effect.sync(() => {
    const drain = () => process.kill(process.pid, "SIGTERM")
    // the channel must not keep the process alive once the gateway has drained
    process.channel?.unref()
    if (!process.connected) return drain()
    process.once("disconnect", drain)
    const message: Listening = { type: "listening", ...ports }
    process.send?.(message, undefined, {}, () => undefined) // a failed send means the primary is gone: disconnect follows
  })
  return true
})
