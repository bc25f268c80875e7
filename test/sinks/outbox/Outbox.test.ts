/**
 * The outbox around the real NATS JetStream driver, on private `nats-server -js` processes and
 * real SQLite files (no server is killed here: the sink is "away" because its server is not
 * started yet, on a port chosen beforehand; OutboxChaos.test.ts kills servers under load):
 * - the sink away: writes are Committed into the outbox (ready meanwhile, depth counted, one log
 *   line); the server comes up and writes go on while it drains: the outbox is still
 *   emptied and handed back (one log line), later writes go straight to the sink; everything
 *   forwarded with its message id, each device's messages in order (what came during the drain
 *   did not overtake what was stored), a message the sink refuses for good handed to the dead
 *   letters;
 * - a new outbox on the same file (a restarted process) forwards what the last one left (read
 *   back from the file), before what it takes itself (from memory); while one holds the file, a
 *   second does not start;
 * - full (messages, then bytes): what does not fit is Unavailable "outbox full", counted, and the
 *   outbox is not ready, saying so; nothing is stored past the bounds;
 * - a non-retryable error of the sink passes through unchanged, and a Rejected outcome too
 *   (nothing stored);
 * - its own file failing (a full filesystem: a tmpfs, where `mount` is permitted): Unavailable,
 *   never Committed, not ready; space freed: ready again without traffic (its probe), Committed.
 */
import { afterAll, afterEach, describe, expect, it } from "@effect/vitest"
import { credsAuthenticator } from "@nats-io/transport-node"
import { Effect, Exit, Logger, Metric, Scope } from "effect"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import type { Envelope } from "../../../src/domain/Envelope.ts"
import { MessageOutcome, messageId, SinkError } from "../../../src/sinks/Contract.ts"
import { makeJetStreamSink } from "../../../src/sinks/nats/JetStreamSink.ts"
import { natsSettings, type NatsSettings } from "../../../src/sinks/nats/NatsSettings.ts"
import { type OutboxedDriver, OutboxStartError, withOutbox } from "../../../src/sinks/outbox/Outbox.ts"
import { outboxMetrics } from "../../../src/sinks/outbox/OutboxMetrics.ts"
import { outboxSettings, type OutboxSettings } from "../../../src/sinks/outbox/OutboxSettings.ts"
import { eventEnvelope, telemetryEnvelope } from "../../support/envelopes.ts"
import { tempDir } from "../../support/gateway.ts"
import { freePort, hasNatsServer, type NatsServer, requireNatsServer, startNatsServer, stopAllNatsServers } from "../../support/natsServer.ts"
import { healthBecomes } from "../../support/natsSink.ts"
import { makeTestUser, readStream } from "../../support/natsStream.ts"
import { auditStream, captureLogs, drained, envelopes, type LogLine } from "./outboxSupport.ts"

requireNatsServer("The outbox tests")

const { Committed, Rejected, Unavailable } = MessageOutcome
const quiet = Effect.provide(Logger.layer([]))
const servers: Array<NatsServer> = []
const dirs: Array<string> = []

afterEach(async () => {
  for (const s of servers.splice(0)) await s.stop()
  for (const d of dirs.splice(0)) Fs.rmSync(d, { recursive: true, force: true })
})
afterAll(async () => {
  tmpfs.unmount()
  await stopAllNatsServers()
})

const tmpfs = mountTmpfs()

const outboxFile = () => {
  const dir = tempDir("gw-outbox-")
  dirs.push(dir)
  return Path.join(dir, "outbox-nats.db")
}

const startServer = (options: Parameters<typeof startNatsServer>[0] = {}) =>
  Effect.promise(async () => {
    const s = await startNatsServer(options)
    servers.push(s)
    return s
  })

/** The JetStream driver on `url` (creating the stream), not ready until a server answers there. */
const driverOn = (url: string, overrides: Partial<NatsSettings> = {}) =>
  makeJetStreamSink(natsSettings({ url, createStream: true, ackTimeoutMs: 2_000, ...overrides }))

/** Dead letters handed over by the forwarder. */
const deadLetters = () => {
  const records: Array<{ envelope: Envelope; reason: string }> = []
  return { records, onRejected: (r: ReadonlyArray<{ envelope: Envelope; reason: string }>) => Effect.sync(() => void records.push(...r)) }
}

const allCommitted = (outbox: OutboxedDriver, batch: ReadonlyArray<Envelope>) =>
  Effect.gen(function*() {
    const r = yield* outbox.write(batch)
    expect([...r.outcomes]).toEqual(batch.map(() => Committed))
    expect(r.reasons.size).toBe(0)
  })

