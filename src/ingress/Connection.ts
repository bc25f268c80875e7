/**
 * One device connection: hello (read by a small bounded reader, before an absolute deadline)
 * → auth → admission → framing → decode → rate limits → ingest stages (validate+normalize,
 * dedup) → lane. The connection is one fiber that pulls a socket chunk, handles every frame of
 * it with plain synchronous code (no Effect per frame; the ingest stages run synchronously on
 * the data frames, {@link IngestBatch}), and suspends only to apply backpressure: while its
 * in-flight window (`GATEWAY_MAX_INFLIGHT`) or its output buffer is full it does not read.
 * A fleet's common read, a frame or a few (≤ 4 KiB) arriving while that fiber waits for input,
 * is handled the same way inside the socket's `data` event, without waking the fiber; its data
 * frames join the turn's other small reads' for the ingest stages.
 * Pings are answered inline, never queued behind data; events that find the critical lane full
 * wait in this connection (a pump fiber offers them, in order) while reading goes on until the
 * window fills. Answers leave in send order ({@link OrderedAnswers}). Every message is charged
 * its estimated heap cost against the node's memory budget from its frame's arrival until its
 * answer; a connection stops reading while its own unanswered bytes exceed
 * `GATEWAY_CONNECTION_MAX_BYTES`, or while it has unanswered frames and the node is above the
 * budget's high watermark (connections with nothing in flight keep reading, so their pings are
 * answered).
 */
import { Effect, Result } from "effect"
import type * as Net from "node:net"
import { isUtf8 } from "node:buffer"
import { randomUUID } from "node:crypto"
import type { AdmissionShape } from "../admission/Admission.ts"
import { DeviceRateLimit } from "../admission/DeviceRateLimit.ts"
import { type Budget, messageCost } from "../admission/MemoryBudget.ts"
import type { GatewayConfigShape } from "../config/GatewayConfig.ts"
import type { DeviceAuthShape } from "../auth/DeviceAuth.ts"
import type { RateLimits } from "../auth/DeviceRegistry.ts"
import type { ErrorCode } from "../domain/Errors.ts"
import { decodeHello, errorFrame, goawayFrame, type Kind, nackFrame, PONG, welcomeFrame } from "../domain/Frames.ts"
import type { LifecycleShape } from "../Lifecycle.ts"
import * as Metrics from "../observability/Metrics.ts"
import type { MessageTracerShape } from "../observability/Tracing.ts"
import type { InFlight, LanesShape } from "../pipeline/Lanes.ts"
import type { DeviceStateShape } from "../sinks/DeviceState.ts"
import { closeGracefully } from "./Closing.ts"
import { HELLO_MAX_BYTES, HelloReader } from "./HelloReader.ts"
import type { IngestBatch, IngestSource } from "./IngestBatch.ts"
import { LineFramer } from "./LineFramer.ts"
import { type ReadSlices, SMALL_READ_BYTES } from "./ReadSlices.ts"
import { certificateRefusal, TLS_SESSION_BYTES, type TlsTerminator } from "./Tls.ts"
import { OrderedAnswers } from "./OrderedAnswers.ts"
import type { Replaceable, Sessions } from "./Sessions.ts"

/** Everything a connection needs, resolved once by the listener. */
export interface ConnectionEnv {
  readonly config: GatewayConfigShape
  readonly auth: DeviceAuthShape
  readonly sessions: Sessions
  readonly lanes: LanesShape
  /** The ingest stages' pending chunk (validate, dedup), shared by the listener's connections. */
  readonly batch: IngestBatch
  readonly deviceState: DeviceStateShape
  readonly tracer: MessageTracerShape
  readonly lifecycle: LifecycleShape
  readonly budget: Budget
  readonly admission: AdmissionShape
  /** Turns for big socket reads, so control traffic is never stuck behind a flood. */
  readonly slices: ReadSlices
  /** Turns for opening sessions (auth, admission, a store read each), apart from the reads'. */
  readonly helloSlices: ReadSlices
  /** TLS on the device port (the socket is then a TLSSocket), or none. */
  readonly tls: TlsTerminator | undefined
  /** Connections admitted and not yet welcomed, oldest first (the listener evicts from the front). */
  readonly awaitingHello: Set<Connection>
  /** Rate limits of devices whose registry entry names no class. */
  readonly defaultLimits: RateLimits
}

