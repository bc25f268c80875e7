/**
 * The device port as the primary holds it before any worker exists. With GATEWAY_PORT=0 this is
 * where the free port is picked, once, bound with SO_REUSEPORT so the workers can bind the same
 * port beside it: every worker, and every restart, binds that number. A fixed port is bound
 * without it, only to check that nobody holds it (another node's workers included). Binding
 * here fails the start early (one line) when the port is taken or the platform has no SO_REUSEPORT
 * (Node supports it on Linux 3.9+, FreeBSD 12+, DragonFly BSD 3.6+, Solaris 11.4, AIX 7.2.5+).
 *
 * The reservation must not outlive the start: the kernel spreads new connections over every
 * socket bound to the port, this one included, and the primary serves none. Connections that
 * land here (a device that raced the start) are closed at once; the device retries.
 */
import { Effect } from "effect"
import * as Net from "node:net"
import { NodeStartError } from "./NodeStartError.ts"

/** A reserved port and how to give it up (idempotent; also done when the scope closes). */
export interface Reservation {
  readonly port: number
  readonly release: Effect.Effect<void>
}

/** Binds `host:port` with SO_REUSEPORT for as long as the scope (or until `release`). */
export const reserve = Effect.fn("PortReservation.reserve")(function*(host: string, port: number) {
  const server = yield* Effect.acquireRelease(
    Effect.sync(() => Net.createServer({ pauseOnConnect: true }, (socket) => socket.destroy())),
    (server) => close(server)
  )
  const bound = yield* Effect.callback<number, NodeStartError>((resume) => {
    server.once("error", (e) =>
      resume(Effect.fail(new NodeStartError({ message: `device port ${host}:${port}: ${e.message}`, exitCode: 1 }))))
    // a fixed port is checked with a plain bind: SO_REUSEPORT would let this node share a port
    // another node's workers already hold (both bound with it), and both would start
    server.listen({ host, port, reusePort: port === 0 }, () => {
      const address = server.address()
      resume(Effect.succeed(typeof address === "object" && address !== null ? address.port : port))
    })
  })
  return { port: bound, release: close(server) } satisfies Reservation
})

const close = (server: Net.Server) =>
  Effect.callback<void>((resume) => {
    if (!server.listening) return resume(Effect.void)
    server.close(() => resume(Effect.void))
  })
