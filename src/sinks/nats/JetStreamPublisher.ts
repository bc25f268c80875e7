/**
 * Pipelined JetStream publishing on one connection: a batch's messages are all published at
 * once, each with its own reply subject `<inbox>.<batch>.<index>` under ONE inbox subscription
 * per connection, and their PubAcks are matched back by that subject; ONE timer per batch
 * bounds the wait (`NATS_ACK_TIMEOUT_MS`). The client's `js.publish` does the same per message
 * with a promise, a timer and, on every success, a discarded `Error` (its request is
 * "cancelled" after it resolved): 16–28 k msgs/s pipelined in bench/nats.ts on a shared 2-core
 * VM, where this sink took 37–44 k and a bare publisher 39–48 k.
 *
 * Every message ends with one outcome: its PubAck (Committed, or Duplicate when the stream had
 * its id), a JetStream API error or "no responders" classified (NatsClassifier.ts), an error
 * thrown by the client when publishing (too large for `max_payload`, connection closed), a
 * publish permission violation the server reports for its subject, or, when nothing came back
 * in time or the connection was lost, Unavailable. A message is never Committed without its
 * PubAck. Not knowing is not "not stored": a message published just before the connection
 * dropped may still be in the stream (the client also re-sends what it had not written yet
 * after it reconnects); a resend with the same `Nats-Msg-Id` is then a Duplicate.
 */
import { createInbox, errors as natsErrors, type Msg, type MsgHdrs, type NatsConnection, type Subscription } from "@nats-io/transport-node"
import { MessageOutcome, type SinkFailure } from "../Contract.ts"
import { classifyApiError, classifyNatsError, type NatsErrorClass } from "./NatsClassifier.ts"
import { oneLine } from "./NatsStartError.ts"

/** One message to publish, or why it cannot be (it is then Rejected without being sent). */
export type Prepared =
  | { readonly subject: string; readonly payload: string | Uint8Array; readonly headers: MsgHdrs }
  | { readonly refused: string }

/** The outcome of a batch, with what the sink needs to judge it as a whole. */
export interface PublishedBatch {
  readonly outcomes: Uint8Array
  readonly reasons: Map<number, string>
  /** Committed or Duplicate (a PubAck came back). */
  readonly acked: number
  /** Acked or Rejected: answered for good. */
  readonly decided: number
  /** The first reason a message was Unavailable. */
  readonly firstFailure: { readonly failure: SinkFailure; readonly connection: boolean; readonly message: string } | undefined
  /** True when every Unavailable message only timed out (nothing at all came back for them). */
  readonly onlyTimeouts: boolean
}

/** A batch publisher bound to one connection. */
export interface JetStreamPublisher {
  /**
   * Publishes `count` messages (`prepare(i)` makes message `i`), resolving once each has its
   * outcome or `timeoutMs` passed. `inStream(subject)` says whether the stream takes a subject
   * (undefined: unknown), to tell "no stream for it" from "its leader is away".
   */
  readonly publish: (
    count: number,
    prepare: (i: number) => Prepared,
    inStream: (subject: string) => boolean | undefined,
    timeoutMs: number
  ) => Promise<PublishedBatch>
  /** Ends every batch in flight now: their unanswered messages Unavailable for `failure`. */
  readonly failAll: (failure: SinkFailure, message: string) => void
  /** Resolves when no batch is in flight (at once when none is). */
  readonly idle: () => Promise<void>
  /** Stops listening (the connection is being replaced or closed). */
  readonly close: () => void
}

const PENDING = 255
const TIMED_OUT = "no PubAck in time (timeout)"

interface InFlight {
  readonly outcomes: Uint8Array
  readonly reasons: Map<number, string>
  readonly subjects: Array<string>
  readonly inStream: (subject: string) => boolean | undefined
  open: number
  acked: number
  decided: number
  firstFailure: { readonly failure: SinkFailure; readonly connection: boolean; readonly message: string } | undefined
  onlyTimeouts: boolean
  timer: ReturnType<typeof setTimeout> | undefined
  readonly resolve: (b: PublishedBatch) => void
}

