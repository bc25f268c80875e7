/**
 * The connection to NATS as a scoped resource: `NATS_URL` (one server or several, see
 * NatsUrl.ts), an optional credentials file (`NATS_CREDS`) and TLS files (`NATS_TLS_CA`,
 * `NATS_TLS_CERT`, `NATS_TLS_KEY`; re-read at every reconnect, so rotated files are picked up).
 *
 * It never gives up: the client reconnects forever, with a jittered wait, to any server of the
 * cluster (the listed ones and those the cluster announces); a connection that closes anyway
 * is replaced by a new one. A server unreachable at start is not a start failure: the link
 * starts disconnected and keeps trying in the background ({@link NatsLink.isConnected} says
 * so). What a retry cannot fix is a {@link NatsStartError}: a bad `NATS_URL`, an unreadable or
 * malformed file, wrong credentials, a TLS mismatch. Closing the scope drains the connection
 * (bounded) and closes it.
 */
import { connect, credsAuthenticator, type NatsConnection, type NodeConnectionOptions } from "@nats-io/transport-node"
import { Deferred, Duration, Effect, Exit, Fiber, Option, Schedule, type Scope, Stream } from "effect"
import * as Fs from "node:fs"
import type { SinkFailure } from "../Contract.ts"
import { classifyNatsError, stopsStart } from "./NatsClassifier.ts"
import type { NatsSettings } from "./NatsSettings.ts"
import { NatsStartError } from "./NatsStartError.ts"
import { parseNatsUrl } from "./NatsUrl.ts"

/** Why the link is not connected now. */
export interface LinkProblem {
  readonly failure: SinkFailure
  readonly message: string
}

/** A connection to NATS that is kept up for as long as its scope is open. */
export interface NatsLink {
  /** The servers of `NATS_URL`. */
  readonly servers: ReadonlyArray<string>
  /** The current connection (connected, or reconnecting on its own); undefined before the first connect. */
  readonly connection: () => NatsConnection | undefined
  /** True while connected to a server (not reconnecting, not closed). */
  readonly isConnected: () => boolean
  /** Why not connected (or the last error the server sent), undefined when none. */
  readonly problem: () => LinkProblem | undefined
  /** Waits for the first successful connection. */
  readonly connected: Effect.Effect<NatsConnection>
  /** Forces a new connection (a server that stopped answering: its socket is given up). */
  readonly replace: () => void
}

const readable = (path: string, variable: string, what: string): NatsStartError | undefined => {
  try {
    Fs.accessSync(path, Fs.constants.R_OK)
    if (!Fs.statSync(path).isFile()) return new NatsStartError({ variable, reason: "misconfigured", message: `${path} is not a file (expected ${what})` })
    return undefined
  } catch (e) {
    return new NatsStartError({ variable, reason: "misconfigured", message: `${path} cannot be read (expected ${what}): ${e instanceof Error ? e.message : String(e)}`, cause: e })
  }
}

