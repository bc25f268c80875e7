/**
 * The NATS JetStream sink's throughput and ack latency next to the physical limit, in one run
 * against one private `nats-server -js` (file store, a stream `DEVICES` on `devices.>`):
 * - `driver`: the sink (src/sinks/nats/JetStreamSink.ts) given batches of `batch` envelopes as
 *   the commit stage sends them: subject, JSON payload with annotations, Nats-Msg-Id,
 *   Nats-Expected-Stream and traceparent headers, outcomes per message, one Effect per batch;
 * - `bare`: a bare pipelined publisher into the same stream: the same messages already encoded
 *   (payload bytes made before the clock starts), one header (Nats-Msg-Id) each, one inbox
 *   subscription, PubAcks counted, nothing else: what the server and the client library allow;
 * - `js.publish`: the client library's own pipelined `js.publish` per message (a promise and a
 *   timer each), for reference, on a tenth of the messages (after a warm-up of as many).
 * Rounds alternate bare and driver (the stream purged before each), the median round is kept;
 * ack latency is per batch (first publish to last PubAck). Wired into `npm run bench` by
 * bench/run.ts (`runNatsBench`, `natsTable`); alone: `node bench/nats.ts [--messages N]`.
 */
import { jetstream, jetstreamManager } from "@nats-io/jetstream"
import { connect, createInbox, headers, type NatsConnection } from "@nats-io/transport-node"
import { Effect, Logger } from "effect"
import { parseArgs } from "node:util"
import type { Envelope } from "../src/domain/Envelope.ts"
import { MessageOutcome, messageId } from "../src/sinks/Contract.ts"
import { makeJetStreamSink } from "../src/sinks/nats/JetStreamSink.ts"
import { payloadOf, subjectOf } from "../src/sinks/nats/NatsMessage.ts"
import { natsSettings } from "../src/sinks/nats/NatsSettings.ts"
import { startNatsServer } from "../test/support/natsServer.ts"

/** Options of the NATS benchmark. */
export interface NatsBenchOptions {
  /** Messages per round and publisher (default 100,000). */
  readonly messages?: number
  /** Envelopes per batch (default 1,000). */
  readonly batch?: number
  /** Rounds per publisher (default 3; the median is reported). */
  readonly rounds?: number
  /** NATS storage of the stream (default file). */
  readonly storage?: "file" | "memory"
}

/** One publisher's figures (its median round). */
export interface NatsBenchRow {
  readonly name: string
  readonly messages: number
  readonly msgsPerSec: number
  readonly ackP50Ms: number
  readonly ackP99Ms: number
  readonly ackMaxMs: number
}

/** The benchmark's result. */
export interface NatsBenchResult {
  readonly rows: ReadonlyArray<NatsBenchRow>
  /** driver msgs/s ÷ bare msgs/s (goal ≥ 0.8). */
  readonly ratio: number
  readonly serverVersion: string
  readonly payloadBytes: number
  readonly batch: number
  readonly storage: "file" | "memory"
}

const quantile = (sorted: ReadonlyArray<number>, q: number): number =>
  sorted.length === 0 ? 0 : (sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? 0)

const rowOf = (name: string, messages: number, elapsedMs: number, batchMs: Array<number>): NatsBenchRow => {
  const sorted = [...batchMs].sort((a, b) => a - b)
  return {
    name,
    messages,
    msgsPerSec: Math.round(messages / (elapsedMs / 1000)),
    ackP50Ms: quantile(sorted, 0.5),
    ackP99Ms: quantile(sorted, 0.99),
    ackMaxMs: sorted[sorted.length - 1] ?? 0
  }
}

