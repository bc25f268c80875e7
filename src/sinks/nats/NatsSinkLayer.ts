/**
 * GATEWAY_SINK=nats: the gateway's Sink service writing through the JetStream driver, with the
 * local SQLite store (in GATEWAY_DATA_DIR) keeping the dead letters ({@link fromDriver}).
 */
import { Effect, Layer } from "effect"
import { fromDriver } from "../DriverSink.ts"
import { Sink } from "../Sink.ts"
import * as SqliteSink from "../sqlite/SqliteSink.ts"
import { makeJetStreamSink } from "./JetStreamSink.ts"
import type { NatsSettings } from "./NatsSettings.ts"

/** The Sink service of NATS JetStream with `settings`; dead letters in the SQLite store of `local`. */
export const layer = (settings: NatsSettings, local: SqliteSink.SqliteSinkOptions) =>
  Layer.effect(
    Sink,
    Effect.gen(function*() {
      const deadLetters = yield* SqliteSink.make(local)
      const driver = yield* makeJetStreamSink(settings)
      return fromDriver(driver, deadLetters)
    })
  )
