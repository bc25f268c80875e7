/**
 * The device listener: a `node:net` server in a scoped Effect with admission control
 * ({@link Admission}): above the connection cap (lowered to fit the open-files limit), while
 * draining, or with the memory budget spent, a new connection gets `error busy` with a jittered
 * `retryAfterMs`, so a reconnection storm spreads out, before any fiber exists for it. Accept
 * errors (EMFILE in a storm) are counted and logged at most once a second, never fatal. The
 * listener samples the connections' buffers into the memory budget.
 * Every admitted connection runs as one fiber in the listener's `FiberSet`, owned by its scope.
 * The ingest pipeline (validate, dedup) is built here once, and run on the data frames of the
 * connections' reads ({@link IngestBatch}: a turn's small reads together).
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
import { Context, Effect, FiberSet, Layer, Option, Schedule } from "effect"
import * as Net from "node:net"
import { Admission, EVICT_AFTER_MS } from "../admission/Admission.ts"
import { MemoryBudget } from "../admission/MemoryBudget.ts"
import { DeviceAuth } from "../auth/DeviceAuth.ts"
import { GatewayConfig, type GatewayConfigShape } from "../config/GatewayConfig.ts"
import { Lifecycle } from "../Lifecycle.ts"
import * as Metrics from "../observability/Metrics.ts"
import { MessageTracer } from "../observability/Tracing.ts"
import { dedup } from "../pipeline/Dedup.ts"
import { Lanes } from "../pipeline/Lanes.ts"
import * as Stage from "../pipeline/Stage.ts"
import { validate } from "../pipeline/Validate.ts"
import { DeviceState } from "../sinks/DeviceState.ts"
import { lingeringSockets, refuseBusy } from "./Closing.ts"
import { Connection, type ConnectionEnv } from "./Connection.ts"
import { IngestBatch } from "./IngestBatch.ts"
import { ReadSlices } from "./ReadSlices.ts"
import { SessionRegistry } from "./Sessions.ts"
import { TlsFileError, TlsTerminator } from "./Tls.ts"

/**
 * Connections the kernel may hold before they are accepted (Node's default is 511): a
 * reconnection storm arrives faster than one event-loop turn accepts, and an overflowing
 * accept queue drops handshakes. The kernel caps it at `net.core.somaxconn`.
 */
const LISTEN_BACKLOG = 4096

