/**
 * The gateway's own tracer: spans as small plain objects, sampled by the {@link Sampler} of
 * `OTEL_TRACES_SAMPLER`, handed to a {@link SpanSink} (the OTLP batch export) when they end.
 * Two kinds:
 * - {@link MessageSpan}: a message's `ingest <kind>` span, started by a plain call once the
 *   sampler said yes (a message it says no to gets no object at all), ended with the message's
 *   outcome.
 * - {@link EffectSpan}, made by the Effect {@link Tracer.Tracer} behind `Effect.withSpan`
 *   (connections, batches, stages, sink writes). The tracer has no per-fiber context hook (the
 *   OpenTelemetry tracer of `@effect/opentelemetry` wraps every step of a fiber inside a span in
 *   an OTel context switch), so a span costs its creation and its end, nothing in between. A
 *   child follows its parent's decision; a root with links (a sink batch linking its messages,
 *   a sink write linking its batches) is sampled when one of its links is; any other root is
 *   decided by the sampler. A span that is not sampled records nothing.
 */
import type { Attributes, AttributeValue } from "@opentelemetry/api"
import { Cause, Context, Exit, Option, Tracer } from "effect"
import type { Kind } from "../domain/Frames.ts"
import {
  childTraceparent,
  decideRoot,
  IDS,
  newSpanId,
  newTraceId,
  rootTraceId,
  rootTraceparent,
  type Sampler,
  sampleTraceparent,
  traceIdHash
} from "./TraceSampler.ts"

/** An ended, sampled span. */
export type FinishedSpan = MessageSpan | EffectSpan

/** Where ended sampled spans go (the batch export). */
export interface SpanSink {
  readonly ended: (span: FinishedSpan) => void
}

/** An event on a span: its name, time (epoch nanoseconds) and attributes. */
export interface SpanEventRecord {
  readonly name: string
  readonly timeNanos: bigint
  readonly attributes: Attributes
}

const SAMPLED = 1
const EMPTY_CONTEXT: Context.Context<never> = Context.empty()
const NO_LINKS: ReadonlyArray<Tracer.SpanLink> = Object.freeze([])
const NO_EVENTS: ReadonlyArray<SpanEventRecord> = Object.freeze([])
const ENDED: Exit.Exit<unknown, unknown> = Exit.void

// ---- time ----

let origin = performance.timeOrigin
let checkedAt = -Infinity

/**
 * The wall-clock time of `performance.now()`'s zero, in epoch milliseconds, re-anchored to
 * `Date.now()` when the two drift apart by more than a second (a clock step, a suspended
 * machine), checked at most once a second.
 */
export const currentOrigin = (): number => {
  const mono = performance.now()
  if (mono - checkedAt > 1_000) {
    checkedAt = mono
    const wall = Date.now()
    if (Math.abs(wall - (origin + mono)) > 1_000) origin = wall - mono
  }
  return origin
}

/**
 * A `performance.now()` reading as epoch nanoseconds (to the double's precision, ~0.25 µs),
 * with `at` from {@link currentOrigin}.
 */
export const toEpochNanos = (mono: number, at: number = currentOrigin()): number => (at + mono) * 1e6

/** A value as an OpenTelemetry attribute value (objects as JSON). */
export const attributeValue = (v: unknown): AttributeValue | undefined => {
  switch (typeof v) {
    case "string":
    case "number":
    case "boolean":
      return v
    case "bigint":
      return Number(v)
    case "undefined":
      return undefined
    default:
      if (v === null) return undefined
      if (Array.isArray(v) && v.every((x) => typeof x === "string")) return v as Array<string>
      try {
        return JSON.stringify(v)
      } catch {
        return String(v)
      }
  }
}

const attributesOf = (record: Record<string, unknown> | undefined): Attributes => {
  const out: Attributes = {}
  if (record !== undefined) for (const k in record) out[k] = attributeValue(record[k])
  return out
}

// ---- message spans ----

/** Outcomes that are the gateway's failure to take a message (its span gets status ERROR). */
export const FAILED_OUTCOMES: ReadonlySet<string> = new Set(["unavailable", "shed", "rejected"])

/**
 * The `ingest <kind>` span of one sampled message, from the read that brought its frame to its
 * answer. Times are `performance.now()` readings the gateway already takes (per socket read, per
 * batch answered), turned into wall-clock time only when exported; its ids are its
 * `traceparent`'s (kept as words too, for the export). It is its own `IngestSpan` (`span` is
 * itself), so starting one makes one object and one string. Attributes: `device.id`,
 * `message.seq`, `message.kind`, and `message.outcome` at the end.
 */