const TD = new TextDecoder()
const DUPLICATE = new TextEncoder().encode(`"duplicate"`)

/** Where `needle` starts in `hay`, or -1. */
const indexOf = (hay: Uint8Array, needle: Uint8Array): number => {
  const first = needle[0]
  outer: for (let i = 0; i + needle.length <= hay.length; i++) {
    if (hay[i] !== first) continue
    for (let j = 1; j < needle.length; j++) if (hay[i + j] !== needle[j]) continue outer
    return i
  }
  return -1
}

/** The PubAck (or API error) in a reply. */
const outcomeOfReply = (m: Msg, subject: string, inStream: (subject: string) => boolean | undefined): NatsErrorClass | "committed" | "duplicate" => {
  if (m.data.length === 0 && m.headers?.code === 503) {
    const taken = inStream(subject)
    return classifyNatsError(new natsErrors.NoRespondersError(subject), taken === undefined ? { subject } : { subject, subjectInStream: taken })
  }
  // the common case without a parse: a PubAck `{"stream":...}` without a `"duplicate"` field
  const d = m.data
  if (d[0] === 123 && d[1] === 34 && d[2] === 115 && indexOf(d, DUPLICATE) === -1) return "committed"
  let ack: { readonly error?: { readonly code?: number; readonly err_code?: number; readonly description?: string }; readonly stream?: string; readonly duplicate?: boolean }
  try {
    ack = JSON.parse(TD.decode(m.data)) as typeof ack
  } catch {
    return { outcome: "unavailable", failure: "unknown", connection: false, message: "a PubAck that is not JSON" }
  }
  if (ack.error !== undefined) return classifyApiError(ack.error.err_code ?? 0, ack.error.code ?? 0, ack.error.description ?? "JetStream error")
  if (typeof ack.stream !== "string" || ack.stream === "") {
    return { outcome: "unavailable", failure: "unknown", connection: false, message: "a reply that is not a PubAck" }
  }
  return ack.duplicate === true ? "duplicate" : "committed"
}

