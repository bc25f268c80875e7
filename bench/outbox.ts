/**
 * The store-and-forward outbox (src/sinks/outbox/) around the JetStream driver, against one
 * private `nats-server -js` (file store), in this process:
 * - `R`: the driver's own rate, batches of `batch` written one at a time (as the commit stage
 *   writes) for `rateSeconds`;
 * - outage: a load at R/2 through the outboxed driver (paced every 20 ms, one write at a time,
 *   a write's batch holding what came due meanwhile) for `loadSeconds`, then the server killed
 *   (SIGKILL) for `outageSeconds` = T and restarted, the load going on: the time from the restart
 *   until the outbox is empty (goal ≤ 2·T) and the drain rate (messages the sink took from the
 *   outbox per second over that time, while the load kept arriving into the outbox; the backlog
 *   is sent from memory within the outbox's default 32 MiB, the rest read back from the file);
 *   then the stream read back and audited (every message answered Committed there once, each
 *   device's in seq order);
 * - forwarder: a preloaded outbox (`compareMessages`, read back from the file) drained with no
 *   load, by the Stream forwarder and by the same steps in a plain loop, next to the driver alone,
 *   rounds alternated, the medians kept; and the forwarder's own CPU per message, Stream and loop,
 *   draining into a sink that takes everything at once in memory (no server: its machinery alone);
 * - the outbox's own costs per batch of `drainBatch`: on the event loop (packing to JSON,
 *   parsing back) and on its writer thread (append, read, remove).
 * Wired into `npm run bench -- --only outbox` by bench/run.ts; alone: `node bench/outbox.ts`.
 */
import { Effect, Fiber, Logger, Metric } from "effect"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { parseArgs } from "node:util"
import type { Envelope } from "../src/domain/Envelope.ts"
import { MessageOutcome, messageId, type SinkDriver } from "../src/sinks/Contract.ts"
import { makeJetStreamSink } from "../src/sinks/nats/JetStreamSink.ts"
import { natsSettings } from "../src/sinks/nats/NatsSettings.ts"
import { withOutbox } from "../src/sinks/outbox/Outbox.ts"
import { outboxMetrics } from "../src/sinks/outbox/OutboxMetrics.ts"
import { outboxSettings } from "../src/sinks/outbox/OutboxSettings.ts"
import { append, openOutbox, packRows, parseRows, prepare, readAfter, removeRange } from "../src/sinks/outbox/OutboxStore.ts"
import { type NatsServer, startNatsServer } from "../test/support/natsServer.ts"
import { readStream, withManager } from "../test/support/natsStream.ts"

/** Options of the outbox benchmark. */
export interface OutboxBenchOptions {
  /** Seconds of load before the outage (default 10). */
  readonly loadSeconds?: number
  /** T: seconds the server is down (default 5). */
  readonly outageSeconds?: number
  /** Seconds the driver's rate is measured (default 3). */
  readonly rateSeconds?: number
  /** Messages per write of R's measure (default 1,000). */
  readonly batch?: number
  /** The outbox's drain batch (default 2,000). */
  readonly drainBatch?: number
  /** Messages preloaded for the forwarder comparison (default 100,000). */
  readonly compareMessages?: number
  /** Rounds per forwarder (default 5; the median is reported). */
  readonly rounds?: number
}

