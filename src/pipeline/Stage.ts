/**
 * The Stage API: the one way every step of the pipeline is written, the gateway's own (validate,
 * dedup, commit) and yours.
 *
 * A `Stage<In, Out, E, R>` turns messages of type `In` into `Out`; it may fail a message with a
 * taxonomy error `E` (which becomes that message's nack), settle it early (ack without going
 * further, e.g. a duplicate or a filtered message), and it needs the services `R`, which come
 * from Layers. Stages compose with {@link andThen}: the compiler refuses a pipeline whose types
 * do not line up, and a pipeline whose services nobody provides cannot be turned into the
 * gateway's layer.
 *
 * Stages run on chunks (the batches of the persistence loop, the frames of one socket read):
 * {@link map} runs a plain function per message inside one loop, {@link chunk} gets the whole
 * chunk, {@link mapEffect} is the per-message Effect convenience. Every stage gets, without
 * writing anything: a latency histogram, message and error counters labelled with its name, a
 * span per chunk when tracing is on, and isolation: one message's failure (or a stage's bug
 * on one message) is that message's answer, never its batch's.
 */
import { Cause, type Context, Data, Effect, Exit, Function as Fn, type Metric } from "effect"
import { type Pipeable, pipeArguments } from "effect/Pipeable"
import {
  type AuthError,
  type OverloadError,
  type PermanentPersistenceError,
  TransientUpstreamError,
  type ValidationError
} from "../domain/Errors.ts"
import type { Kind } from "../domain/Frames.ts"
import * as Metrics from "../observability/Metrics.ts"

/** The taxonomy errors (DESIGN.md) a stage may fail a message with; each maps to one nack code. */
export type StageError =
  | ValidationError
  | AuthError
  | OverloadError
  | TransientUpstreamError
  | PermanentPersistenceError

/** A stage's bug on one message (a throw or a defect): logged, and the message is nacked `unavailable`. */
export class StageDefect extends Data.TaggedError("StageDefect")<{
  readonly stage: string
  readonly message: string
  readonly cause: unknown
}> {}

/** A message that leaves the pipeline at some stage: settled (acked) or rejected (nacked). */
export abstract class Stop {
  /** Brand, so an `Out` value is never mistaken for a stop. */
  protected readonly stop = true
}

/** How a settled message is acknowledged. */
export type SettledAs = "committed" | "duplicate" | "dropped"

/** A message a stage answered with an ack, without passing it on. */
export class Settled extends Stop {
  /** `committed`: stored now; `duplicate`: stored before (`dup:true`); `dropped`: filtered out, not stored. */
  readonly as: SettledAs
  constructor(as: SettledAs) {
    super()
    this.as = as
  }
}

/** A message a stage failed: answered with the nack of its error class. */
export class Rejected<out E> extends Stop {
  /** Why: a taxonomy error (or a {@link StageDefect}). */
  readonly error: E
  constructor(error: E) {
    super()
    this.error = error
  }
}

/** Acknowledge as committed (the commit stage says this once the sink has it). */
export const committed: Settled = new Settled("committed")
/** Acknowledge with `dup:true`: the message was committed before. */
export const duplicate: Settled = new Settled("duplicate")
/** Acknowledge and store nothing: the message was filtered out on purpose. */
export const dropped: Settled = new Settled("dropped")

/** Fails one message with a taxonomy error: it gets that error's nack. */
export const reject = <E extends StageError>(error: E): Rejected<E> => new Rejected(error)

/** What a stage returns for one message: the message passed on, settled, or rejected. */
export type Verdict<Out, E> = Out | Settled | Rejected<E>

/** Which messages a stage applies to; the others pass it unchanged. */
export interface Selection {
  /** Kinds it applies to (default: all). */
  readonly kinds?: ReadonlyArray<Kind>
  /** Device ids it applies to; `prefix*` matches by prefix (default: all). */
  readonly devices?: ReadonlyArray<string>
}

/** What a {@link Selection} looks at. */
export interface Selectable {
  readonly kind: Kind
  readonly device: string
}

const TypeId = "~gateway/Stage"

/**
 * A stage (or a pipeline: stages composed are a stage) from `In` to `Out` that may reject a
 * message with `E` and needs the services `R`.
 */
export interface Stage<in In, out Out, out E = never, out R = never> extends Pipeable {
  readonly [TypeId]: {
    readonly _In: (_: In) => void
    readonly _Out: () => Out
    readonly _E: () => E
    readonly _R: () => R
  }
  /** The primitive stages, in order. */
  readonly steps: ReadonlyArray<StepDef>
}