/** A publisher for `nc` (one inbox subscription, reused by every batch on it). */
export const makeJetStreamPublisher = (nc: NatsConnection): JetStreamPublisher => {
  const inbox = createInbox()
  const inflight = new Map<number, InFlight>()
  let nextId = 0

  let idleWaiters: Array<() => void> = []
  const finish = (b: InFlight, id: number, failure: SinkFailure, message: string, connection: boolean) => {
    if (!inflight.delete(id)) return
    if (inflight.size === 0 && idleWaiters.length > 0) {
      const waiters = idleWaiters
      idleWaiters = []
      for (const w of waiters) w()
    }
    if (b.timer !== undefined) clearTimeout(b.timer)
    const { outcomes, reasons } = b
    for (let i = 0; i < outcomes.length; i++) {
      if (outcomes[i] !== PENDING) continue
      outcomes[i] = MessageOutcome.Unavailable
      reasons.set(i, message)
      b.firstFailure ??= { failure, connection, message }
      if (failure !== "timeout") b.onlyTimeouts = false
    }
    b.resolve({ outcomes, reasons, acked: b.acked, decided: b.decided, firstFailure: b.firstFailure, onlyTimeouts: b.onlyTimeouts })
  }

  const settle = (b: InFlight, id: number, i: number, c: NatsErrorClass | "committed" | "duplicate") => {
    if (c === "committed" || c === "duplicate") {
      b.outcomes[i] = c === "committed" ? MessageOutcome.Committed : MessageOutcome.Duplicate
      b.acked++
      b.decided++
    } else if (c.outcome === "rejected") {
      b.outcomes[i] = MessageOutcome.Rejected
      b.reasons.set(i, c.message)
      b.decided++
    } else {
      b.outcomes[i] = MessageOutcome.Unavailable
      b.reasons.set(i, c.message)
      b.firstFailure ??= c
      if (c.failure !== "timeout") b.onlyTimeouts = false
    }
    if (--b.open === 0) finish(b, id, "timeout", TIMED_OUT, true)
  }

  const sub: Subscription = nc.subscribe(`${inbox}.>`, {
    callback: (err, m) => {
      if (err !== null) {
        // the inbox itself cannot be subscribed (permissions): nothing can be answered
        const c = classifyNatsError(err)
        for (const [id, b] of [...inflight]) finish(b, id, c.outcome === "unavailable" ? c.failure : "misconfigured", c.message, true)
        return
      }
      const rest = m.subject.slice(inbox.length + 1)
      const dot = rest.indexOf(".")
      const id = Number(rest.slice(0, dot))
      const i = Number(rest.slice(dot + 1))
      const b = inflight.get(id)
      if (b === undefined || b.outcomes[i] !== PENDING) return
      const subject = b.subjects[i] ?? ""
      settle(b, id, i, outcomeOfReply(m, subject, b.inStream))
    }
  })

  // a lost connection ends the batches in flight at once (their PubAcks cannot come on it); a
  // publish the user may not make is reported on the connection, by subject
  const watch = async () => {
    for await (const s of nc.status()) {
      if (s.type === "disconnect") failAll("unreachable", `connection to ${s.server} lost before the PubAck`)
      if (s.type === "staleConnection") failAll("timeout", "the NATS server stopped answering pings")
      if (s.type !== "error" || !(s.error instanceof natsErrors.PermissionViolationError) || s.error.operation !== "publish") continue
      const denied = s.error.subject
      const c = classifyNatsError(s.error)
      for (const [id, b] of [...inflight]) {
        for (let i = 0; i < b.subjects.length && inflight.has(id); i++) {
          if (b.outcomes[i] === PENDING && b.subjects[i] === denied) settle(b, id, i, c)
        }
      }
    }
  }
  const failAll = (failure: SinkFailure, message: string) => {
    for (const [id, b] of [...inflight]) finish(b, id, failure, message, true)
  }
  watch().catch(() => undefined)

  return {
    publish: (count, prepare, inStream, timeoutMs) =>
      new Promise<PublishedBatch>((resolve) => {
        const id = nextId++
        const b: InFlight = {
          outcomes: new Uint8Array(count).fill(PENDING),
          reasons: new Map(),
          subjects: new Array<string>(count),
          inStream,
          open: count,
          acked: 0,
          decided: 0,
          firstFailure: undefined,
          onlyTimeouts: true,
          timer: undefined,
          resolve
        }
        inflight.set(id, b)
        if (count === 0) return finish(b, id, "timeout", TIMED_OUT, true)
        const prefix = `${inbox}.${id}.`
        for (let i = 0; i < count && inflight.has(id); i++) {
          let p: Prepared
          try {
            p = prepare(i)
          } catch (e) {
            p = { refused: `cannot be written as a NATS message: ${e instanceof Error ? e.message : String(e)}` }
          }
          if ("refused" in p) {
            settle(b, id, i, { outcome: "rejected", message: oneLine(p.refused) })
            continue
          }
          b.subjects[i] = p.subject
          try {
            nc.publish(p.subject, p.payload, { reply: prefix + i, headers: p.headers })
          } catch (e) {
            const c = classifyNatsError(e, { subject: p.subject })
            if (c.outcome === "unavailable" && c.connection) {
              // the connection is gone: nothing more of this batch can be sent
              finish(b, id, c.failure, c.message, true)
              return
            }
            settle(b, id, i, c)
          }
        }
        if (inflight.has(id)) b.timer = setTimeout(() => finish(b, id, "timeout", TIMED_OUT, true), timeoutMs)
      }),
    failAll,
    idle: () => inflight.size === 0 ? Promise.resolve() : new Promise<void>((resolve) => idleWaiters.push(resolve)),
    close: () => {
      sub.unsubscribe()
    }
  }
}
