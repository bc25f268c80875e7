/**
 * The sinks as the gateway runs them, built from its configuration: the embedded store (always:
 * it keeps the dead letters and the device states, and is the `sqlite` sink), the drivers the
 * routes name, each wrapped in its retries (and, for a remote sink, its circuit breaker and its
 * outbox) and put behind its own queue, and the router over them.
 */
import { Effect, Exit, Fiber, Layer, Option, Schedule, Scope } from "effect"
import { Lifecycle } from "../Lifecycle.ts"
import * as Path from "node:path"
import { workerIndex } from "../cluster/WorkerLink.ts"
import { record, sinkHealthy } from "../observability/Metrics.ts"
import { GatewayConfig } from "../config/GatewayConfig.ts"
import type { SinkDriver } from "./Contract.ts"
import { DeadLetters } from "./DeadLetters.ts"
import { DeviceState } from "./DeviceState.ts"
import { makeJetStreamSink } from "./nats/JetStreamSink.ts"
import { natsSettingsOf } from "./nats/NatsSettings.ts"
import { type OutboxedDriver, withOutbox } from "./outbox/Outbox.ts"
import { outboxSettings } from "./outbox/OutboxSettings.ts"
import { type BrokenDriver, withBreaker } from "./resilience/Breaker.ts"
import { retryPolicy, withRetry } from "./resilience/Retry.ts"
import { type RoutedSink, makeRouter, Router } from "./routing/Router.ts"
import { compile, parseSinkList, readRoutesFile, type RouteTable, type SinkName } from "./routing/Routes.ts"
import { makePostgresSink } from "./postgres/PostgresSink.ts"
import { postgresSettingsOf } from "./postgres/PostgresSettings.ts"
import { makeSinkQueue } from "./routing/SinkQueue.ts"
import { deadLettersItself, sqliteDriver } from "./sqlite/SqliteDriver.ts"
import * as SqliteSink from "./sqlite/SqliteSink.ts"

/**
 * Of what an outbox stores, how much its forwarder also keeps in memory (not read back from the
 * file): 8 MiB per remote sink, outside GATEWAY_MEMORY_BUDGET.
 */
export const OUTBOX_MEMORY_BYTES = 8 * 1024 * 1024

/** Batches the persistence loop keeps with a lone sink (while it commits one, the next is on its way). */
export const PIPELINE = 2

/** The routes of the configuration: the routes file's, or every message to GATEWAY_SINK. */
const routeTable = Effect.gen(function*() {
  const c = yield* GatewayConfig
  const sinks = yield* parseSinkList(c.sink)
  if (c.routesFile._tag === "None") return compile([], sinks)
  const file = yield* readRoutesFile(c.routesFile.value)
  return compile(file.routes, file.default ?? sinks)
})

/** What `/readyz` adds about a remote sink that is not in its normal state (breaker not closed, outbox not empty). */
const degradation = (breaker: BrokenDriver, outbox: OutboxedDriver | undefined): Effect.Effect<string | undefined> =>
  Effect.map(outbox?.depth ?? Effect.succeed(undefined), (depth) => {
    const parts: Array<string> = []
    if (breaker.state() !== "closed") parts.push(`breaker ${breaker.state()}`)
    if (depth !== undefined && depth.messages > 0) {
      const age = depth.oldestAgeMs === undefined ? "" : `, oldest ${Math.round(depth.oldestAgeMs / 1000)} s`
      parts.push(`outbox ${depth.messages} messages${age}`)
    }
    return parts.length === 0 ? undefined : parts.join("; ")
  })

/**
 * A remote driver in a scope of its own, whose closing (batches in flight waiting for their
 * answers, the connection draining) is waited for only as long as the drain deadline leaves
 * (at least 500 ms): a hung server must not hold the exit for its ack timeout. What is still
 * closing then goes on in the background until the process exits.
 */
const withinDrain = <A, E>(make: Effect.Effect<A, E, Scope.Scope>) =>
  Effect.gen(function*() {
    const lifecycle = yield* Lifecycle
    const scope = yield* Scope.make()
    yield* Effect.addFinalizer(() =>
      Effect.gen(function*() {
        const left = Math.max(500, yield* lifecycle.remainingMs)
        const closing = yield* Effect.forkDetach(Scope.close(scope, Exit.void))
        yield* Fiber.await(closing).pipe(Effect.timeoutOption(left))
      })
    )
    return yield* make.pipe(Scope.provide(scope))
  })