/** Above this many unsent output bytes the connection stops reading until the socket drains. */
const PAUSE_OUTPUT_BYTES = 64 * 1024
/**
 * Above this many unsent output bytes the device is not reading its answers (its pongs and
 * acks): the connection is closed at once, so a few such devices cannot hold the node's memory.
 * A well-behaved device has at most its window of acks (~30 bytes each) unsent.
 */
const MAX_OUTPUT_BYTES = 256 * 1024
/** How long a connection closed before its welcome is read and discarded at most. */
const PRE_SESSION_LINGER_MS = 500
/** The byte that ends a frame. */
const NEWLINE = 10
/** How long a device should wait before reconnecting after `goaway`. */
const GOAWAY_RETRY_MS = 1_000

type State = "hello" | "authenticating" | "open" | "closing" | "closed"

/** The protocol state machine of one socket; its `run` is the connection's fiber. */
export class Connection implements IngestSource, Replaceable {
  private state: State = "hello"
  /** Reads the hello; dropped once it is read. */
  private hello: HelloReader | undefined = new HelloReader()
  /** The hello line, between its arrival and the session's opening. */
  private helloText = ""
  private helloTimer: ReturnType<typeof setTimeout> | undefined = undefined
  /** The hello deadline passed while a read was still waiting to be looked at. */
  private helloExpired = false
  /** Made at welcome: before it only the hello reader reads. */
  private framer: LineFramer | undefined = undefined
  /** The frame handler given to the framer, bound once. */
  private onFrameBound: ((buf: Buffer, start: number, end: number) => void) | undefined = undefined
  private readonly answers = new OrderedAnswers()
  private device = ""
  private epoch = 0
  private kinds: ReadonlySet<Kind> = new Set()
  /** The device's rate limits, until its first data frame makes the limiter (idle devices never pay for one). */
  private limits: RateLimits | undefined = undefined
  private limiter: DeviceRateLimit | undefined = undefined
  /** Events waiting for room in the critical lane, in send order. */
  private held: Array<InFlight> = []
  private pumping = false
  private draining = false
  private out = ""
  private chunks: Array<Buffer> = []
  private ended = false
  private waiter: (() => void) | undefined = undefined
  private wakeQueued = false
  /** The fiber is parked waiting for input with nothing else to do: a small read may be handled in place. */
  private idle = false
  /** Work for the fiber besides a read: a small read handled in place left held events, a close, or no room. */
  private attention = false
  /** When the unfinished frame held by the framer began (epoch ms), 0 when none. */
  private pendingSince = 0
  /** Its unsent answers passed MAX_OUTPUT_BYTES: it is being closed. */
  private overflowing = false
  /** A fatal error is being answered (no second one meanwhile). */
  private failing = false
  private result: Metrics.ConnectionResult = "closed"
  /** Arrival time of the chunk being handled: `performance.now()` and epoch ms. */
  private arrivedAt = 0
  private receivedAt = 0
  private readonly socket: Net.Socket
  /** The peer's address (admission counts it as unauthenticated until the welcome). */
  private readonly peer: string
  private unauthenticated = true
  /** When it was accepted (`performance.now()`). */
  readonly acceptedAt = performance.now()
  private readonly env: ConnectionEnv

  constructor(socket: Net.Socket, peer: string, env: ConnectionEnv) {
    this.socket = socket
    this.peer = peer
    this.env = env
  }

  /** The connection's fiber: reads until the socket ends or the protocol closes it. */
  run(): Effect.Effect<void> {
    return Effect.suspend(() => {
      const s = this.socket
      s.on("data", (chunk: Buffer) => {
        if (this.idle && this.readInPlace(chunk)) return
        this.chunks.push(chunk)
        s.pause()
        this.wake()
      })
      s.on("end", () => {
        this.ended = true
        this.wake()
      })
      const gone = () => this.onGone()
      s.on("close", gone)
      s.on("error", gone)
      s.on("drain", this.wakeNow)
      s.on("timeout", () => this.onTimeout())
      s.setNoDelay(true)
      // absolute, from the accept: bytes that are not a hello (a blank line every second) do not extend it
      this.helloTimer = setTimeout(() => this.onHelloDeadline(), this.env.config.helloTimeoutMs)
      s.resume()
      return this.loop
    }).pipe(
      Effect.ensuring(Effect.sync(() => this.finish())),
      // a span per connection only when traces are exported (it costs memory per idle device)
      (run) => this.env.tracer.enabled ? Effect.withSpan(run, "gateway.connection", { kind: "server" }) : run
    )
  }

