/**
 * One device connection: framing → hello/auth → decode → ingest stages (validate+normalize,
 * dedup) → lane. The connection is one fiber that pulls a socket chunk, handles every frame of
 * it with plain synchronous code (no Effect per frame; the ingest stages run synchronously on
 * the chunk's data frames), and suspends only to apply backpressure: while its
 * in-flight window (`GATEWAY_MAX_INFLIGHT`) or its output buffer is full it does not read.
 * Pings are answered inline, never queued behind data; events that find the critical lane full
 * wait in this connection (a pump fiber offers them, in order) while reading goes on until the
 * window fills. Answers leave in send order ({@link OrderedAnswers}).
 */
import { Effect, Result } from "effect"
import type * as Net from "node:net"
import { isUtf8 } from "node:buffer"
import { randomUUID } from "node:crypto"
import type { GatewayConfigShape } from "../config/GatewayConfig.ts"
import type { DeviceAuthShape } from "../auth/DeviceRegistry.ts"
import type { Envelope } from "../domain/Envelope.ts"
import type { ErrorCode, ValidationError } from "../domain/Errors.ts"
import { decodeHello, errorFrame, goawayFrame, type Kind, nackFrame, PONG, welcomeFrame } from "../domain/Frames.ts"
import type { LifecycleShape } from "../Lifecycle.ts"
import * as Metrics from "../observability/Metrics.ts"
import type { MessageTracerShape } from "../observability/Tracing.ts"
import { answerOf, Tally } from "../pipeline/Answer.ts"
import type { InFlight, LanesShape, Replier } from "../pipeline/Lanes.ts"
import type { Runner } from "../pipeline/Stage.ts"
import type { RawData } from "../pipeline/Validate.ts"
import type { SinkShape } from "../sinks/Sink.ts"
import { LineFramer } from "./LineFramer.ts"
import { OrderedAnswers } from "./OrderedAnswers.ts"
import type { Replaceable, Sessions } from "./Sessions.ts"

/** Everything a connection needs, resolved once by the listener. */
export interface ConnectionEnv {
  readonly config: GatewayConfigShape
  readonly auth: DeviceAuthShape
  readonly sessions: Sessions
  readonly lanes: LanesShape
  /** The ingest stages (validate, dedup), built once. */
  readonly ingest: Runner<RawData, Envelope, ValidationError>
  readonly sink: SinkShape
  readonly tracer: MessageTracerShape
  readonly lifecycle: LifecycleShape
}

/** Above this many unsent output bytes the connection stops reading until the socket drains. */
const MAX_OUTPUT_BYTES = 1 << 20
/** Frames accepted before welcome (hello pipelined with data), at most. */
const MAX_EARLY_FRAMES = 4096
/** How long a device should wait before reconnecting after `goaway`. */
const GOAWAY_RETRY_MS = 1_000

type State = "hello" | "authenticating" | "open" | "closing" | "closed"

/** The protocol state machine of one socket; its `run` is the connection's fiber. */
export class Connection implements Replier, Replaceable {
  private state: State = "hello"
  private readonly framer: LineFramer
  private readonly answers = new OrderedAnswers()
  private device = ""
  private epoch = 0
  private kinds: ReadonlySet<Kind> = new Set()
  private early: Array<string> = []
  /** Events waiting for room in the critical lane, in send order. */
  private held: Array<InFlight> = []
  /** Data frames of the current socket read, waiting for the ingest stages, and their tickets. */
  private readonly raws: Array<RawData> = []
  private readonly tickets: Array<number> = []
  private pumping = false
  private draining = false
  private offered = 0
  private out = ""
  private chunks: Array<Buffer> = []
  private ended = false
  private waiter: (() => void) | undefined = undefined
  private result: Metrics.ConnectionResult = "closed"
  /** Arrival time of the chunk being handled: `performance.now()` and epoch ms. */
  private arrivedAt = 0
  private receivedAt = 0
  private readonly socket: Net.Socket
  private readonly env: ConnectionEnv

  constructor(socket: Net.Socket, env: ConnectionEnv) {
    this.socket = socket
    this.env = env
    this.framer = new LineFramer(env.config.maxFrameBytes)
  }

  /** The connection's fiber: reads until the socket ends or the protocol closes it. */
  readonly run: Effect.Effect<void> = Effect.suspend(() => {
    const s = this.socket
    s.on("data", (chunk: Buffer) => {
      this.chunks.push(chunk)
      s.pause()
      this.wake()
    })
    s.on("end", () => {
      this.ended = true
      this.wake()
    })
    s.on("close", () => this.onGone())
    s.on("error", () => this.onGone())
    s.on("drain", () => this.wake())
    s.on("timeout", () => this.onTimeout())
    s.setNoDelay(true)
    s.setTimeout(this.env.config.helloTimeoutMs)
    s.resume()
    return this.loop
  }).pipe(
    Effect.ensuring(Effect.sync(() => this.finish())),
    Effect.withSpan("gateway.connection", { kind: "server" })
  )