export class MessageSpan implements Tracer.Span {
  readonly _tag = "Span"
  readonly kind = "server"
  readonly sampled = true
  /** The traceparent naming this span (`00-<trace id>-<span id>-01`), stored and published with the message. */
  readonly traceparent: string
  /** The device's traceparent when the message continued its trace. */
  readonly parentTraceparent: string | undefined
  readonly device: string
  readonly seq: number
  readonly messageKind: Kind
  /** `performance.now()` when its frame was read, and when it was answered (0 until then). */
  readonly startAt: number
  endAt = 0
  outcome: string | undefined = undefined
  /** The trace id's and the span id's 32-bit words (what the protobuf export writes). */
  readonly t0: number
  readonly t1: number
  readonly t2: number
  readonly t3: number
  readonly s0: number
  readonly s1: number
  /** Attributes set beyond the fixed ones, and events, when any. */
  extra: Map<string, unknown> | undefined = undefined
  events: Array<SpanEventRecord> | undefined = undefined
  private readonly sink: SpanSink

  /** `traceparent` was just made by the sampler's id functions: its words are in {@link IDS}. */
  constructor(sink: SpanSink, kind: Kind, traceparent: string, parentTraceparent: string | undefined, device: string, seq: number, at: number) {
    this.sink = sink
    this.messageKind = kind
    this.traceparent = traceparent
    this.t0 = IDS[0]!
    this.t1 = IDS[1]!
    this.t2 = IDS[2]!
    this.t3 = IDS[3]!
    this.s0 = IDS[4]!
    this.s1 = IDS[5]!
    this.parentTraceparent = parentTraceparent
    this.device = device
    this.seq = seq
    this.startAt = at
  }

  get name(): string {
    return this.messageKind === "telemetry" ? "ingest telemetry" : "ingest event"
  }

  get traceId(): string {
    return this.traceparent.slice(3, 35)
  }

  get spanId(): string {
    return this.traceparent.slice(36, 52)
  }

  /** Itself: a started message span is its own {@link IngestSpan}. */
  get span(): MessageSpan {
    return this
  }

  get parent(): Option.Option<Tracer.AnySpan> {
    const p = this.parentTraceparent
    return p === undefined
      ? Option.none()
      : Option.some(Tracer.externalSpan({ traceId: p.slice(3, 35), spanId: p.slice(36, 52), sampled: (parseInt(p.slice(53, 55), 16) & SAMPLED) === 1 }))
  }

  get annotations(): Context.Context<never> {
    return EMPTY_CONTEXT
  }

  get links(): ReadonlyArray<Tracer.SpanLink> {
    return NO_LINKS
  }

  get status(): Tracer.SpanStatus {
    const startTime = BigInt(Math.round(toEpochNanos(this.startAt)))
    return this.endAt === 0
      ? { _tag: "Started", startTime }
      : { _tag: "Ended", startTime, endTime: BigInt(Math.round(toEpochNanos(this.endAt))), exit: ENDED }
  }

  get attributes(): ReadonlyMap<string, unknown> {
    const m = new Map<string, unknown>([["device.id", this.device], ["message.seq", this.seq], ["message.kind", this.messageKind]])
    if (this.outcome !== undefined) m.set("message.outcome", this.outcome)
    if (this.extra !== undefined) for (const [k, v] of this.extra) m.set(k, v)
    return m
  }

  /**
   * Ends the span with the message's outcome (`committed`, `duplicate`, `shed`, ...) at `at`
   * (a `performance.now()` reading) and hands it to the export.
   */
  finish(outcome: string, at: number = performance.now()): void {
    if (this.endAt !== 0) return
    this.outcome = outcome
    this.endAt = at
    this.sink.ended(this)
  }

  end(_endTime: bigint, exit: Exit.Exit<unknown, unknown>): void {
    this.finish(this.outcome ?? (exit._tag === "Success" ? "ended" : "failed"))
  }

  attribute(key: string, value: unknown): void {
    if (this.endAt === 0) (this.extra ??= new Map()).set(key, value)
  }

  event(name: string, startTime: bigint, attributes?: Record<string, unknown>): void {
    if (this.endAt === 0) (this.events ??= []).push({ name, timeNanos: startTime, attributes: attributesOf(attributes) })
  }

  addLinks(_links: ReadonlyArray<Tracer.SpanLink>): void {
    // a message span links nothing: the sink batch links it
  }
}

// ---- Effect spans ----

/**
 * A span of `Effect.withSpan`: recorded and exported when sampled; otherwise a shell that
 * records nothing and makes its ids only if something reads them (a log line, a child).
 */
export class EffectSpan implements Tracer.Span {
  readonly _tag = "Span"
  readonly name: string
  readonly parent: Option.Option<Tracer.AnySpan>
  readonly annotations: Context.Context<never>
  readonly attributes = new Map<string, unknown>()
  readonly links: Array<Tracer.SpanLink>
  readonly sampled: boolean
  readonly kind: Tracer.SpanKind
  status: Tracer.SpanStatus
  events: Array<SpanEventRecord> | undefined = undefined
  private readonly sink: SpanSink
  private ids: { traceId: string; spanId: string } | undefined

