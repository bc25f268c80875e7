/**
 * The NATS JetStream sink driver ({@link SinkDriver}): each envelope published to
 * `devices.<kind>.<device>` with `Nats-Msg-Id: <device>:<epoch>:<seq>`, `traceparent` and the
 * envelope as JSON (NatsMessage.ts), into the stream `NATS_STREAM` (every publish carries
 * `Nats-Expected-Stream`, so a subject another stream captures is refused, not stored there).
 *
 * A batch is pipelined (JetStreamPublisher.ts): every publish of the batch is started, then the
 * PubAcks are awaited together (one round trip per batch, not per message), all bounded by
 * `NATS_ACK_TIMEOUT_MS` from the start of the batch.
 * Outcomes per message: a PubAck is Committed, a PubAck with `duplicate: true` is Duplicate
 * (the stream already holds that message id, whoever published it), a permanent error is
 * Rejected (NatsClassifier.ts: too large, no stream for the subject) and a transient one
 * Unavailable — for that message only. The batch fails with a {@link SinkError} only when no
 * message of it could be decided (every one Unavailable: not connected, connection closed,
 * every publish timed out, JetStream away); its reason says whether a retry may help.
 *
 * What Committed means: the stream's leader (with replicas, a quorum of them) stored the message
 * and answered with a PubAck. JetStream's file store acknowledges BEFORE an fsync: it hands the
 * write to the OS and forces a sync every `sync_interval` (2 minutes by default), so an acked
 * message survives a crash of the server process (tested: SIGKILL), but a power loss or kernel
 * crash of the only replica can lose up to that interval; with R3 it is acked once a quorum (2
 * of 3) holds it, so only losing power on a quorum at once loses it. Servers that offer
 * `sync_interval: always` fsync before every ack, at a cost in throughput. Memory storage keeps
 * nothing across a server restart (warned at start). Nothing is Committed without its PubAck.
 *
 * Health: ready when connected and the stream answers a stream-info request; the answer stands
 * for a second, then is refreshed in the background (readiness never waits on a slow server:
 * it says what was last known, at most a second plus one probe old). A batch that fails (or
 * commits) is an answer too, so readiness follows the real writes; a lost connection is
 * not-ready at once. A batch whose every publish timed out while the client still believes itself
 * connected triggers a ping: a server that does not answer it is given up and the connection
 * replaced (a blackholed server is not waited on forever).
 */
import { type JetStreamManager, jetstreamManager } from "@nats-io/jetstream"
import { headers, type NatsConnection } from "@nats-io/transport-node"
import { Effect, Exit, Option, Schedule, type Scope } from "effect"
import type { Envelope } from "../../domain/Envelope.ts"
import {
  type BatchResult,
  messageId,
  SinkError,
  type SinkDriver,
  type SinkFailure,
  type SinkHealth
} from "../Contract.ts"
import { classifyNatsError, JsCode } from "./NatsClassifier.ts"
import { type JetStreamPublisher, makeJetStreamPublisher } from "./JetStreamPublisher.ts"
import { makeNatsLink, type NatsLink } from "./NatsConnection.ts"
import { payloadOf, subjectOf } from "./NatsMessage.ts"
import type { NatsSettings } from "./NatsSettings.ts"
import { NatsStartError } from "./NatsStartError.ts"
import { ensureStream, StreamCheckPending, type StreamFacts, streamFactsOf, streamTakes } from "./NatsStream.ts"

/** The driver's name in metrics, logs and errors. */
export const NATS_SINK = "nats"

/** How long a health answer (probe or write) stands before the stream is asked again. */
export const HEALTH_TTL_MS = 1_000

/** The JetStream sink: the contract, plus what it knows of its stream and connection. */
export interface JetStreamSink extends SinkDriver {
  /** The stream as last read (undefined until the server answered once). */
  readonly stream: () => StreamFacts | undefined
  readonly link: NatsLink
}

interface Clients {
  readonly nc: NatsConnection
  readonly publisher: JetStreamPublisher
  readonly jsm: Promise<JetStreamManager>
}

const MSG_ID = "Nats-Msg-Id"
const EXPECTED_STREAM = "Nats-Expected-Stream"

