/**
 * The sinks as the gateway runs them, built from its configuration: the embedded store (always:
 * it keeps the dead letters and the device states, and is the `sqlite` sink), the drivers the
 * routes name, each wrapped in its retries (and, for a remote sink, its circuit breaker) and put
 * behind its own queue, and the router over them.
 */
import { Effect, Layer, Schedule } from "effect"
import { record, sinkHealthy } from "../observability/Metrics.ts"
import { GatewayConfig } from "../config/GatewayConfig.ts"
import type { SinkDriver } from "./Contract.ts"
import { DeadLetters } from "./DeadLetters.ts"
import { DeviceState } from "./DeviceState.ts"
import { makeJetStreamSink } from "./nats/JetStreamSink.ts"
import { natsSettingsOf } from "./nats/NatsSettings.ts"
import { withBreaker } from "./resilience/Breaker.ts"
import { retryPolicy, withRetry } from "./resilience/Retry.ts"
import { type RoutedSink, makeRouter, Router } from "./routing/Router.ts"
import { compile, parseSinkList, readRoutesFile, type RouteTable, type SinkName } from "./routing/Routes.ts"
import { makePostgresSink } from "./postgres/PostgresSink.ts"
import { postgresSettingsOf } from "./postgres/PostgresSettings.ts"
import { makeSinkQueue } from "./routing/SinkQueue.ts"
import { deadLettersItself, sqliteDriver } from "./sqlite/SqliteDriver.ts"
import * as SqliteSink from "./sqlite/SqliteSink.ts"

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

/** True when SQLite is the only sink: its batches then raise the device states themselves. */
const sqliteAlone = (table: RouteTable) => table.sinks.length === 1 && table.sinks[0] === "sqlite"

/** Router, dead letters, device states and the embedded store, from GatewayConfig. */
export const layer = Layer.unwrap(Effect.gen(function*() {
  const c = yield* GatewayConfig
  const table = yield* routeTable
  const local = SqliteSink.layer({
    dataDir: c.dataDir,
    synchronous: c.sqliteSync,
    maxBatchBytes: c.batchMaxBytes + c.maxFrameBytes,
    statesInBatch: sqliteAlone(table)
  })
  const alone = table.sinks.length === 1
  const queueSettings = (remote: boolean) => ({
    capacity: alone ? 2 : 2,
    inFlight: PIPELINE,
    // the embedded store's writer thread has a heap sized for one batch: never merged
    maxMerge: remote ? c.batchMax : 1,
    stallMs: alone ? Infinity : c.sinkStallMs
  })
  const router = Layer.effect(
    Router,
    Effect.gen(function*() {
      const store = yield* SqliteSink.LocalStore
      const sinks = new Map<SinkName, RoutedSink>()
      for (const name of table.sinks) {
        const remote = name !== "sqlite"
        const driver: SinkDriver = name === "sqlite"
          ? sqliteDriver(store)
          : name === "nats"
          ? yield* makeJetStreamSink(natsSettingsOf(c))
          : yield* makePostgresSink(postgresSettingsOf(c))
        const retried = withRetry(driver, retryPolicy(c.storeRetries))
        const guarded = remote ? withBreaker(retried, { failures: c.breakerFailures, openMs: c.breakerOpenMs }) : undefined
        const queue = yield* makeSinkQueue(guarded ?? retried, queueSettings(remote))
        sinks.set(name, {
          queue,
          deadLettersItself: name === "sqlite" && deadLettersItself,
          ...(guarded ? { detail: Effect.sync(() => `breaker ${guarded.state()}`) } : {})
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