/** A remote sink's outbox file: one per sink and process (each worker of a node has its own). */
const outboxFile = (dataDir: string, sink: SinkName, worker: number | undefined) =>
  Path.join(dataDir, worker === undefined ? `outbox-${sink}.db` : `outbox-${sink}-w${worker}.db`)

/** True when SQLite is the only sink: a row it stores is then held by every sink of its route (lastSeq reads `messages`). */
const sqliteAlone = (table: RouteTable) => table.sinks.length === 1 && table.sinks[0] === "sqlite"

/** Router, dead letters, device states and the embedded store, from GatewayConfig. */
export const layer = Layer.unwrap(Effect.gen(function*() {
  const c = yield* GatewayConfig
  const table = yield* routeTable
  const local = SqliteSink.layer({
    dataDir: c.dataDir,
    synchronous: c.sqliteSync,
    maxBatchBytes: c.batchMaxBytes + c.maxFrameBytes,
    lastSeqFromMessages: sqliteAlone(table)
  })
  const alone = table.sinks.length === 1
  // an outboxed sink writes one batch at a time (what gathers meanwhile is merged into the next):
  // two in flight could fail in either order and reach the outbox, and the sink, out of order
  const queueSettings = (remote: boolean, outboxed: boolean) => ({
    capacity: alone ? 2 : 2,
    inFlight: outboxed ? 1 : PIPELINE,
    // the embedded store's writer thread has a heap sized for one batch: never merged
    maxMerge: remote ? c.batchMax : 1,
    stallMs: alone ? Infinity : c.sinkStallMs
  })
  const router = Layer.effect(
    Router,
    Effect.gen(function*() {
      const store = yield* SqliteSink.LocalStore
      const deadLetters = yield* DeadLetters
      const worker = Option.getOrUndefined(yield* workerIndex)
      const sinks = new Map<SinkName, RoutedSink>()
      for (const name of table.sinks) {
        const remote = name !== "sqlite"
        const driver: SinkDriver = name === "sqlite"
          ? sqliteDriver(store)
          : name === "nats"
          ? yield* withinDrain(makeJetStreamSink(natsSettingsOf(c)))
          : yield* withinDrain(makePostgresSink(postgresSettingsOf(c)))
        const retried = withRetry(driver, retryPolicy(c.storeRetries))
        const guarded = remote ? withBreaker(retried, { failures: c.breakerFailures, openMs: c.breakerOpenMs }) : undefined
        const outboxed = guarded !== undefined && c.outbox === "on"
          ? yield* withOutbox(guarded, outboxSettings(outboxFile(c.dataDir, name, worker), {
            maxBytes: c.outboxMaxBytes,
            maxMessages: c.outboxMaxMessages,
            drainBatch: c.outboxDrainBatch,
            synchronous: c.sqliteSync,
            memoryBytes: OUTBOX_MEMORY_BYTES
          }), (records) => deadLetters.write(records).pipe(Effect.catch((e) =>
            Effect.logWarning("dead letters not stored").pipe(Effect.annotateLogs({ count: records.length, error: e.message }))
          )))
          : undefined
        const queue = yield* makeSinkQueue(outboxed ?? guarded ?? retried, queueSettings(remote, outboxed !== undefined))
        sinks.set(name, {
          queue,
          deadLettersItself: name === "sqlite" && deadLettersItself,
          ...(guarded ? { detail: degradation(guarded, outboxed) } : {})
        })
      }
      const slots = alone ? PIPELINE * 2 : PIPELINE + table.sinks.length * (2 + PIPELINE)
      const router = yield* makeRouter(table, sinks, slots)
      // every sink's readiness as a gauge, once a second (the SQLite store also sets its own at once)
      yield* router.status.pipe(
        Effect.tap((all) => Effect.sync(() => all.forEach((s) => record(sinkHealthy(s.sink), s.health.ready ? 1 : 0)))),
        Effect.repeat(Schedule.spaced("1 second")),
        Effect.forkScoped
      )
      return router
    })
  )
  return router.pipe(
    Layer.provideMerge(Layer.mergeAll(DeadLetters.local, DeviceState.local(!sqliteAlone(table)))),
    Layer.provideMerge(local)
  )
}))
