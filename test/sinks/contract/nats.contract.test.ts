/**
 * The sink contract suite (suite.ts) against the NATS JetStream driver (JetStreamSink.ts) on a
 * PRIVATE `nats-server -js` of this file (free loopback ports, its own file store,
 * `max_payload: 16384`); every driver gets a fresh stream `DEVICES` (the server's streams are
 * deleted, the sink creates it). Read back with an ordered consumer (test/support/natsStream.ts).
 *
 * Unavailable, for real: the server killed (SIGKILL), and restarted on the same port and store.
 * Refused for good: a message whose payload is over the server's `max_payload`.
 */
import { Effect, Logger } from "effect"
import type { Envelope } from "../../../src/domain/Envelope.ts"
import { makeJetStreamSink } from "../../../src/sinks/nats/JetStreamSink.ts"
import { natsSettings } from "../../../src/sinks/nats/NatsSettings.ts"
import { telemetryEnvelope } from "../../support/envelopes.ts"
import { hasNatsServer, type NatsServer, requireNatsServer, startNatsServer, stopAllNatsServers } from "../../support/natsServer.ts"
import { deleteAllStreams, readStream } from "../../support/natsStream.ts"
import { contractSuite, type DriverInstance, type StoredKey, traceparentOf } from "./suite.ts"

requireNatsServer("The NATS sink contract tests")

const quiet = Effect.provide(Logger.layer([]))
const MAX_PAYLOAD = 16_384
const STREAM = "DEVICES"

let server: NatsServer | undefined

const running = (): NatsServer => {
  if (server === undefined) throw new Error("the private nats-server was not started")
  return server
}

/** What the stream holds for `keys`, by Nats-Msg-Id. */
const storedIn = async (s: NatsServer, keys: ReadonlyArray<string>): Promise<ReadonlyMap<string, StoredKey>> => {
  const wanted = new Set(keys)
  const out = new Map<string, { count: number; traceparent: boolean }>()
  for (const m of await readStream(s.url, STREAM)) {
    const id = m.msgId ?? "?"
    if (!wanted.has(id)) continue
    const seen = out.get(id)
    const traced = m.traceparent !== undefined
    out.set(id, seen === undefined ? { count: 1, traceparent: traced } : { count: seen.count + 1, traceparent: seen.traceparent && traced })
  }
  return out
}

const make = Effect.gen(function*() {
  const s = running()
  if (!s.running()) yield* Effect.promise(() => s.restart())
  yield* Effect.promise(() => deleteAllStreams(s.url))
  const sink = yield* makeJetStreamSink(natsSettings({ url: s.url, stream: STREAM, createStream: true, ackTimeoutMs: 2_000 }))
  return {
    driver: sink,
    stored: (keys) => Effect.promise(() => storedIn(s, keys)),
    outage: {
      kind: "outage",
      condition: "nats-server killed (SIGKILL), then restarted on its port and store",
      begin: Effect.promise(() => s.kill()),
      end: Effect.promise(async () => {
        if (!s.running()) await s.restart()
      })
    }
  } satisfies DriverInstance
}).pipe(quiet)

contractSuite("nats", {
  missing: hasNatsServer ? undefined : "nats-server is not installed",
  setup: async () => {
    server = await startNatsServer({ extraConfig: `max_payload: ${MAX_PAYLOAD}` })
  },
  teardown: stopAllNatsServers,
  make,
  refused: {
    what: `a payload over the server's max_payload (${MAX_PAYLOAD} bytes)`,
    make: (device: string, seq: number): Envelope => ({
      ...telemetryEnvelope(device, seq, { temp: 1 }, { blob: "x".repeat(MAX_PAYLOAD + 1_000) }),
      traceparent: traceparentOf(seq)
    })
  },
  healthDeadlineMs: 15_000,
  timeoutMs: 60_000
})
