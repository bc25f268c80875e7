/**
 * One simulated device: its own socket, its own frames, the protocol of PROTOCOL.md as a
 * careful firmware would speak it. Plain TypeScript on `node:net`, no Effect: this is the
 * per-frame path.
 *
 * - Frames are produced on the fleet's schedule ({@link SimDevice.produce}) into a bounded ring
 *   (`backlog` frames at most; beyond it new frames are counted as overflow, not produced). Each
 *   keeps its scheduled time, so its ack latency counts from then (no coordinated omission), also
 *   while the device is offline or its window is full.
 * - Seqs: frame number n has seq `firstSeq + n`, `firstSeq` being the first welcome's
 *   `lastSeq + 1` (1 when the gateway knows none), so a rerun with the same ids and epoch goes
 *   on where the last one stopped. They never restart: after a reconnect every frame that was
 *   written and not answered is written again with its seq (the gateway acks a committed one
 *   `dup:true`), in seq order, before newer ones.
 * - At most `window` frames unanswered on a connection, one frame per write.
 * - Nacks by code: `rate_limited` → resent after `retryAfterMs`; `shed` / `unavailable` (and
 *   any other code unless it says `retry:false`) → resent after a capped, jittered backoff (at
 *   least its `retryAfterMs`); `invalid` / `forbidden` → counted, never resent.
 * - `goaway`: nothing new is written, the answers of what is in flight are awaited, the socket
 *   is closed, and the device reconnects after `retryAfterMs` (+0–10% jitter) with the goaway's
 *   `resume` hint in its hello. `error busy`: the same delay. Other losses (reset, refused,
 *   `error timeout`…): reconnect after a jittered exponential backoff (100 ms doubling, capped).
 *   `error auth` / `protocol` / `frame_too_large`: the device stops (retrying would only count
 *   against the address's failed authentications).
 * - A `ping` when the device wrote nothing for half the welcome's `keepaliveMs`.
 */
import type * as Net from "node:net"
import type { Credentials } from "./Credentials.ts"
import type { Dial } from "./Dial.ts"
import { ackSeq, BYE, dataFrame, helloFrame, isDupAck, isEvent, isTraced, parseAnswer, PING, traceparent } from "./FrameText.ts"
import { bump, type Stats } from "./Stats.ts"

/** What every device of a fleet shares. */
export interface DeviceContext {
  readonly stats: Stats
  readonly dial: Dial
  readonly credentials: Credentials
  readonly epoch: number
  /** Unanswered data frames per connection at most. */
  readonly window: number
  /** Frames a device holds (unsettled) at most. */
  readonly backlog: number
  /** Fraction of frames that are events. */
  readonly events: number
  /** Fraction of frames that carry a `trace`. */
  readonly traceRatio: number
  /** 16 hex digits: the trace-id prefix of this run. */
  readonly runId: string
  /** Longest reconnect or nack backoff (ms). */
  readonly maxBackoffMs: number
  /** Longest wait from a connect to its welcome before giving the attempt up (ms). */
  readonly connectTimeoutMs: number
  /** Devices with frames waiting for a retry time (the fleet sweeps them). */
  readonly waiting: Set<SimDevice>
  /** Something the person running the simulator should know (the fleet rate-limits these). */
  readonly warn: (message: string) => void
}

/** One device's account at the end of a run. */
export interface DeviceReport {
  readonly device: string
  readonly epoch: number
  /** Seq of its first frame (null when it never had a session, so no seq was given). */
  readonly firstSeq: number | null
  /** Seq of its last frame produced (null as above, or when it produced none). */
  readonly lastSeq: number | null
  readonly produced: number
  readonly acked: number
  readonly rejected: number
  /** Frames written at least once and never settled (acked or refused for good). */
  readonly unanswered: number
  /** Frames never written (no session, or a full window, until the end). */
  readonly neverSent: number
}

// frame states in the ring
const QUEUED = 0
const INFLIGHT = 1
const WAITING = 2
const DONE = 3
const REJECTED = 4

type Phase = "connecting" | "hello" | "open" | "draining" | "closed"

