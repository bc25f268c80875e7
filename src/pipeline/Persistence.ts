/**
 * The persistence loop: takes critical work first, batches by size (`GATEWAY_BATCH_MAX` messages,
 * `GATEWAY_BATCH_MAX_BYTES` of frames) or
 * linger (`GATEWAY_BATCH_LINGER_MS`), runs each batch through the pipeline (your stages, then
 * the commit stage that writes it to the sink), then answers every message of the batch on its
 * own connection, in send order: an ack once committed, the nack of its error class when a stage
 * or the store rejected it. It marks commits in the dedup windows. On shutdown it keeps
 * committing until the lanes are empty or the drain deadline passes.
 */
import { Cause, Effect, Exit, Fiber, Layer, Semaphore, type Tracer } from "effect"
import { GatewayConfig } from "../config/GatewayConfig.ts"
import { Lifecycle } from "../Lifecycle.ts"
import * as Metrics from "../observability/Metrics.ts"
import { MessageTracer } from "../observability/Tracing.ts"
import { type DeadLetter, DeadLetters } from "../sinks/DeadLetters.ts"
import { Router } from "../sinks/routing/Router.ts"
import type { Envelope } from "../domain/Envelope.ts"
import { PermanentPersistenceError } from "../domain/Errors.ts"
import { nackFrame } from "../domain/Frames.ts"
import { answerOf, Tally, UNAVAILABLE_RETRY_AFTER_MS } from "./Answer.ts"
import { commit, COMMIT } from "./Commit.ts"
import { Dedup } from "./Dedup.ts"
import { type InFlight, Lanes, type Replier } from "./Lanes.ts"
import { Pipeline, PipelineError } from "./Pipeline.ts"
import * as Stage from "./Stage.ts"