  private readonly loop: Effect.Effect<void> = Effect.gen({ self: this }, function*() {
    while (true) {
      this.idle = true
      yield* this.waitUntil(() => this.chunks.length > 0 || this.ended || this.attention || this.state === "closed")
      this.idle = false
      this.attention = false
      if (this.state === "closed") break
      const next = this.chunks[0]
      if (next !== undefined && next.length > SMALL_READ_BYTES && this.state === "open" && !this.env.slices.tryEnter(performance.now())) {
        yield* this.nextSlice(this.env.slices)
        continue
      }
      const chunk = this.chunks.shift()
      if (chunk !== undefined) this.process(chunk, false)
      else if (!this.ended) {
        // woken for the attention of a read handled in place: only what follows a read is left
      } else if (this.state === "open") this.state = "closing" // peer half-closed: answer what is pending
      else break
      if (this.state === "authenticating") {
        // a reconnection storm's hellos (auth, admission, a store read each) take turns too, so
        // the connected devices' pings are not stuck behind thousands of them in one turn
        while (!this.env.helloSlices.tryEnter(performance.now())) yield* this.nextSlice(this.env.helloSlices)
        if (this.state === "authenticating") yield* this.openSession()
      }
      this.flush()
      if (this.needsPump()) yield* this.startPump()
      if (this.state === "closing") {
        yield* this.pumpingUntil(() => this.answers.inflight === 0 || this.state === "closed")
        this.close()
        break
      }
      yield* this.pumpingUntil(() => this.hasRoom() || this.state === "closed")
      if (this.chunks.length === 0 && !this.ended) this.socket.resume()
    }
  })

  /**
   * The common case of a fleet, handled without waking the fiber: an open session's small read
   * (a frame or a few) arriving while the fiber waits for input. Its frames are handled right
   * here, as the fiber would (their ingest stages run with the turn's other small reads'), and
   * the socket keeps flowing; whatever must wait (a close, a full window or output buffer, and
   * once the stages ran, held events) pauses the socket and hands over to the fiber. False when
   * the read must go through the fiber (queued behind others, a big read that takes its turn,
   * inside the ingest stages' run).
   */
  private readInPlace(chunk: Buffer): boolean {
    if (this.state !== "open" || chunk.length > SMALL_READ_BYTES || this.chunks.length > 0 || this.attention || this.env.batch.busy) {
      return false
    }
    this.process(chunk, true)
    this.flush()
    // closed by this read (a fatal error): the lingering close reads and discards on its own
    if ((this.state as State) === "closed") return true
    if (this.state !== "open" || (this.held.length > 0 && !this.pumping) || !this.hasRoom()) {
      this.socket.pause()
      this.attention = true
      this.wake()
    }
    return true
  }

  /** Suspends until the next read slice begins. */
  private nextSlice(slices: ReadSlices): Effect.Effect<void> {
    return Effect.callback<void>((resume) => {
      slices.later(() => resume(Effect.void))
    })
  }

  /** Events are held and no pump offers them. */
  private needsPump(): boolean {
    return this.held.length > 0 && !this.pumping
  }

  /** Forks the pump that offers the held events. */
  private startPump(): Effect.Effect<void> {
    this.pumping = true // set before the fork: the child starts later, and only one pump may run
    return Effect.asVoid(Effect.forkChild(this.pump()))
  }

  /**
   * Suspends until `ready()` holds, starting the pump whenever events are held meanwhile (the
   * ingest stages of reads handled in place run later in the turn, and may hold events then).
   */
  private pumpingUntil(ready: () => boolean): Effect.Effect<void> {
    return Effect.gen({ self: this }, function*() {
      while (true) {
        yield* this.waitUntil(() => ready() || this.needsPump())
        if (!this.needsPump()) return
        yield* this.startPump()
      }
    })
  }