  private readonly loop: Effect.Effect<void> = Effect.gen({ self: this }, function*() {
    while (true) {
      yield* this.waitUntil(() => this.chunks.length > 0 || this.ended || this.state === "closed")
      if (this.state === "closed") break
      const chunk = this.chunks.shift()
      if (chunk !== undefined) this.process(chunk)
      else if (this.state === "open") this.state = "closing" // peer half-closed: answer what is pending
      else break
      if (this.state === "authenticating") yield* this.openSession
      this.afterChunk()
      if (this.held.length > 0 && !this.pumping) {
        this.pumping = true // set before the fork: the child starts later, and only one pump may run
        yield* Effect.forkChild(this.pump)
      }
      if (this.state === "closing") {
        yield* this.waitUntil(() => this.answers.inflight === 0 || this.state === "closed")
        this.close()
        break
      }
      yield* this.waitUntil(() => this.hasRoom() || this.state === "closed")
      if (this.chunks.length === 0 && !this.ended) this.socket.resume()
    }
  })

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

  private wake(): void {
    this.waiter?.()
  }

  /** The state, read afresh (it changes under calls the compiler cannot follow). */
  private isOpen(): boolean {
    return this.state === "open"
  }

  private hasRoom(): boolean {
    return this.answers.inflight < this.env.config.maxInflight && this.socket.writableLength < MAX_OUTPUT_BYTES
  }

  // ---- frames ----

  private process(chunk: Buffer): void {
    // every frame of a chunk arrived at the same moment: read the clocks once per chunk
    this.arrivedAt = performance.now()
    this.receivedAt = Date.now()
    const tooLarge = this.framer.push(chunk, (buf, start, end) => this.onFrame(buf, start, end))
    this.ingest()
    if (tooLarge !== undefined && this.state !== "closed") {
      this.fatal("frame_too_large", `frame exceeds maxFrameBytes (${this.env.config.maxFrameBytes})`, "protocol_error")
    }
  }

  private onFrame(buf: Buffer, start: number, end: number): void {
    if (this.state === "closed" || this.state === "closing") return
    const bytes = buf.subarray(start, end)
    if (!isUtf8(bytes)) return this.fatal("protocol", "frame is not valid UTF-8", "protocol_error")
    const text = bytes.toString("utf8")
    if (this.state !== "open") {
      if (this.early.length >= MAX_EARLY_FRAMES) {
        return this.fatal("protocol", "too many frames before welcome", "protocol_error")
      }
      this.early.push(text)
      if (this.state === "hello") this.state = "authenticating"
      return
    }
    this.handle(text)
  }