/** The persistence loop as a layer: a scoped fiber that lives as long as the gateway. */
export const layer = Layer.effectDiscard(Effect.gen(function*() {
  const config = yield* GatewayConfig
  const lanes = yield* Lanes
  const dedup = yield* Dedup
  const lifecycle = yield* Lifecycle
  const tracer = yield* MessageTracer
  const stages = yield* Pipeline
  const router = yield* Router
  const deadLetters = yield* DeadLetters
  const user = yield* Stage.build(stages, { spans: tracer.enabled })
  const taken = user.names.filter((name) => RESERVED.has(name))
  if (taken.length > 0) {
    return yield* new PipelineError({ message: `user stages may not be named ${taken.join(", ")}: the gateway's own stages are` })
  }
  const committer = yield* Stage.build(commit, { spans: tracer.enabled })
  yield* Effect.logInfo("pipeline").pipe(
    Effect.annotateLogs({ ingest: ["validate", "dedup"], stages: [...user.names, ...committer.names] })
  )

  const answer = (batch: ReadonlyArray<InFlight>, ends: Ends) => {
    const now = performance.now()
    const dirty = new Set<Replier>()
    const tally = new Tally()
    dedup.beginBatch()
    for (let j = 0; j < ends.stops.length; j++) {
      const item = batch[ends.at[j]!]!
      const e = item.envelope
      const stop = ends.stops[j]!
      const { frame, outcome } = answerOf(e.seq, stop, e.kind)
      if (outcome === "committed" || outcome === "duplicate") {
        dedup.markCommitted(e.device, e.epoch, e.seq)
        Metrics.record(Metrics.commitLatencyMs, now - item.arrivedAt)
      }
      item.replier.resolve(item.ticket, frame)
      dirty.add(item.replier)
      item.span?.finish(outcome, now)
      tally.add(e.kind, outcome)
      tally.addError(stop)
    }
    for (const r of dirty) r.flush()
    tally.record()
    Metrics.record(Metrics.dedupDevices, dedup.deviceCount)
  }

  /** The last resort when a batch could not be answered normally: every message nacked unavailable. */
  const answerUnavailable = (batch: ReadonlyArray<InFlight>, why: string) => {
    const dirty = new Set<Replier>()
    for (const item of batch) {
      item.replier.resolve(item.ticket, nackFrame(item.envelope.seq, "unavailable", why, UNAVAILABLE_RETRY_AFTER_MS))
      dirty.add(item.replier)
      item.span?.finish("unavailable")
      Metrics.record(Metrics.messages(item.envelope.kind, "unavailable"), 1)
    }
    for (const r of dirty) r.flush()
  }

  /** Stores what a stage refused for good before those messages are nacked (best effort). */
  const keepDeadLetters = (batch: ReadonlyArray<InFlight>, ends: Ends) => {
    const letters = deadLettersOf(batch, ends)
    if (letters.length === 0) return Effect.void
    return deadLetters.write(letters).pipe(
      Effect.catchCause((cause) =>
        Effect.logWarning("dead letters not stored").pipe(
          Effect.annotateLogs({ count: letters.length, error: Cause.pretty(cause) })
        )
      )
    )
  }

  /** Your stages and the guards: where the messages they stopped ended, and the others by route. */
  const runStages = (batch: ReadonlyArray<InFlight>) =>
    Effect.gen(function*() {
      const first = yield* user.run(batch.map((i) => i.envelope))
      const ends: Ends = { stops: [...first.stops], at: [...first.stoppedAt], by: [...first.stoppedBy] }
      const routes = new Map<number, Group>()
      for (let i = 0; i < first.passed.length; i++) {
        const at = first.passedAt === undefined ? i : first.passedAt[i]!
        const e = first.passed[i]!
        const entered = batch[at]!
        if (!sameKey(e, entered.envelope)) {
          ends.stops.push(new Stage.Rejected(new Stage.StageDefect({ stage: GUARD, message: KEY_CHANGED, cause: undefined })))
          ends.at.push(at)
          ends.by.push(GUARD)
          continue
        }
        const unstorable = unstorableOf(e, entered)
        if (unstorable !== undefined) {
          ends.stops.push(new Stage.Rejected(new PermanentPersistenceError({ sink: router.names, message: unstorable })))
          ends.at.push(at)
          ends.by.push(GUARD)
          continue
        }
        const route = router.table.routeOf(e)
        let group = routes.get(route)
        if (group === undefined) routes.set(route, group = { envelopes: [], at: [] })
        group.envelopes.push(e)
        group.at.push(at)
      }
      return { ends, groups: [...routes.values()] }
    })

  /** One route's messages through `commit`: where they ended, by their positions in the batch. */
  const commitGroup = (group: Group) =>
    Effect.map(committer.run(group.envelopes), (second): Ends => {
      const ends: Ends = { stops: [], at: [], by: [] }
      for (let j = 0; j < second.stops.length; j++) {
        ends.stops.push(second.stops[j]!)
        ends.at.push(group.at[second.stoppedAt[j]!]!)
        ends.by.push(second.stoppedBy[j]!)
      }
      return ends
    })

  // Each route's messages are answered as soon as its sinks are done: a slow sink delays only
  // the messages routed to it.
  const runBatch = (batch: ReadonlyArray<InFlight>) => {
    const answered = new Uint8Array(batch.length)
    const settle = (ends: Ends) =>
      Effect.gen(function*() {
        yield* logDefects(ends)
        yield* logUnstorable(batch, ends)
        yield* keepDeadLetters(batch, ends)
        answer(batch, ends)
        for (const at of ends.at) answered[at] = 1
      })
    const run = Effect.gen(function*() {
      const { ends, groups } = yield* runStages(batch)
      yield* settle(ends)
      yield* Effect.forEach(groups, (group) => Effect.flatMap(commitGroup(group), settle), {
        concurrency: "unbounded",
        discard: true
      })
    }).pipe(
      // whatever went wrong, no message of the batch is left without an answer
      Effect.onExit((exit) => {
        const left = batch.filter((_, i) => answered[i] === 0)
        return left.length === 0 ? Effect.void : Effect.andThen(
          Effect.sync(() => answerUnavailable(left, "gateway could not process the message")),
          Effect.logError("batch failed without answers; nacked unavailable").pipe(
            Effect.annotateLogs({ size: left.length, cause: Exit.isFailure(exit) ? Cause.pretty(exit.cause) : "" })
          )
        )
      })
    )
    if (!tracer.enabled) return run
    const links: Array<Tracer.SpanLink> = []
    for (const item of batch) if (item.span !== undefined) links.push({ span: item.span, attributes: {} })
    // recorded only when it links a sampled message: a batch of unsampled messages costs no export
    return Effect.withSpan(run, "sink.batch", {
      kind: "client",
      links,
      sampled: links.length > 0,
      attributes: { "batch.size": batch.length },
      captureStackTrace: false // no Error (and stack) per batch
    })
  }

  // Up to `router.slots` batches are with the sinks at once: while a sink commits one, the next
  // is taken and sent, so it never idles waiting for the event loop (and with several sinks,
  // one that is slow holds only the slots its own queue can). Answers stay in send order per
  // connection whatever order batches complete in (OrderedAnswers).
  const slots = yield* Semaphore.make(router.slots)
  let closing = false
  const enough = Math.min(config.batchMax, GROUP_ENOUGH)
  /** A batch worth taking now: enough messages, or a lane half full (small lanes fill in an interval). */
  const worthTaking = () => lanes.size() >= enough || lanes.fill() >= 0.5
  /**
   * Waits out the rest of a batch interval, in steps of at most GATHER_STEP_MS, and no longer
   * once the drain has begun (the listener then waits for these very answers). Lanes small
   * enough to fill half within an interval are also watched at each arrival (the doorbell);
   * large ones are not (an arrival wakes nothing).
   */
  const smallLanes = Math.min(config.bulkQueue, config.criticalQueue) < 4 * enough
  const gather = (ms: number): Effect.Effect<void> =>
    Effect.gen(function*() {
      const until = performance.now() + ms
      let left = ms
      while (left > 0 && !closing && !lifecycle.isDraining() && !worthTaking()) {
        const step = Effect.sleep(Math.min(left, GATHER_STEP_MS))
        yield* smallLanes ? Effect.raceFirst(step, lanes.awaitWork) : step
        left = until - performance.now()
      }
    })
  /** When the last batch was taken (`performance.now()`). */
  let lastTake = -Infinity
  const loop = Effect.gen(function*() {
    while (true) {
      yield* Semaphore.take(slots, 1)
      while (lanes.size() === 0) {
        if (closing) return yield* Semaphore.take(slots, router.slots - 1) // wait for the batches in flight
        yield* lanes.awaitWork
      }
      // group commit: a batch follows the last one by GATEWAY_BATCH_INTERVAL_MS at the soonest,
      // unless GROUP_ENOUGH messages wait. Alone, a message is taken at once; under a fleet's load (a
      // frame per socket read) what arrives meanwhile is committed together, not in a transaction
      // (and a writer round trip, and the pipeline's work per batch) of its own
      const since = performance.now() - lastTake
      if (since < config.batchIntervalMs && !closing && !worthTaking()) yield* gather(config.batchIntervalMs - since)
      let batch = lanes.takeBatch(config.batchMax, config.batchMaxBytes)
      lastTake = performance.now()
      if (batch.length === 0) { // shed meanwhile (the lane's age or memory limit)
        yield* Semaphore.release(slots, 1)
        continue
      }
      if (batch.length < config.batchMax && config.batchLingerMs > 0 && !closing) {
        yield* Effect.sleep(config.batchLingerMs)
        let bytes = 0
        for (const item of batch) bytes += item.bytes
        if (bytes < config.batchMaxBytes) batch = batch.concat(lanes.takeBatch(config.batchMax - batch.length, config.batchMaxBytes - bytes))
      }
      yield* Effect.forkChild(Effect.ensuring(runBatch(batch), Semaphore.release(slots, 1)))
    }
  })

  const fiber = yield* Effect.forkScoped(loop)
  yield* Effect.addFinalizer(() =>
    Effect.gen(function*() {
      closing = true
      lanes.notify()
      const left = yield* lifecycle.remainingMs
      const exit = yield* Fiber.await(fiber).pipe(Effect.timeoutOption(left))
      if (exit._tag === "None") {
        lifecycle.markCut(`${lanes.size()} messages still queued for the sink`)
        yield* Fiber.interrupt(fiber)
      }
    })
  )
}))