  /** Suspends until `ready()` holds; re-checked whenever the connection is woken. */
  private waitUntil(ready: () => boolean): Effect.Effect<void> {
    return Effect.callback<void>((resume) => {
      const check = () => {
        if (ready()) {
          this.waiter = undefined
          resume(Effect.void)
        } else {
          this.waiter = check
        }
      }
      check()
      return Effect.sync(() => {
        this.waiter = undefined
      })
    })
  }

  /**
   * Re-checks what the fiber waits for, in a microtask: a wake-up from another connection's
   * work (an answer, a shed, budget relief) never runs this connection's loop in the middle of
   * that work.
   */
  private wake(): void {
    if (this.waiter === undefined || this.wakeQueued) return
    this.wakeQueued = true
    queueMicrotask(this.wakeNow)
  }

  private readonly wakeNow = () => {
    this.wakeQueued = false
    this.waiter?.()
  }

  private hasRoom(): boolean {
    const a = this.answers
    const { config, budget } = this.env
    if (a.inflight >= config.maxInflight || this.socket.writableLength >= PAUSE_OUTPUT_BYTES) return false
    if (a.pendingBytes >= config.connectionMaxBytes) return false
    if (a.inflight > 0 && budget.isHigh()) {
      budget.onRelief(this.wakeNow)
      return false
    }
    return true
  }

  /** Bytes this connection holds in buffers: the unfinished hello or frame, a pending read, unsent answers, a TLS session. */
  get bufferedBytes(): number {
    let n = (this.hello?.bufferedBytes ?? 0) + (this.framer?.bufferedBytes ?? 0) + this.socket.writableLength + this.out.length
    if (this.env.tls !== undefined) n += TLS_SESSION_BYTES
    for (const c of this.chunks) n += c.length
    return n
  }

  // ---- frames ----

  /**
   * Handles a chunk's frames; its data frames' ingest stages run now, or with the other small
   * reads of the turn (`soon`).
   */
  private process(chunk: Buffer, soon: boolean): void {
    if (this.state === "hello") return this.readHello(chunk)
    // every frame of a chunk arrived at the same moment: read the clocks once per chunk
    this.arrivedAt = performance.now()
    this.receivedAt = Date.now()
    const framer = this.framer ??= new LineFramer(this.env.config.maxFrameBytes)
    this.onFrameBound ??= (buf, start, end) => this.onFrame(buf, start, end)
    const tooLarge = framer.push(chunk, this.onFrameBound)
    // an unfinished frame must make progress: bytes dribbled in to keep the keepalive happy do
    // not let a device pin up to maxFrameBytes of the node's buffers for ever. A newline in the
    // read ended the frame before: the unfinished one began in this read (a device streaming
    // frames whose reads each end inside one is making progress)
    if (framer.bufferedBytes === 0) this.pendingSince = 0
    else if (this.pendingSince === 0 || chunk.lastIndexOf(NEWLINE) !== -1) this.pendingSince = this.receivedAt
    else if (this.receivedAt - this.pendingSince > this.env.config.keepaliveMs * 1.5 && this.state === "open") {
      return this.fatal("timeout", "frame not finished within keepalive", "timeout")
    }
    if (soon) this.env.batch.runSoon()
    else this.env.batch.runNow()
    if (tooLarge !== undefined && this.state !== "closed") {
      this.fatal("frame_too_large", `frame exceeds maxFrameBytes (${this.env.config.maxFrameBytes})`, "protocol_error")
    }
  }

  /** Before welcome: only the hello is read (a few KB at most); what follows waits for the session. */
  private readHello(chunk: Buffer): void {
    const read = this.hello!.push(chunk)
    if (read._tag === "Pending") {
      if (this.helloExpired) this.fatal("timeout", "no hello in time", "timeout")
      return
    }
    if (read._tag === "TooLarge") {
      return this.fatal("protocol", `first line exceeds ${HELLO_MAX_BYTES} bytes: not a hello`, "protocol_error")
    }
    clearTimeout(this.helloTimer)
    this.hello = undefined
    if (!isUtf8(read.line)) return this.fatal("protocol", "frame is not valid UTF-8", "protocol_error")
    this.helloText = read.line.toString("utf8")
    if (read.rest !== undefined) this.chunks.unshift(read.rest)
    this.state = "authenticating"
    // its hello is here: it waits on the node now (auth, a key fetch, its turn), never evicted for it
    this.env.awaitingHello.delete(this)
  }

