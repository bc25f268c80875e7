/**
 * The router: every message to the sinks of its route ({@link RouteTable}), each sink through
 * its own queue ({@link SinkQueue}). A message is Committed once every sink of its route
 * committed it (Duplicate when all of them already held it); Rejected when one refused it for
 * good (kept as a dead letter, unless that sink keeps its own); Unavailable when one could not
 * take it now (a failed batch, an open breaker, a full queue), so its device resends it and the
 * sinks that did take it report the resend as a duplicate. Confirmed messages raise their
 * devices' state ({@link DeviceState}). The router never fails: whatever went wrong is in the
 * outcomes, with a reason per message.
 */
import { Context, Effect } from "effect"
import type { Envelope } from "../../domain/Envelope.ts"
import { type BatchResult, MessageOutcome, type SinkError, type SinkHealth } from "../Contract.ts"
import { type DeadLetter, DeadLetters } from "../DeadLetters.ts"
import { DeviceState } from "../DeviceState.ts"
import type { RouteTable, SinkName } from "./Routes.ts"
import { allUnavailable, type SinkQueue } from "./SinkQueue.ts"

/** A sink as the router sees it. */
export interface RoutedSink {
  readonly queue: SinkQueue
  /** True when the sink keeps its own dead letters (SQLite, in its batch's transaction). */
  readonly deadLettersItself: boolean
  /** A line about its resilience state for `/readyz` (breaker, outbox), when it has one. */
  readonly detail?: Effect.Effect<string | undefined>
}

/** One sink's readiness, for `/readyz` and `gateway_sink_healthy`. */
export interface SinkStatus {
  readonly sink: string
  readonly health: SinkHealth
  readonly detail: string | undefined
}

/** The router service. */
export interface RouterShape {
  readonly table: RouteTable
  /** Writes `batch` to the sinks of each message's route: one outcome per message. */
  readonly write: (batch: ReadonlyArray<Envelope>) => Effect.Effect<BatchResult>
  /** Every sink's readiness. */
  readonly status: Effect.Effect<ReadonlyArray<SinkStatus>>
  /** Batches the persistence loop may have with the sinks at once. */
  readonly slots: number
  /** The sinks' names, for logs and spans (`sqlite`, `nats+postgres`). */
  readonly names: string
}

/** Where committed messages go. */
export class Router extends Context.Service<Router, RouterShape>()("gateway/Router") {}

