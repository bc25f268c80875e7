/**
 * The device listener: a `node:net` server in a scoped Effect with admission control. Above
 * `GATEWAY_MAX_CONNECTIONS` (or while draining) a new connection gets `error busy` with a
 * jittered `retryAfterMs`, so a reconnection storm spreads out, before any fiber exists for it.
 * Every admitted connection runs as one fiber in the listener's `FiberSet`, owned by its scope.
 * The ingest pipeline (validate, dedup) is built here once and run by each connection on the
 * data frames of every socket read.
 *
 * Why `node:net` and not Effect's `SocketServer`: admission must answer `busy` synchronously at
 * accept, the connection must pause/resume its socket for backpressure while still answering
 * pings, and acks from the persistence stage are synchronous corked writes; all three need the
 * raw socket, which `SocketServer` hides behind a pull stream and an Effect per write.
 *
 * Shutdown (the scope closing): readiness goes false, accepting stops, every device gets
 * `goaway`, in-flight messages are answered until they are all done or the drain deadline
 * passes, then the remaining connections are closed with `error shutdown`.
 */
import { Context, Effect, FiberSet, Layer } from "effect"
import * as Net from "node:net"
import { DeviceAuth } from "../auth/DeviceRegistry.ts"
import { GatewayConfig } from "../config/GatewayConfig.ts"
import { Lifecycle } from "../Lifecycle.ts"
import * as Metrics from "../observability/Metrics.ts"
import { MessageTracer } from "../observability/Tracing.ts"
import { dedup } from "../pipeline/Dedup.ts"
import { Lanes } from "../pipeline/Lanes.ts"
import * as Stage from "../pipeline/Stage.ts"
import { validate } from "../pipeline/Validate.ts"
import { Sink } from "../sinks/Sink.ts"
import { Connection, type ConnectionEnv, refuseBusy } from "./Connection.ts"
import { SessionRegistry } from "./Sessions.ts"

/** The bound listener. */
export interface ListenerShape {
  /** The port actually bound (useful with GATEWAY_PORT=0). */
  readonly port: number
}

/** The device listener service. */
export class Listener extends Context.Service<Listener, ListenerShape>()("gateway/Listener") {
  /** Listens on GATEWAY_HOST:GATEWAY_PORT until the scope closes (then drains). */
  static readonly layer = Layer.effect(
    Listener,
    Effect.gen(function*() {
      const env: ConnectionEnv = {
        config: yield* GatewayConfig,
        auth: yield* DeviceAuth,
        sessions: yield* SessionRegistry,
        lanes: yield* Lanes,
        ingest: yield* Stage.build(Stage.andThen(validate, dedup())),
        sink: yield* Sink,
        tracer: yield* MessageTracer,
        lifecycle: yield* Lifecycle
      }
      const { config, lifecycle } = env
      const runFork = yield* FiberSet.makeRuntime<never, void, never>()
      const open = new Set<Connection>()
      const server = Net.createServer({ pauseOnConnect: true, allowHalfOpen: true, noDelay: true })

      server.on("connection", (socket) => {
        if (open.size >= config.maxConnections || lifecycle.isDraining()) return refuseBusy(socket, config.busyRetryMs)
        const conn = new Connection(socket, env)
        open.add(conn)
        Metrics.record(Metrics.connectionsActive, open.size)
        const fiber = runFork(conn.run)
        fiber.addObserver(() => {
          open.delete(conn)
          Metrics.record(Metrics.connectionsActive, open.size)
        })
      })

      const port = yield* Effect.callback<number, Error>((resume) => {
        server.once("error", (e) => resume(Effect.fail(e)))
        server.listen({ host: config.host, port: config.port, reusePort: config.reusePort }, () => {
          const address = server.address()
          resume(Effect.succeed(typeof address === "object" && address !== null ? address.port : config.port))
        })
      }).pipe(Effect.orDie)

      yield* Effect.addFinalizer(() =>
        Effect.gen(function*() {
          yield* lifecycle.beginDrain
          server.close()
          for (const c of open) c.goaway()
          const left = yield* lifecycle.remainingMs
          const drained = yield* Effect.sleep("10 millis").pipe(
            Effect.repeat({ until: () => inflight(open) === 0 }),
            Effect.timeoutOption(left)
          )
          if (drained._tag === "None") lifecycle.markCut(`${inflight(open)} messages unanswered on ${open.size} connections`)
          for (const c of open) c.shutdown()
        })
      )
      return Listener.of({ port })
    })
  )
}

const inflight = (open: ReadonlySet<Connection>) => {
  let n = 0
  for (const c of open) n += c.inflight
  return n
}