/** Any stage (for implementations). */
type Any = Stage<never, unknown, unknown, unknown>

/** Primitive stages before they are built (one, or the stages an {@link unwrap} makes). */
interface StepDef {
  /** The selections it is restricted to (all must match), outermost last. */
  readonly selections: ReadonlyArray<Selection>
  /** Builds the named chunk functions, resolving the stages' services once. */
  readonly build: Effect.Effect<ReadonlyArray<Named>, never, unknown>
}

/** A built primitive stage, its name, and the selections it is restricted to (all must match). */
interface Named {
  readonly name: string
  readonly fn: ChunkFn
  readonly selections: ReadonlyArray<Selection>
}

/** A built primitive stage: synchronous when `sync` is set, else an Effect per chunk. */
interface ChunkFn {
  readonly sync: ((chunk: ReadonlyArray<unknown>, name: string) => Array<unknown>) | undefined
  readonly run: (chunk: ReadonlyArray<unknown>, name: string) => Effect.Effect<ReadonlyArray<unknown>, unknown>
  /** How long one chunk may take before all its messages are rejected (none when undefined). */
  readonly timeoutMs: number | undefined
}

/** How long an asynchronous stage may take for one chunk, unless it says otherwise. */
export const DEFAULT_TIMEOUT_MS = 10_000

/** Options of the asynchronous stage forms. */
export interface AsyncOptions {
  /**
   * Milliseconds one chunk may take (default {@link DEFAULT_TIMEOUT_MS}; `Infinity`: no limit).
   * Past it, every message of the chunk is rejected with a `TransientUpstreamError`
   * (`nack unavailable`), so a hung upstream cannot stall the pipeline.
   */
  readonly timeoutMs?: number
}

const timeoutOf = (options: AsyncOptions | undefined) => {
  const ms = options?.timeoutMs ?? DEFAULT_TIMEOUT_MS
  return Number.isFinite(ms) ? ms : undefined
}

class StageImpl implements Stage<never, unknown, unknown, unknown> {
  declare readonly [TypeId]: Stage<never, unknown, unknown, unknown>[typeof TypeId]
  readonly steps: ReadonlyArray<StepDef>
  constructor(steps: ReadonlyArray<StepDef>) {
    this.steps = steps
  }
  pipe() {
    return pipeArguments(this, arguments)
  }
}

const fromSteps = <In, Out, E, R>(steps: ReadonlyArray<StepDef>): Stage<In, Out, E, R> =>
  new StageImpl(steps) as unknown as Stage<In, Out, E, R>

const primitive = <In, Out, E, R>(name: string, build: Effect.Effect<ChunkFn, never, R>): Stage<In, Out, E, R> =>
  fromSteps([{
    selections: [],
    build: Effect.map(build, (fn): ReadonlyArray<Named> => [{ name, fn, selections: [] }]) as Effect.Effect<ReadonlyArray<Named>, never, unknown>
  }])

const defect = (name: string, cause: unknown) =>
  new Rejected(new StageDefect({ stage: name, message: `stage ${name} failed: ${describeDefect(cause)}`, cause }))

const describeDefect = (cause: unknown) => (cause instanceof Error ? cause.message : String(cause))

// ---- constructors ----

/**
 * A stage from a plain function of one message, run in one loop over the chunk (no Effect per
 * message). Return the message passed on (changed or not), {@link reject}, or a settlement.
 * A throw rejects that message alone, as a {@link StageDefect}.
 */
export const map = <In, Out, E extends StageError = never>(
  name: string,
  f: (input: In) => Verdict<Out, E>
): Stage<In, Out, E> => {
  const sync = (chunk: ReadonlyArray<unknown>, stage: string) => {
    const out: Array<unknown> = new Array(chunk.length)
    for (let i = 0; i < chunk.length; i++) {
      try {
        out[i] = f(chunk[i] as In)
      } catch (cause) {
        out[i] = defect(stage, cause)
      }
    }
    return out
  }
  return primitive(
    name,
    Effect.succeed({ sync, run: (chunk, stage) => Effect.sync(() => sync(chunk, stage)), timeoutMs: undefined })
  )
}

/**
 * A stage from an Effect over the whole chunk: return one verdict per message, in order. The
 * Effect failing with `E` rejects every message of the chunk with it; a defect is retried one
 * message at a time, so only the message that causes it is rejected.
 */