/** The benchmark's figures. */
export interface OutboxBenchResult {
  readonly serverVersion: string
  readonly payloadBytes: number
  readonly drainBatch: number
  /** The driver's rate, msgs/s, before the outage run (R), and after it (how much the machine's load drifted). */
  readonly driverRate: number
  readonly driverRateAfter: number
  /** CPU µs per message, this process and the server: the driver alone; the outage run (every message written); the preloaded drain. */
  readonly driverCpuUs: number
  readonly outageCpuUs: number
  readonly drainCpuUs: number
  /** The same for the plain-loop forwarder. */
  readonly loopCpuUs: number
  /** The forwarder's own CPU per message (a sink taking all at once, in memory): Stream, loop (medians). */
  readonly machineryStreamUs: number
  readonly machineryLoopUs: number
  /** The driver alone, batches of `drainBatch`, in each comparison round, msgs/s. */
  readonly rawRounds: ReadonlyArray<number>
  /** The load offered (R/2) and what it reached, msgs/s. */
  readonly loadRate: number
  readonly loadReached: number
  readonly outageMs: number
  /** Messages in the outbox when the server was back. */
  readonly backlogAtRestart: number
  readonly peakDepth: number
  /** From the restart (server ready) until the outbox was empty. */
  readonly drainMs: number
  /** Messages taken from the outbox per second over `drainMs`. */
  readonly drainRate: number
  /** Longest write (answer to the load) during the run, ms. */
  readonly maxWriteMs: number
  readonly written: number
  readonly notCommitted: number
  readonly unreadySamples: number
  /** The stream read back: messages, and what the audit found. */
  readonly stored: number
  readonly missing: number
  readonly duplicates: number
  readonly outOfOrder: number
  /** Drain of a preloaded outbox with no load, msgs/s (median): Stream forwarder, plain loop. */
  readonly streamRate: number
  readonly loopRate: number
  readonly streamRounds: ReadonlyArray<number>
  readonly loopRounds: ReadonlyArray<number>
  readonly compareMessages: number
  /** Per batch of `drainBatch`, ms: on the event loop, and on the writer thread. */
  readonly packMs: number
  readonly parseMs: number
  readonly appendMs: number
  readonly readMs: number
  readonly removeMs: number
}

const quietly = Effect.provide(Logger.layer([]))

/** Message `i` of a run: 1,000 devices, each one's seqs in order, telemetry as devices send it, a third traced. */
const envelopeOf = (run: string, i: number): Envelope => ({
  device: `dev-${run}-${i % 1_000}`,
  epoch: 1,
  seq: Math.floor(i / 1_000) + 1,
  kind: "telemetry",
  deviceTs: 1_700_000_000_000 + i,
  receivedAt: 1_700_000_000_050 + i,
  gateway: "bench-gw",
  traceparent: i % 3 === 0 ? `00-4bf92f3577b34da6a3ce929d0e0e4736-${i.toString(16).padStart(16, "0")}-01` : null,
  body: { metrics: { temp: 20 + (i % 10), rpm: 1200, v: 3.3 }, tags: { site: "plant-7" } }
})

const envelopesOf = (run: string, from: number, n: number) => Array.from({ length: n }, (_, k) => envelopeOf(run, from + k))

const median = (xs: ReadonlyArray<number>) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? 0

const counter = (metric: Metric.Metric<number, unknown>) =>
  Effect.map(Metric.value(metric as Metric.Metric<number, Metric.CounterState<number>>), (s) => Number(s.count))

/** CPU time so far, µs: this process (all its threads) and the server's process. */
const cpuNow = (server: NatsServer): number => {
  const own = process.cpuUsage()
  let serverUs = 0
  try {
    const fields = Fs.readFileSync(`/proc/${server.pid()}/stat`, "utf8").split(") ")[1]!.split(" ")
    serverUs = (Number(fields[11]) + Number(fields[12])) * 10_000 // clock ticks of 10 ms
  } catch {
    // not Linux, or the server not running: its share is left out
  }
  return own.user + own.system + serverUs
}

const purge = (server: NatsServer) => withManager(server.url, async (jsm) => void (await jsm.streams.purge("DEVICES")))

/** The driver's rate: batches written one at a time for `seconds` (after a second of warm-up), and its CPU µs per message. */
const driverRate = (server: NatsServer, driver: SinkDriver, run: string, batch: number, seconds: number) =>
  Effect.gen(function*() {
    let i = 0
    const writeFor = (ms: number) =>
      Effect.gen(function*() {
        const started = performance.now()
        const cpu = cpuNow(server)
        let n = 0
        while (performance.now() - started < ms) {
          const r = yield* driver.write(envelopesOf(run, i, batch))
          i += batch
          n += batch
          if (r.outcomes.some((o) => o !== MessageOutcome.Committed)) return yield* Effect.die(new Error("driver: not all Committed"))
        }
        return { rate: n / ((performance.now() - started) / 1000), cpuUs: (cpuNow(server) - cpu) / n }
      })
    yield* writeFor(1_000)
    return yield* writeFor(seconds * 1_000)
  })

