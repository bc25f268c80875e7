/**
 * Example stage that needs a service: enriches every message with what the fleet inventory
 * knows about its device (`metadata`: site, model, … or null for a device the inventory does
 * not know). The inventory is the {@link DeviceDirectory} service, provided by a Layer (an HTTP
 * inventory API, or a JSON file); the stage keeps a bounded LRU cache with a TTL in front of it
 * and asks only for the devices of a chunk that it misses, in one lookup per chunk.
 *
 * When the inventory cannot answer (an error, or no answer within `lookupTimeoutMs`), devices
 * in the cache go on with their record, even an expired one; the others are passed on with
 * `metadata: null` (`onLookupFailure: "pass"`, the default: ingestion does not stop because
 * enrichment is down) or nacked `unavailable` (`"reject"`), and for `retryAfterMs` misses are not
 * looked up at all, so an outage does not slow every batch by the lookup timeout.
 */
import { Clock, Context, Effect, Layer, Schema } from "effect"
import { jsonProblem, readJsonFile } from "../config/JsonFile.ts"
import type { Envelope } from "../domain/Envelope.ts"
import { TransientUpstreamError } from "../domain/Errors.ts"
import * as Stage from "../pipeline/Stage.ts"

/** What the inventory knows about one device. */
export const DeviceInfo = Schema.Record(Schema.String, Schema.String)
export type DeviceInfo = typeof DeviceInfo.Type


/** The device inventory. */
export interface DeviceDirectoryShape {
  /** The known devices among `ids`; unknown ids are absent from the answer. */
  readonly lookup: (ids: ReadonlyArray<string>) => Effect.Effect<ReadonlyMap<string, DeviceInfo>, TransientUpstreamError>
}

/** Ids per inventory request at most. */
const IDS_PER_REQUEST = 100
/** Longest query string per request (ids percent-encoded): well under common 8 KB header limits. */
const MAX_QUERY_CHARS = 4_000

/** The device inventory service. */
export class DeviceDirectory extends Context.Service<DeviceDirectory, DeviceDirectoryShape>()("gateway/DeviceDirectory") {
  /**
   * An inventory HTTP API: `GET <url>?ids=<id>,<id>…` answers a JSON object
   * `{ "<id>": { "<key>": "<value>", … }, … }` with the devices it knows. Ids are sent in
   * requests of at most 100 ids and 4,000 query characters, four at a time. A record that is not
   * an object of strings is skipped (that device counts as unknown).
   */
  static http(options: { readonly url: string; readonly timeoutMs?: number }): Layer.Layer<DeviceDirectory> {
    const timeoutMs = options.timeoutMs ?? 2_000
    const fetchSome = (ids: ReadonlyArray<string>) =>
      Effect.tryPromise({
        try: async (signal) => {
          const url = new URL(options.url)
          url.searchParams.set("ids", ids.join(","))
          const response = await fetch(url, { signal: AbortSignal.any([signal, AbortSignal.timeout(timeoutMs)]) })
          if (!response.ok) throw new Error(`HTTP ${response.status}`)
          const text = await response.text()
          try {
            return JSON.parse(text) as unknown
          } catch (error) {
            // V8's message quotes the answer's first bytes: the log gets what is wrong, not what was sent
            throw new Error(`answer is not JSON (${jsonProblem(error)})`)
          }
        },
        catch: (cause) =>
          new TransientUpstreamError({ sink: "device inventory", message: cause instanceof Error ? cause.message : String(cause), cause })
      }).pipe(Effect.flatMap(parse))
    return Layer.succeed(
      DeviceDirectory,
      DeviceDirectory.of({
        lookup: (ids) =>
          Effect.forEach(requests(ids), fetchSome, { concurrency: 4 }).pipe(
            Effect.map((answers) => new Map(answers.flatMap((a) => [...a])))
          )
      })
    )
  }

  /**
   * A JSON file `{ "<id>": { … }, … }`, read once when the layer is built: a regular file of at
   * most 64 MiB (a FIFO or a device is refused at once rather than blocking the start). An error
   * names the file and the problem, never the file's contents (the line goes to the log).
   */
  static file(path: string): Layer.Layer<DeviceDirectory, TransientUpstreamError> {
    return Layer.effect(
      DeviceDirectory,
      readJsonFile(path, MAX_INVENTORY_FILE_BYTES).pipe(
        Effect.mapError((message) => new TransientUpstreamError({ sink: "device inventory", message })),
        Effect.flatMap((json) => parse(json, path)),
        Effect.map((known) => DeviceDirectory.of({ lookup: (ids) => Effect.succeed(pickKnown(known, ids)) }))
      )
    )
  }
}