export const chunk = <In, Out, E extends StageError = never, R = never>(
  name: string,
  f: (chunk: ReadonlyArray<In>) => Effect.Effect<ReadonlyArray<Verdict<Out, E>>, E, R>,
  options?: AsyncOptions
): Stage<In, Out, E | TransientUpstreamError, R> =>
  primitive(
    name,
    Effect.map(Effect.context<R>(), (context): ChunkFn => ({
      sync: undefined,
      run: (items) => Effect.provideContext(f(items as ReadonlyArray<In>), context),
      timeoutMs: timeoutOf(options)
    }))
  )

/**
 * A stage from an Effect per message (convenient, about a microsecond per message: prefer
 * {@link map} or {@link chunk} on the hot path). A failure with `E` rejects that message only.
 */
export const mapEffect = <In, Out, E extends StageError = never, R = never>(
  name: string,
  f: (input: In) => Effect.Effect<Out | Settled, E, R>,
  options?: AsyncOptions & { readonly concurrency?: number }
): Stage<In, Out, E | TransientUpstreamError, R> =>
  primitive(
    name,
    Effect.map(Effect.context<R>(), (context): ChunkFn => ({
      sync: undefined,
      run: (items, stage) =>
        Effect.forEach(
          items as ReadonlyArray<In>,
          (item) =>
            // an interruption inside the stage (e.g. joining an interrupted fiber) is its defect;
            // the gateway's own interruption of this fiber still stops it at its next step
            Effect.map(Effect.exit(f(item)), (exit) => Exit.isSuccess(exit) ? exit.value : verdictOfCause(stage, exit.cause)),
          { concurrency: options?.concurrency ?? 1 }
        ).pipe(Effect.provideContext(context)),
      timeoutMs: timeoutOf(options)
    }))
  )

const verdictOfCause = <E>(stage: string, cause: Cause.Cause<E>): Rejected<E | StageDefect> => {
  const failure = Cause.findErrorOption(cause)
  return failure._tag === "Some" ? new Rejected(failure.value) : defect(stage, Cause.squash(cause))
}

/**
 * A stage whose construction needs services or resources: `make` runs once, when the pipeline's
 * layer is built, and returns the stage (typically a {@link map} closing over what it resolved).
 */
export const unwrap = <In, Out, E, R, R2>(make: Effect.Effect<Stage<In, Out, E, R>, never, R2>): Stage<In, Out, E, R | R2> =>
  fromSteps([{
    selections: [],
    build: Effect.flatMap(make, (stage) => buildSteps(stage.steps)) as Effect.Effect<ReadonlyArray<Named>, never, unknown>
  }])

/** Builds step definitions in order, each definition's selections applying to what it built. */
const buildSteps = (defs: ReadonlyArray<StepDef>) =>
  Effect.map(
    Effect.forEach(defs, (def) =>
      Effect.map(def.build, (built) =>
        def.selections.length === 0 ? built : built.map((b) => ({ ...b, selections: [...b.selections, ...def.selections] })))),
    (lists) => lists.flat()
  )

// ---- composition ----

/** The stage that passes every message on unchanged (the empty pipeline). */
export const identity = <A>(): Stage<A, A> => fromSteps([])

/** Runs `next` on what `self` passes on. Refused by the compiler when `self`'s output is not `next`'s input. */
export const andThen: {
  <Mid, Out, E2, R2>(next: Stage<Mid, Out, E2, R2>): <In, E, R>(self: Stage<In, Mid, E, R>) => Stage<In, Out, E | E2, R | R2>
  <In, Mid, E, R, Out, E2, R2>(self: Stage<In, Mid, E, R>, next: Stage<Mid, Out, E2, R2>): Stage<In, Out, E | E2, R | R2>
} = Fn.dual(2, (self: Any, next: Any) => fromSteps([...self.steps, ...next.steps]))

/**
 * Restricts a stage to some kinds and devices; the other messages pass it unchanged (so its
 * output type widens to `In | Out`). Restrictions combine: every one must match.
 */
export const when: {
  (selection: Selection): <In extends Selectable, Out, E, R>(self: Stage<In, Out, E, R>) => Stage<In, In | Out, E, R>
  <In extends Selectable, Out, E, R>(self: Stage<In, Out, E, R>, selection: Selection): Stage<In, In | Out, E, R>
} = Fn.dual(
  2,
  (self: Any, selection: Selection) => fromSteps(self.steps.map((s) => ({ ...s, selections: [...s.selections, selection] })))
)