  private onHelloDeadline(): void {
    if (this.state !== "hello") return
    // a read that arrived in time but waits behind a busy event loop is still judged: look after
    // the poll phase, and if a read is queued, let the loop decide once it has looked at it
    setImmediate(() => {
      if (this.state !== "hello") return
      if (this.chunks.length > 0) {
        this.helloExpired = true
        return
      }
      this.fatal("timeout", "no hello in time", "timeout")
    })
  }

  private onFrame(buf: Buffer, start: number, end: number): void {
    if (this.state !== "open") return
    const text = buf.toString("utf8", start, end)
    // decoding replaces every invalid sequence with U+FFFD: without one the bytes were valid
    // UTF-8 (no view and no second pass over them); with one, the bytes decide
    if (text.includes("\uFFFD") && !isUtf8(buf.subarray(start, end))) {
      return this.fatal("protocol", "frame is not valid UTF-8", "protocol_error")
    }
    this.handle(text, end - start)
  }

  private handle(text: string, size: number): void {
    let frame: unknown
    try {
      frame = JSON.parse(text)
    } catch {
      return this.fatal("protocol", "frame is not valid JSON", "protocol_error")
    }
    if (typeof frame !== "object" || frame === null || Array.isArray(frame)) {
      return this.fatal("protocol", "frame is not a JSON object", "protocol_error")
    }
    const type = (frame as { readonly type?: unknown }).type
    switch (type) {
      case "telemetry":
      case "event":
        return this.onData(type, frame, size)
      case "ping":
        this.out += PONG
        return
      case "bye":
        this.state = "closing"
        return
      case "hello":
        return this.fatal("protocol", "hello after welcome", "protocol_error")
      default:
        return this.fatal("protocol", `unknown frame type ${JSON.stringify(type)}`, "protocol_error")
    }
  }

  private onData(kind: Kind, frame: object, size: number): void {
    const seq = (frame as { readonly seq?: unknown }).seq
    if (typeof seq !== "number" || !Number.isSafeInteger(seq) || seq < 0) {
      return this.fatal("protocol", "data frame without a valid seq (integer 0..2^53-1): it cannot be answered", "protocol_error")
    }
    if (this.limits !== undefined) {
      this.limiter = DeviceRateLimit.of(this.limits, this.receivedAt)
      this.limits = undefined
    }
    const wait = this.limiter === undefined || this.draining ? 0 : this.limiter.admit(size, this.receivedAt)
    if (wait > 0) {
      this.answers.resolve(this.answers.open(), nackFrame(seq, "rate_limited", "device over its rate limit", wait))
      Metrics.record(Metrics.errors("OverloadError"), 1)
      return Metrics.record(Metrics.messages(kind, "rate_limited"), 1)
    }
    const cost = messageCost(size)
    const ticket = this.answers.open(cost)
    this.env.budget.charge(cost)
    if (this.draining) {
      this.resolve(ticket, nackFrame(seq, "unavailable", "gateway is draining: reconnect", GOAWAY_RETRY_MS))
      return Metrics.record(Metrics.messages(kind, "unavailable"), 1)
    }
    if (!this.kinds.has(kind)) {
      this.resolve(ticket, nackFrame(seq, "forbidden", `device may not send ${kind}`))
      Metrics.record(Metrics.errors("AuthError"), 1)
      return Metrics.record(Metrics.messages(kind, "forbidden"), 1)
    }
    const raw = { device: this.device, epoch: this.epoch, kind, seq, frame, receivedAt: this.receivedAt, gateway: this.env.config.gatewayId }
    this.env.batch.add(this, raw, ticket, size, this.arrivedAt)
  }

  /** Takes an event that passed the ingest stages: to the critical lane, or held behind earlier ones. */
  offerEvent(item: InFlight): void {
    if (this.held.length > 0 || !this.env.lanes.tryOfferEvent(item)) this.held.push(item)
  }

  /** The ingest stages ran on this connection's frames: their answers go out, held events get a pump. */
  afterIngest(): void {
    this.flush()
    if (!this.needsPump()) return
    if (this.idle && this.state === "open") {
      // as a read handled in place that held events: the fiber takes over (and stops reading)
      this.socket.pause()
      this.attention = true
    }
    this.wake()
  }

