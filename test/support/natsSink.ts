/**
 * Test support: driving the NATS sink in tests (its outcomes as plain arrays, waiting for its
 * readiness), shared by the sink's unit, chaos and cluster tests.
 */
import { Effect } from "effect"
import type { Envelope } from "../../src/domain/Envelope.ts"
import { MessageOutcome, type SinkDriver, type SinkHealth } from "../../src/sinks/Contract.ts"

/** Writes `batch`; its outcomes as an array, and the reasons. */
export const outcomesOf = (sink: SinkDriver, batch: ReadonlyArray<Envelope>) =>
  Effect.map(sink.write(batch), (r) => ({ outcomes: [...r.outcomes], reasons: r.reasons }))

/** Polls the sink's health every 50 ms until its readiness is `want`; dies after `ms`. */
export const healthBecomes = (sink: SinkDriver, want: boolean, ms: number): Effect.Effect<SinkHealth> =>
  Effect.gen(function*() {
    const deadline = Date.now() + ms
    for (;;) {
      const h = yield* sink.health
      if (h.ready === want) return h
      if (Date.now() > deadline) return yield* Effect.die(new Error(`health not ${want} within ${ms} ms: ${JSON.stringify(h)}`))
      yield* Effect.sleep("50 millis")
    }
  })

/** What {@link commitAll} saw. */
export interface CommitRun {
  /** The outcome that settled each message (Committed or Duplicate), by message id. */
  readonly settled: Map<string, number>
  /** How many times each id was answered Committed (more than once would mean stored twice). */
  readonly committedTimes: Map<string, number>
  /** When (Date.now()) each id was last answered Committed. */
  readonly committedAt: Map<string, number>
  batches: number
  readonly sinkErrors: Array<string>
  unavailable: number
  readonly rejected: Array<string>
}

/**
 * Writes `envelopes` through `sink` as the commit stage would: batches of `batchSize`, every
 * message not taken (Unavailable, or a failed batch) written again, with the same id, after
 * `retryMs`, until each is Committed or Duplicate (or Rejected, recorded) or `deadline` passes.
 */
export const commitAll = (
  sink: SinkDriver,
  envelopes: ReadonlyArray<Envelope>,
  options: { readonly batchSize: number; readonly retryMs: number; readonly deadlineMs: number; readonly idOf: (e: Envelope) => string }
): Effect.Effect<CommitRun> =>
  Effect.gen(function*() {
    const run: CommitRun = { settled: new Map(), committedTimes: new Map(), committedAt: new Map(), batches: 0, sinkErrors: [], unavailable: 0, rejected: [] }
    let pending: Array<Envelope> = [...envelopes]
    const deadline = Date.now() + options.deadlineMs
    while (pending.length > 0 && Date.now() < deadline) {
      const next: Array<Envelope> = []
      for (let from = 0; from < pending.length; from += options.batchSize) {
        const batch = pending.slice(from, from + options.batchSize)
        run.batches++
        const result = yield* Effect.result(sink.write(batch))
        if (result._tag === "Failure") {
          run.sinkErrors.push(`${result.failure.reason}: ${result.failure.message}`)
          next.push(...batch)
          yield* Effect.sleep(options.retryMs)
          continue
        }
        const { outcomes } = result.success
        for (let i = 0; i < batch.length; i++) {
          const e = batch[i] as Envelope
          const id = options.idOf(e)
          const o = outcomes[i]
          if (o === MessageOutcome.Committed || o === MessageOutcome.Duplicate) {
            run.settled.set(id, o)
            if (o === MessageOutcome.Committed) {
              run.committedTimes.set(id, (run.committedTimes.get(id) ?? 0) + 1)
              run.committedAt.set(id, Date.now())
            }
          } else if (o === MessageOutcome.Rejected) {
            run.rejected.push(id)
          } else {
            run.unavailable++
            next.push(e)
          }
        }
      }
      pending = next
      if (pending.length > 0) yield* Effect.sleep(options.retryMs)
    }
    return run
  })
