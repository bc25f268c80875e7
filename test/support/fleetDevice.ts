/**
 * Test support: a device of a fleet that outgrew one gateway (test/integration/natsFleet.test.ts).
 * It speaks the line protocol (PROTOCOL.md) over a real TCP socket to whichever gateway its
 * `route` names, and keeps every message it produced until that message is acked:
 *
 * - after a reconnect it resends everything never acked (acked `dup:true` when it had been
 *   stored, whichever gateway stored it);
 * - after `nack unavailable` / `rate_limited` it resends once `retryAfterMs` passed (roughly: a
 *   250 ms timer sweeps them back); a `nack shed` is resent too (counted) so that the fleet
 *   test can ask for every message acked; `invalid` / `forbidden` are final and recorded;
 * - after `goaway` it sends nothing new, waits for the answers of what is in flight, closes and
 *   reconnects after `retryAfterMs` to the gateway `route` gives (with the resume hint);
 * - {@link FleetDevice.hop} moves it on purpose: the answers of its last frames are "lost" (not
 *   read) for a moment, then the socket is dropped and the device reconnects elsewhere.
 *
 * Every frame carries its own W3C `traceparent` (a fresh trace id per message), so the test can
 * check the header the sink stored. Nothing here asserts: the test reads {@link FleetDevice.stats}
 * and the per-message records.
 */
import * as Crypto from "node:crypto"
import * as Net from "node:net"

/** A gateway a device may connect to. */
export interface FleetRoute {
  /** The gateway's name (counted per gateway in the stats). */
  readonly gateway: string
  readonly port: number
}

/** How a device is set up. */
export interface FleetDeviceOptions {
  readonly id: string
  readonly epoch: number
  /**
   * Where to connect: given the gateway the device was last on (undefined at first), a gateway
   * that is up, or undefined when none is (the device asks again a little later).
   */
  readonly route: (last: string | undefined) => FleetRoute | undefined
  /** Unanswered data frames on a connection at most (default 256). */
  readonly window?: number
  /** Every n-th message is an event, the others telemetry (default 10). */
  readonly eventEvery?: number
}

/** One message the device produced, with what became of it. */
export interface FleetMessage {
  readonly seq: number
  readonly kind: "telemetry" | "event"
  readonly trace: string
  /** The frame, newline-terminated. */
  readonly line: string
  /** Times written to a socket. */
  sends: number
  /** The gateway that acked it, once acked. */
  ackedBy: string | undefined
  /** True when that ack said `dup:true`. */
  dup: boolean
  /** Date.now() of the ack. */
  ackedAt: number
}

/** Counters of one device. */
export interface FleetStats {
  /** Sessions opened (welcome received). */
  sessions: number
  /** Connections attempted (TCP connects, refused ones included). */
  connects: number
  /** Acks by gateway (first ack of each message only). */
  readonly acksBy: Map<string, number>
  dupAcks: number
  /** Writes of a message after its first. */
  resends: number
  /** Nacks by code. */
  readonly nacks: Map<string, number>
  /** Error frames by code. */
  readonly errors: Map<string, number>
  goaways: number
  /** Answers lost on purpose by {@link FleetDevice.hop}. */
  lostAnswers: number
  /**
   * Protocol surprises: an answer for a seq not in flight on that connection or out of the order
   * the frames were sent, a frame we do not know.
   */
  readonly surprises: Array<string>
  /** Final nacks (`invalid`, `forbidden`): the message will never be acked. */
  readonly rejected: Array<string>
}

type ConnState = "connecting" | "hello" | "open" | "closed"

interface Conn {
  readonly socket: Net.Socket
  readonly gateway: string
  state: ConnState
  /** Seqs written on this connection and not answered yet, in the order written. */
  readonly inflight: Set<number>
  /** After `goaway`: nothing new is sent. */
  draining: boolean
  /** Answers are dropped unread (a hop in progress). */
  deaf: boolean
  buffer: string
  /** How long to wait before the next connection once this one closes. */
  reconnectAfterMs: number
  /** Resolves when the socket closed. */
  readonly closed: Promise<void>
}

/** How often nacked messages whose retryAfterMs passed are queued again. */
const SWEEP_MS = 250

/** A device of the fleet: produces messages, sends them to the gateway it is on, resends until acked. */
export class FleetDevice {
  readonly id: string
  readonly epoch: number
  /** Every message produced, by seq (seq 1 first). */
  readonly messages: Array<FleetMessage> = []
  readonly stats: FleetStats = {
    sessions: 0,
    connects: 0,
    acksBy: new Map(),
    dupAcks: 0,
    resends: 0,
    nacks: new Map(),
    errors: new Map(),
    goaways: 0,
    lostAnswers: 0,
    surprises: [],
    rejected: []
  }
  private readonly options: FleetDeviceOptions
  private readonly window: number
  private readonly eventEvery: number
  /** Seqs to write on the next open connection (not acked, not in flight, not waiting). */
  private queue: Array<number> = []
  /** Seqs nacked with a retry, and when they may be resent. */
  private readonly waiting = new Map<number, number>()
  private conn: Conn | undefined
  private lastGateway: string | undefined
  private resumeHint: string | undefined
  private stopped = false
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined
  private readonly sweeper: ReturnType<typeof setInterval>
  private acked = 0