/** Provides the services a stage needs, from a context captured when its layer was built. */
export const provideContext = <In, Out, E, R>(self: Stage<In, Out, E, R>, context: Context.Context<R>): Stage<In, Out, E> =>
  fromSteps(self.steps.map((s) => ({ ...s, build: Effect.provideContext(s.build, context as Context.Context<unknown>) })))


// ---- running ----

/**
 * Where each message of a chunk ended: `passed[i]` left the last stage from input position
 * `passedAt[i]`; `stops[j]` is the settlement or rejection of input `stoppedAt[j]` by stage
 * `stoppedBy[j]`.
 */
export interface Outcome<Out, E> {
  readonly passed: ReadonlyArray<Out>
  readonly passedAt: ReadonlyArray<number> | undefined
  readonly stops: ReadonlyArray<Settled | Rejected<E | StageDefect>>
  readonly stoppedAt: ReadonlyArray<number>
  readonly stoppedBy: ReadonlyArray<string>
}

/** A built pipeline, ready to run chunks. */
export interface Runner<In, Out, E> {
  /** Names of its stages, in order. */
  readonly names: ReadonlyArray<string>
  /** True when every stage is synchronous ({@link map}); only then may {@link runSync} be used. */
  readonly isSync: boolean
  /** Runs a chunk through every stage. */
  readonly run: (inputs: ReadonlyArray<In>) => Effect.Effect<Outcome<Out, E>>
  /** Runs a chunk through every stage synchronously (throws when a stage is not synchronous). */
  readonly runSync: (inputs: ReadonlyArray<In>) => Outcome<Out, E>
}

/** How a pipeline is built. */
export interface BuildOptions {
  /** A span per stage per chunk (on when tracing is on). */
  readonly spans?: boolean
}

interface BuiltStep {
  readonly name: string
  readonly fn: ChunkFn
  readonly matches: ((item: Selectable) => boolean) | undefined
  readonly duration: Metric.Metric<number, unknown>
  readonly passedCount: Metric.Metric<number, unknown>
  readonly settledCount: Metric.Metric<number, unknown>
  readonly rejectedCount: Metric.Metric<number, unknown>
}

/** Builds a pipeline: resolves each stage's services once and prepares its metrics. */
export const build = <In, Out, E, R>(self: Stage<In, Out, E, R>, options: BuildOptions = {}): Effect.Effect<Runner<In, Out, E>, never, R> =>
  Effect.gen(function*() {
    const named = yield* (buildSteps(self.steps) as Effect.Effect<ReadonlyArray<Named>, never, R>)
    const steps: Array<BuiltStep> = named.map(({ fn, name, selections }) => ({
      name,
      fn,
      matches: selections.length === 0 ? undefined : matcher(selections),
      duration: Metrics.stageDuration(name),
      passedCount: Metrics.stageMessages(name, "passed"),
      settledCount: Metrics.stageMessages(name, "settled"),
      rejectedCount: Metrics.stageMessages(name, "rejected")
    }))
    const isSync = steps.every((s) => s.fn.sync !== undefined)
    const spans = options.spans === true
    return {
      names: steps.map((s) => s.name),
      isSync,
      runSync: (inputs) => {
        if (!isSync) throw new Error("runSync on a pipeline with asynchronous stages")
        return runAllSync(inputs)
      },
      run: isSync && !spans
        // all synchronous: one Effect per chunk, none per stage
        ? (inputs) => Effect.sync(() => runAllSync(inputs))
        : (inputs) =>
          Effect.gen(function*() {
            const state = new RunState<Out, E>(inputs)
            let started = performance.now()
            for (const step of steps) {
              if (state.passed.length === 0) break
              const chunkOf = state.passed as ReadonlyArray<unknown>
              // a synchronous stage needs no Effect (it isolates throws per message itself)
              const results = spans
                ? yield* Effect.withSpan(applyAsync(step, chunkOf), `stage ${step.name}`, {
                  attributes: { "stage.name": step.name, "chunk.size": chunkOf.length },
                  // no Error (and stack) per chunk: the span's name says where it is
                  captureStackTrace: false
                })
                : step.fn.sync !== undefined
                ? applySync(step, chunkOf)
                : yield* applyAsync(step, chunkOf)
              state.apply(step, results)
              const ended = performance.now()
              Metrics.record(step.duration, ended - started)
              started = ended
            }
            return state
          })
    }

    function runAllSync(inputs: ReadonlyArray<In>): Outcome<Out, E> {
      const state = new RunState<Out, E>(inputs)
      let started = performance.now()
      for (const step of steps) {
        if (state.passed.length === 0) break
        state.apply(step, applySync(step, state.passed))
        const ended = performance.now()
        Metrics.record(step.duration, ended - started)
        started = ended
      }
      return state
    }
  })