/** The envelopes of a round: 1,000 devices, telemetry as devices send it, a third traced. */
const envelopesFor = (round: string, n: number): Array<Envelope> =>
  Array.from({ length: n }, (_, i): Envelope => ({
    device: `dev-${round}-${i % 1_000}`,
    epoch: 1,
    seq: Math.floor(i / 1_000),
    kind: "telemetry",
    deviceTs: 1_700_000_000_000 + i,
    receivedAt: 1_700_000_000_050 + i,
    gateway: "bench-gw",
    traceparent: i % 3 === 0 ? `00-${"4bf92f3577b34da6a3ce929d0e0e4736"}-${i.toString(16).padStart(16, "0")}-01` : null,
    body: { metrics: { temp: 20 + (i % 10), rpm: 1200, v: 3.3 }, tags: { site: "plant-7" } }
  }))

/** The bare publisher: pre-encoded messages, one inbox, one header, PubAcks counted. */
const bareRound = async (nc: NatsConnection, envelopes: ReadonlyArray<Envelope>, batch: number): Promise<{ elapsedMs: number; batchMs: Array<number> }> => {
  const te = new TextEncoder()
  const subjects = envelopes.map(subjectOf)
  const payloads = envelopes.map((e) => te.encode(payloadOf(e)))
  const ids = envelopes.map(messageId)
  const inbox = createInbox()
  let waiting = 0
  let failed = 0
  let wake: () => void = () => undefined
  const sub = nc.subscribe(`${inbox}.*`, {
    callback: (_err, m) => {
      if (m.data.length === 0 || m.data[2] === 101) failed++ // 503 status, or {"error":...}
      if (--waiting === 0) wake()
    }
  })
  const batchMs: Array<number> = []
  const started = performance.now()
  for (let from = 0; from < envelopes.length; from += batch) {
    const t0 = performance.now()
    const to = Math.min(envelopes.length, from + batch)
    const done = new Promise<void>((resolve) => (wake = resolve))
    waiting = to - from
    for (let i = from; i < to; i++) {
      const h = headers()
      h.set("Nats-Msg-Id", ids[i] ?? "")
      nc.publish(subjects[i] ?? "", payloads[i], { reply: `${inbox}.${i}`, headers: h })
    }
    await done
    batchMs.push(performance.now() - t0)
  }
  const elapsedMs = performance.now() - started
  sub.unsubscribe()
  if (failed > 0) throw new Error(`bare publisher: ${failed} messages not stored`)
  return { elapsedMs, batchMs }
}

/** The client library's own pipelined js.publish, per message. */
const jsPublishRound = async (nc: NatsConnection, envelopes: ReadonlyArray<Envelope>, batch: number) => {
  const js = jetstream(nc, { timeout: 30_000 })
  const payloads = envelopes.map(payloadOf)
  const batchMs: Array<number> = []
  const started = performance.now()
  for (let from = 0; from < envelopes.length; from += batch) {
    const t0 = performance.now()
    const acks: Array<Promise<unknown>> = []
    for (let i = from; i < Math.min(envelopes.length, from + batch); i++) {
      const e = envelopes[i] as Envelope
      acks.push(js.publish(subjectOf(e), payloads[i], { msgID: messageId(e) }))
    }
    await Promise.all(acks)
    batchMs.push(performance.now() - t0)
  }
  return { elapsedMs: performance.now() - started, batchMs }
}