const EMPTY: BatchResult = { outcomes: new Uint8Array(0), reasons: new Map() }

/**
 * Starts the sink for the life of the scope: connects (or keeps connecting in the background),
 * checks (or creates) the stream. Fails with a {@link NatsStartError} for what no retry fixes;
 * an unreachable server only makes it start not ready.
 */
export const makeJetStreamSink = (settings: NatsSettings): Effect.Effect<JetStreamSink, NatsStartError, Scope.Scope> =>
  Effect.gen(function*() {
    const link = yield* makeNatsLink(settings)
    const timeout = settings.ackTimeoutMs
    let facts: StreamFacts | undefined
    let streamProblem: { readonly failure: SinkFailure; readonly message: string } | undefined
    let observed: { readonly at: number; readonly health: SinkHealth } | undefined
    let probing: Promise<SinkHealth> | undefined
    let clients: Clients | undefined

    const clientsOf = (nc: NatsConnection): Clients => {
      if (clients === undefined || clients.nc !== nc) {
        clients?.publisher.close()
        clients = { nc, publisher: makeJetStreamPublisher(nc), jsm: jetstreamManager(nc, { checkAPI: false, timeout }) }
      }
      return clients
    }
    const observe = (health: SinkHealth) => {
      observed = { at: Date.now(), health }
    }

    const adoptFacts = (f: StreamFacts) =>
      Effect.gen(function*() {
        facts = f
        streamProblem = undefined
        if (f.created) yield* Effect.logInfo(`NATS stream ${f.name} created (subjects ${f.subjects.join(", ")}, ${f.storage}, R${f.replicas}, duplicate window ${f.duplicateWindowMs} ms)`)
        for (const w of f.warnings) yield* Effect.logWarning(w)
      })

    const checkStream = Effect.gen(function*() {
      const nc = yield* link.connected
      const jsm = yield* Effect.promise(() => clientsOf(nc).jsm)
      return yield* ensureStream(jsm, settings)
    })

    // At start: a server that answers decides (a missing stream stops the start); one that
    // does not is checked again in the background, and readiness says why meanwhile.
    let checked = false
    if (link.isConnected()) {
      const first = yield* Effect.exit(checkStream)
      if (Exit.isSuccess(first)) {
        yield* adoptFacts(first.value)
        checked = true
      } else {
        const error = Option.getOrUndefined(Exit.findErrorOption(first))
        if (error instanceof NatsStartError) return yield* error
        if (error instanceof StreamCheckPending) {
          streamProblem = { failure: error.failure, message: error.message }
          yield* Effect.logWarning(`NATS stream ${settings.stream} not checked at start (${error.message}); checking in the background`)
        }
      }
    }
    if (!checked) {
      const background = checkStream.pipe(
        Effect.tapError((e) =>
          Effect.gen(function*() {
            const misconfigured = e instanceof NatsStartError
            streamProblem = { failure: misconfigured ? "misconfigured" : e.failure, message: misconfigured ? e.line : e.message }
            if (misconfigured) yield* Effect.logError(e.line)
          })
        ),
        Effect.retry(Schedule.spaced("2 seconds")),
        Effect.flatMap(adoptFacts)
      )
      yield* Effect.forkScoped(background)
    }

    // closing: the batches in flight get their PubAcks (or their timeout) before the connection
    // drains and closes (this finalizer runs before the connection's own)
    yield* Effect.addFinalizer(() =>
      Effect.promise(() => {
        const c = clients
        if (c === undefined) return Promise.resolve()
        return new Promise<void>((resolve) => {
          const t = setTimeout(() => {
            c.publisher.failAll("unreachable", "the sink closed before the PubAck")
            resolve()
          }, timeout)
          c.publisher.idle().then(() => {
            clearTimeout(t)
            c.publisher.close()
            resolve()
          })
        })
      })
    )

    const notConnected = (): { readonly failure: SinkFailure; readonly message: string } => {
      const p = link.problem()
      return { failure: p?.failure ?? "unreachable", message: `not connected to NATS (${p?.message ?? "connecting"})` }
    }

    /** Asks the server for the stream's info (one at a time), and caches the answer. */
    const probe = (nc: NatsConnection): Promise<SinkHealth> =>
      (probing ??= (async (): Promise<SinkHealth> => {
        let health: SinkHealth
        try {
          const info = await (await clientsOf(nc).jsm).streams.info(settings.stream)
          facts = streamFactsOf(info, settings, facts?.created ?? false)
          streamProblem = undefined
          health = { ready: true }
        } catch (e) {
          const c = classifyNatsError(e)
          const code = typeof e === "object" && e !== null && "code" in e ? e.code : undefined
          health = code === JsCode.StreamNotFound
            ? { ready: false, reason: "misconfigured", message: `stream ${settings.stream} does not exist` }
            : {
              ready: false,
              reason: c.outcome === "unavailable" ? c.failure : "unknown",
              message: `stream ${settings.stream} not reachable: ${c.message}`
            }
        }
        observe(health)
        return health
      })().finally(() => {
        probing = undefined
      }))

    const healthNow = (): Promise<SinkHealth> => {
      const nc = link.connection()
      if (nc === undefined || !link.isConnected()) {
        const p = notConnected()
        return Promise.resolve({ ready: false, reason: p.failure, message: p.message })
      }
      const o = observed
      if (o === undefined) return probe(nc)
      // a stale answer is refreshed in the background: readiness never waits on a slow server
      if (Date.now() - o.at >= HEALTH_TTL_MS) probe(nc).catch(() => undefined)
      return Promise.resolve(o.health)
    }

    /** After a batch that only timed out: a server that does not answer a ping is given up. */
    const checkLiveness = (nc: NatsConnection) => {
      let answered = false
      nc.rtt().then(() => (answered = true), () => undefined)
      setTimeout(() => {
        if (!answered && link.connection() === nc && !nc.isClosed()) link.replace()
      }, Math.min(timeout, 2_000)).unref()
    }

    const publishBatch = async (nc: NatsConnection, batch: ReadonlyArray<Envelope>): Promise<BatchResult | SinkError> => {
      const { publisher } = clientsOf(nc)
      const subjects = facts?.subjects
      const r = await publisher.publish(
        batch.length,
        (i) => {
          const e = batch[i] as Envelope
          const h = headers()
          h.set(MSG_ID, messageId(e))
          h.set(EXPECTED_STREAM, settings.stream)
          if (e.traceparent !== null) h.set("traceparent", e.traceparent)
          return { subject: subjectOf(e), payload: payloadOf(e), headers: h }
        },
        (subject) => subjects === undefined ? undefined : streamTakes(subjects, subject),
        timeout
      )
      if (r.acked > 0) observe({ ready: true })
      if (r.decided > 0) return { outcomes: r.outcomes, reasons: r.reasons }
      // nothing could be decided: the batch fails, and says why
      const f = r.firstFailure ?? { failure: "timeout" as const, connection: true, message: "no PubAck in time (timeout)" }
      const failure = streamProblem?.failure === "misconfigured" && !f.connection ? streamProblem.failure : f.failure
      observe({ ready: false, reason: failure, message: f.message })
      if (r.onlyTimeouts && link.isConnected()) checkLiveness(nc)
      return new SinkError({ sink: NATS_SINK, reason: failure, message: `no message of the batch was taken: ${f.message}` })
    }

    const write = (batch: ReadonlyArray<Envelope>): Effect.Effect<BatchResult, SinkError> =>
      Effect.suspend((): Effect.Effect<BatchResult, SinkError> => {
        if (batch.length === 0) return Effect.succeed(EMPTY)
        const nc = link.connection()
        if (nc === undefined || !link.isConnected()) {
          const p = notConnected()
          observe({ ready: false, reason: p.failure, message: p.message })
          return Effect.fail(new SinkError({ sink: NATS_SINK, reason: p.failure, message: p.message }))
        }
        return Effect.callback<BatchResult, SinkError>((resume) => {
          publishBatch(nc, batch).then((r) => resume(r instanceof SinkError ? Effect.fail(r) : Effect.succeed(r)))
        })
      })

    return {
      name: NATS_SINK,
      write,
      health: Effect.promise(healthNow),
      stream: () => facts,
      link
    } satisfies JetStreamSink
  })