/** Runs a step synchronously on the messages it selects. */
const applySync = (step: BuiltStep, values: ReadonlyArray<unknown>): ReadonlyArray<unknown> => {
  const sync = step.fn.sync!
  if (step.matches === undefined) return sync(values, step.name)
  const picked = pick(step.matches, values)
  return picked === undefined ? sync(values, step.name) : merge(values, picked, sync(picked.items, step.name))
}

/** Runs a step as an Effect on the messages it selects, isolating defects to their message. */
const applyAsync = (step: BuiltStep, values: ReadonlyArray<unknown>): Effect.Effect<ReadonlyArray<unknown>> => {
  if (step.matches === undefined) return runIsolated(step, values)
  const picked = pick(step.matches, values)
  if (picked === undefined) return runIsolated(step, values)
  if (picked.items.length === 0) return Effect.succeed(values)
  return Effect.map(runIsolated(step, picked.items), (results) => merge(values, picked, results))
}

/**
 * Runs one chunk: a typed failure (or the stage's timeout) rejects every message of it; a
 * defect, an interruption inside the stage, or a wrong number of verdicts is retried on each
 * half of the chunk, down to single messages, so that only the messages causing it are rejected
 * (about 2·log2(n) extra runs for one bad message in n). The retries share the first run's
 * deadline and a budget of runs (a stage that fails on everything is not run 2n times): past
 * it, what is left is rejected with the defect.
 */
const runIsolated = (step: BuiltStep, values: ReadonlyArray<unknown>): Effect.Effect<ReadonlyArray<unknown>> =>
  Effect.suspend(() => {
    const ms = step.fn.timeoutMs
    const budget = { runs: 8 * Math.ceil(Math.log2(values.length + 1)) + 8 }
    return isolate(step, values, ms === undefined ? undefined : performance.now() + ms, budget)
  })

const isolate = (
  step: BuiltStep,
  values: ReadonlyArray<unknown>,
  deadline: number | undefined,
  budget: { runs: number }
): Effect.Effect<ReadonlyArray<unknown>> =>
  Effect.exit(timed(step, values, deadline)).pipe(
    Effect.flatMap((exit): Effect.Effect<ReadonlyArray<unknown>> => {
      if (Exit.isSuccess(exit)) return Effect.succeed(exit.value)
      const failure = Cause.findErrorOption(exit.cause)
      if (failure._tag === "Some") return Effect.succeed(values.map(() => new Rejected(failure.value)))
      if (values.length === 1 || budget.runs < 2) {
        const rejected = defect(step.name, Cause.squash(exit.cause))
        return Effect.succeed(values.map(() => rejected))
      }
      budget.runs -= 2
      const half = Math.ceil(values.length / 2)
      return Effect.zipWith(
        isolate(step, values.slice(0, half), deadline, budget),
        isolate(step, values.slice(half), deadline, budget),
        (a, b) => a.concat(b)
      )
    })
  )

/** One run of a chunk, before the deadline, checked to give one verdict per message. */
const timed = (
  step: BuiltStep,
  values: ReadonlyArray<unknown>,
  deadline: number | undefined
): Effect.Effect<ReadonlyArray<unknown>, unknown> => {
  const run = Effect.flatMap(Effect.suspend(() => step.fn.run(values, step.name)), (results) =>
    results.length === values.length
      ? Effect.succeed(results)
      : Effect.die(new Error(`stage ${step.name} returned ${results.length} verdicts for ${values.length} messages`)))
  if (deadline === undefined) return run
  const timedOut = new TransientUpstreamError({ sink: `stage ${step.name}`, message: `timed out after ${step.fn.timeoutMs} ms` })
  const left = deadline - performance.now()
  if (left <= 0) return Effect.fail(timedOut)
  return Effect.flatMap(Effect.timeoutOption(run, left), (result) =>
    result._tag === "Some" ? Effect.succeed(result.value) : Effect.fail(timedOut))
}

interface Picked {
  readonly items: Array<unknown>
  readonly at: Array<number>
}

