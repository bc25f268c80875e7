/**
 * The NATS JetStream sink driver against a private `nats-server -js` (one per file, free port,
 * its own store): commits read back from the stream (subject, Nats-Msg-Id, traceparent,
 * payload with annotations), duplicates within the window, one message too large for the
 * stream or the connection rejected alone, subjects no stream (or another stream) takes, the
 * stream created at start with its configuration, health, and the start failures (missing
 * stream, bad NATS_URL, unreadable or wrong credentials) as one line naming the variable.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from "@effect/vitest"
import { credsAuthenticator } from "@nats-io/transport-node"
import { Effect, Exit, Logger, Option } from "effect"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import type { Envelope } from "../../../src/domain/Envelope.ts"
import { MessageOutcome, SinkError } from "../../../src/sinks/Contract.ts"
import { makeJetStreamSink } from "../../../src/sinks/nats/JetStreamSink.ts"
import { natsSettings, type NatsSettings } from "../../../src/sinks/nats/NatsSettings.ts"
import { NatsStartError } from "../../../src/sinks/nats/NatsStartError.ts"
import { hasOpenssl, makePki, type Pair, type TestCa } from "../../support/certs.ts"
import { eventEnvelope, telemetryEnvelope } from "../../support/envelopes.ts"
import { hasNatsServer, type NatsServer, prepareNatsServer, requireNatsServer, startNatsServer, stopAllNatsServers } from "../../support/natsServer.ts"
import { healthBecomes, outcomesOf } from "../../support/natsSink.ts"
import { addStream, deleteAllStreams, makeTestUser, readStream, withManager } from "../../support/natsStream.ts"

requireNatsServer("The NATS JetStream sink tests")

const quiet = Effect.provide(Logger.layer([]))
const { Committed, Duplicate, Rejected } = MessageOutcome

let server: NatsServer
let authServer: NatsServer
let dir = ""
let user: { readonly publicKey: string; readonly credsFile: string }
let stranger: { readonly publicKey: string; readonly credsFile: string }
let limited: { readonly publicKey: string; readonly credsFile: string }
let tlsServer: NatsServer | undefined
let pki: { readonly ca: TestCa; readonly foreign: TestCa; readonly client: Pair } | undefined

beforeAll(async () => {
  if (!hasNatsServer) return
  dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "gw-nats-sink-"))
  user = makeTestUser(dir, "gateway")
  stranger = makeTestUser(dir, "stranger")
  server = await startNatsServer({ extraConfig: "max_payload: 65536" })
  limited = makeTestUser(dir, "limited")
  authServer = await startNatsServer({
    extraConfig: `authorization { users = [ { nkey: ${user.publicKey} }, ` +
      `{ nkey: ${limited.publicKey}, permissions: { publish: { deny: ["devices.event.>"] } } } ] }`
  })
  if (hasOpenssl()) {
    const made = makePki(dir)
    pki = { ca: made.ca, foreign: made.foreign, client: made.ca.issue("gateway-client", "gateway-client") }
    tlsServer = await startNatsServer({
      extraConfig: `tls { cert_file: "${made.server.cert}", key_file: "${made.server.key}", ca_file: "${made.ca.cert}", verify: true }`
    })
  } else {
    console.warn("SKIPPED LOUDLY: the NATS TLS test needs the `openssl` command (apt-get install openssl)")
  }
}, 60_000)

afterEach(async () => {
  if (hasNatsServer) await deleteAllStreams(server.url)
})

afterAll(async () => {
  await stopAllNatsServers()
  if (dir !== "") Fs.rmSync(dir, { recursive: true, force: true })
})

const settings = (overrides: Partial<NatsSettings> = {}) => natsSettings({ url: server.url, ackTimeoutMs: 3_000, ...overrides })

const sinkWith = (overrides: Partial<NatsSettings> = {}) => makeJetStreamSink(settings(overrides)).pipe(quiet)

const devicesStream = (overrides: Record<string, unknown> = {}) =>
  Effect.promise(() => addStream(server.url, { name: "DEVICES", subjects: ["devices.>"], ...overrides }))

const startError = (overrides: Partial<NatsSettings>) =>
  Effect.gen(function*() {
    const exit = yield* Effect.exit(sinkWith(overrides))
    if (Exit.isSuccess(exit)) return yield* Effect.die(new Error("the sink started"))
    const error = Option.getOrUndefined(Exit.findErrorOption(exit))
    if (!(error instanceof NatsStartError)) return yield* Effect.die(new Error(`not a start error: ${String(error)}`))
    expect(error.line).not.toContain("\n")
    return error
  })

describe.runIf(hasNatsServer)("JetStreamSink", () => {
  it.live("commits a batch; the stream holds each message once with its subject, headers and payload", () =>
    Effect.gen(function*() {
      yield* devicesStream()
      const sink = yield* sinkWith()
      const traced: Envelope = { ...telemetryEnvelope("site:7_a-b", 1, { temp: 21.5 }, { room: "k" }), traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" }
      const annotated = { ...eventEnvelope("dev-2", 9, "door"), alerts: ["open too long"] } as Envelope
      const batch: Array<Envelope> = [traced, telemetryEnvelope("dev-1", 1), telemetryEnvelope("dev-1", 2), annotated]
      const r = yield* outcomesOf(sink, batch)
      expect(r.outcomes).toEqual([Committed, Committed, Committed, Committed])
      expect(r.reasons.size).toBe(0)

      const stored = yield* Effect.promise(() => readStream(server.url, "DEVICES"))
      expect(stored.map((m) => [m.subject, m.msgId, m.traceparent])).toEqual([
        ["devices.telemetry.site:7_a-b", "site:7_a-b:1:1", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"],
        ["devices.telemetry.dev-1", "dev-1:1:1", undefined],
        ["devices.telemetry.dev-1", "dev-1:1:2", undefined],
        ["devices.event.dev-2", "dev-2:1:9", undefined]
      ])
      expect(stored[0]?.payload).toEqual({
        device: "site:7_a-b",
        epoch: 1,
        seq: 1,
        kind: "telemetry",
        deviceTs: 1_700_000_000_001,
        receivedAt: 1_700_000_000_501,
        gateway: "gw-test",
        traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        body: { metrics: { temp: 21.5 }, tags: { room: "k" } }
      })
      expect(stored[3]?.payload).toEqual({
        device: "dev-2",
        epoch: 1,
        seq: 9,
        kind: "event",
        deviceTs: 1_700_000_000_009,
        receivedAt: 1_700_000_000_509,
        gateway: "gw-test",
        traceparent: null,
        body: { name: "door" },
        annotations: { alerts: ["open too long"] }
      })
      expect(yield* sink.health).toEqual({ ready: true })
    }))

  it.live("a resend within the duplicate window is Duplicate and stored once, also twice in one batch", () =>
    Effect.gen(function*() {
      yield* devicesStream()
      const sink = yield* sinkWith()
      const first = yield* outcomesOf(sink, [telemetryEnvelope("dev-1", 1), telemetryEnvelope("dev-1", 2)])
      expect(first.outcomes).toEqual([Committed, Committed])
      const again = yield* outcomesOf(sink, [telemetryEnvelope("dev-1", 1), telemetryEnvelope("dev-1", 2), telemetryEnvelope("dev-1", 3)])
      expect(again.outcomes).toEqual([Duplicate, Duplicate, Committed])
      // a second gateway (another connection) resending the same key is told Duplicate as well
      const other = yield* sinkWith({ clientName: "gateway-b" })
      expect((yield* outcomesOf(other, [telemetryEnvelope("dev-1", 3)])).outcomes).toEqual([Duplicate])
      // the same key twice in one pipelined batch: one is stored, the other is never Committed
      const twice = yield* outcomesOf(sink, [eventEnvelope("dev-9", 5), eventEnvelope("dev-9", 5)])
      expect(twice.outcomes.filter((o) => o === Committed)).toHaveLength(1)
      expect(twice.outcomes.filter((o) => o !== Committed)).toEqual([Duplicate])
      const stored = yield* Effect.promise(() => readStream(server.url, "DEVICES"))
      expect(stored.map((m) => m.msgId)).toEqual(["dev-1:1:1", "dev-1:1:2", "dev-1:1:3", "dev-9:1:5"])
    }))

  it.live("a message too large for the stream or the connection is Rejected alone; the others commit", () =>
    Effect.gen(function*() {
      yield* devicesStream({ max_msg_size: 4_096 })
      const sink = yield* sinkWith()
      const big = (seq: number, bytes: number): Envelope => ({
        ...telemetryEnvelope("dev-1", seq),
        kind: "telemetry",
        body: { metrics: { temp: 1 }, tags: { blob: "x".repeat(bytes) } }
      })
      const r = yield* outcomesOf(sink, [
        telemetryEnvelope("dev-1", 1),
        big(2, 5_000), // over the stream's max_msg_size: JetStream API error 10054
        telemetryEnvelope("dev-1", 3),
        big(4, 70_000), // over the server's max_payload: refused by the client before sending
        telemetryEnvelope("dev-1", 5)
      ])
      expect(r.outcomes).toEqual([Committed, Rejected, Committed, Rejected, Committed])
      expect(r.reasons.get(1)).toMatch(/maximum allowed \(10054\)/)
      expect(r.reasons.get(3)).toMatch(/max_payload/)
      expect([...r.reasons.keys()].sort()).toEqual([1, 3])
      const stored = yield* Effect.promise(() => readStream(server.url, "DEVICES"))
      expect(stored.map((m) => m.msgId)).toEqual(["dev-1:1:1", "dev-1:1:3", "dev-1:1:5"])
      expect(yield* sink.health).toEqual({ ready: true })
    }))

  it.live("a message a stage made unwritable (a BigInt) is Rejected alone", () =>
    Effect.gen(function*() {
      yield* devicesStream()
      const sink = yield* sinkWith()
      const bad = { ...telemetryEnvelope("dev-1", 2), huge: 10n } as Envelope
      const r = yield* outcomesOf(sink, [telemetryEnvelope("dev-1", 1), bad])
      expect(r.outcomes).toEqual([Committed, Rejected])
      expect(r.reasons.get(1)).toMatch(/BigInt/)
    }))

  it.live("a subject the stream does not take is Rejected; one another stream takes is Rejected, not stored there", () =>
    Effect.gen(function*() {
      yield* devicesStream({ subjects: ["devices.telemetry.>"] })
      const sink = yield* sinkWith()
      expect(sink.stream()?.warnings.some((w) => w.includes("devices.event.*"))).toBe(true)
      const r = yield* outcomesOf(sink, [telemetryEnvelope("dev-1", 1), eventEnvelope("dev-1", 2)])
      expect(r.outcomes).toEqual([Committed, Rejected])
      expect(r.reasons.get(1)).toMatch(/no stream takes subject devices\.event\.dev-1/)

      yield* Effect.promise(() => addStream(server.url, { name: "OTHER", subjects: ["devices.event.>"] }))
      const r2 = yield* outcomesOf(sink, [eventEnvelope("dev-1", 3), telemetryEnvelope("dev-1", 4)])
      expect(r2.outcomes).toEqual([Rejected, Committed])
      expect(r2.reasons.get(0)).toMatch(/expected stream does not match \(10060\)/)
      const other = yield* Effect.promise(() => readStream(server.url, "OTHER"))
      expect(other).toEqual([])
      const devices = yield* Effect.promise(() => readStream(server.url, "DEVICES"))
      expect(devices.map((m) => m.msgId)).toEqual(["dev-1:1:1", "dev-1:1:4"])
    }))

  it.live("health follows the writes: the stream deleted under a connected sink makes it not ready at once; recreated, ready", () =>
    Effect.gen(function*() {
      yield* devicesStream()
      const sink = yield* sinkWith()
      expect((yield* outcomesOf(sink, [telemetryEnvelope("dev-1", 1)])).outcomes).toEqual([Committed])
      expect(yield* sink.health).toEqual({ ready: true })
      yield* Effect.promise(() => deleteAllStreams(server.url))
      // still connected, the cached answer (ready) is fresh: the failed write replaces it
      const failed = yield* Effect.flip(sink.write([telemetryEnvelope("dev-1", 2)]))
      expect(failed.reason).toBe("unavailable")
      expect(failed.message).toMatch(/no responders for devices\.telemetry\.dev-1/)
      expect(yield* sink.health).toMatchObject({ ready: false, reason: "unavailable" })
      // once that answer is a second old, the probe says why: the stream is gone
      yield* Effect.sleep("1100 millis")
      const deadline = Date.now() + 3_000
      let h = yield* sink.health
      while (h.ready === false && h.reason !== "misconfigured" && Date.now() < deadline) {
        yield* Effect.sleep("20 millis")
        h = yield* sink.health
      }
      expect(h).toEqual({ ready: false, reason: "misconfigured", message: "stream DEVICES does not exist" })
      yield* devicesStream()
      yield* healthBecomes(sink, true, 3_000)
      expect((yield* outcomesOf(sink, [telemetryEnvelope("dev-1", 2)])).outcomes).toEqual([Committed])
    }))

  it.live("creates the stream at start with its configuration, and uses an existing one as it is", () =>
    Effect.gen(function*() {
      const sink = yield* sinkWith({ createStream: true, stream: "FLEET", storage: "memory", duplicateWindowMs: 30_000, replicas: 1 })
      expect(sink.stream()).toMatchObject({ name: "FLEET", subjects: ["devices.>"], storage: "memory", duplicateWindowMs: 30_000, replicas: 1, created: true })
      const config = yield* Effect.promise(() => withManager(server.url, async (jsm) => (await jsm.streams.info("FLEET")).config))
      expect(config).toMatchObject({ name: "FLEET", subjects: ["devices.>"], storage: "memory", duplicate_window: 30_000_000_000, num_replicas: 1 })
      expect((yield* outcomesOf(sink, [telemetryEnvelope("dev-1", 1)])).outcomes).toEqual([Committed])

      // a second start finds it (not created again, not changed), and warns that its window is
      // shorter than the configured one
      const again = yield* sinkWith({ createStream: true, stream: "FLEET", storage: "file", duplicateWindowMs: 120_000 })
      expect(again.stream()).toMatchObject({ storage: "memory", duplicateWindowMs: 30_000, created: false })
      expect(again.stream()?.warnings.some((w) => /duplicate window of 30000 ms, shorter than NATS_DUPLICATE_WINDOW_MS/.test(w))).toBe(true)
      expect((yield* outcomesOf(again, [telemetryEnvelope("dev-1", 1)])).outcomes).toEqual([Duplicate])
    }))

  it.live("a missing stream without NATS_STREAM_CREATE stops the start with one line naming NATS_STREAM", () =>
    Effect.gen(function*() {
      const error = yield* startError({ stream: "NOPE" })
      expect(error.variable).toBe("NATS_STREAM")
      expect(error.reason).toBe("misconfigured")
      expect(error.line).toBe("nats sink: NATS_STREAM: stream NOPE does not exist on the server (create it, or set NATS_STREAM_CREATE=true)")
      // replicas a single server cannot give, when creating: newer servers refuse them (a start
      // failure naming NATS_REPLICAS), older ones (2.9) create the stream with one (a warning)
      const replicas = yield* Effect.exit(sinkWith({ createStream: true, replicas: 3 }))
      if (Exit.isSuccess(replicas)) {
        expect(replicas.value.stream()).toMatchObject({ replicas: 1, created: true })
        expect(replicas.value.stream()?.warnings.some((w) => w.includes("1 replica(s), not NATS_REPLICAS=3"))).toBe(true)
      } else {
        const error = Option.getOrUndefined(Exit.findErrorOption(replicas))
        expect(error).toBeInstanceOf(NatsStartError)
        if (error instanceof NatsStartError) expect(error.line).toMatch(/^nats sink: NATS_REPLICAS: stream DEVICES cannot be created: replicas > 1/)
      }
    }))

  it.live("a bad NATS_URL, unreadable files and unpaired TLS files stop the start with one line", () =>
    Effect.gen(function*() {
      const scheme = yield* startError({ url: `http://127.0.0.1:${server.port}` })
      expect(scheme.line).toBe(`nats sink: NATS_URL: unsupported scheme "http://" in "http://127.0.0.1:${server.port}": expected nats://host:port or tls://host:port`)
      const inUrl = yield* startError({ url: `nats://u:p@127.0.0.1:${server.port}` })
      expect(inUrl.line).toMatch(/NATS_URL: credentials in the URL .* use NATS_CREDS/)
      const noCreds = yield* startError({ credsFile: Path.join(dir, "missing.creds") })
      expect(noCreds.variable).toBe("NATS_CREDS")
      expect(noCreds.line).toMatch(/missing\.creds cannot be read/)
      const notCreds = Path.join(dir, "not.creds")
      Fs.writeFileSync(notCreds, "hello\n")
      expect((yield* startError({ credsFile: notCreds })).line).toMatch(/is not a NATS credentials file/)
      const tls = yield* startError({ tlsCert: user.credsFile })
      expect(tls.variable).toBe("NATS_TLS_KEY")
    }))

  it.live("credentials: a valid creds file connects; wrong ones, or none, stop the start with one line", () =>
    Effect.gen(function*() {
      const sink = yield* sinkWith({ url: authServer.url, credsFile: user.credsFile, createStream: true })
      expect((yield* outcomesOf(sink, [telemetryEnvelope("dev-1", 1)])).outcomes).toEqual([Committed])
      const wrong = yield* startError({ url: authServer.url, credsFile: stranger.credsFile })
      expect(wrong.variable).toBe("NATS_CREDS")
      expect(wrong.line).toMatch(/authentication failed: Authorization Violation/)
      const none = yield* startError({ url: authServer.url })
      expect(none.variable).toBe("NATS_URL")
      expect(none.line).toMatch(/authentication failed/)
    }))

  it.live("a publish the credentials may not make is Unavailable for that message alone (permission denied)", () =>
    Effect.gen(function*() {
      const sink = yield* sinkWith({ url: authServer.url, credsFile: limited.credsFile, createStream: true })
      const r = yield* outcomesOf(sink, [telemetryEnvelope("dev-p", 1), eventEnvelope("dev-p", 2), telemetryEnvelope("dev-p", 3)])
      expect(r.outcomes).toEqual([Committed, MessageOutcome.Unavailable, Committed])
      expect(r.reasons.get(1)).toMatch(/permission denied: Permissions Violation for Publish to "devices\.event\.dev-p"/)
      const stored = yield* Effect.promise(() => readStream(authServer.url, "DEVICES", { authenticator: credsAuthenticator(Fs.readFileSync(user.credsFile)) }))
      expect(stored.map((m) => m.msgId).filter((id) => id?.startsWith("dev-p:"))).toEqual(["dev-p:1:1", "dev-p:1:3"])
    }))

  it.live.runIf(hasOpenssl())("TLS: with NATS_TLS_CA and a client certificate it commits; a foreign CA or none stops the start", () =>
    Effect.gen(function*() {
      if (tlsServer === undefined || pki === undefined) return yield* Effect.die(new Error("no TLS server"))
      const { ca, foreign, client } = pki
      const url = tlsServer.url.replace("nats://", "tls://")
      const sink = yield* sinkWith({ url, tlsCa: ca.cert, tlsCert: client.cert, tlsKey: client.key, createStream: true })
      expect((yield* outcomesOf(sink, [telemetryEnvelope("dev-1", 1)])).outcomes).toEqual([Committed])
      expect(yield* sink.health).toEqual({ ready: true })
      const wrongCa = yield* startError({ url, tlsCa: foreign.cert, tlsCert: client.cert, tlsKey: client.key })
      expect(wrongCa.variable).toBe("NATS_TLS_CA")
      expect(wrongCa.line).toMatch(/TLS: unable to verify/)
      const noCa = yield* startError({ url: tlsServer.url })
      expect(noCa.variable).toBe("NATS_URL")
      expect(noCa.line).toMatch(/TLS: unable to verify/)
      // without a client certificate the server ends the handshake and the client only sees a
      // timeout: not a start failure, the sink starts not ready and keeps trying
      const noCert = yield* sinkWith({ url, tlsCa: ca.cert, ackTimeoutMs: 1_000 })
      const h = yield* noCert.health
      expect(h).toMatchObject({ ready: false, reason: "timeout" })
    }), 30_000)

  it.live("unreachable at start: starts not ready and without a stream; ready once a server answers there", () =>
    Effect.gen(function*() {
      const later = yield* Effect.promise(() => prepareNatsServer())
      const sink = yield* sinkWith({ url: later.url, createStream: true })
      const down = yield* sink.health
      expect(down.ready).toBe(false)
      if (!down.ready) expect(down.reason).toBe("unreachable")
      const failed = yield* Effect.flip(sink.write([telemetryEnvelope("dev-1", 1)]))
      expect(failed).toBeInstanceOf(SinkError)
      expect(failed.reason).toBe("unreachable")
      expect(failed.retryable).toBe(true)
      later.start()
      yield* Effect.promise(() => later.ready())
      yield* healthBecomes(sink, true, 15_000)
      expect(sink.stream()?.created).toBe(true)
      expect((yield* outcomesOf(sink, [telemetryEnvelope("dev-1", 1)])).outcomes).toEqual([Committed])
      yield* Effect.promise(() => later.stop())
    }), 30_000)
})