/** The largest inventory file read (about 300,000 devices of a few fields). */
const MAX_INVENTORY_FILE_BYTES = 64 * 1024 * 1024

const decodeInfo = Schema.decodeUnknownResult(DeviceInfo)

/** The records of an inventory answer (or of `file`); a record of the wrong shape is left out. */
const parse = (json: unknown, file?: string): Effect.Effect<ReadonlyMap<string, DeviceInfo>, TransientUpstreamError> => {
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    const message = file === undefined ? "unexpected answer: not a JSON object" : `${file}: not a JSON object of device records`
    return Effect.fail(new TransientUpstreamError({ sink: "device inventory", message }))
  }
  const known = new Map<string, DeviceInfo>()
  let skipped = 0
  for (const [id, record] of Object.entries(json)) {
    const info = decodeInfo(record)
    if (info._tag === "Success") known.set(id, info.success)
    else skipped++
  }
  return skipped === 0
    ? Effect.succeed(known)
    : Effect.as(
      Effect.logWarning("device inventory records skipped: not objects of strings").pipe(Effect.annotateLogs({ skipped })),
      known
    )
}

const pickKnown = (known: ReadonlyMap<string, DeviceInfo>, ids: ReadonlyArray<string>) => {
  const out = new Map<string, DeviceInfo>()
  for (const id of ids) {
    const info = known.get(id)
    if (info !== undefined) out.set(id, info)
  }
  return out
}

/** Ids grouped into requests: at most IDS_PER_REQUEST each and MAX_QUERY_CHARS once encoded. */
const requests = (ids: ReadonlyArray<string>): Array<ReadonlyArray<string>> => {
  const out: Array<Array<string>> = []
  let current: Array<string> = []
  let chars = 0
  for (const id of ids) {
    const length = encodeURIComponent(id).length + 3 // the comma between ids, encoded
    if (current.length > 0 && (current.length >= IDS_PER_REQUEST || chars + length > MAX_QUERY_CHARS)) {
      out.push(current)
      current = []
      chars = 0
    }
    current.push(id)
    chars += length
  }
  if (current.length > 0) out.push(current)
  return out
}

/** The stage's options. */
export const Options = Schema.Struct({
  /** Devices cached at most (least recently used evicted first). */
  capacity: Schema.optionalKey(Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 10_000_000 }))),
  /** How long an answer (including "unknown device") is trusted, ms. */
  ttlMs: Schema.optionalKey(Schema.Int.check(Schema.isGreaterThanOrEqualTo(0))),
  /** When the inventory cannot answer: pass on with `metadata: null`, or nack `unavailable`. */
  onLookupFailure: Schema.optionalKey(Schema.Literals(["pass", "reject"])),
  /** How long the lookups of one chunk may take in all, ms; answers that came in time are kept. */
  lookupTimeoutMs: Schema.optionalKey(Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 60_000 }))),
  /** After a failed lookup, how long misses are not looked up at all (the inventory recovers), ms. */
  retryAfterMs: Schema.optionalKey(Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 3_600_000 })))
})
export type Options = typeof Options.Type

/** An envelope with its device's inventory record (null when the inventory does not know it). */
export type WithMetadata<E extends Envelope = Envelope> = E & { readonly metadata: DeviceInfo | null }

interface Cached {
  readonly info: DeviceInfo | null
  readonly until: number
}

/**
 * A bounded LRU cache with a TTL (a Map keeps insertion order: the first key is the least
 * recent). Expired entries stay until evicted, as a fallback while the inventory is down.
 */
export class InfoCache {
  private readonly entries = new Map<string, Cached>()
  readonly capacity: number
  readonly ttlMs: number

  constructor(capacity: number, ttlMs: number) {
    this.capacity = capacity
    this.ttlMs = ttlMs
  }

  /** The fresh record of `id` (null: known to be unknown), or undefined on a miss or when expired. */
  get(id: string, now: number): Cached | undefined {
    const hit = this.entries.get(id)
    if (hit === undefined || hit.until <= now) return undefined
    this.entries.delete(id)
    this.entries.set(id, hit)
    return hit
  }

  /** The record of `id` even if expired (the fallback when the inventory cannot answer). */
  stale(id: string): Cached | undefined {
    return this.entries.get(id)
  }

