/**
 * Test support: a fault-injecting TCP proxy on loopback, between a client and a server, whose
 * behaviour is switched at run time:
 * - `pass`: bytes forwarded both ways as they come (with backpressure);
 * - `latency(ms)`: every chunk, both ways, forwarded `ms` later (order kept);
 * - `reset`: every open connection is reset (RST) and so is every new one, at once;
 * - `refuse`: the proxy stops listening (a connect is refused) and closes the open connections;
 * - `blackhole`: connections (open and new) are kept, but nothing is forwarded either way: a
 *   server that stopped answering without closing anything. A connection that was blackholed is
 *   broken for good (bytes were lost): it is closed when the mode changes.
 * `connections()` counts the client connections open now.
 */
import * as Net from "node:net"

/** What the proxy does now. */
export type FaultMode =
  | { readonly _tag: "pass" }
  | { readonly _tag: "latency"; readonly ms: number }
  | { readonly _tag: "reset" }
  | { readonly _tag: "refuse" }
  | { readonly _tag: "blackhole" }

/** The modes, as values. */
export const Fault = {
  pass: { _tag: "pass" } as FaultMode,
  latency: (ms: number): FaultMode => ({ _tag: "latency", ms }),
  reset: { _tag: "reset" } as FaultMode,
  refuse: { _tag: "refuse" } as FaultMode,
  blackhole: { _tag: "blackhole" } as FaultMode
} as const

/** A running proxy. */
export interface FaultProxy {
  readonly port: number
  /** `127.0.0.1:<port>` */
  readonly address: string
  readonly mode: () => FaultMode
  /** Switches the mode (resolves once the listener is listening or closed as the mode wants). */
  readonly set: (mode: FaultMode) => Promise<void>
  /** Client connections open now. */
  readonly connections: () => number
  /** Connections accepted since the start. */
  readonly accepted: () => number
  /** Closes the listener and every connection. */
  readonly close: () => Promise<void>
}

interface Pair {
  readonly client: Net.Socket
  readonly upstream: Net.Socket
  /** Chunks delayed by the latency mode, per direction, in order. */
  readonly delayed: { toUpstream: Array<{ at: number; chunk: Buffer }>; toClient: Array<{ at: number; chunk: Buffer }> }
  timer: ReturnType<typeof setTimeout> | undefined
  /** True once bytes were dropped (blackhole): the connection can never be right again. */
  broken: boolean
}

/** Starts a proxy on a free loopback port to `target` (`host:port`), in mode `pass`. */
export const startFaultProxy = async (targetHost: string, targetPort: number): Promise<FaultProxy> => {
  let mode: FaultMode = Fault.pass
  const pairs = new Set<Pair>()
  let accepted = 0
  let port = 0
  let listening = false

  const destroy = (p: Pair, how: "reset" | "close") => {
    if (p.timer !== undefined) clearTimeout(p.timer)
    pairs.delete(p)
    if (how === "reset") {
      p.client.resetAndDestroy()
      p.upstream.resetAndDestroy()
    } else {
      p.client.destroy()
      p.upstream.destroy()
    }
  }

  const flushDelayed = (p: Pair) => {
    p.timer = undefined
    const now = Date.now()
    for (const [queue, to] of [[p.delayed.toUpstream, p.upstream], [p.delayed.toClient, p.client]] as const) {
      while (queue.length > 0 && (queue[0]?.at ?? Infinity) <= now) to.write((queue.shift() as { chunk: Buffer }).chunk)
    }
    const next = Math.min(p.delayed.toUpstream[0]?.at ?? Infinity, p.delayed.toClient[0]?.at ?? Infinity)
    if (next !== Infinity) p.timer = setTimeout(() => flushDelayed(p), Math.max(0, next - Date.now()))
  }

  const forward = (p: Pair, from: Net.Socket, to: Net.Socket, queue: Array<{ at: number; chunk: Buffer }>) => {
    from.on("data", (chunk: Buffer) => {
      const m = mode
      if (m._tag === "blackhole" || p.broken) {
        p.broken = true
        return
      }
      if (m._tag === "latency" || queue.length > 0) {
        // after a latency period, bytes still delayed go first
        queue.push({ at: Date.now() + (m._tag === "latency" ? m.ms : 0), chunk })
        if (p.timer === undefined) p.timer = setTimeout(() => flushDelayed(p), m._tag === "latency" ? m.ms : 0)
        return
      }
      if (!to.write(chunk)) {
        from.pause()
        to.once("drain", () => from.resume())
      }
    })
    from.on("end", () => {
      if (!p.broken && mode._tag !== "blackhole") to.end()
    })
    from.on("error", () => destroy(p, "close"))
    from.on("close", () => {
      if (!p.broken && mode._tag !== "blackhole") destroy(p, "close")
    })
  }

  const server = Net.createServer({ pauseOnConnect: true }, (client) => {
    accepted++
    const m = mode
    if (m._tag === "reset") {
      client.resetAndDestroy()
      return
    }
    if (m._tag === "refuse") {
      client.destroy()
      return
    }
    const upstream = Net.connect({ host: targetHost, port: targetPort, noDelay: true })
    client.setNoDelay(true)
    const p: Pair = { client, upstream, delayed: { toUpstream: [], toClient: [] }, timer: undefined, broken: m._tag === "blackhole" }
    pairs.add(p)
    forward(p, client, upstream, p.delayed.toUpstream)
    forward(p, upstream, client, p.delayed.toClient)
    client.resume()
  })

  const listen = (): Promise<void> =>
    new Promise((resolve, reject) => {
      server.once("error", reject)
      server.listen(port, "127.0.0.1", () => {
        server.off("error", reject)
        const a = server.address()
        port = typeof a === "object" && a !== null ? a.port : port
        listening = true
        resolve()
      })
    })
  const unlisten = (): Promise<void> =>
    new Promise((resolve) => {
      if (!listening) return resolve()
      listening = false
      server.close(() => resolve())
    })
  await listen()

  return {
    port,
    address: `127.0.0.1:${port}`,
    mode: () => mode,
    set: async (next) => {
      const before = mode
      mode = next
      if (before._tag === "blackhole" && next._tag !== "blackhole") {
        for (const p of [...pairs]) if (p.broken) destroy(p, "close")
      }
      if (next._tag === "reset") for (const p of [...pairs]) destroy(p, "reset")
      if (next._tag === "refuse") {
        for (const p of [...pairs]) destroy(p, "close")
        await unlisten()
      } else if (!listening) {
        await listen()
      }
    },
    connections: () => pairs.size,
    accepted: () => accepted,
    close: async () => {
      for (const p of [...pairs]) destroy(p, "close")
      await unlisten()
    }
  }
}