/** The outage run: load at `rate`, the server killed after `loadSeconds` for `outageSeconds`. */
const outageRun = (server: NatsServer, driver: SinkDriver, file: string, o: Required<OutboxBenchOptions>, rate: number) =>
  Effect.gen(function*() {
    const outbox = yield* withOutbox(driver, outboxSettings(file, { drainBatch: o.drainBatch }), () => Effect.void)
    const forwarded = outboxMetrics("nats").forwarded
    // the load's message i is envelopeOf("load", i): only the few not Committed are remembered (keeping
    // millions of envelopes alive for the audit would make the heap, and its collections, the bench's subject)
    const notCommitted: Array<number> = []
    let unready = 0
    let maxWriteMs = 0
    let stop = false
    const started = performance.now()
    const load = Effect.gen(function*() {
      let sent = 0
      while (!stop) {
        const due = Math.min(4_096, Math.floor((rate * (performance.now() - started)) / 1000) - sent)
        if (due <= 0) {
          yield* Effect.sleep("20 millis")
          continue
        }
        const batch = envelopesOf("load", sent, due)
        sent += due
        const t0 = performance.now()
        const r = yield* outbox.write(batch)
        maxWriteMs = Math.max(maxWriteMs, performance.now() - t0)
        for (let i = 0; i < batch.length; i++) if (r.outcomes[i] !== MessageOutcome.Committed) notCommitted.push(sent - due + i)
        if (!(yield* outbox.health).ready) unready++
      }
      return sent
    })
    const cpuStarted = cpuNow(server)
    const loading = yield* Effect.forkChild(load)
    let peak = 0
    const watch = yield* Effect.forkChild(Effect.forever(Effect.gen(function*() {
      peak = Math.max(peak, (yield* outbox.depth).messages)
      yield* Effect.sleep("20 millis")
    })))
    yield* Effect.sleep(o.loadSeconds * 1_000)
    yield* Effect.promise(() => server.kill())
    const down = performance.now()
    yield* Effect.sleep(o.outageSeconds * 1_000)
    yield* Effect.promise(() => server.restart())
    const restarted = performance.now()
    const backlogAtRestart = (yield* outbox.depth).messages
    const forwardedAtRestart = yield* counter(forwarded)
    // until empty (at most 60 s)
    while ((yield* outbox.depth).messages > 0 && performance.now() - restarted < 60_000) yield* Effect.sleep("10 millis")
    const emptied = performance.now()
    const drainedMessages = (yield* counter(forwarded)) - forwardedAtRestart
    yield* Effect.sleep("2 seconds") // the load meets the sink directly again
    stop = true
    const sent = yield* Fiber.join(loading)
    yield* Fiber.interrupt(watch)
    while ((yield* outbox.depth).messages > 0) yield* Effect.sleep("10 millis")
    const cpuUs = (cpuNow(server) - cpuStarted) / sent
    const drainMs = emptied - restarted
    return {
      notCommitted,
      unready,
      maxWriteMs,
      peak,
      sent,
      loadReached: sent / ((performance.now() - started) / 1000),
      outageMs: restarted - down,
      backlogAtRestart,
      drainMs,
      drainRate: drainedMessages / (drainMs / 1000),
      cpuUs
    }
  }).pipe(Effect.scoped)

/** The audit of the stream read back against the messages answered Committed (the load's `sent` but `notCommitted`). */
const audit = async (server: NatsServer, sent: number, notCommitted: ReadonlyArray<number>) => {
  const stored = await readStream(server.url, "DEVICES")
  const times = new Map<string, number>()
  const last = new Map<string, number>()
  let outOfOrder = 0
  for (const m of stored) {
    times.set(m.msgId ?? "?", (times.get(m.msgId ?? "?") ?? 0) + 1)
    const p = m.payload as { readonly device: string; readonly seq: number }
    const before = last.get(p.device)
    if (before !== undefined && p.seq <= before) outOfOrder++
    last.set(p.device, p.seq)
  }
  let missing = 0
  const skip = new Set(notCommitted)
  for (let i = 0; i < sent; i++) if (!skip.has(i) && !times.has(messageId(envelopeOf("load", i)))) missing++
  let duplicates = 0
  for (const n of times.values()) if (n > 1) duplicates += n - 1
  return { stored: stored.length, missing, duplicates, outOfOrder }
}