  constructor(options: FleetDeviceOptions) {
    this.options = options
    this.id = options.id
    this.epoch = options.epoch
    this.window = options.window ?? 256
    this.eventEvery = options.eventEvery ?? 10
    this.sweeper = setInterval(() => this.sweep(), SWEEP_MS)
  }

  /** Opens the first connection. */
  start(): void {
    this.connect()
  }

  /** The gateway of the open session, if any (none while it drains after goaway, or hops). */
  get gateway(): string | undefined {
    return this.conn?.state === "open" && !this.conn.draining && !this.conn.deaf ? this.conn.gateway : undefined
  }

  /** Messages acked so far. */
  get ackedCount(): number {
    return this.acked
  }

  /** True when every message produced so far is acked. */
  get allAcked(): boolean {
    return this.acked === this.messages.length
  }

  /** Produces `n` new messages (sent at once when a session is open, else kept for later). */
  produce(n = 1): void {
    for (let i = 0; i < n; i++) {
      const seq = this.messages.length + 1
      const kind = seq % this.eventEvery === 0 ? "event" : "telemetry"
      const trace = `00-${Crypto.randomBytes(16).toString("hex")}-${Crypto.randomBytes(8).toString("hex")}-01`
      const ts = Date.now()
      const body = kind === "event"
        ? { name: "valve_cycle", severity: "info", data: { n: seq } }
        : { metrics: { flow: seq % 97, pressure: 1 + (seq % 13) / 10 }, tags: { site: "fleet" } }
      const line = JSON.stringify({ type: kind, seq, ts, body, trace }) + "\n"
      this.messages.push({ seq, kind, trace, line, sends: 0, ackedBy: undefined, dup: false, ackedAt: 0 })
      this.queue.push(seq)
    }
    this.pump()
  }

  /**
   * Moves to another gateway on purpose: the answers to what is in flight now and to what is
   * sent in the next `lossMs` (it keeps sending) are lost, then the socket is dropped and the device reconnects
   * where `route` says. Resolves when the old socket is gone (not when the new session opens):
   * true, or false at once when no session was open (nothing to move).
   */
  async hop(lossMs: number): Promise<boolean> {
    const c = this.conn
    if (c === undefined || c.state !== "open" || c.draining || c.deaf) return false
    c.deaf = true
    this.pump()
    await new Promise<void>((resolve) => setTimeout(resolve, lossMs))
    c.reconnectAfterMs = 0
    c.socket.destroy()
    await c.closed
    return true
  }

  /** Ends the device: no reconnect, socket closed. */
  close(): void {
    this.stopped = true
    clearInterval(this.sweeper)
    clearTimeout(this.reconnectTimer)
    this.conn?.socket.destroy()
  }

  private connect(): void {
    if (this.stopped) return
    const route = this.options.route(this.lastGateway)
    if (route === undefined) return this.reconnectLater(200)
    this.stats.connects++
    const socket = Net.connect({ port: route.port, host: "127.0.0.1" })
    const c: Conn = {
      socket,
      gateway: route.gateway,
      state: "connecting",
      inflight: new Set(),
      draining: false,
      deaf: false,
      buffer: "",
      reconnectAfterMs: 100 + Math.floor(Math.random() * 200),
      closed: new Promise<void>((resolve) => socket.once("close", () => resolve()))
    }
    this.conn = c
    socket.setNoDelay(true)
    socket.setEncoding("utf8")
    socket.on("error", () => undefined)
    socket.on("connect", () => {
      c.state = "hello"
      const hello: Record<string, unknown> = { type: "hello", v: 1, device: this.id, token: "fleet", epoch: this.epoch }
      if (this.resumeHint !== undefined) hello["resume"] = this.resumeHint
      this.resumeHint = undefined
      socket.write(JSON.stringify(hello) + "\n")
    })
    socket.on("data", (d: string) => {
      if (c.deaf) {
        c.buffer += d
        let nl = c.buffer.indexOf("\n")
        while (nl !== -1) {
          this.stats.lostAnswers++
          c.buffer = c.buffer.slice(nl + 1)
          nl = c.buffer.indexOf("\n")
        }
        return
      }
      c.buffer += d
      let nl = c.buffer.indexOf("\n")
      while (nl !== -1) {
        const line = c.buffer.slice(0, nl)
        c.buffer = c.buffer.slice(nl + 1)
        if (line.trim() !== "") this.onFrame(c, line)
        nl = c.buffer.indexOf("\n")
      }
      this.pump()
    })
    socket.on("close", () => this.onClose(c))
  }