/**
 * Messages waiting that make a batch worth taking at once, whatever the batch interval: under a
 * flood the lanes hold thousands and batches go back to back; the interval only gathers the
 * trickle of a fleet (measured: 1,000 devices at 10,000 msgs/s, ~11 messages a batch without it).
 */
const GROUP_ENOUGH = 256

/** The longest sleep of a batch interval's wait between looks at the drain and the lanes. */
const GATHER_STEP_MS = 25

/** Where the messages of a batch ended: `stops[j]` for `batch[at[j]]`, decided by stage `by[j]`. */
interface Ends {
  readonly stops: Array<Stage.Settled | Stage.Rejected<Stage.StageError | Stage.StageDefect>>
  readonly at: Array<number>
  readonly by: Array<string>
}

/** Messages of one route, and their positions in the batch. */
interface Group {
  readonly envelopes: Array<Envelope>
  readonly at: Array<number>
}

/** The checks between your stages and `commit` (the key guard, the nesting guard), as a stage name. */
const GUARD = "pipeline"

/** The gateway's own stage names. */
const RESERVED: ReadonlySet<string> = new Set(["validate", "dedup", COMMIT, GUARD])

const KEY_CHANGED =
  "a stage changed what it may not (device, epoch, seq, kind, gateway or traceparent), or passed on no envelope: not stored"