/** Runs the benchmark on a private server it starts and stops. */
export const runNatsBench = async (options: NatsBenchOptions = {}): Promise<NatsBenchResult> => {
  const messages = options.messages ?? 100_000
  const batch = options.batch ?? 1_000
  const rounds = options.rounds ?? 3
  const storage = options.storage ?? "file"
  const server = await startNatsServer()
  const nc = await connect({ servers: server.url, noAsyncTraces: true })
  try {
    const jsm = await jetstreamManager(nc)
    await jsm.streams.add({ name: "DEVICES", subjects: ["devices.>"], storage: storage === "memory" ? "memory" : "file", duplicate_window: 120_000_000_000 })
    const serverVersion = nc.info?.version ?? "?"
    const purge = () => jsm.streams.purge("DEVICES")

    const bare: Array<NatsBenchRow> = []
    const driver: Array<NatsBenchRow> = []
    const quietly = Effect.provide(Logger.layer([]))
    await Effect.runPromise(Effect.scoped(Effect.gen(function*() {
      const sink = yield* makeJetStreamSink(natsSettings({ url: server.url, ackTimeoutMs: 30_000 }))
      const driverRound = (envelopes: ReadonlyArray<Envelope>) =>
        Effect.gen(function*() {
          const batchMs: Array<number> = []
          const started = performance.now()
          for (let from = 0; from < envelopes.length; from += batch) {
            const t0 = performance.now()
            const r = yield* sink.write(envelopes.slice(from, from + batch))
            batchMs.push(performance.now() - t0)
            for (const o of r.outcomes) if (o !== MessageOutcome.Committed) return yield* Effect.die(new Error(`driver: outcome ${o}`))
          }
          return { elapsedMs: performance.now() - started, batchMs }
        })
      // warm-up (JIT, server file store) for both
      yield* Effect.promise(() => bareRound(nc, envelopesFor("warm-b", 20_000), batch))
      yield* driverRound(envelopesFor("warm-d", 20_000))
      for (let r = 0; r < rounds; r++) {
        yield* Effect.promise(purge)
        const b = yield* Effect.promise(() => bareRound(nc, envelopesFor(`b${r}`, messages), batch))
        bare.push(rowOf("bare pipelined publisher", messages, b.elapsedMs, b.batchMs))
        yield* Effect.promise(purge)
        const d = yield* driverRound(envelopesFor(`d${r}`, messages))
        driver.push(rowOf("JetStreamSink (driver)", messages, d.elapsedMs, d.batchMs))
      }
    })).pipe(quietly))

    await purge()
    const jsMessages = Math.max(batch, Math.floor(messages / 10))
    await jsPublishRound(nc, envelopesFor("js-warm", jsMessages), batch)
    await purge()
    const j = await jsPublishRound(nc, envelopesFor("js", jsMessages), batch)
    const median = (rows: Array<NatsBenchRow>) => [...rows].sort((a, b) => a.msgsPerSec - b.msgsPerSec)[Math.floor(rows.length / 2)] as NatsBenchRow
    const bareRow = median(bare)
    const driverRow = median(driver)
    return {
      rows: [bareRow, driverRow, rowOf("js.publish per message (library)", jsMessages, j.elapsedMs, j.batchMs)],
      ratio: driverRow.msgsPerSec / bareRow.msgsPerSec,
      serverVersion,
      payloadBytes: payloadOf(envelopesFor("size", 1)[0] as Envelope).length,
      batch,
      storage
    }
  } finally {
    await nc.close()
    await server.stop()
  }
}

/** The result as a markdown table. */
export const natsTable = (r: NatsBenchResult): string =>
  [
    `\n### nats: JetStream sink vs a bare pipelined publisher (nats-server ${r.serverVersion}, ${r.storage} store, batches of ${r.batch}, ~${r.payloadBytes} B payloads)`,
    "| publisher | messages | msgs/s | ack p50 ms (batch) | ack p99 ms | max ms |",
    "|---|---:|---:|---:|---:|---:|",
    ...r.rows.map((row) =>
      `| ${row.name} | ${row.messages} | ${row.msgsPerSec} | ${row.ackP50Ms.toFixed(1)} | ${row.ackP99Ms.toFixed(1)} | ${row.ackMaxMs.toFixed(1)} |`
    ),
    `driver / bare: ${r.ratio.toFixed(2)} (goal ≥ 0.80)`
  ].join("\n")

if (import.meta.filename === process.argv[1]) {
  const { values } = parseArgs({
    options: {
      messages: { type: "string", default: "100000" },
      batch: { type: "string", default: "1000" },
      rounds: { type: "string", default: "3" },
      storage: { type: "string", default: "file" }
    }
  })
  const result = await runNatsBench({
    messages: Number(values.messages),
    batch: Number(values.batch),
    rounds: Number(values.rounds),
    storage: values.storage === "memory" ? "memory" : "file"
  })
  console.log(natsTable(result))
}