interface Conn {
  readonly socket: Net.Socket
  phase: Phase
  /** Data frames written on this connection and not answered. */
  inflight: number
  buffer: string
  /** Earliest reconnect time (performance.now()) once closed, set by busy/goaway; 0 = backoff. */
  retryAt: number
  /** An error that ends the device (auth, protocol…). */
  fatal: string | undefined
  /** The connect-and-welcome deadline, then the leave deadline after goaway. */
  timer: ReturnType<typeof setTimeout> | undefined
  keepaliveMs: number
  lastWrite: number
  /** Whether the hello carried a resume hint (dropped once a session opens). */
  resumed: boolean
  readonly closed: Promise<void>
}

/** Nack codes resent whatever their `retry` says (`shed` is telemetry the device still wants stored). */
const RESENT_CODES: ReadonlySet<string> = new Set(["rate_limited", "shed", "unavailable"])

const FIRST_BACKOFF_MS = 100
/** How long a device that closed its side after `goaway` waits for the gateway to close. */
const LEAVE_TIMEOUT_MS = 5_000
const FIRST_CAPACITY = 16

const pow2AtLeast = (n: number): number => {
  let p = 1
  while (p < n) p *= 2
  return p
}

/** A simulated device: schedule-driven frames, one connection at a time, resends until settled. */
export class SimDevice {
  readonly index: number
  readonly id: string
  private readonly ctx: DeviceContext
  // ---- the frame ring, indexed by frame number n & mask ----
  private mask = FIRST_CAPACITY - 1
  private sched = new Float64Array(FIRST_CAPACITY)
  private due = new Float64Array(FIRST_CAPACITY)
  private state = new Uint8Array(FIRST_CAPACITY)
  private written = new Uint8Array(FIRST_CAPACITY)
  private readonly maxCapacity: number
  /** Oldest unsettled frame number (== tail when every frame is settled). */
  private head = 0
  /** Next frame number. */
  private tail = 0
  /** No QUEUED frame has a number below this. */
  private scan = 0
  /** Seq of frame 0; -1 until the first welcome. */
  private firstSeq = -1
  /** Earliest retry time of a WAITING frame (Infinity: none). */
  private nextDue = Infinity
  // ---- the connection ----
  private conn: Conn | undefined
  private resume: string | undefined
  private hadSession = false
  /** Consecutive connection failures (the backoff's exponent). */
  private failures = 0
  /** Consecutive `shed`/`unavailable` nacks (the nack backoff's exponent). */
  private nackStreak = 0
  /** When the last `busy` / `goaway` came (performance.now(); 0: none since the last attempt). */
  private busyAt = 0
  private goawayAt = 0
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined
  private stopped = false
  private acked = 0
  private rejected = 0

  constructor(index: number, id: string, ctx: DeviceContext) {
    this.index = index
    this.id = id
    this.ctx = ctx
    this.maxCapacity = pow2AtLeast(Math.max(ctx.backlog, ctx.window))
  }

  /** True when a session is open (welcomed, not draining). */
  get online(): boolean {
    return this.conn?.phase === "open"
  }

  /** True once the device stopped for good (credentials refused, protocol error) or was stopped. */
  get isStopped(): boolean {
    return this.stopped
  }

  /** Connects for the first time after `delayMs`. */
  start(delayMs: number): void {
    this.reconnectTimer = setTimeout(() => this.connect(), delayMs)
  }

  /** Produces the frame scheduled at `at` (a performance.now() time) and sends it when it can. */
  produce(at: number): void {
    const s = this.ctx.stats
    if (this.stopped) return
    if (this.tail - this.head >= this.ctx.backlog) {
      s.overflow++
      return
    }
    if (this.tail - this.head > this.mask) this.grow()
    const n = this.tail++
    const slot = n & this.mask
    this.sched[slot] = at
    this.state[slot] = QUEUED
    this.written[slot] = 0
    s.produced++
    if (isEvent(this.index, n, this.ctx.events)) s.events++
    if (isTraced(this.index, n, this.ctx.traceRatio)) s.traced++
    this.pump()
  }

  /** Moves WAITING frames whose retry time passed back to the send queue. */
  sweep(now: number): void {
    if (now < this.nextDue) return
    let next = Infinity
    for (let n = this.head; n < this.tail; n++) {
      const slot = n & this.mask
      if (this.state[slot] !== WAITING) continue
      if (this.due[slot]! <= now) {
        this.state[slot] = QUEUED
        if (n < this.scan) this.scan = n
      } else if (this.due[slot]! < next) {
        next = this.due[slot]!
      }
    }
    this.nextDue = next
    if (next === Infinity) this.ctx.waiting.delete(this)
    this.pump()
  }