/** The client's options from the settings, after checking `NATS_URL` and the files it names. */
export const connectionOptionsOf = (settings: NatsSettings): Effect.Effect<NodeConnectionOptions, NatsStartError> =>
  Effect.suspend(() => {
    const parsed = parseNatsUrl(settings.url)
    if (typeof parsed === "string") return Effect.fail(new NatsStartError({ variable: "NATS_URL", reason: "misconfigured", message: parsed }))
    const options: NodeConnectionOptions = {
      servers: [...parsed.servers],
      name: settings.clientName,
      reconnect: true,
      maxReconnectAttempts: -1,
      waitOnFirstConnect: false,
      ignoreAuthErrorAbort: true,
      reconnectTimeWait: 500,
      reconnectJitter: 250,
      reconnectJitterTLS: 500,
      timeout: Math.max(1_000, Math.min(settings.ackTimeoutMs, 10_000)),
      pingInterval: 5_000,
      maxPingOut: 2,
      noAsyncTraces: true
    }
    if (settings.credsFile !== undefined) {
      const path = settings.credsFile
      const bad = readable(path, "NATS_CREDS", "a NATS credentials file")
      if (bad !== undefined) return Effect.fail(bad)
      const text = Fs.readFileSync(path, "utf8")
      if (!/-----BEGIN NATS USER JWT-----/.test(text) || !/-----BEGIN USER NKEY SEED-----/.test(text)) {
        return Effect.fail(new NatsStartError({
          variable: "NATS_CREDS",
          reason: "misconfigured",
          message: `${path} is not a NATS credentials file (no USER JWT and NKEY SEED blocks)`
        }))
      }
      options.authenticator = credsAuthenticator(() => Fs.readFileSync(path))
    }
    const { tlsCa, tlsCert, tlsKey } = settings
    if ((tlsCert === undefined) !== (tlsKey === undefined)) {
      return Effect.fail(new NatsStartError({
        variable: tlsCert === undefined ? "NATS_TLS_CERT" : "NATS_TLS_KEY",
        reason: "misconfigured",
        message: "NATS_TLS_CERT and NATS_TLS_KEY go together (a client certificate and its key)"
      }))
    }
    for (const [variable, path, what] of [
      ["NATS_TLS_CA", tlsCa, "a PEM CA bundle"],
      ["NATS_TLS_CERT", tlsCert, "a PEM certificate"],
      ["NATS_TLS_KEY", tlsKey, "a PEM private key"]
    ] as const) {
      if (path === undefined) continue
      const bad = readable(path, variable, what)
      if (bad !== undefined) return Effect.fail(bad)
      if (!/-----BEGIN [A-Z ]+-----/.test(Fs.readFileSync(path, "utf8"))) {
        return Effect.fail(new NatsStartError({ variable, reason: "misconfigured", message: `${path} is not PEM (expected ${what})` }))
      }
    }
    if (parsed.tlsRequired || tlsCa !== undefined || tlsCert !== undefined) {
      options.tls = {
        ...(tlsCa === undefined ? {} : { caFile: tlsCa }),
        ...(tlsCert === undefined ? {} : { certFile: tlsCert }),
        ...(tlsKey === undefined ? {} : { keyFile: tlsKey })
      }
    }
    return Effect.succeed(options)
  })

/** The variable to blame for a connection error that stops the start. */
const blame = (settings: NatsSettings, message: string): string =>
  /authentication|authorization/i.test(message)
    ? settings.credsFile === undefined ? "NATS_URL" : "NATS_CREDS"
    : /tls|certificate|ssl/i.test(message)
    ? settings.tlsCa === undefined ? "NATS_URL" : "NATS_TLS_CA"
    : "NATS_URL"

/**
 * Connects (or starts connecting) to NATS for the life of the scope. Fails only with what a
 * retry cannot fix; an unreachable server is retried in the background.
 */