/** Preloads `n` messages into `file` (directly, no thread). */
const preload = (file: string, run: string, n: number) => {
  const db = openOutbox(file, "normal")
  const st = prepare(db)
  for (let from = 0; from < n; from += 5_000) {
    append(db, st, packRows(envelopesOf(run, from, Math.min(5_000, n - from))).text, { maxMessages: 1e9, maxBytes: 1e12 }, Date.now())
  }
  db.close()
}

/** Drains a preloaded outbox with the given forwarder, no load: msgs/s. */
const drainRound = (server: NatsServer, driver: SinkDriver, file: string, n: number, drainBatch: number, forwarder: "stream" | "loop") =>
  Effect.gen(function*() {
    const started = performance.now()
    const cpu = cpuNow(server)
    const outbox = yield* withOutbox(driver, outboxSettings(file, { drainBatch, forwarder }), () => Effect.void)
    while ((yield* outbox.depth).messages > 0) yield* Effect.sleep("5 millis")
    return { rate: n / ((performance.now() - started) / 1000), cpuUs: (cpuNow(server) - cpu) / n }
  }).pipe(Effect.scoped)

/**
 * A sink that takes every message at once, in memory: with it a drain measures the forwarder's
 * own machinery (read, parse, remove; Stream or loop), not the server's.
 */
const instantSink: SinkDriver = {
  name: "instant",
  health: Effect.succeed({ ready: true }),
  write: (batch) => Effect.as(Effect.yieldNow, { outcomes: new Uint8Array(batch.length), reasons: new Map() })
}

/** The forwarder's own CPU per message (this process, threads included), draining a preloaded outbox into {@link instantSink}. */
const machineryRound = (file: string, n: number, drainBatch: number, forwarder: "stream" | "loop") =>
  Effect.gen(function*() {
    const cpu = process.cpuUsage()
    const outbox = yield* withOutbox(instantSink, outboxSettings(file, { drainBatch, forwarder }), () => Effect.void)
    while ((yield* outbox.depth).messages > 0) yield* Effect.sleep("1 millis")
    const used = process.cpuUsage(cpu)
    return (used.user + used.system) / n
  }).pipe(Effect.scoped)

/** The outbox's own costs per batch, ms (median of 20 batches). */
const costs = (dir: string, drainBatch: number) => {
  const file = Path.join(dir, "costs.db")
  const db = openOutbox(file, "normal")
  const st = prepare(db)
  const pack: Array<number> = []
  const parse: Array<number> = []
  const appendMs: Array<number> = []
  const read: Array<number> = []
  const remove: Array<number> = []
  for (let r = 0; r < 20; r++) {
    const batch = envelopesOf(`c${r}`, 0, drainBatch)
    let t = performance.now()
    const packed = packRows(batch)
    pack.push(performance.now() - t)
    t = performance.now()
    append(db, st, packed.text, { maxMessages: 1e9, maxBytes: 1e12 }, Date.now())
    appendMs.push(performance.now() - t)
    t = performance.now()
    const rows = readAfter(st, 0, drainBatch)
    read.push(performance.now() - t)
    t = performance.now()
    parseRows(rows)
    parse.push(performance.now() - t)
    t = performance.now()
    removeRange(db, st, rows.ids[0]!, rows.ids[rows.ids.length - 1]!, { count: rows.ids.length, bytes: rows.bytes })
    remove.push(performance.now() - t)
  }
  db.close()
  return { packMs: median(pack), parseMs: median(parse), appendMs: median(appendMs), readMs: median(read), removeMs: median(remove) }
}