/**
 * True when a stage passed on an envelope with the key, kind, gateway and traceparent it entered
 * with (the gateway's own fields: stages add fields and change bodies, not identities).
 */
const sameKey = (e: Envelope, original: Envelope) =>
  typeof e === "object" && e !== null && e.seq === original.seq && e.device === original.device &&
  e.epoch === original.epoch && e.kind === original.kind && e.gateway === original.gateway &&
  e.traceparent === original.traceparent

/**
 * The messages a stage before `commit` refused for good (invalid, or refused like a store
 * would), as they entered the pipeline. The store dead-letters its own refusals itself.
 */
const deadLettersOf = (batch: ReadonlyArray<InFlight>, ends: Ends) => {
  const letters: Array<DeadLetter> = []
  for (let j = 0; j < ends.stops.length; j++) {
    const stop = ends.stops[j]!
    if (!(stop instanceof Stage.Rejected) || ends.by[j] === COMMIT) continue
    const tag = stop.error._tag
    if (tag !== "ValidationError" && tag !== "PermanentPersistenceError") continue
    const reason = ends.by[j] === GUARD ? stop.error.message : `stage ${ends.by[j]}: ${stop.error.message}`
    letters.push({ envelope: keepable(batch[ends.at[j]!]!.envelope), reason })
  }
  return letters
}

/** Logs the messages the nesting guard refused, once per batch: how many, the first one and why. */
const logUnstorable = (batch: ReadonlyArray<InFlight>, ends: Ends) =>
  Effect.suspend(() => {
    let count = 0
    let first: { readonly device: string; readonly seq: number; readonly why: string } | undefined
    for (let j = 0; j < ends.stops.length; j++) {
      const stop = ends.stops[j]!
      if (ends.by[j] !== GUARD || !(stop instanceof Stage.Rejected) || stop.error._tag !== "PermanentPersistenceError") continue
      count++
      const e = batch[ends.at[j]!]!.envelope
      first ??= { device: e.device, seq: e.seq, why: stop.error.message }
    }
    if (first === undefined) return Effect.void
    return Effect.logWarning(`message not stored: ${first.why}; nacked invalid, kept as a dead letter`).pipe(
      Effect.annotateLogs({ device: first.device, seq: first.seq, messages: count })
    )
  })

// ---- nesting: what JSON serializers can take ----

/**
 * How deep a message may nest objects and arrays, counting its body (or a field a stage added)
 * as level 1. JSON serializers and parsers recurse: V8's `JSON.stringify` overflows its stack
 * near 4,400 levels (less inside a deep call stack), and consumers have limits of their own
 * (serde_json 128, Python's json about 1,000). Deeper messages are refused before the store,
 * as the store refuses what JSON cannot hold: `nack invalid`, a dead letter, one log line.
 */
export const MAX_NESTING = 128

/** Characters of JSON text a dead letter keeps of a value too deep (or circular) to serialize whole. */
export const DEAD_LETTER_TEXT_CHARS = 4_096

type Fields = Readonly<Record<string, unknown>>

const isObject = (v: unknown): v is object => typeof v === "object" && v !== null

/**
 * True when `value` nests objects and arrays more than `max` levels deep (itself level 1). A
 * cycle is infinitely deep. Iterative, so it never overflows; it stops at the first path that
 * passes `max`.
 */
export const nestsDeeperThan = (value: unknown, max: number): boolean => {
  if (!isObject(value)) return false
  const stack: Array<object> = [value]
  const depths: Array<number> = [1]
  while (stack.length > 0) {
    const v = stack.pop()!
    const depth = depths.pop()!
    if (depth > max) return true
    if (Array.isArray(v)) {
      for (let i = 0; i < v.length; i++) {
        const child: unknown = v[i]
        if (isObject(child)) {
          stack.push(child)
          depths.push(depth + 1)
        }
      }
    } else {
      for (const key in v) {
        const child = (v as Fields)[key]
        if (isObject(child)) {
          stack.push(child)
          depths.push(depth + 1)
        }
      }
    }
  }
  return false
}

