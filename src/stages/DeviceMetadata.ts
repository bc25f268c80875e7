/**
 * Example stage that needs a service: enriches every message with what the fleet inventory
 * knows about its device (`metadata`: site, model, … or null for a device the inventory does
 * not know). The inventory is the {@link DeviceDirectory} service, provided by a Layer (an HTTP
 * inventory API, or a JSON file); the stage keeps a bounded LRU cache with a TTL in front of it
 * and asks only for the devices of a chunk that it misses, in one lookup per chunk.
 *
 * When the inventory cannot answer, messages of devices still in the cache go on; the others are
 * passed on with `metadata: null` (`onLookupFailure: "pass"`, the default: ingestion does not
 * stop because enrichment is down) or nacked `unavailable` (`"reject"`).
 */
import { Clock, Context, Effect, Layer, Schema } from "effect"
import * as Fs from "node:fs/promises"
import type { Envelope } from "../domain/Envelope.ts"
import { TransientUpstreamError } from "../domain/Errors.ts"
import * as Stage from "../pipeline/Stage.ts"

/** What the inventory knows about one device. */
export const DeviceInfo = Schema.Record(Schema.String, Schema.String)
export type DeviceInfo = typeof DeviceInfo.Type

const Inventory = Schema.Record(Schema.String, DeviceInfo)
const decodeInventory = Schema.decodeUnknownResult(Inventory)

/** The device inventory. */
export interface DeviceDirectoryShape {
  /** The known devices among `ids`; unknown ids are absent from the answer. */
  readonly lookup: (ids: ReadonlyArray<string>) => Effect.Effect<ReadonlyMap<string, DeviceInfo>, TransientUpstreamError>
}

/** Ids per inventory request (keeps URLs short). */
const IDS_PER_REQUEST = 100

/** The device inventory service. */
export class DeviceDirectory extends Context.Service<DeviceDirectory, DeviceDirectoryShape>()("gateway/DeviceDirectory") {
  /**
   * An inventory HTTP API: `GET <url>?ids=<id>,<id>…` answers a JSON object
   * `{ "<id>": { "<key>": "<value>", … }, … }` with the devices it knows.
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
          return (await response.json()) as unknown
        },
        catch: (cause) =>
          new TransientUpstreamError({ sink: "device inventory", message: cause instanceof Error ? cause.message : String(cause), cause })
      }).pipe(Effect.flatMap(parse))
    return Layer.succeed(
      DeviceDirectory,
      DeviceDirectory.of({
        lookup: (ids) =>
          Effect.forEach(groups(ids, IDS_PER_REQUEST), fetchSome, { concurrency: 4 }).pipe(
            Effect.map((answers) => new Map(answers.flatMap((a) => [...a])))
          )
      })
    )
  }

  /** A JSON file `{ "<id>": { … }, … }`, read once when the layer is built. */
  static file(path: string): Layer.Layer<DeviceDirectory, TransientUpstreamError> {
    return Layer.effect(
      DeviceDirectory,
      Effect.tryPromise({
        try: () => Fs.readFile(path, "utf8").then((text) => JSON.parse(text) as unknown),
        catch: (cause) => new TransientUpstreamError({ sink: "device inventory", message: `cannot read ${path}: ${String(cause)}`, cause })
      }).pipe(
        Effect.flatMap(parse),
        Effect.map((known) => DeviceDirectory.of({ lookup: (ids) => Effect.succeed(pickKnown(known, ids)) }))
      )
    )
  }
}

const parse = (json: unknown) => {
  const decoded = decodeInventory(json)
  return decoded._tag === "Success"
    ? Effect.succeed(new Map(Object.entries(decoded.success)) as ReadonlyMap<string, DeviceInfo>)
    : Effect.fail(new TransientUpstreamError({ sink: "device inventory", message: `unexpected answer: ${decoded.failure.message}` }))
}