  /** Sends a `ping` when the session has been silent on our side for half its keepalive. */
  keepalive(now: number): void {
    const c = this.conn
    if (c === undefined || (c.phase !== "open" && c.phase !== "draining") || !c.socket.writable) return
    if (now - c.lastWrite < c.keepaliveMs / 2) return
    c.lastWrite = now
    this.ctx.stats.pings++
    c.socket.write(PING)
  }

  /** Frames written and not settled, and frames never written, now. */
  outstanding(): { readonly unanswered: number; readonly neverSent: number } {
    let unanswered = 0
    let neverSent = 0
    for (let n = this.head; n < this.tail; n++) {
      const slot = n & this.mask
      const st = this.state[slot]
      if (st === DONE || st === REJECTED) continue
      if (this.written[slot] === 1) unanswered++
      else neverSent++
    }
    return { unanswered, neverSent }
  }

  /** This device's account (see {@link DeviceReport}). */
  report(): DeviceReport {
    const { neverSent, unanswered } = this.outstanding()
    const known = this.firstSeq >= 0
    return {
      device: this.id,
      epoch: this.ctx.epoch,
      firstSeq: known ? this.firstSeq : null,
      lastSeq: known && this.tail > 0 ? this.firstSeq + this.tail - 1 : null,
      produced: this.tail,
      acked: this.acked,
      rejected: this.rejected,
      unanswered,
      neverSent
    }
  }

  /**
   * Ends the device: no reconnect; an open session says `bye` (the gateway answers what is
   * pending, then closes). Resolves when the socket closed.
   */
  stop(): Promise<void> {
    this.stopped = true
    clearTimeout(this.reconnectTimer)
    this.ctx.waiting.delete(this)
    const c = this.conn
    if (c === undefined) return Promise.resolve()
    if ((c.phase === "open" || c.phase === "draining") && c.socket.writable) {
      c.socket.write(BYE)
      c.socket.end()
    } else {
      c.socket.destroy()
    }
    return c.closed
  }

  /** Closes the socket at once (after {@link stop}, when the gateway does not close in time). */
  destroy(): void {
    this.conn?.socket.destroy()
  }

  // ---- sending ----

  /** Writes queued frames, oldest first, one per write, while the session is open and the window allows. */
  private pump(): void {
    const c = this.conn
    if (c === undefined || c.phase !== "open" || !c.socket.writable) return
    const window = this.ctx.window
    const s = this.ctx.stats
    let n = Math.max(this.scan, this.head)
    let wrote = false
    while (c.inflight < window) {
      while (n < this.tail && this.state[n & this.mask] !== QUEUED) n++
      if (n >= this.tail) break
      const slot = n & this.mask
      this.state[slot] = INFLIGHT
      c.inflight++
      s.writes++
      if (this.written[slot] === 1) s.resent++
      else {
        this.written[slot] = 1
        s.sent++
      }
      c.socket.write(this.frameText(n))
      wrote = true
      n++
    }
    this.scan = n
    if (wrote) c.lastWrite = performance.now()
  }

  private frameText(n: number): string {
    const at = this.sched[n & this.mask]!
    const trace = isTraced(this.index, n, this.ctx.traceRatio) ? traceparent(this.ctx.runId, this.index, n) : undefined
    return dataFrame(isEvent(this.index, n, this.ctx.events), this.firstSeq + n, Math.round(performance.timeOrigin + at), this.index, n, trace)
  }

  private grow(): void {
    const cap = Math.min(this.maxCapacity, (this.mask + 1) * 2)
    const mask = cap - 1
    const sched = new Float64Array(cap)
    const due = new Float64Array(cap)
    const state = new Uint8Array(cap)
    const written = new Uint8Array(cap)
    for (let n = this.head; n < this.tail; n++) {
      const from = n & this.mask
      const to = n & mask
      sched[to] = this.sched[from]!
      due[to] = this.due[from]!
      state[to] = this.state[from]!
      written[to] = this.written[from]!
    }
    this.mask = mask
    this.sched = sched
    this.due = due
    this.state = state
    this.written = written
  }

  /** Drops settled frames off the ring's head. */
  private advance(): void {
    while (this.head < this.tail) {
      const st = this.state[this.head & this.mask]
      if (st !== DONE && st !== REJECTED) break
      this.head++
    }
  }