/** Milliseconds of big-read work per turn of the event loop (see ReadSlices). */
const READ_SLICE_MS = 8

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
      const config = yield* GatewayConfig
      const tls = yield* tlsOf(config)
      if (tls !== undefined) yield* tls.watch()
      const lanes = yield* Lanes
      const tracer = yield* MessageTracer
      const env: ConnectionEnv = {
        config,
        auth: yield* DeviceAuth,
        sessions: yield* SessionRegistry,
        lanes,
        batch: new IngestBatch(yield* Stage.build(Stage.andThen(validate, dedup())), lanes, tracer),
        deviceState: yield* DeviceState,
        tracer,
        lifecycle: yield* Lifecycle,
        budget: yield* MemoryBudget,
        admission: yield* Admission,
        slices: new ReadSlices(READ_SLICE_MS),
        helloSlices: new ReadSlices(READ_SLICE_MS),
        tls,
        awaitingHello: new Set(),
        defaultLimits: { msgsPerSec: config.deviceMsgsPerSec, bytesPerSec: config.deviceBytesPerSec }
      }
      const { lifecycle, admission, budget } = env
      const runFork = yield* FiberSet.makeRuntime<never, void, never>()
      const open = new Set<Connection>()
      const server = Net.createServer({ pauseOnConnect: true, allowHalfOpen: true, noDelay: true })

      server.on("connection", (socket) => {
        const peer = socket.remoteAddress ?? "unknown"
        // make room: the connection that waited longest for its hello goes first, if it waited long
        const now = performance.now()
        while (admission.unauthenticatedFull()) {
          const oldest = env.awaitingHello.values().next()
          if (oldest.done === true || now - oldest.value.acceptedAt < EVICT_AFTER_MS) break
          oldest.value.evict(admission.evicted())
        }
        // sockets closing gracefully (refused, evicted, timed out) still hold their descriptors
        const closing = lingeringSockets()
        const refusal = admission.atAccept(open.size, closing, lifecycle.isDraining(), peer)
        if (refusal !== undefined) {
          const tight = admission.tightOnDescriptors(open.size, closing + 1)
          if (tls === undefined) return refuseBusy(socket, refusal, tight ? 0 : 2_000)
          // over TLS the `busy` frame needs a handshake first: worth it, unless descriptors are short
          if (tight) return socket.destroy()
          return refuseBusy(tls.wrap(socket), refusal, 2_000)
        }
        const conn = new Connection(tls === undefined ? socket : tls.wrap(socket), peer, env)
        open.add(conn)
        env.awaitingHello.add(conn)
        Metrics.record(Metrics.connectionsActive, open.size)
        const fiber = runFork(conn.run())
        fiber.addObserver(() => {
          open.delete(conn)
          Metrics.record(Metrics.connectionsActive, open.size)
        })
      })

      const port = yield* Effect.callback<number, Error>((resume) => {
        server.once("error", (e) => resume(Effect.fail(e)))
        server.listen({ host: config.host, port: config.port, reusePort: config.reusePort, backlog: LISTEN_BACKLOG }, () => {
          const address = server.address()
          resume(Effect.succeed(typeof address === "object" && address !== null ? address.port : config.port))
        })
      }).pipe(Effect.orDie)

      // after the bind, a server error is an accept failure: counted, logged at most once a
      // second, never fatal (an unhandled `error` event would kill the process)
      const acceptErrors = new AcceptErrorLog()
      server.on("error", (error) => acceptErrors.record(error))
      yield* Effect.suspend(() => acceptErrors.flush()).pipe(Effect.repeat(Schedule.spaced("1 second")), Effect.forkScoped)

      // the connections' buffers (unread input, unsent answers) count against the memory budget
      yield* Effect.sync(() => {
        let bytes = 0
        for (const c of open) bytes += c.bufferedBytes
        budget.setBuffered(bytes)
      }).pipe(Effect.repeat(Schedule.spaced("100 millis")), Effect.forkScoped)

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

/** The TLS terminator of GATEWAY_TLS_CERT/KEY/CA, or none (plain TCP) when they are unset. */
const tlsOf = (config: GatewayConfigShape): Effect.Effect<TlsTerminator | undefined, TlsFileError> => {
  const { tlsCert, tlsKey, tlsCa } = config
  if (Option.isNone(tlsCert) && Option.isNone(tlsKey)) {
    return Option.isNone(tlsCa)
      ? Effect.succeed(undefined)
      : Effect.fail(new TlsFileError({ message: "GATEWAY_TLS_CA needs GATEWAY_TLS_CERT and GATEWAY_TLS_KEY (client certificates are checked in TLS)" }))
  }
  if (Option.isNone(tlsCert) || Option.isNone(tlsKey)) {
    return Effect.fail(new TlsFileError({ message: "GATEWAY_TLS_CERT and GATEWAY_TLS_KEY go together: set both or neither" }))
  }
  return TlsTerminator.load({ cert: tlsCert.value, key: tlsKey.value, ca: tlsCa }).pipe(
    Effect.tap((t) => Effect.logInfo(t.mutual ? "device port: mutual TLS (client certificates required)" : "device port: TLS"))
  )
}

/** Accept errors, counted per code and summarized in one log line per second. */
class AcceptErrorLog {
  private count = 0
  private last = ""

  record(error: Error): void {
    const code = (error as NodeJS.ErrnoException).code ?? ""
    Metrics.record(Metrics.acceptErrors(isKnownAcceptError(code) ? code : "other"), 1)
    this.count++
    this.last = `${code} ${error.message}`
  }

  /** The log line for the errors since the last flush, if any. */
  flush(): Effect.Effect<void> {
    if (this.count === 0) return Effect.void
    const line = Effect.logError("accept failing on the device port").pipe(
      Effect.annotateLogs({ errors: this.count, last: this.last })
    )
    this.count = 0
    return line
  }
}

const isKnownAcceptError = (code: string): code is "EMFILE" | "ENFILE" | "ENOBUFS" | "ENOMEM" =>
  code === "EMFILE" || code === "ENFILE" || code === "ENOBUFS" || code === "ENOMEM"

const inflight = (open: ReadonlySet<Connection>) => {
  let n = 0
  for (const c of open) n += c.inflight
  return n
}