/** The selected messages and their positions; undefined when every message is selected. */
const pick = (matches: (item: Selectable) => boolean, values: ReadonlyArray<unknown>): Picked | undefined => {
  const items: Array<unknown> = []
  const at: Array<number> = []
  for (let i = 0; i < values.length; i++) {
    if (matches(values[i] as Selectable)) {
      items.push(values[i])
      at.push(i)
    }
  }
  return items.length === values.length ? undefined : { items, at }
}

/** The chunk with the selected positions replaced by their verdicts. */
const merge = (values: ReadonlyArray<unknown>, picked: Picked, results: ReadonlyArray<unknown>) => {
  const out = values.slice()
  for (let j = 0; j < picked.at.length; j++) out[picked.at[j]!] = results[j]
  return out
}

/** A predicate from selections (all must match): kinds by set, devices by exact id or `prefix*`. */
export const matcher = (selections: ReadonlyArray<Selection>): (item: Selectable) => boolean => {
  const tests = selections.map((selection) => {
    const kinds = selection.kinds === undefined ? undefined : new Set(selection.kinds)
    const exact = new Set<string>()
    const prefixes: Array<string> = []
    for (const d of selection.devices ?? []) {
      if (d.endsWith("*")) prefixes.push(d.slice(0, -1))
      else exact.add(d)
    }
    const anyDevice = selection.devices === undefined || prefixes.includes("")
    return (item: Selectable) =>
      typeof item === "object" && item !== null && // a non-object (past the types) is not selected
      (kinds === undefined || kinds.has(item.kind)) &&
      (anyDevice || exact.has(item.device) || prefixes.some((p) => item.device.startsWith(p)))
  })
  return tests.length === 1 ? tests[0]! : (item) => tests.every((test) => test(item))
}

const NO_STOPS: Array<never> = []
const NO_POSITIONS: Array<number> = []
const NO_NAMES: Array<string> = []

/** The messages still going through a run and where the others stopped; at the end, the outcome. */
class RunState<Out, E> implements Outcome<Out, E> {
  /** What the last stage passed on (the inputs before any stage). */
  passed: ReadonlyArray<Out>
  /** Input position of each passed message; undefined while no message has stopped (identity). */
  passedAt: Array<number> | undefined = undefined
  // the shared empty arrays are replaced on the first stop: most chunks have none
  stops: Array<Settled | Rejected<E | StageDefect>> = NO_STOPS
  stoppedAt: Array<number> = NO_POSITIONS
  stoppedBy: Array<string> = NO_NAMES

  constructor(inputs: ReadonlyArray<unknown>) {
    this.passed = inputs as ReadonlyArray<Out>
  }

  /** Takes a step's verdicts: stops are recorded, the rest go on. */
  apply(step: BuiltStep, results: ReadonlyArray<unknown>): void {
    let first = -1
    for (let i = 0; i < results.length; i++) {
      if (results[i] instanceof Stop) {
        first = i
        break
      }
    }
    if (first === -1) {
      this.passed = results as ReadonlyArray<Out>
      Metrics.record(step.passedCount, results.length)
      return
    }
    const previousAt = this.passedAt
    const values: Array<unknown> = results.slice(0, first)
    const at: Array<number> = previousAt === undefined ? Array.from({ length: first }, (_, i) => i) : previousAt.slice(0, first)
    if (this.stops === NO_STOPS) {
      this.stops = []
      this.stoppedAt = []
      this.stoppedBy = []
    }
    let settled = 0, rejected = 0
    for (let i = first; i < results.length; i++) {
      const r = results[i]
      const position = previousAt === undefined ? i : previousAt[i]!
      if (r instanceof Stop) {
        this.stops.push(r as Settled | Rejected<E | StageDefect>)
        this.stoppedAt.push(position)
        this.stoppedBy.push(step.name)
        if (r instanceof Rejected) {
          rejected++
          Metrics.record(Metrics.stageErrors(step.name, errorClassOf(r.error)), 1)
        } else settled++
      } else {
        values.push(r)
        at.push(position)
      }
    }
    this.passed = values as ReadonlyArray<Out>
    this.passedAt = at
    Metrics.record(step.passedCount, values.length)
    if (settled > 0) Metrics.record(step.settledCount, settled)
    if (rejected > 0) Metrics.record(step.rejectedCount, rejected)
  }
}

/** The error class label of a rejection. */
const errorClassOf = (error: unknown): string =>
  typeof error === "object" && error !== null && "_tag" in error && typeof error._tag === "string" ? error._tag : "Unknown"