const pickKnown = (known: ReadonlyMap<string, DeviceInfo>, ids: ReadonlyArray<string>) => {
  const out = new Map<string, DeviceInfo>()
  for (const id of ids) {
    const info = known.get(id)
    if (info !== undefined) out.set(id, info)
  }
  return out
}

const groups = <A>(items: ReadonlyArray<A>, size: number): Array<ReadonlyArray<A>> => {
  const out: Array<ReadonlyArray<A>> = []
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size))
  return out
}

/** The stage's options. */
export const Options = Schema.Struct({
  /** Devices cached at most (least recently used evicted first). */
  capacity: Schema.optionalKey(Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 10_000_000 }))),
  /** How long an answer (including "unknown device") is trusted, ms. */
  ttlMs: Schema.optionalKey(Schema.Int.check(Schema.isGreaterThanOrEqualTo(0))),
  /** When the inventory cannot answer: pass on with `metadata: null`, or nack `unavailable`. */
  onLookupFailure: Schema.optionalKey(Schema.Literals(["pass", "reject"]))
})
export type Options = typeof Options.Type

/** An envelope with its device's inventory record (null when the inventory does not know it). */
export type WithMetadata<E extends Envelope = Envelope> = E & { readonly metadata: DeviceInfo | null }

interface Cached {
  readonly info: DeviceInfo | null
  readonly until: number
}

/** A bounded LRU cache with a TTL (a Map keeps insertion order: the first key is the least recent). */
export class InfoCache {
  private readonly entries = new Map<string, Cached>()
  readonly capacity: number
  readonly ttlMs: number

  constructor(capacity: number, ttlMs: number) {
    this.capacity = capacity
    this.ttlMs = ttlMs
  }

  /** The cached record of `id` (null: known to be unknown), or undefined on a miss or when expired. */
  get(id: string, now: number): Cached | undefined {
    const hit = this.entries.get(id)
    if (hit === undefined) return undefined
    this.entries.delete(id)
    if (hit.until <= now) return undefined
    this.entries.set(id, hit)
    return hit
  }

  /** Caches the answer for `id`, evicting the least recently used entry when full. */
  set(id: string, info: DeviceInfo | null, now: number): void {
    this.entries.delete(id)
    if (this.entries.size >= this.capacity) this.entries.delete(this.entries.keys().next().value!)
    this.entries.set(id, { info, until: now + this.ttlMs })
  }

  /** Entries held (at most `capacity`). */
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
      return Stage.chunk("device-metadata", (chunk: ReadonlyArray<A>) =>
        Effect.gen(function*() {
          const now = yield* Clock.currentTimeMillis
          const known = new Map<string, DeviceInfo | null>()
          const missingSet = new Set<string>()
          for (const e of chunk) {
            if (known.has(e.device) || missingSet.has(e.device)) continue
            const hit = cache.get(e.device, now)
            if (hit === undefined) missingSet.add(e.device)
            else known.set(e.device, hit.info)
          }
          const missing = [...missingSet]
          let failure: TransientUpstreamError | undefined
          if (missing.length > 0) {
            const answer = yield* Effect.result(directory.lookup(missing))
            if (answer._tag === "Success") {
              for (const id of missing) {
                const info = answer.success.get(id) ?? null
                cache.set(id, info, now)
                known.set(id, info)
              }
            } else {
              failure = answer.failure
              yield* Effect.logWarning("device inventory lookup failed").pipe(
                Effect.annotateLogs({ devices: missing.length, error: failure.message, onLookupFailure: reject ? "reject" : "pass" })
              )
            }
          }
          return chunk.map((e): Stage.Verdict<WithMetadata<A>, TransientUpstreamError> => {
            const info = known.get(e.device)
            if (info !== undefined) return { ...e, metadata: info }
            return reject && failure !== undefined ? Stage.reject(failure) : { ...e, metadata: null }
          })
        }))
    })
  )