const counter = (metric: Metric.Metric<number, unknown>) =>
  Effect.map(Metric.value(metric as Metric.Metric<number, Metric.CounterState<number>>), (s) => Number(s.count))

describe.runIf(hasNatsServer)("withOutbox around the JetStream driver", () => {
  it.live("sink away: Committed into the outbox; sink back: forwarded in order with the same ids, dead letters handed over; then straight to the sink", () => {
    const logs: Array<LogLine> = []
    return Effect.gen(function*() {
      const port = yield* Effect.promise(freePort)
      const driver = yield* driverOn(`nats://127.0.0.1:${port}`)
      const dead = deadLetters()
      const outbox = yield* withOutbox(driver, outboxSettings(outboxFile(), { drainBatch: 500 }), dead.onRejected)
      expect((yield* driver.health).ready).toBe(false)
      expect(yield* outbox.health).toEqual({ ready: true })

      const written: Array<Envelope> = []
      for (let seq = 1; seq <= 300; seq += 30) {
        const batch = [...envelopes("dev-a", seq, 30), ...envelopes("dev-b", seq, 30), ...envelopes("dev-c", seq, 30)]
        yield* allCommitted(outbox, batch)
        written.push(...batch)
      }
      // larger than the server's max_payload: taken now, refused for good when forwarded
      const big = telemetryEnvelope("dev-big", 1, { temp: 1 }, { pad: "x".repeat(10_000) })
      yield* allCommitted(outbox, [big])
      const depth = yield* outbox.depth
      expect(depth.messages).toBe(written.length + 1)
      expect(depth.bytes).toBeGreaterThan(written.length * 150)
      expect(depth.oldestAgeMs).toBeGreaterThanOrEqual(0)
      expect(logs.filter((l) => l.message.startsWith("outbox takes nats's traffic"))).toHaveLength(1)

      const server = yield* startServer({ port, extraConfig: "max_payload: 8192" })
      // writes go on while the outbox drains, back to back (30 messages each: fewer than the sink
      // takes, but too often for the forwarder ever to find the outbox empty between two): they
      // must not overtake what it holds, and the outbox must still be emptied (handed back to the
      // sink) while they go on
      let seq = 301
      const deadline = Date.now() + 30_000
      for (;;) {
        const batch = [...envelopes("dev-a", seq, 10), ...envelopes("dev-b", seq, 10), ...envelopes("dev-c", seq, 10)]
        yield* allCommitted(outbox, batch)
        written.push(...batch)
        if (seq === 301) expect((yield* outbox.depth).messages).toBeGreaterThan(900) // stored behind the backlog
        seq += 10
        if ((yield* outbox.depth).messages === 0) break
        if (Date.now() > deadline) return yield* Effect.die(new Error(`never handed back: ${JSON.stringify(yield* outbox.depth)}`))
      }
      // handed back: the next writes go straight to the sink
      for (let k = 0; k < 5; k++, seq += 10) {
        const batch = envelopes("dev-a", seq, 10)
        yield* allCommitted(outbox, batch)
        written.push(...batch)
        expect((yield* outbox.depth).messages).toBe(0)
      }
      expect(dead.records.map((r) => messageId(r.envelope))).toEqual([messageId(big)])
      expect(dead.records[0]?.reason).toMatch(/max_payload/)
      expect(dead.records[0]?.envelope).toEqual(big)
      // the same envelopes: forwarded once each, with their ids, each device in order
      const stored = yield* Effect.promise(() => readStream(server.url, "DEVICES"))
      expect(stored).toHaveLength(written.length)
      auditStream(stored, written)
      expect(stored.map((m) => m.payload)).toEqual(expect.arrayContaining([JSON.parse(JSON.stringify(written[0]))]))
      const drainedLines = logs.filter((l) => l.message.startsWith("outbox drained"))
      expect(drainedLines.map((l) => l.message)).toEqual([expect.stringMatching(/^outbox drained: \d+ messages forwarded to nats in \d+ ms$/)])


    }).pipe(Effect.provide(captureLogs(logs)))
  }, 60_000)

  it.live("a new outbox on the same file (a restart) forwards what the last one left, then its own; a second one on a file in use does not start", () =>
    Effect.gen(function*() {
      const port = yield* Effect.promise(freePort)
      const file = outboxFile()
      const url = `nats://127.0.0.1:${port}`
      const first = yield* Scope.make()
      const before = yield* Effect.gen(function*() {
        const outbox = yield* withOutbox(yield* driverOn(url), outboxSettings(file), () => Effect.void)
        const written = [...envelopes("dev-r", 1, 400), ...envelopes("dev-s", 1, 100)]
        for (let from = 0; from < written.length; from += 100) yield* allCommitted(outbox, written.slice(from, from + 100))
        // one process at a time on a file
        const second = yield* Effect.exit(withOutbox(yield* driverOn(url), outboxSettings(file), () => Effect.void))
        expect(Exit.isFailure(second)).toBe(true)
        const error = Exit.isFailure(second) ? yield* Effect.flip(second) : undefined
        expect(error).toBeInstanceOf(OutboxStartError)
        expect(error?.line).toMatch(/outbox-nats\.db: the file is in use by another process/)
        return written
      }).pipe(Scope.provide(first), quiet)
      yield* Scope.close(first, Exit.void)

      // the new one takes more while the sink is still away: behind what the last one left
      const outbox = yield* withOutbox(yield* driverOn(url).pipe(quiet), outboxSettings(file, { drainBatch: 64 }), () => Effect.void).pipe(quiet)
      expect((yield* outbox.depth).messages).toBe(before.length)
      const more = [...envelopes("dev-r", 401, 100), ...envelopes("dev-t", 1, 100)]
      yield* allCommitted(outbox, more)
      const server = yield* startServer({ port })
      yield* drained(outbox, 30_000)
      const stored = yield* Effect.promise(() => readStream(server.url, "DEVICES"))
      expect(stored).toHaveLength(before.length + more.length)
      auditStream(stored, [...before, ...more])
    }), 60_000)

  it.live("full: what does not fit is Unavailable \"outbox full\", counted; not ready, saying so; nothing stored past the bounds", () =>
    Effect.gen(function*() {
      const port = yield* Effect.promise(freePort)
      const driver = yield* driverOn(`nats://127.0.0.1:${port}`)
      const refusedBefore = yield* counter(outboxMetrics("nats").refused("full"))
      const byCount = yield* withOutbox(driver, outboxSettings(outboxFile(), { maxMessages: 100 }), () => Effect.void)
      yield* allCommitted(byCount, envelopes("dev-f", 1, 80))
      const r = yield* byCount.write(envelopes("dev-f", 81, 50))
      expect([...r.outcomes]).toEqual([...Array(20).fill(Committed), ...Array(30).fill(Unavailable)])
      expect(new Set(r.reasons.values())).toEqual(new Set(["outbox full"]))
      expect([...r.reasons.keys()]).toEqual(Array.from({ length: 30 }, (_, i) => 20 + i))
      expect((yield* byCount.depth).messages).toBe(100)
      expect(yield* byCount.health).toEqual({ ready: false, reason: "unavailable", message: expect.stringMatching(/^outbox full \(100 messages, \d+ bytes\)$/) })
      expect((yield* counter(outboxMetrics("nats").refused("full"))) - refusedBefore).toBe(30)

      const rowBytes = Buffer.byteLength(JSON.stringify(envelopes("dev-g", 1, 1)[0]))
      const byBytes = yield* withOutbox(driver, outboxSettings(outboxFile(), { maxBytes: 10 * rowBytes + 5 }), () => Effect.void)
      const b = yield* byBytes.write(envelopes("dev-g", 1, 12))
      expect([...b.outcomes]).toEqual([...Array(10).fill(Committed), Unavailable, Unavailable])
      const d = yield* byBytes.depth
      expect(d.messages).toBe(10)
      expect(d.bytes).toBeLessThanOrEqual(10 * rowBytes + 5)
      expect((yield* byBytes.health).ready).toBe(false)
    }).pipe(quiet), 30_000)

  it.live("a non-retryable error of the sink passes through unchanged, and so does a Rejected outcome: nothing stored", () =>
    Effect.gen(function*() {
      const dir = tempDir("gw-outbox-auth-")
      dirs.push(dir)
      const limited = makeTestUser(dir, "limited")
      const server = yield* startServer({
        extraConfig: `max_payload: 8192\nauthorization { users = [ { nkey: ${limited.publicKey}, permissions: { publish: { deny: ["devices.event.>"] } } } ] }`
      })
      const driver = yield* driverOn(server.url, { credsFile: limited.credsFile })
      const dead = deadLetters()
      const outbox = yield* withOutbox(driver, outboxSettings(outboxFile()), dead.onRejected)
      // every message of the batch denied: the driver fails it "misconfigured" (no retry helps)
      const direct = yield* Effect.flip(driver.write([eventEnvelope("dev-p", 1)]))
      const error = yield* Effect.flip(outbox.write([eventEnvelope("dev-p", 2)]))
      expect(error).toBeInstanceOf(SinkError)
      expect({ tag: error._tag, sink: error.sink, reason: error.reason, retryable: error.retryable }).toEqual({
        tag: "SinkError",
        sink: "nats",
        reason: "misconfigured",
        retryable: false
      })
      expect(error.message).toBe(direct.message)
      // refused for good (too large for the server): Rejected, the caller's dead letter, not ours
      const big = telemetryEnvelope("dev-p", 3, { temp: 1 }, { pad: "x".repeat(10_000) })
      const r = yield* outbox.write([telemetryEnvelope("dev-p", 4), big])
      expect([...r.outcomes]).toEqual([Committed, Rejected])
      expect(r.reasons.get(1)).toMatch(/max_payload/)
      expect(yield* outbox.depth).toEqual({ messages: 0, bytes: 0, oldestAgeMs: undefined })
      expect(dead.records).toEqual([])
      const stored = yield* Effect.promise(() =>
        readStream(server.url, "DEVICES", { authenticator: credsAuthenticator(Fs.readFileSync(limited.credsFile)) })
      )
      expect(stored.map((m) => m.msgId)).toEqual(["dev-p:1:4"])
    }).pipe(quiet), 30_000)

  it.live.runIf(tmpfs.ok)("its own file failing (filesystem full): Unavailable, never Committed, not ready; space freed: ready again by itself", () =>
    Effect.gen(function*() {
      const mount = tmpfs.dir
      const port = yield* Effect.promise(freePort)
      const driver = yield* driverOn(`nats://127.0.0.1:${port}`)
      const settings: OutboxSettings = outboxSettings(Path.join(mount, "outbox-nats.db"))
      const outbox = yield* withOutbox(driver, settings, () => Effect.void)
      yield* allCommitted(outbox, envelopes("dev-d", 1, 50))
      const filler = fill(mount)
      let seq = 51
      let failed: { outcomes: Array<number>; reasons: Array<string> } | undefined
      // the WAL may hold some room still: write until a batch does not fit
      for (let i = 0; i < 50 && failed === undefined; i++) {
        const r = yield* outbox.write(envelopes("dev-d", seq, 500))
        seq += 500
        if (r.outcomes.some((o) => o !== Committed)) failed = { outcomes: [...r.outcomes], reasons: [...r.reasons.values()] }
      }
      expect(failed).toBeDefined()
      expect(new Set(failed?.outcomes)).toEqual(new Set([Unavailable]))
      expect(failed?.reasons[0]).toMatch(/outbox: database or disk is full/)
      const h = yield* outbox.health
      expect(h).toMatchObject({ ready: false, reason: "unavailable", message: expect.stringMatching(/^outbox cannot store: database or disk is full/) })
      Fs.rmSync(filler)
      yield* healthBecomes(outbox, true, 10_000)
      yield* allCommitted(outbox, envelopes("dev-d", seq, 100))
    }).pipe(quiet), 60_000)
})