/** Runs the benchmark on a private server it starts and stops. */
export const runOutboxBench = async (options: OutboxBenchOptions = {}): Promise<OutboxBenchResult> => {
  const o: Required<OutboxBenchOptions> = {
    loadSeconds: 10,
    outageSeconds: 5,
    rateSeconds: 3,
    batch: 1_000,
    drainBatch: 2_000,
    compareMessages: 100_000,
    rounds: 5,
    ...options
  }
  const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "gw-bench-outbox-"))
  const server = await startNatsServer()
  try {
    return await Effect.runPromise(Effect.scoped(Effect.gen(function*() {
      const driver = yield* makeJetStreamSink(natsSettings({ url: server.url, createStream: true, ackTimeoutMs: 5_000 }))
      const serverVersion = yield* Effect.promise(() => withManager(server.url, async (_jsm, nc) => nc.info?.version ?? "?"))
      const before = yield* driverRate(server, driver, "rate", o.batch, o.rateSeconds)
      const rate = before.rate
      yield* Effect.promise(() => purge(server))

      const run = yield* outageRun(server, driver, Path.join(dir, "outbox-nats.db"), o, rate / 2)
      const found = yield* Effect.promise(() => audit(server, run.sent, run.notCommitted))
      yield* Effect.promise(() => purge(server))
      const after = yield* driverRate(server, driver, "rate-after", o.batch, o.rateSeconds)

      const streamRounds: Array<number> = []
      const loopRounds: Array<number> = []
      const rawRounds: Array<number> = []
      const streamCpu: Array<number> = []
      const loopCpu: Array<number> = []
      for (let r = 0; r < o.rounds; r++) {
        // the driver alone, then each forwarder, in turn (which goes first alternates): the machine's
        // load drifts, rounds side by side compare
        yield* Effect.promise(() => purge(server))
        rawRounds.push((yield* driverRate(server, driver, `raw${r}`, o.drainBatch, 2)).rate)
        for (const forwarder of r % 2 === 0 ? ["stream", "loop"] as const : ["loop", "stream"] as const) {
          yield* Effect.promise(() => purge(server))
          const file = Path.join(dir, `compare-${forwarder}-${r}.db`)
          preload(file, `${forwarder}${r}`, o.compareMessages)
          const d = yield* drainRound(server, driver, file, o.compareMessages, o.drainBatch, forwarder)
          ;(forwarder === "stream" ? streamRounds : loopRounds).push(d.rate)
          ;(forwarder === "stream" ? streamCpu : loopCpu).push(d.cpuUs)
        }
      }
      const machinery = { stream: [] as Array<number>, loop: [] as Array<number> }
      for (let r = 0; r < o.rounds; r++) {
        for (const forwarder of r % 2 === 0 ? ["stream", "loop"] as const : ["loop", "stream"] as const) {
          const file = Path.join(dir, `machinery-${forwarder}-${r}.db`)
          preload(file, `m-${forwarder}${r}`, o.compareMessages)
          machinery[forwarder].push(yield* machineryRound(file, o.compareMessages, o.drainBatch, forwarder))
        }
      }
      return {
        serverVersion,
        machineryStreamUs: median(machinery.stream),
        machineryLoopUs: median(machinery.loop),
        payloadBytes: JSON.stringify(envelopeOf("size", 1)).length,
        drainBatch: o.drainBatch,
        driverRate: rate,
        driverRateAfter: after.rate,
        driverCpuUs: before.cpuUs,
        outageCpuUs: run.cpuUs,
        drainCpuUs: median(streamCpu),
        loopCpuUs: median(loopCpu),
        rawRounds,
        loadRate: rate / 2,
        loadReached: run.loadReached,
        outageMs: run.outageMs,
        backlogAtRestart: run.backlogAtRestart,
        peakDepth: run.peak,
        drainMs: run.drainMs,
        drainRate: run.drainRate,
        maxWriteMs: run.maxWriteMs,
        written: run.sent,
        notCommitted: run.notCommitted.length,
        unreadySamples: run.unready,
        ...found,
        streamRate: median(streamRounds),
        loopRate: median(loopRounds),
        streamRounds,
        loopRounds,
        compareMessages: o.compareMessages,
        ...costs(dir, o.drainBatch)
      }
    })).pipe(quietly))
  } finally {
    await server.stop()
    Fs.rmSync(dir, { recursive: true, force: true })
  }
}