/** True when `value` contains itself (a path that comes back to an object on it). Iterative. */
const isCircular = (value: unknown): boolean => {
  if (!isObject(value)) return false
  const path: Array<{ readonly o: object; readonly children: ReadonlyArray<unknown>; i: number }> = []
  const onPath = new Set<object>()
  const enter = (o: object) => {
    onPath.add(o)
    path.push({ o, children: Array.isArray(o) ? o : Object.values(o), i: 0 })
  }
  enter(value)
  while (path.length > 0) {
    const top = path[path.length - 1]!
    if (top.i >= top.children.length) {
      onPath.delete(top.o)
      path.pop()
      continue
    }
    const child = top.children[top.i++]
    if (!isObject(child)) continue
    if (onPath.has(child)) return true
    enter(child)
  }
  return false
}

/** The envelope's fields that are not the normalized envelope's own (added by stages). */
const HEADER: ReadonlySet<string> = new Set(["device", "epoch", "seq", "kind", "deviceTs", "receivedAt", "gateway", "traceparent", "body"])

/**
 * Why `e` cannot be stored, or undefined: a stage that replaced the envelope left a normalized
 * field that no sink can hold as it is (a body that is not an object, which JSON writes as
 * nothing; a time that is not a number), or it nests too deep or in a circle ({@link nestingOf}).
 */
const unstorableOf = (e: Envelope, entered: InFlight): string | undefined => {
  if (e !== entered.envelope) {
    if (typeof e.body !== "object" || e.body === null || Array.isArray(e.body)) return "body is not a JSON object: cannot be stored"
    if (!Number.isFinite(e.deviceTs) || !Number.isFinite(e.receivedAt)) return "deviceTs and receivedAt must be numbers: cannot be stored"
    if (typeof e.gateway !== "string" || (e.traceparent !== null && typeof e.traceparent !== "string")) {
      return "gateway and traceparent must be strings: cannot be stored"
    }
  }
  return nestingOf(e, entered)
}

/**
 * Why `e` cannot be stored as JSON because of how it nests (too deep, or circular), or undefined.
 * Free for what a device sent, unchanged, in the common case: a validated telemetry body nests 2
 * levels (metrics, tags), and a frame of N bytes cannot nest deeper than N / 2, so only events
 * from larger frames are walked; so is what stages replaced or added.
 */
const nestingOf = (e: Envelope, entered: InFlight): string | undefined => {
  const original = entered.envelope
  const walkBody = e.body !== original.body || (original.kind === "event" && entered.bytes > 2 * MAX_NESTING)
  let deep = walkBody && nestsDeeperThan(e.body, MAX_NESTING)
  if (!deep && e !== original) {
    for (const key in e) {
      if (!HEADER.has(key) && nestsDeeperThan((e as unknown as Fields)[key], MAX_NESTING)) {
        deep = true
        break
      }
    }
  }
  if (!deep) return undefined
  return isCircular(e) ? "circular: cannot be stored as JSON" : `nested deeper than ${MAX_NESTING} levels: cannot be stored as JSON`
}

/**
 * What a dead letter keeps of `e`: `e` itself, or, when it nests too deep (or in a circle) to be
 * serialized, its normalized fields with the body (and the fields stages added) as the first
 * {@link DEAD_LETTER_TEXT_CHARS} characters of their JSON text, written without recursion.
 */
const keepable = (e: Envelope): Envelope => {
  if (!nestsDeeperThan(e, MAX_NESTING + 1)) return e
  const added: Record<string, unknown> = {}
  let anyAdded = false
  for (const key of Object.keys(e)) {
    if (HEADER.has(key)) continue
    added[key] = (e as unknown as Fields)[key]
    anyAdded = true
  }
  const kept = {
    device: e.device,
    epoch: e.epoch,
    seq: e.seq,
    kind: e.kind,
    deviceTs: e.deviceTs,
    receivedAt: e.receivedAt,
    gateway: e.gateway,
    traceparent: e.traceparent,
    body: boundedJson(e.body, DEAD_LETTER_TEXT_CHARS),
    ...(anyAdded ? { annotations: boundedJson(added, DEAD_LETTER_TEXT_CHARS) } : {})
  }
  // the body as text instead of its object: the sink writes the envelope as JSON, whatever it holds
  return kept as unknown as Envelope
}