  /** `traceId` undefined: the parent's, or a new one, when first read (a span not sampled). */
  constructor(sink: SpanSink, options: Parameters<Tracer.Tracer["span"]>[0], traceId: string | undefined, sampled: boolean) {
    this.sink = sink
    this.name = options.name
    this.ids = traceId === undefined ? undefined : { traceId, spanId: newSpanId() }
    this.parent = options.parent
    this.annotations = options.annotations
    this.links = options.links
    this.sampled = sampled
    this.kind = options.kind
    this.status = { _tag: "Started", startTime: options.startTime }
  }

  get traceId(): string {
    return this.idsOf().traceId
  }

  get spanId(): string {
    return this.idsOf().spanId
  }

  private idsOf(): { traceId: string; spanId: string } {
    return this.ids ??= {
      traceId: this.parent._tag === "Some" ? this.parent.value.traceId : newTraceId(),
      spanId: newSpanId()
    }
  }

  end(endTime: bigint, exit: Exit.Exit<unknown, unknown>): void {
    if (this.status._tag === "Ended") return
    this.status = { _tag: "Ended", startTime: this.status.startTime, endTime, exit }
    if (this.sampled) this.sink.ended(this)
  }

  attribute(key: string, value: unknown): void {
    if (this.sampled && this.status._tag !== "Ended") this.attributes.set(key, value)
  }

  event(name: string, startTime: bigint, attributes?: Record<string, unknown>): void {
    if (this.sampled && this.status._tag !== "Ended") (this.events ??= []).push({ name, timeNanos: startTime, attributes: attributesOf(attributes) })
  }

  addLinks(links: ReadonlyArray<Tracer.SpanLink>): void {
    if (this.status._tag !== "Ended") this.links.push(...links)
  }
}

/** The events of a finished span. */
export const eventsOf = (span: FinishedSpan): ReadonlyArray<SpanEventRecord> => span.events ?? NO_EVENTS

/** What a finished Effect span's exit says: its status, and an `exception` event for a failure. */
export const exitOf = (span: EffectSpan): { readonly error: string | undefined; readonly errorType: string; readonly interrupted: boolean } => {
  const status = span.status
  if (status._tag !== "Ended" || status.exit._tag === "Success") return { error: undefined, errorType: "", interrupted: false }
  const cause = status.exit.cause
  if (Cause.hasInterruptsOnly(cause)) return { error: undefined, errorType: "", interrupted: true }
  const first = Cause.prettyErrors(cause)[0]
  return { error: first?.message ?? "failed", errorType: first?.name ?? "Error", interrupted: false }
}

/**
 * Starts a sampled message's span, or returns undefined (the sampler said no: nothing was made).
 * `at` is the `performance.now()` reading of the read that brought the frame.
 */
export type StartMessage = (kind: Kind, device: string, seq: number, trace: string | undefined, at?: number) => MessageSpan | undefined

/** The gateway's tracer: the Effect tracer for `withSpan`, and the per-message start. */
export interface GatewayTracer {
  readonly tracer: Tracer.Tracer
  readonly startMessage: StartMessage
}

/** A tracer deciding by `sampler` and handing ended sampled spans to `sink`. */
export const makeGatewayTracer = (sampler: Sampler, sink: SpanSink): GatewayTracer => {
  const startMessage: StartMessage = (kind, device, seq, trace, at = performance.now()) => {
    if (trace !== undefined) {
      return sampleTraceparent(sampler, trace) ? new MessageSpan(sink, kind, childTraceparent(trace), trace, device, seq, at) : undefined
    }
    return decideRoot(sampler) ? new MessageSpan(sink, kind, rootTraceparent(), undefined, device, seq, at) : undefined
  }

  const tracer = Tracer.make({
    span(options) {
      const parent = Option.getOrUndefined(options.parent)
      if (parent !== undefined) {
        // a local parent's decision is followed; a remote one's as the sampler says
        const sampled = options.sampled && (parent._tag === "Span" || sampler.parentBased
          ? parent.sampled
          : traceIdHash(parent.traceId) < sampler.bound)
        return new EffectSpan(sink, options, sampled ? parent.traceId : undefined, sampled)
      }
      if (options.links.length > 0) {
        let linked = false
        for (const l of options.links) if (l.span.sampled) linked = true
        const sampled = options.sampled && linked
        return new EffectSpan(sink, options, sampled ? newTraceId() : undefined, sampled)
      }
      const sampled = options.sampled && decideRoot(sampler)
      return new EffectSpan(sink, options, sampled ? rootTraceId() : undefined, sampled)
    }
  })

  return { tracer, startMessage }
}