  private onFrame(c: Conn, line: string): void {
    let frame: Record<string, unknown>
    try {
      frame = JSON.parse(line) as Record<string, unknown>
    } catch {
      this.stats.surprises.push(`${c.gateway}: not JSON: ${line.slice(0, 200)}`)
      return
    }
    const type = frame["type"]
    const seq = typeof frame["seq"] === "number" ? frame["seq"] : -1
    // answers leave in the order the frames were sent (PROTOCOL.md): this one answers the oldest
    if (type === "ack" || type === "nack") {
      const oldest = c.inflight.values().next().value
      if (oldest !== undefined && oldest !== seq && c.inflight.has(seq)) {
        this.stats.surprises.push(`${c.gateway}: ${String(type)} for seq ${seq} before the answer to seq ${oldest}`)
      }
    }
    switch (type) {
      case "welcome":
        if (c.state !== "hello") this.stats.surprises.push(`${c.gateway}: welcome in state ${c.state}`)
        c.state = "open"
        this.lastGateway = c.gateway
        this.stats.sessions++
        return
      case "ack": {
        if (!c.inflight.delete(seq)) return void this.stats.surprises.push(`${c.gateway}: ack for seq ${seq} not in flight`)
        const m = this.messages[seq - 1]
        if (m === undefined || m.ackedBy !== undefined) {
          return void this.stats.surprises.push(`${c.gateway}: ack for seq ${seq}, ${m === undefined ? "never sent" : "acked before"}`)
        }
        m.ackedBy = c.gateway
        m.dup = frame["dup"] === true
        m.ackedAt = Date.now()
        this.acked++
        if (m.dup) this.stats.dupAcks++
        this.stats.acksBy.set(c.gateway, (this.stats.acksBy.get(c.gateway) ?? 0) + 1)
        break
      }
      case "nack": {
        if (!c.inflight.delete(seq)) return void this.stats.surprises.push(`${c.gateway}: nack for seq ${seq} not in flight`)
        const code = String(frame["code"])
        this.stats.nacks.set(code, (this.stats.nacks.get(code) ?? 0) + 1)
        if (code === "invalid" || code === "forbidden") {
          this.stats.rejected.push(`${seq}: ${code} ${String(frame["message"])}`)
        } else {
          const after = typeof frame["retryAfterMs"] === "number" ? frame["retryAfterMs"] : 1_000
          this.waiting.set(seq, Date.now() + after)
        }
        break
      }
      case "goaway":
        this.stats.goaways++
        c.draining = true
        c.reconnectAfterMs = typeof frame["retryAfterMs"] === "number" ? frame["retryAfterMs"] : 1_000
        if (typeof frame["resume"] === "string") this.resumeHint = frame["resume"]
        break
      case "error": {
        const code = String(frame["code"])
        this.stats.errors.set(code, (this.stats.errors.get(code) ?? 0) + 1)
        if (typeof frame["retryAfterMs"] === "number") c.reconnectAfterMs = frame["retryAfterMs"]
        return
      }
      case "pong":
        return
      default:
        this.stats.surprises.push(`${c.gateway}: unknown frame ${line.slice(0, 200)}`)
        return
    }
    // draining and everything answered: leave now (the gateway would close us after its drain)
    if (c.draining && c.inflight.size === 0) c.socket.end()
  }

  private onClose(c: Conn): void {
    c.state = "closed"
    // what was never answered on this connection is sent again on the next one
    if (c.inflight.size > 0) {
      this.queue = [...c.inflight, ...this.queue]
      c.inflight.clear()
    }
    if (this.conn === c) this.conn = undefined
    this.reconnectLater(c.reconnectAfterMs)
  }

  private reconnectLater(ms: number): void {
    if (this.stopped) return
    clearTimeout(this.reconnectTimer)
    this.reconnectTimer = setTimeout(() => this.connect(), ms)
  }

  /** Nacked messages whose retryAfterMs passed go back to the queue. */
  private sweep(): void {
    if (this.waiting.size === 0) return
    const now = Date.now()
    const due: Array<number> = []
    for (const [seq, at] of this.waiting) if (at <= now) due.push(seq)
    if (due.length === 0) return
    for (const seq of due) this.waiting.delete(seq)
    this.queue = [...due, ...this.queue]
    this.pump()
  }

  /** Writes queued messages while the session is open and the window allows. */
  private pump(): void {
    const c = this.conn
    // a deaf connection still sends (a hop in progress: those answers are the ones lost)
    if (c === undefined || c.state !== "open" || c.draining) return
    let out = ""
    while (this.queue.length > 0 && c.inflight.size < this.window) {
      const seq = this.queue.shift() as number
      const m = this.messages[seq - 1]
      if (m === undefined || m.ackedBy !== undefined) continue
      if (m.sends > 0) this.stats.resends++
      m.sends++
      c.inflight.add(seq)
      out += m.line
    }
    if (out !== "") c.socket.write(out)
  }
}