const k = (n: number) => Math.round(n).toLocaleString("en-US")

/** The result as markdown. */
export const outboxTable = (r: OutboxBenchResult): string =>
  [
    `\n### outbox: store and forward around the JetStream sink (nats-server ${r.serverVersion}, file store, ~${r.payloadBytes} B envelopes, drain batch ${r.drainBatch})`,
    "| figure | value |",
    "|---|---:|",
    `| driver rate R (batches of 1,000, one at a time), before / after the outage run | ${k(r.driverRate)} / ${k(r.driverRateAfter)} msgs/s |`,
    `| load offered (R/2) / reached | ${k(r.loadRate)} / ${k(r.loadReached)} msgs/s |`,
    `| outage T (kill → restarted and ready) | ${k(r.outageMs)} ms |`,
    `| backlog at restart / peak depth | ${k(r.backlogAtRestart)} / ${k(r.peakDepth)} messages |`,
    `| restart → outbox empty (goal ≤ 2·T = ${k(2 * r.outageMs)} ms) | **${k(r.drainMs)} ms** |`,
    `| drain rate (taken from the outbox, load still arriving) | ${k(r.drainRate)} msgs/s |`,
    `| longest write answered to the load | ${k(r.maxWriteMs)} ms |`,
    `| written / not Committed / not-ready samples | ${k(r.written)} / ${r.notCommitted} / ${r.unreadySamples} |`,
    `| stream read back: messages / missing / duplicates / out of order | ${k(r.stored)} / ${r.missing} / ${r.duplicates} / ${r.outOfOrder} |`,
    `| drain of ${k(r.compareMessages)} preloaded, no load: Stream forwarder (median; rounds) | ${k(r.streamRate)} msgs/s (${r.streamRounds.map(k).join(", ")}) |`,
    `| same, plain loop (median; rounds) | ${k(r.loopRate)} msgs/s (${r.loopRounds.map(k).join(", ")}) |`,
    `| the driver alone in the same rounds, batches of ${r.drainBatch} | ${k(median(r.rawRounds))} msgs/s (${r.rawRounds.map(k).join(", ")}) |`,
    `| Stream / loop: msgs/s, CPU per message | ${(r.streamRate / r.loopRate).toFixed(3)}, ${(r.drainCpuUs / r.loopCpuUs).toFixed(3)} |`,
    `| CPU per message (this process + nats-server): driver alone / outage run / preloaded drain, Stream / loop | ${r.driverCpuUs.toFixed(1)} / ${
      r.outageCpuUs.toFixed(1)
    } / ${r.drainCpuUs.toFixed(1)} / ${r.loopCpuUs.toFixed(1)} µs |`,
    `| the forwarder's own CPU per message (into a sink that takes all at once, in memory): Stream / loop | ${r.machineryStreamUs.toFixed(2)} / ${
      r.machineryLoopUs.toFixed(2)
    } µs |`,
    `| per batch of ${r.drainBatch}, event loop: pack (JSON) / parse back | ${r.packMs.toFixed(2)} / ${r.parseMs.toFixed(2)} ms |`,
    `| per batch of ${r.drainBatch}, writer thread: append / read / remove | ${r.appendMs.toFixed(2)} / ${r.readMs.toFixed(2)} / ${r.removeMs.toFixed(2)} ms |`
  ].join("\n")

if (import.meta.filename === process.argv[1]) {
  const { values } = parseArgs({
    options: {
      "load-seconds": { type: "string", default: "10" },
      "outage-seconds": { type: "string", default: "5" },
      "compare-messages": { type: "string", default: "100000" },
      rounds: { type: "string", default: "5" },
      "drain-batch": { type: "string", default: "2000" }
    }
  })
  const result = await runOutboxBench({
    loadSeconds: Number(values["load-seconds"]),
    outageSeconds: Number(values["outage-seconds"]),
    compareMessages: Number(values["compare-messages"]),
    rounds: Number(values.rounds),
    drainBatch: Number(values["drain-batch"])
  })
  console.log(outboxTable(result))
  process.exit(0)
}