  private handle(text: string): void {
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
        return this.onData(type, frame)
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

  private onData(kind: Kind, frame: object): void {
    const seq = (frame as { readonly seq?: unknown }).seq
    if (typeof seq !== "number" || !Number.isSafeInteger(seq) || seq < 0) {
      return this.fatal("protocol", "data frame without a valid seq (integer 0..2^53-1): it cannot be answered", "protocol_error")
    }
    const ticket = this.answers.open()
    if (this.draining) {
      this.answers.resolve(ticket, nackFrame(seq, "unavailable", "gateway is draining: reconnect", GOAWAY_RETRY_MS))
      return Metrics.record(Metrics.messages(kind, "unavailable"), 1)
    }
    if (!this.kinds.has(kind)) {
      this.answers.resolve(ticket, nackFrame(seq, "forbidden", `device may not send ${kind}`))
      Metrics.record(Metrics.errors("AuthError"), 1)
      return Metrics.record(Metrics.messages(kind, "forbidden"), 1)
    }
    this.raws.push({
      device: this.device,
      epoch: this.epoch,
      kind,
      seq,
      frame,
      receivedAt: this.receivedAt,
      gateway: this.env.config.gatewayId
    })
    this.tickets.push(ticket)
  }

  /**
   * Runs the ingest stages on the data frames gathered from one socket read: a rejected or
   * settled message is answered at once, the others go to their lane.
   */
  private ingest(): void {
    const raws = this.raws
    if (raws.length === 0) return
    const tickets = this.tickets
    const env = this.env
    const { passed, passedAt, stops, stoppedAt } = env.ingest.runSync(raws)
    if (stops.length > 0) {
      const tally = new Tally()
      for (let j = 0; j < stops.length; j++) {
        const raw = raws[stoppedAt[j]!]!
        const answer = answerOf(raw.seq, stops[j]!, raw.kind)
        this.answers.resolve(tickets[stoppedAt[j]!]!, answer.frame)
        tally.add(raw.kind, answer.outcome)
        tally.addError(stops[j]!)
      }
      tally.record()
    }
    for (let i = 0; i < passed.length; i++) {
      const validated = passed[i]!
      const traced = env.tracer.enabled
        ? env.tracer.start(validated.kind, validated.device, validated.seq, validated.traceparent ?? undefined)
        : undefined
      const item: InFlight = {
        envelope: traced === undefined ? validated : { ...validated, traceparent: traced.traceparent },
        replier: this,
        ticket: tickets[passedAt === undefined ? i : passedAt[i]!]!,
        arrivedAt: this.arrivedAt,
        span: traced?.span
      }
      this.offered++
      if (item.envelope.kind === "telemetry") env.lanes.offerTelemetry(item)
      else if (this.held.length > 0 || !env.lanes.tryOfferEvent(item)) this.held.push(item)
    }
    // the arrays are reused for the next socket read (nothing above keeps them)
    raws.length = 0
    tickets.length = 0
  }

  /**
   * Offers held events in order, suspending while the critical lane is full. "Nothing held" and
   * "pump stopped" are decided in one synchronous step, so an event held meanwhile is never
   * stranded.
   */
  private readonly pump: Effect.Effect<void> = Effect.gen({ self: this }, function*() {
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

  private afterChunk(): void {
    if (this.offered > 0) {
      this.offered = 0
      this.env.lanes.notify()
    }
    this.flush()
  }

  // ---- session ----

  private readonly openSession: Effect.Effect<void> = Effect.gen({ self: this }, function*() {
    const hello = this.parseHello(this.early.shift()!)
    if (hello === undefined) return
    const { config, auth, sessions, sink } = this.env
    const authed = auth.authenticate(hello.device, hello.token)
    if (Result.isFailure(authed)) {
      Metrics.record(Metrics.errors("AuthError"), 1)
      return this.fatal("auth", authed.failure.message, "auth_failed")
    }
    if (this.env.lifecycle.isDraining()) return this.fatal("shutdown", "gateway is shutting down", "shutdown")
    const lastSeq = yield* Effect.orElseSucceed(sink.lastSeq(hello.device, hello.epoch ?? 0), () => null)
    if (this.state === "closed") return
    this.device = hello.device
    this.epoch = hello.epoch ?? 0
    this.kinds = authed.success
    sessions.claim(this.device, this)
    this.state = "open"
    this.socket.setTimeout(Math.ceil(config.keepaliveMs * 1.5))
    this.out += welcomeFrame(randomUUID(), config.keepaliveMs, config.maxFrameBytes, lastSeq)
    Metrics.record(Metrics.connections("accepted"), 1)
    yield* Effect.annotateCurrentSpan({ "device.id": this.device, "device.epoch": this.epoch })
    const early = this.early
    this.early = []
    for (const text of early) {
      if (!this.isOpen()) break // after a fatal frame or a bye, what follows is not read
      this.handle(text)
    }
    this.ingest()
  })

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

  /** Records the answer of one message (from this connection or the persistence stage). */
  resolve(ticket: number, frame: string): void {
    this.answers.resolve(ticket, frame)
  }

  /** Writes every answer that is in order, plus any pending inline frames. */
  flush(): void {
    const ready = this.answers.takeReady()
    const data = this.out + ready
    this.out = ""
    if (data.length > 0 && this.state !== "closed") this.socket.write(data)
    this.wake()
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
    this.out += goawayFrame(GOAWAY_RETRY_MS + Math.floor(Math.random() * GOAWAY_RETRY_MS))
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
    if (s.writableLength >= MAX_OUTPUT_BYTES) {
      // the device stopped reading its answers: give up on it
      this.fatal("timeout", "device does not read its answers", "timeout")
      s.destroy()
    } else if (this.state === "closing" || (this.state === "open" && !this.hasRoom())) {
      // silence we caused (we stopped reading, or are answering a bye) is not the device's
      s.setTimeout(Math.ceil(this.env.config.keepaliveMs * 1.5))
      return
    } else {
      this.fatal("timeout", this.state === "open" ? "no frame within keepalive" : "no hello in time", "timeout")
    }
    this.wake()
  }

  private onGone(): void {
    this.state = "closed"
    this.wake()
  }

  private fatal(code: ErrorCode, message: string, result: Metrics.ConnectionResult): undefined {
    if (this.state === "closed") return undefined
    this.ingest() // frames read before the fatal one are answered (those already decided) before the error
    this.flush()
    if (result === "protocol_error") Metrics.record(Metrics.errors("ProtocolError"), 1)
    this.result = result
    this.out += errorFrame(code, message)
    this.flush()
    this.close()
    return undefined
  }

  private close(): void {
    if (this.state === "closed") return
    this.flush()
    this.state = "closed"
    const s = this.socket
    s.end(() => s.destroy())
    setTimeout(() => s.destroy(), 2_000).unref()
    this.wake()
  }

  private finish(): void {
    this.close()
    if (this.device !== "") this.env.sessions.release(this.device, this)
    Metrics.record(Metrics.connections(this.result), 1)
  }
}

/** Answers an over-limit connection with `error busy` (jittered retryAfterMs) and closes it. */
export const refuseBusy = (socket: Net.Socket, baseRetryMs: number): void => {
  const retryAfterMs = baseRetryMs + Math.floor(Math.random() * baseRetryMs)
  socket.end(errorFrame("busy", "too many connections, retry later", retryAfterMs))
  setTimeout(() => socket.destroy(), 2_000).unref()
  Metrics.record(Metrics.connections("busy"), 1)
  Metrics.record(Metrics.errors("OverloadError"), 1)
}