  /** Caches the answer for `id`, evicting the least recently used entry when full. */
  set(id: string, info: DeviceInfo | null, now: number): void {
    this.entries.delete(id)
    if (this.entries.size >= this.capacity) this.entries.delete(this.entries.keys().next().value!)
    this.entries.set(id, { info, until: now + this.ttlMs })
  }

  /** Entries held, fresh or expired (at most `capacity`). */
  get size(): number {
    return this.entries.size
  }
}

/**
 * Adds `metadata` from the {@link DeviceDirectory} to every message. Generic in what it
 * receives, so fields added by earlier stages stay in the type: `deviceMetadata<WithAlerts>()`.
 */
export const deviceMetadata = <A extends Envelope = Envelope>(
  options: Options = {}
): Stage.Stage<A, WithMetadata<A>, TransientUpstreamError, DeviceDirectory> =>
  Stage.unwrap(
    Effect.gen(function*() {
      const directory = yield* DeviceDirectory
      const cache = new InfoCache(options.capacity ?? 100_000, options.ttlMs ?? 60_000)
      const reject = options.onLookupFailure === "reject"
      const lookupTimeoutMs = options.lookupTimeoutMs ?? 3_000
      const retryAfterMs = options.retryAfterMs ?? 5_000
      let downUntil = 0
      return Stage.chunk("device-metadata", (chunk: ReadonlyArray<A>) =>
        Effect.gen(function*() {
          const now = yield* Clock.currentTimeMillis
          const known = new Map<string, DeviceInfo | null>()
          const missing = new Set<string>()
          for (const e of chunk) {
            if (known.has(e.device) || missing.has(e.device)) continue
            const hit = cache.get(e.device, now)
            if (hit === undefined) missing.add(e.device)
            else known.set(e.device, hit.info)
          }
          let failure: TransientUpstreamError | undefined
          if (missing.size > 0 && now < downUntil) {
            failure = new TransientUpstreamError({ sink: "device inventory", message: "unavailable: lookups paused after a failure" })
          } else if (missing.size > 0) {
            // each group is cached as it answers: a slow or failing group costs only its devices
            const lookups = Effect.forEach(
              groupsOf([...missing], LOOKUP_GROUP),
              (ids) =>
                directory.lookup(ids).pipe(
                  Effect.tap((answer) =>
                    Effect.map(Clock.currentTimeMillis, (answeredAt) => {
                      for (const id of ids) {
                        const info = answer.get(id) ?? null
                        cache.set(id, info, answeredAt) // the TTL counts from the answer
                        known.set(id, info)
                      }
                    })
                  ),
                  Effect.catch((e) => Effect.sync(() => (failure ??= e)))
                ),
              { concurrency: 4, discard: true }
            )
            const finished = yield* Effect.timeoutOption(lookups, lookupTimeoutMs)
            if (finished._tag === "None") {
              failure ??= new TransientUpstreamError({ sink: "device inventory", message: `no answer within ${lookupTimeoutMs} ms` })
            }
            // the pause counts from the failure, not from the chunk's start
            if (failure !== undefined) downUntil = (yield* Clock.currentTimeMillis) + retryAfterMs
          }
          if (failure !== undefined) {
            let unanswered = 0
            for (const id of missing) {
              if (known.has(id)) continue
              const stale = cache.stale(id)
              if (stale !== undefined) known.set(id, stale.info) // an expired answer beats none
              else unanswered++
            }
            if (unanswered > 0) {
              yield* Effect.logWarning("device inventory lookup failed").pipe(
                Effect.annotateLogs({ devices: unanswered, error: failure.message, onLookupFailure: reject ? "reject" : "pass" })
              )
            }
          }
          return chunk.map((e): Stage.Verdict<WithMetadata<A>, TransientUpstreamError> => {
            const info = known.get(e.device)
            if (info !== undefined) return { ...e, metadata: info }
            return reject && failure !== undefined ? Stage.reject(failure) : { ...e, metadata: null }
          })
        }), { timeoutMs: lookupTimeoutMs + 1_000 }) // it bounds its lookups itself; the margin is for the rest
    })
  )

/** Devices per lookup call (each cached as it answers). */
const LOOKUP_GROUP = 100

const groupsOf = <T>(items: ReadonlyArray<T>, size: number): Array<ReadonlyArray<T>> => {
  const out: Array<ReadonlyArray<T>> = []
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size))
  return out
}
