/**
 * The JetStream stream the sink publishes into: found at start (a stream that already exists
 * is used as it is), or created when `NATS_STREAM_CREATE=true` (subjects `devices.>`, storage,
 * duplicate window and replicas from the configuration). A missing stream without creation,
 * JetStream switched off, or a stream that cannot be created is a {@link NatsStartError};
 * a server that does not answer yet is a {@link StreamCheckPending} (wait and check again).
 * Also: which subjects the stream takes ({@link streamTakes}), so that "no responders" can be
 * told apart (no stream for the subject: permanent; the stream's leader away: transient).
 */
import { type JetStreamManager, type StreamInfo, StorageType } from "@nats-io/jetstream"
import { nanos } from "@nats-io/transport-node"
import { Data, Effect } from "effect"
import type { SinkFailure } from "../Contract.ts"
import { classifyNatsError, JsCode } from "./NatsClassifier.ts"
import { SUBJECT_PREFIX } from "./NatsMessage.ts"
import type { NatsSettings } from "./NatsSettings.ts"
import { NatsStartError } from "./NatsStartError.ts"

/** What the sink knows of its stream. */
export interface StreamFacts {
  readonly name: string
  readonly subjects: ReadonlyArray<string>
  readonly duplicateWindowMs: number
  readonly replicas: number
  readonly storage: "file" | "memory"
  /** True when this start created it. */
  readonly created: boolean
  /** What an operator should know (a duplicate window shorter than configured, subjects not taken). */
  readonly warnings: ReadonlyArray<string>
}

/** The stream could not be checked now (server away, JetStream starting, a timeout): check again later. */
export class StreamCheckPending extends Data.TaggedError("StreamCheckPending")<{
  readonly failure: SinkFailure
  readonly message: string
}> {}

/** True when the subject `pattern` (with `*` and `>` wildcards) matches the literal `subject`. */
export const subjectMatches = (pattern: string, subject: string): boolean => {
  const p = pattern.split(".")
  const s = subject.split(".")
  for (let i = 0; i < p.length; i++) {
    const token = p[i]
    if (token === ">") return s.length > i
    if (i >= s.length) return false
    if (token !== "*" && token !== s[i]) return false
  }
  return p.length === s.length
}

/** True when one of the stream's subjects takes `subject`. */
export const streamTakes = (subjects: ReadonlyArray<string>, subject: string): boolean =>
  subjects.some((pattern) => subjectMatches(pattern, subject))

const apiCode = (error: unknown): number | undefined => {
  let e: unknown = error
  for (let i = 0; i < 6 && e instanceof Error; i++) {
    if ("code" in e && typeof e.code === "number" && e.code >= 10000) return e.code
    e = e.cause
  }
  return undefined
}

/** What the sink keeps of a stream's info (and the warnings it deserves against the settings). */
export const streamFactsOf = (info: StreamInfo, settings: NatsSettings, created: boolean): StreamFacts => {
  const subjects = info.config.subjects ?? []
  const duplicateWindowMs = Math.round((info.config.duplicate_window ?? 0) / 1_000_000)
  const warnings: Array<string> = []
  if (duplicateWindowMs < settings.duplicateWindowMs) {
    warnings.push(
      `stream ${info.config.name} has a duplicate window of ${duplicateWindowMs} ms, shorter than NATS_DUPLICATE_WINDOW_MS ` +
        `(${settings.duplicateWindowMs} ms): a message resent later than that is stored twice`
    )
  }
  for (const kind of ["telemetry", "event"]) {
    const sample = `${SUBJECT_PREFIX}.${kind}.x`
    if (!streamTakes(subjects, sample)) {
      warnings.push(`stream ${info.config.name} does not take ${SUBJECT_PREFIX}.${kind}.* (subjects ${subjects.join(", ")}): those messages are rejected`)
    }
  }
  if (info.config.num_replicas < settings.replicas && created) {
    warnings.push(`stream ${info.config.name} was created with ${info.config.num_replicas} replica(s), not NATS_REPLICAS=${settings.replicas} (a server not in a cluster keeps one)`)
  }
  if (info.config.storage === StorageType.Memory) {
    warnings.push(`stream ${info.config.name} keeps messages in memory: they do not survive a restart of the server`)
  }
  return {
    name: info.config.name,
    subjects,
    duplicateWindowMs,
    replicas: info.config.num_replicas,
    storage: info.config.storage === StorageType.Memory ? "memory" : "file",
    created,
    warnings
  }
}