  /**
   * Offers held events in order, suspending while the critical lane is full. "Nothing held" and
   * "pump stopped" are decided in one synchronous step, so an event held meanwhile is never
   * stranded.
   */
  private pump(): Effect.Effect<void> {
    return Effect.gen({ self: this }, function*() {
      while (true) {
        const batch = this.held
        if (batch.length === 0) {
          this.pumping = false
          return
        }
        this.held = []
        yield* this.env.lanes.offerEvents(batch)
        this.env.lanes.notify()
      }
    }).pipe(Effect.onInterrupt(() => Effect.sync(() => (this.pumping = false))))
  }

  // ---- session ----

  private openSession(): Effect.Effect<void> {
    return Effect.gen({ self: this }, function*() {
      const hello = this.parseHello(this.helloText)
      this.helloText = ""
      if (hello === undefined) return
      const { config, auth, sessions, deviceState, admission } = this.env
      // mutual TLS: the certificate must name the device (before any credential is looked at)
      const unnamed = this.env.tls?.mutual === true ? certificateRefusal(this.socket, hello.device) : undefined
      if (unnamed !== undefined) {
        Metrics.record(Metrics.errors("AuthError"), 1)
        admission.authFailed(this.peer, hello.device, "certificate", Date.now())
        return this.fatal("auth", unnamed, "auth_failed")
      }
      const authed = yield* Effect.result(auth.authenticate(hello.device, hello.token)) // a JWT's check is asynchronous
      if (this.socket.destroyed) return // gone meanwhile: nothing to admit
      if (Result.isFailure(authed)) {
        if (authed.failure.reason === "unverifiable") {
          // the node cannot check credentials now (its fleet keys are unavailable): retry later
          Metrics.record(Metrics.errors("OverloadError"), 1)
          return this.fatal("busy", authed.failure.message, "busy", config.busyRetryMs + Math.floor(Math.random() * config.busyRetryMs))
        }
        Metrics.record(Metrics.errors("AuthError"), 1)
        admission.authFailed(this.peer, hello.device, authed.failure.reason, Date.now())
        return this.fatal("auth", authed.failure.message, "auth_failed")
      }
      if (this.env.lifecycle.isDraining()) return this.fatal("shutdown", "gateway is shutting down", "shutdown")
      const now = Date.now()
      const refusal = admission.atHello(hello.device, hello.resume, now)
      if (refusal !== undefined) {
        Metrics.record(Metrics.errors("OverloadError"), 1)
        return this.fatal("busy", refusal.message, "busy", refusal.retryAfterMs)
      }
      const lastSeq = yield* deviceState.lastSeq(hello.device, hello.epoch ?? 0)
      if (this.state === "closed") return
      this.device = hello.device
      this.epoch = hello.epoch ?? 0
      this.kinds = authed.success.kinds
      this.limits = authed.success.limits ?? this.env.defaultLimits
      sessions.claim(this.device, this)
      this.state = "open"
      this.leaveUnauthenticated()
      this.socket.setTimeout(Math.ceil(config.keepaliveMs * 1.5))
      this.out += welcomeFrame(randomUUID(), config.keepaliveMs, config.maxFrameBytes, lastSeq)
      Metrics.record(Metrics.connections("accepted"), 1)
      yield* Effect.annotateCurrentSpan({ "device.id": this.device, "device.epoch": this.epoch })
    })
  }

  private parseHello(text: string) {
    let frame: unknown
    try {
      frame = JSON.parse(text)
    } catch {
      return this.fatal("protocol", "frame is not valid JSON", "protocol_error")
    }
    if (typeof frame !== "object" || frame === null || (frame as { readonly type?: unknown }).type !== "hello") {
      return this.fatal("protocol", "the first frame must be hello", "protocol_error")
    }
    const hello = decodeHello(frame)
    if (Result.isFailure(hello)) return this.fatal("protocol", `bad hello: ${hello.failure}`, "protocol_error")
    return hello.success
  }

  // ---- answers (Replier) ----

  /** Records the answer of one message (from this connection or the persistence stage); its bytes leave the budget. */
  resolve(ticket: number, frame: string): void {
    const freed = this.answers.resolve(ticket, frame)
    if (freed > 0) this.env.budget.release(freed)
  }