/** A 4 MB tmpfs (mount permitted: root), or why not. */
function mountTmpfs(): { readonly ok: boolean; readonly dir: string; readonly unmount: () => void } {
  const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "gw-outbox-tmpfs-"))
  const r = ChildProcess.spawnSync("mount", ["-t", "tmpfs", "-o", "size=4m", "tmpfs", dir], { encoding: "utf8" })
  const ok = r.status === 0
  if (!ok) Fs.rmdirSync(dir)
  if (!ok) console.warn(`SKIPPED LOUDLY: the outbox's full-filesystem test needs \`mount -t tmpfs\` (root): ${r.stderr.trim()}`)
  return {
    ok,
    dir,
    unmount: () => {
      if (!ok) return
      ChildProcess.spawnSync("umount", ["-l", dir])
      Fs.rmSync(dir, { recursive: true, force: true })
    }
  }
}

/** Writes a file until the filesystem is full; returns its path. */
function fill(dir: string): string {
  const file = Path.join(dir, "filler")
  const fd = Fs.openSync(file, "a")
  try {
    for (const size of [65_536, 4_096, 512, 1]) {
      const chunk = Buffer.alloc(size, 7)
      try {
        for (;;) Fs.writeSync(fd, chunk)
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== "ENOSPC") throw error
      }
    }
  } finally {
    Fs.closeSync(fd)
  }
  return file
}