/** API errors at start that only mean "not now" (the others are answers: a configuration to fix). */
const TRANSIENT_API_CODES: ReadonlySet<number> = new Set([
  JsCode.ClusterNotAvailable, JsCode.ClusterNotLeader, JsCode.InsufficientResources, JsCode.StreamOffline, JsCode.TooManyRequests
])

/** A failure of a JetStream API call at start: a start failure, or pending when a retry may help. */
const startFailure = (error: unknown, variable: string, what: string): NatsStartError | StreamCheckPending => {
  const c = classifyNatsError(error)
  const code = apiCode(error)
  // an API error is an answer about the stream (a bad configuration) unless it says "not now"
  const notNow = code === undefined
    ? c.outcome === "unavailable" && c.failure !== "misconfigured" && c.failure !== "unknown"
    : TRANSIENT_API_CODES.has(code)
  if (notNow) return new StreamCheckPending({ failure: c.outcome === "unavailable" ? c.failure : "unavailable", message: `${what}: ${c.message}` })
  const blame = code === JsCode.NotEnabled || code === JsCode.NotEnabledForAccount
    ? "NATS_URL"
    : /permission/i.test(c.message) ? "NATS_CREDS" : variable
  return new NatsStartError({ variable: blame, reason: "misconfigured", message: `${what}: ${c.message}`, cause: error })
}

/** The stream's configuration for `NATS_STREAM_CREATE=true`. */
export const streamConfigOf = (settings: NatsSettings) => ({
  name: settings.stream,
  subjects: [`${SUBJECT_PREFIX}.>`],
  storage: settings.storage === "memory" ? StorageType.Memory : StorageType.File,
  duplicate_window: nanos(settings.duplicateWindowMs),
  num_replicas: settings.replicas
})

/**
 * Finds the stream (creating it when configured to); fails with a {@link NatsStartError} when a
 * retry cannot help, {@link StreamCheckPending} when it can.
 */
export const ensureStream = (
  jsm: JetStreamManager,
  settings: NatsSettings
): Effect.Effect<StreamFacts, NatsStartError | StreamCheckPending> =>
  Effect.tryPromise({
    try: () => jsm.streams.info(settings.stream),
    catch: (e) => e
  }).pipe(
    Effect.map((info) => streamFactsOf(info, settings, false)),
    Effect.catch((error: unknown): Effect.Effect<StreamFacts, NatsStartError | StreamCheckPending> => {
      if (apiCode(error) !== JsCode.StreamNotFound) {
        return Effect.fail(startFailure(error, "NATS_STREAM", `stream ${settings.stream} cannot be read`))
      }
      if (!settings.createStream) {
        return Effect.fail(new NatsStartError({
          variable: "NATS_STREAM",
          reason: "misconfigured",
          message: `stream ${settings.stream} does not exist on the server (create it, or set NATS_STREAM_CREATE=true)`,
          cause: error
        }))
      }
      return Effect.tryPromise({ try: () => jsm.streams.add(streamConfigOf(settings)), catch: (e) => e }).pipe(
        Effect.map((info) => streamFactsOf(info, settings, true)),
        Effect.catch((e: unknown) =>
          apiCode(e) === 10058 // created meanwhile by another gateway: use it
            ? Effect.tryPromise({ try: () => jsm.streams.info(settings.stream), catch: (x) => x }).pipe(
              Effect.map((info) => streamFactsOf(info, settings, false)),
              Effect.mapError((x) => startFailure(x, "NATS_STREAM", `stream ${settings.stream} cannot be read`))
            )
            : Effect.fail(startFailure(e, apiCode(e) === 10074 ? "NATS_REPLICAS" : "NATS_STREAM_CREATE", `stream ${settings.stream} cannot be created`))
        )
      )
    })
  )