  /** Writes every answer that is in order, plus any pending inline frames. */
  flush(): void {
    const ready = this.answers.takeReady()
    const data = this.out + ready
    this.out = ""
    if (data.length > 0 && this.state !== "closed") {
      this.socket.write(data)
      if (this.socket.writableLength > MAX_OUTPUT_BYTES && !this.failing && !this.overflowing) {
        // closed after the current work (this flush may run inside another connection's)
        this.overflowing = true
        queueMicrotask(() => this.fatal("timeout", "device does not read its answers", "timeout"))
      }
    }
    // a fiber parked for input waits for nothing an answer changes (room is checked after a read)
    if (!this.idle) this.wake()
  }

  // ---- endings ----

  /** Closes with `error replaced` (a newer connection of the device took over). */
  replace(): void {
    this.fatal("replaced", "a newer connection of this device took over", "replaced")
  }

  /** Starts draining: `goaway`, answer what is in flight, nack anything new. */
  goaway(): void {
    if (this.state === "closed" || this.draining) return
    this.draining = true
    const resume = this.device === "" ? undefined : this.env.admission.resumeHint(this.device, Date.now())
    this.out += goawayFrame(GOAWAY_RETRY_MS + Math.floor(Math.random() * GOAWAY_RETRY_MS), resume)
    this.flush()
  }

  /** Messages of this connection not yet answered. */
  get inflight(): number {
    return this.answers.inflight
  }

  /** Closes with `error shutdown` (the drain is over). */
  shutdown(): void {
    this.fatal("shutdown", "gateway shut down", "shutdown")
  }

  private onTimeout(): void {
    const s = this.socket
    if (s.writableLength >= PAUSE_OUTPUT_BYTES) {
      // the device stopped reading its answers: give up on it
      this.fatal("timeout", "device does not read its answers", "timeout")
    } else if (this.state === "closing" || (this.state === "open" && !this.hasRoom())) {
      // silence we caused (we stopped reading, or are answering a bye) is not the device's
      s.setTimeout(Math.ceil(this.env.config.keepaliveMs * 1.5))
      return
    } else if (this.state === "open") {
      this.fatal("timeout", "no frame within keepalive", "timeout")
    }
    this.wake()
  }

  private onGone(): void {
    this.state = "closed"
    this.wake()
  }

  private fatal(code: ErrorCode, message: string, result: Metrics.ConnectionResult, retryAfterMs?: number): undefined {
    if (this.state === "closed" || this.failing) return undefined
    this.failing = true
    this.env.batch.runNow() // frames read before the fatal one are answered (those already decided) before the error
    this.flush()
    if (result === "protocol_error") Metrics.record(Metrics.errors("ProtocolError"), 1)
    this.result = result
    this.out += errorFrame(code, message, retryAfterMs)
    this.close()
    return undefined
  }

  /** Writes what is pending, half-closes and lets the device read it all (see Closing.ts). */
  private close(): void {
    if (this.state === "closed") return
    const last = this.out + this.answers.takeReady()
    this.out = ""
    this.state = "closed"
    // the socket lingers a few seconds: let go of what this connection buffered meanwhile
    this.hello = undefined
    this.framer = undefined
    this.chunks.length = 0
    // a connection that never opened a session lingers briefly: enough to read its error frame,
    // too short for a flood of them to hold the node's descriptors
    closeGracefully(this.socket, last, this.device === "" ? PRE_SESSION_LINGER_MS : undefined)
    this.wake()
  }

  private leaveUnauthenticated(): void {
    if (!this.unauthenticated) return
    this.unauthenticated = false
    this.env.awaitingHello.delete(this)
    this.env.admission.welcomedOrGone(this.peer)
  }

  /** Closed before its welcome to make room for a newer connection (`busy`). */
  evict(refusal: { readonly message: string; readonly retryAfterMs: number }): void {
    this.leaveUnauthenticated()
    this.fatal("busy", refusal.message, "busy", refusal.retryAfterMs)
  }

  private finish(): void {
    clearTimeout(this.helloTimer)
    this.leaveUnauthenticated()
    this.close()
    const { budget, sessions } = this.env
    budget.release(this.answers.abandon())
    budget.forget(this.wakeNow)
    if (this.device !== "") sessions.release(this.device, this)
    Metrics.record(Metrics.connections(this.result), 1)
  }
}
