/**
 * The data frames that wait for the ingest stages (validate, dedup), gathered over the socket
 * reads of one event-loop turn and run as one chunk. A fleet's reads hold a frame each, so a
 * chunk per read paid the stages' fixed costs (their metrics, timings and arrays, a lane
 * doorbell) once per frame; gathered, a busy turn's hundreds of reads share them.
 *
 * A connection adds the frames of a read with their tickets, and either asks for the chunk to
 * run once the turn's reads are done ({@link runSoon}: a small read handled inside its `data`
 * event) or runs it now ({@link runNow}: its fiber's reads, and before a fatal error frame, so
 * that what came before is answered first). A stopped message (invalid, a duplicate) is answered
 * on its connection, telemetry goes to its lane, an event to its connection to offer (it holds
 * events while the critical lane is full); then every connection whose frames ran is told
 * ({@link IngestSource.afterIngest}) to write its answers and react to what it holds.
 */
import type { Envelope } from "../domain/Envelope.ts"
import type { ValidationError } from "../domain/Errors.ts"
import type { MessageTracerShape } from "../observability/Tracing.ts"
import { answerOf, Tally } from "../pipeline/Answer.ts"
import type { InFlight, LanesShape, Replier } from "../pipeline/Lanes.ts"
import type { Runner } from "../pipeline/Stage.ts"
import type { RawData } from "../pipeline/Validate.ts"

/** A connection whose frames wait in the batch. */
export interface IngestSource extends Replier {
  /** Takes an event that passed the stages: offers it to the critical lane, or holds it (in order). */
  readonly offerEvent: (item: InFlight) => void
  /** The chunk with its frames ran: write the answers, and start offering held events. */
  readonly afterIngest: () => void
}

/** The ingest stages' pending chunk of one listener (its connections share it). */
export class IngestBatch {
  private readonly raws: Array<RawData> = []
  private readonly tickets: Array<number> = []
  private readonly sizes: Array<number> = []
  private readonly arrivals: Array<number> = []
  private readonly owners: Array<IngestSource> = []
  /** The connections with frames in the chunk, each once. */
  private readonly sources = new Set<IngestSource>()
  private scheduled = false
  private running = false
  private readonly ingest: Runner<RawData, Envelope, ValidationError>
  private readonly lanes: LanesShape
  private readonly tracer: MessageTracerShape

  constructor(ingest: Runner<RawData, Envelope, ValidationError>, lanes: LanesShape, tracer: MessageTracerShape) {
    this.ingest = ingest
    this.lanes = lanes
    this.tracer = tracer
  }

  /**
   * True while the chunk runs: its offers can shed another connection's message and make that
   * connection write, and whatever that sets off must not add to the chunk being run.
   */
  get busy(): boolean {
    return this.running
  }

  /** Adds a data frame of `source` (its ticket taken, its bytes charged); `arrivedAt` is `performance.now()` at its read. */
  add(source: IngestSource, raw: RawData, ticket: number, size: number, arrivedAt: number): void {
    this.raws.push(raw)
    this.tickets.push(ticket)
    this.sizes.push(size)
    this.arrivals.push(arrivedAt)
    this.owners.push(source)
    this.sources.add(source)
  }

  /** Runs the chunk once this turn's reads are handled (the check phase, right after them). */
  runSoon(): void {
    if (this.scheduled || this.raws.length === 0) return
    this.scheduled = true
    setImmediate(this.scheduledRun)
  }

  private readonly scheduledRun = () => {
    this.scheduled = false
    this.runNow()
  }

  /** Runs the chunk now (never inside a run: see {@link busy}). */
  runNow(): void {
    if (this.raws.length === 0 || this.running) return
    this.running = true
    let offered = 0
    try {
      offered = this.runStages()
    } finally {
      this.running = false
      // the arrays are reused (popped, not `length = 0`, which frees their storage)
      empty(this.raws)
      empty(this.tickets)
      empty(this.sizes)
      empty(this.arrivals)
      empty(this.owners)
    }
    if (offered > 0) this.lanes.notify()
    const told = [...this.sources]
    this.sources.clear()
    for (const source of told) source.afterIngest()
  }

  /** The stages over the chunk: stops answered, the rest offered; returns how many were offered. */
  private runStages(): number {
    const { raws, tickets, owners } = this
    const { passed, passedAt, stops, stoppedAt } = this.ingest.runSync(raws)
    if (stops.length > 0) {
      const tally = new Tally()
      for (let j = 0; j < stops.length; j++) {
        const at = stoppedAt[j]!
        const raw = raws[at]!
        const answer = answerOf(raw.seq, stops[j]!, raw.kind)
        owners[at]!.resolve(tickets[at]!, answer.frame)
        tally.add(raw.kind, answer.outcome)
        tally.addError(stops[j]!)
      }
      tally.record()
    }
    const tracer = this.tracer
    for (let i = 0; i < passed.length; i++) {
      const validated = passed[i]!
      const at = passedAt === undefined ? i : passedAt[i]!
      const arrivedAt = this.arrivals[at]!
      const traced = tracer.enabled
        ? tracer.start(validated.kind, validated.device, validated.seq, validated.traceparent ?? undefined, arrivedAt)
        : undefined
      const item: InFlight = {
        envelope: traced === undefined ? validated : { ...validated, traceparent: traced.traceparent },
        replier: owners[at]!,
        ticket: tickets[at]!,
        bytes: this.sizes[at]!,
        arrivedAt,
        span: traced?.span
      }
      if (item.envelope.kind === "telemetry") this.lanes.offerTelemetry(item)
      else owners[at]!.offerEvent(item)
    }
    return passed.length
  }
}

/** Empties an array and keeps its storage. */
const empty = (array: Array<unknown>): void => {
  while (array.length > 0) array.pop()
}