/** A router over `sinks` by `table`; `slots` batches in flight at once. */
export const makeRouter = (
  table: RouteTable,
  sinks: ReadonlyMap<SinkName, RoutedSink>,
  slots: number
): Effect.Effect<RouterShape, never, DeadLetters | DeviceState> =>
  Effect.gen(function*() {
    const deadLetters = yield* DeadLetters
    const state = yield* DeviceState

    /** One route's share: every sink of the route, at once, outcomes combined. */
    const writeRoute = (route: ReadonlyArray<SinkName>, batch: ReadonlyArray<Envelope>) =>
      Effect.forEach(route, (name) => {
        const sink = sinks.get(name)!
        return sink.queue.submit(batch).pipe(
          Effect.catch((e: SinkError) =>
            Effect.as(
              Effect.logWarning("sink batch failed").pipe(
                Effect.annotateLogs({ sink: name, size: batch.length, reason: e.reason, error: e.message })
              ),
              allUnavailable(batch.length, `${e.reason}: ${e.message}`)
            )
          ),
          Effect.map((result) => ({ name, sink, result }))
        )
      }, { concurrency: "unbounded" }).pipe(
        Effect.flatMap((results) => {
          const combined = combine(batch.length, results)
          const letters = lettersOf(batch, results)
          state.confirmed(batch, combined.outcomes)
          return letters.length === 0 ? Effect.succeed(combined) : deadLetters.write(letters).pipe(
            Effect.catch((e) =>
              Effect.logWarning("dead letters not stored").pipe(Effect.annotateLogs({ count: letters.length, error: e.message }))
            ),
            Effect.as(combined)
          )
        })
      )

    const write = (batch: ReadonlyArray<Envelope>): Effect.Effect<BatchResult> =>
      Effect.suspend(() => {
        if (table.routes.length === 1) return writeRoute(table.routes[0]!, batch)
        // split by route, write the shares at once, put the outcomes back in batch order
        const shares = new Map<number, { items: Array<Envelope>; at: Array<number> }>()
        for (let i = 0; i < batch.length; i++) {
          const r = table.routeOf(batch[i]!)
          let share = shares.get(r)
          if (share === undefined) shares.set(r, share = { items: [], at: [] })
          share.items.push(batch[i]!)
          share.at.push(i)
        }
        if (shares.size === 1) return writeRoute(table.routes[shares.keys().next().value!]!, batch)
        return Effect.forEach(shares, ([r, share]) =>
          Effect.map(writeRoute(table.routes[r]!, share.items), (result) => ({ share, result })), { concurrency: "unbounded" }).pipe(
          Effect.map((parts) => {
            const outcomes = new Uint8Array(batch.length)
            const reasons = new Map<number, string>()
            for (const { share, result } of parts) {
              for (let j = 0; j < share.at.length; j++) outcomes[share.at[j]!] = result.outcomes[j]!
              for (const [j, why] of result.reasons) reasons.set(share.at[j]!, why)
            }
            return { outcomes, reasons }
          })
        )
      })

    const status = Effect.forEach([...sinks], ([name, sink]) =>
      Effect.all({ health: sink.queue.health, detail: sink.detail ?? Effect.succeed(undefined) }).pipe(
        Effect.map(({ detail, health }): SinkStatus => ({ sink: name, health, detail }))
      ))

    return { table, write, status, slots, names: table.sinks.join("+") }
  })

/** Per message: Rejected by any sink wins, then Unavailable by any, then Duplicate by all, else Committed. */
const combine = (size: number, results: ReadonlyArray<{ readonly name: string; readonly result: BatchResult }>): BatchResult => {
  if (results.length === 1) return results[0]!.result
  const outcomes = new Uint8Array(size)
  const reasons = new Map<number, string>()
  for (let i = 0; i < size; i++) {
    let rejected: string | undefined
    let unavailable: string | undefined
    let allDuplicate = true
    for (const { name, result } of results) {
      const o = result.outcomes[i]
      if (o === MessageOutcome.Rejected) rejected ??= `${name}: ${result.reasons.get(i) ?? "rejected"}`
      else if (o === MessageOutcome.Unavailable) unavailable ??= `${name}: ${result.reasons.get(i) ?? "unavailable"}`
      if (o !== MessageOutcome.Duplicate) allDuplicate = false
    }
    if (rejected !== undefined) {
      outcomes[i] = MessageOutcome.Rejected
      reasons.set(i, rejected)
    } else if (unavailable !== undefined) {
      outcomes[i] = MessageOutcome.Unavailable
      reasons.set(i, unavailable)
    } else outcomes[i] = allDuplicate ? MessageOutcome.Duplicate : MessageOutcome.Committed
  }
  return { outcomes, reasons }
}

/** The dead letters of the messages refused by sinks that do not keep their own. */
const lettersOf = (
  batch: ReadonlyArray<Envelope>,
  results: ReadonlyArray<{ readonly name: string; readonly sink: RoutedSink; readonly result: BatchResult }>
) => {
  const letters: Array<DeadLetter> = []
  for (const { name, result, sink } of results) {
    if (sink.deadLettersItself) continue
    for (let i = 0; i < result.outcomes.length; i++) {
      if (result.outcomes[i] === MessageOutcome.Rejected) {
        letters.push({ envelope: batch[i]!, reason: `sink ${name}: ${result.reasons.get(i) ?? "rejected"}` })
      }
    }
  }
  return letters
}