/**
 * JSON text of `value` as `JSON.stringify` writes it, cut after `maxChars` characters (then
 * ending in "…"), written without recursion: any depth, a cycle (written `"[cycle]"`), a BigInt
 * (written `"<n>n"`), a throwing getter or `toJSON` (the text so far) never throw.
 */
export const boundedJson = (value: unknown, maxChars: number): string => {
  let out = ""
  const frames: Array<{ readonly o: object; readonly keys: ReadonlyArray<string> | null; i: number; wrote: boolean }> = []
  const onPath = new Set<object>()
  /** Writes `v` (already through {@link jsonValueOf}); an object or array opens a frame. */
  const open = (v: unknown): void => {
    if (!isObject(v)) {
      out += primitiveJson(v, maxChars)
      return
    }
    if (onPath.has(v)) {
      out += `"[cycle]"`
      return
    }
    onPath.add(v)
    const isArray = Array.isArray(v)
    out += isArray ? "[" : "{"
    frames.push({ o: v, keys: isArray ? null : Object.keys(v), i: 0, wrote: false })
  }
  try {
    const root = jsonValueOf(value)
    if (isSkipped(root)) return "null"
    open(root)
    while (frames.length > 0 && out.length <= maxChars) {
      const f = frames[frames.length - 1]!
      if (f.keys === null) {
        const items = f.o as ReadonlyArray<unknown>
        if (f.i >= items.length) {
          out += "]"
          frames.pop()
          onPath.delete(f.o)
          continue
        }
        if (f.i > 0) out += ","
        const item = jsonValueOf(items[f.i++])
        if (isSkipped(item)) out += "null"
        else open(item)
        continue
      }
      let key: string | undefined
      let item: unknown
      while (f.i < f.keys.length) {
        const k = f.keys[f.i++]!
        item = jsonValueOf((f.o as Fields)[k])
        if (!isSkipped(item)) {
          key = k
          break
        }
      }
      if (key === undefined) {
        out += "}"
        frames.pop()
        onPath.delete(f.o)
        continue
      }
      out += `${f.wrote ? "," : ""}${JSON.stringify(key)}:`
      f.wrote = true
      open(item)
    }
  } catch {
    return `${out.slice(0, maxChars)}…`
  }
  return out.length <= maxChars && frames.length === 0 ? out : `${out.slice(0, maxChars)}…`
}

/** What `JSON.stringify` writes for `v`: its `toJSON()` when it has one; a BigInt as a string. */
const jsonValueOf = (v: unknown): unknown => {
  if (typeof v === "bigint") return `${v}n`
  if (isObject(v) && typeof (v as { readonly toJSON?: unknown }).toJSON === "function") {
    return (v as { readonly toJSON: () => unknown }).toJSON()
  }
  return v
}

/** Values JSON leaves out of objects (and writes as null in arrays). */
const isSkipped = (v: unknown) => v === undefined || typeof v === "function" || typeof v === "symbol"

const primitiveJson = (v: unknown, maxChars: number): string =>
  typeof v === "string"
    ? JSON.stringify(v.length > maxChars ? v.slice(0, maxChars) : v)
    : typeof v === "number"
    ? (Number.isFinite(v) ? String(v) : "null")
    : typeof v === "boolean"
    ? String(v)
    : "null"

/** Logs each stage's bugs once per batch: how many messages, the first message and cause. */
const logDefects = (ends: Ends) =>
  Effect.suspend(() => {
    const byStage = new Map<string, { count: number; first: Stage.StageDefect }>()
    for (const stop of ends.stops) {
      if (!(stop instanceof Stage.Rejected) || stop.error._tag !== "StageDefect") continue
      const seen = byStage.get(stop.error.stage)
      if (seen === undefined) byStage.set(stop.error.stage, { count: 1, first: stop.error })
      else seen.count++
    }
    return Effect.forEach(byStage, ([stage, { count, first }]) =>
      Effect.logError("stage failed on messages: nacked unavailable").pipe(
        Effect.annotateLogs({
          stage,
          messages: count,
          error: first.message,
          cause: first.cause instanceof Error ? (first.cause.stack ?? first.cause.message) : String(first.cause)
        })
      ), { discard: true })
  })