  /** The ring slot of an in-flight frame with this seq, or -1. */
  private inflightSlot(seq: number): number {
    if (this.firstSeq < 0) return -1
    const n = seq - this.firstSeq
    if (n < this.head || n >= this.tail) return -1
    const slot = n & this.mask
    return this.state[slot] === INFLIGHT ? slot : -1
  }

  // ---- the connection ----

  private connect(): void {
    if (this.stopped) return
    const s = this.ctx.stats
    s.attempts++
    const now = performance.now()
    if (this.busyAt > 0) s.busyWaitMinMs = Math.min(s.busyWaitMinMs, now - this.busyAt)
    if (this.goawayAt > 0) s.goawayWaitMinMs = Math.min(s.goawayWaitMinMs, now - this.goawayAt)
    this.busyAt = 0
    this.goawayAt = 0
    let dialed
    try {
      dialed = this.ctx.dial(this.id)
    } catch (e) {
      return this.giveUp("dial", `${this.id}: cannot connect: ${e instanceof Error ? e.message : String(e)}`)
    }
    const socket = dialed.socket
    let resolveClosed: () => void = () => undefined
    const c: Conn = {
      socket,
      phase: "connecting",
      inflight: 0,
      buffer: "",
      retryAt: 0,
      fatal: undefined,
      timer: undefined,
      keepaliveMs: 30_000,
      lastWrite: performance.now(),
      resumed: false,
      closed: new Promise<void>((resolve) => (resolveClosed = resolve))
    }
    this.conn = c
    c.timer = setTimeout(() => {
      bump(s.socketErrors, "timeout")
      socket.destroy()
    }, this.ctx.connectTimeoutMs)
    socket.setEncoding("utf8")
    socket.once(dialed.readyEvent, () => {
      if (c.phase !== "connecting") return
      c.phase = "hello"
      c.resumed = this.resume !== undefined
      if (c.resumed) s.resumeHellos++
      c.lastWrite = performance.now()
      socket.write(helloFrame(this.id, this.ctx.credentials(this.index, this.id), this.ctx.epoch, this.resume))
    })
    socket.on("data", (chunk: string) => this.onData(c, chunk))
    socket.on("error", (e: NodeJS.ErrnoException) => bump(s.socketErrors, e.code ?? "error"))
    socket.once("close", () => {
      this.onClose(c)
      resolveClosed()
    })
  }

  private onData(c: Conn, chunk: string): void {
    let buffer = c.buffer === "" ? chunk : c.buffer + chunk
    let start = 0
    let nl = buffer.indexOf("\n", start)
    while (nl !== -1) {
      const end = nl > start && buffer.charCodeAt(nl - 1) === 13 ? nl - 1 : nl
      if (end > start) this.onLine(c, buffer.slice(start, end))
      start = nl + 1
      nl = buffer.indexOf("\n", start)
    }
    buffer = start === buffer.length ? "" : buffer.slice(start)
    c.buffer = buffer
    if (c.phase === "open") this.pump()
    else if (c.phase === "draining" && c.inflight === 0) this.leave(c)
  }

  /** After `goaway`, everything answered: close our side, and the socket if the gateway does not within 5 s. */
  private leave(c: Conn): void {
    if (!c.socket.writable) return
    c.socket.end()
    clearTimeout(c.timer)
    c.timer = setTimeout(() => c.socket.destroy(), LEAVE_TIMEOUT_MS)
  }

  private onLine(c: Conn, line: string): void {
    const s = this.ctx.stats
    s.gatewayLines++
    const seq = ackSeq(line)
    if (seq >= 0) return this.onAck(c, seq, isDupAck(line))
    const a = parseAnswer(line)
    switch (a.type) {
      case "ack":
        return this.onAck(c, a.seq, a.dup)
      case "nack":
        return this.onNack(c, a.seq, a.code, a.retry, a.retryAfterMs)
      case "welcome":
        return this.onWelcome(c, a.lastSeq, a.keepaliveMs)
      case "goaway":
        s.goaways++
        this.goawayAt = performance.now()
        if (c.phase === "open") c.phase = "draining"
        c.retryAt = performance.now() + jittered(a.retryAfterMs ?? 1_000)
        this.resume = a.resume
        return
      case "error":
        return this.onError(c, a.code, a.message, a.retryAfterMs)
      case "pong":
        return
      case "unknown":
        s.unexpected++
        return
    }
  }