export const makeNatsLink = (settings: NatsSettings): Effect.Effect<NatsLink, NatsStartError, Scope.Scope> =>
  Effect.gen(function*() {
    const options = yield* connectionOptionsOf(settings)
    let current: NatsConnection | undefined
    let connectedNow = false
    let problem: LinkProblem | undefined
    let closing = false
    let lastLogged = { message: "", at: 0 }
    const first = yield* Deferred.make<NatsConnection>()

    const attempt = Effect.tryPromise({ try: () => connect(options), catch: (e) => e })
    const adopt = (nc: NatsConnection) =>
      Effect.sync(() => {
        current = nc
        connectedNow = true
        problem = undefined
      }).pipe(Effect.andThen(Deferred.succeed(first, nc)))

    const start = yield* Effect.exit(attempt)
    if (Exit.isSuccess(start)) {
      yield* adopt(start.value)
    } else {
      const error = Option.getOrUndefined(Exit.findErrorOption(start))
      const c = classifyNatsError(error)
      if (stopsStart(c)) {
        return yield* new NatsStartError({ variable: blame(settings, c.message), reason: "misconfigured", message: `cannot connect to ${settings.url}: ${c.message}`, cause: error })
      }
      problem = c.outcome === "unavailable" ? { failure: c.failure, message: c.message } : { failure: "unknown", message: c.message }
      yield* Effect.logWarning(`NATS not reachable at start (${problem.message}); connecting in the background to ${settings.url}`)
    }

    /** Follows one connection's status until it closes. */
    const watch = (nc: NatsConnection) =>
      Stream.fromAsyncIterable(nc.status(), (e) => e).pipe(
        Stream.runForEach((s) => {
          switch (s.type) {
            case "disconnect":
              connectedNow = false
              problem = { failure: "unreachable", message: `disconnected from ${s.server}` }
              return Effect.logWarning(`NATS disconnected from ${s.server}; reconnecting`)
            case "reconnect":
              connectedNow = true
              problem = undefined
              return Effect.logInfo(`NATS reconnected to ${s.server}`)
            case "error": {
              const c = classifyNatsError(s.error)
              if (c.outcome === "unavailable" && c.failure === "misconfigured") problem = { failure: c.failure, message: c.message }
              // the client retries for ever (an auth error every reconnect): the same line once a minute
              const now = Date.now()
              if (c.message === lastLogged.message && now - lastLogged.at < 60_000) return Effect.void
              lastLogged = { message: c.message, at: now }
              return Effect.logWarning(`NATS error: ${c.message}`)
            }
            case "staleConnection":
              connectedNow = false
              problem = { failure: "timeout", message: "the NATS server stopped answering pings" }
              return Effect.logWarning("NATS connection stale (no answer to pings); reconnecting")
            default:
              return Effect.void
          }
        }),
        Effect.ignore,
        Effect.andThen(Effect.promise(() => nc.closed())),
        Effect.andThen(Effect.sync(() => {
          connectedNow = false
          if (current === nc) current = undefined
          if (!closing) problem = { failure: "unreachable", message: "the NATS connection closed" }
        }))
      )

    const retry = Schedule.exponential("250 millis", 2).pipe(
      Schedule.jittered,
      Schedule.modifyDelay(({ duration }) => Effect.succeed(Duration.min(duration, Duration.seconds(5))))
    )
    const reconnectLoop = Effect.gen(function*() {
      while (!closing) {
        const nc = current ?? (yield* attempt.pipe(
          Effect.tapError((e) =>
            Effect.sync(() => {
              const c = classifyNatsError(e)
              problem = c.outcome === "unavailable" ? { failure: c.failure, message: c.message } : { failure: "unknown", message: c.message }
            })
          ),
          Effect.retry(retry),
          Effect.tap(adopt)
        ))
        yield* watch(nc)
        if (!closing) yield* Effect.logWarning("NATS connection closed; opening a new one")
      }
    })
    const supervisor = yield* Effect.forkScoped(reconnectLoop)

    yield* Effect.addFinalizer(() =>
      Effect.gen(function*() {
        closing = true
        const nc = current
        if (nc !== undefined && !nc.isClosed()) {
          yield* Effect.promise(() => nc.drain().catch(() => undefined)).pipe(
            Effect.timeoutOption("2 seconds"),
            Effect.andThen(Effect.promise(() => nc.close().catch(() => undefined)))
          )
        }
        yield* Fiber.interrupt(supervisor)
      })
    )

    return {
      servers: typeof options.servers === "string" ? [options.servers] : [...(options.servers ?? [])],
      connection: () => current,
      isConnected: () => connectedNow && current !== undefined && !current.isClosed(),
      problem: () => problem,
      connected: Deferred.await(first),
      replace: () => {
        const nc = current
        if (nc !== undefined && !nc.isClosed()) nc.reconnect().catch(() => undefined)
      }
    } satisfies NatsLink
  })