  private onWelcome(c: Conn, lastSeq: number | null, keepaliveMs: number): void {
    const s = this.ctx.stats
    if (c.phase !== "hello") {
      s.unexpected++
      return
    }
    clearTimeout(c.timer)
    c.phase = "open"
    c.keepaliveMs = keepaliveMs
    // a resume hint is single-use: once a session opened it is spent
    if (c.resumed) this.resume = undefined
    this.failures = 0
    if (this.firstSeq < 0) this.firstSeq = (lastSeq ?? 0) + 1
    s.sessions++
    s.connected++
    if (this.hadSession) s.reconnects++
    else {
      this.hadSession = true
      s.devicesConnected++
    }
  }

  private onAck(c: Conn, seq: number, dup: boolean): void {
    const slot = this.inflightSlot(seq)
    if (slot < 0) {
      this.ctx.stats.unexpected++
      return
    }
    this.state[slot] = DONE
    c.inflight--
    this.acked++
    this.nackStreak = 0
    this.ctx.stats.ack(performance.now() - this.sched[slot]!, dup)
    this.advance()
  }

  private onNack(c: Conn, seq: number, code: string, retry: boolean | undefined, retryAfterMs: number | undefined): void {
    const s = this.ctx.stats
    const slot = this.inflightSlot(seq)
    if (slot < 0) {
      s.unexpected++
      return
    }
    c.inflight--
    bump(s.nacks, code)
    // final: refused by validation or by the device's grant, or a code we do not know that says so
    if (code === "invalid" || code === "forbidden" || (retry === false && !RESENT_CODES.has(code))) {
      this.state[slot] = REJECTED
      this.rejected++
      s.rejected++
      this.advance()
      return
    }
    let delay: number
    if (code === "rate_limited") {
      delay = jittered(retryAfterMs ?? 1_000)
    } else {
      // shed, unavailable, anything else: back off, the longer the more of them in a row
      this.nackStreak++
      delay = Math.max(retryAfterMs ?? 0, this.backoff(this.nackStreak))
    }
    const at = performance.now() + delay
    this.state[slot] = WAITING
    this.due[slot] = at
    if (at < this.nextDue) this.nextDue = at
    this.ctx.waiting.add(this)
  }

  private onError(c: Conn, code: string, message: string, retryAfterMs: number | undefined): void {
    const s = this.ctx.stats
    bump(s.errors, code)
    if (code === "busy") {
      s.busy++
      this.busyAt = performance.now()
    }
    if (code === "auth" || code === "protocol" || code === "frame_too_large") {
      c.fatal = code
      this.ctx.warn(`${this.id}: error ${code}: ${message}`)
      return
    }
    if (retryAfterMs !== undefined) c.retryAt = performance.now() + jittered(retryAfterMs)
  }

  private onClose(c: Conn): void {
    const s = this.ctx.stats
    clearTimeout(c.timer)
    if (c.phase === "open" || c.phase === "draining") s.connected--
    c.phase = "closed"
    if (this.conn === c) this.conn = undefined
    // what was written and not answered goes again on the next connection, in seq order
    if (c.inflight > 0) {
      for (let n = this.head; n < this.tail; n++) {
        const slot = n & this.mask
        if (this.state[slot] === INFLIGHT) this.state[slot] = QUEUED
      }
      this.scan = this.head
    }
    if (c.fatal !== undefined) return this.giveUp(c.fatal, undefined)
    if (this.stopped) return
    const now = performance.now()
    let delay: number
    if (c.retryAt > 0) delay = Math.max(0, c.retryAt - now)
    else delay = this.backoff(++this.failures)
    this.reconnectTimer = setTimeout(() => this.connect(), delay)
  }

  /** Jittered exponential backoff: 100 ms × 2^(attempt-1), capped, times 0.5–1. */
  private backoff(attempt: number): number {
    const ceiling = Math.min(this.ctx.maxBackoffMs, FIRST_BACKOFF_MS * 2 ** Math.min(attempt - 1, 30))
    return ceiling * (0.5 + Math.random() / 2)
  }

  private giveUp(reason: string, message: string | undefined): void {
    if (message !== undefined) this.ctx.warn(message)
    bump(this.ctx.stats.gaveUp, reason)
    this.stopped = true
    this.ctx.waiting.delete(this)
  }
}

/** `ms` plus 0–10% (a reconnection storm spreads out a little more than the gateway asked). */
const jittered = (ms: number): number => ms * (1 + Math.random() / 10)
