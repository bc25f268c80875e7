/**
 * The PostgreSQL sink while its server fails (load project): a private PostgreSQL (initdb in a
 * temporary directory) reached through a fault-injecting TCP proxy, under a steady load retried
 * as the commit stage retries (retryable SinkErrors and Unavailable messages written again with
 * the same keys):
 * - latency (150 ms each way): every write slower, none failing;
 * - reset (every connection reset, new ones too): writes fail `unreachable` (retryable), not ready;
 * - refuse (nothing listens): the same, and ready again once it listens;
 * - blackhole (connections kept, nothing forwarded): writes fail `timeout` within the statement
 *   timeout plus the client's second (never waited on forever), the connection dropped, not reused;
 * - the server killed (SIGKILL) and restarted twice.
 * After each, the table is read back: every message the sink answered Committed or Duplicate is
 * there exactly once with its traceparent, nothing that was never sent is, and no message was
 * answered Committed twice.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect, Fiber, Logger } from "effect"
import type { Envelope } from "../../../src/domain/Envelope.ts"
import { messageId, type SinkDriver } from "../../../src/sinks/Contract.ts"
import { makePostgresSink } from "../../../src/sinks/postgres/PostgresSink.ts"
import { postgresSettings } from "../../../src/sinks/postgres/PostgresSettings.ts"
import { Fault, type FaultMode, type FaultProxy, startFaultProxy } from "../../support/faultProxy.ts"
import { healthBecomes } from "../../support/natsSink.ts"
import { hasPostgresServer, type PostgresServer, requirePostgresServer, startPostgresServer, stopAllPostgresServers } from "../../support/postgresServer.ts"
import { type LoadRun, steadyLoad, storedKeys, traceparentOf, tracedEnvelopes } from "./support.ts"

requirePostgresServer("The PostgreSQL sink chaos tests")

const quiet = Effect.provide(Logger.layer([]))
const STATEMENT_TIMEOUT_MS = 1_000
const CONNECT_TIMEOUT_MS = 1_000

let server: PostgresServer
let proxy: FaultProxy
beforeAll(async () => {
  if (!hasPostgresServer) return
  server = await startPostgresServer()
  proxy = await startFaultProxy("127.0.0.1", server.port)
}, 60_000)
afterAll(async () => {
  await proxy?.close()
  await stopAllPostgresServers()
})

let tables = 0
/** A sink through the proxy, on a table of its own. */
const sinkBehindProxy = Effect.gen(function*() {
  const table = `chaos${++tables}`
  const url = new URL(server.url)
  url.port = String(proxy.port)
  const sink = yield* makePostgresSink(postgresSettings({
    databaseUrl: url.toString(),
    table,
    statementTimeoutMs: STATEMENT_TIMEOUT_MS,
    connectTimeoutMs: CONNECT_TIMEOUT_MS,
    poolSize: 2
  })).pipe(quiet)
  return { sink, table }
})

const setFault = (mode: FaultMode) => Effect.promise(() => proxy.set(mode))

/** Two devices' messages, interleaved by batch. */
const messagesOf = (name: string, perDevice: number): Array<Envelope> =>
  [...tracedEnvelopes(`${name}-a`, 1, perDevice), ...tracedEnvelopes(`${name}-b`, 1, perDevice)]

const load = (sink: SinkDriver, all: ReadonlyArray<Envelope>) =>
  Effect.forkChild(steadyLoad(sink, all, { batchSize: 100, everyMs: 40, retryMs: 100, deadlineMs: 60_000 }))

/** Every message settled once, stored exactly once with its traceparent, nothing else stored. */
const verify = (run: LoadRun, all: ReadonlyArray<Envelope>, table: string) =>
  Effect.gen(function*() {
    expect(run.rejected).toEqual([])
    expect(run.failures.filter((f) => !f.retryable)).toEqual([])
    expect(run.settled.size).toBe(all.length)
    for (const [id, times] of run.committedTimes) expect(times, id).toBe(1)
    const stored = yield* storedKeys(server.url, table)
    const sent = new Set(all.map(messageId))
    for (const [key, row] of stored) {
      expect(sent.has(key), `${key} was never sent`).toBe(true)
      expect(row.count, key).toBe(1)
      expect(row.traceparent, key).toBe(traceparentOf(Number(key.split(":")[2])))
    }
    for (const id of run.settled.keys()) expect(stored.has(id), `${id} answered but not stored`).toBe(true)
    expect(stored.size).toBe(all.length)
  })

describe.runIf(hasPostgresServer)("PostgresSink under faults (private PostgreSQL behind a fault proxy)", () => {
  it.live("latency: every write slower, none failing; all stored once", () =>
    Effect.gen(function*() {
      const { sink, table } = yield* sinkBehindProxy
      const all = messagesOf("lat", 1_500)
      const running = yield* load(sink, all)
      yield* Effect.sleep("400 millis")
      yield* setFault(Fault.latency(150))
      yield* Effect.sleep("1500 millis")
      yield* setFault(Fault.pass)
      const run = yield* Fiber.join(running)
      expect(run.failures).toEqual([])
      expect(run.unavailable).toBe(0)
      // a statement's round trip crossed the proxy twice each way
      expect(Math.max(...run.writeMs)).toBeGreaterThanOrEqual(300)
      expect(yield* sink.health).toEqual({ ready: true })
      yield* verify(run, all, table)
    }), 90_000)

  it.live("reset: writes fail unreachable (retryable), not ready; back: ready, every message stored once", () =>
    Effect.gen(function*() {
      const { sink, table } = yield* sinkBehindProxy
      const all = messagesOf("rst", 1_500)
      const running = yield* load(sink, all)
      yield* Effect.sleep("400 millis")
      yield* setFault(Fault.reset)
      const down = yield* healthBecomes(sink, false, 5_000)
      expect(down).toMatchObject({ ready: false, reason: "unreachable" })
      yield* Effect.sleep("1000 millis")
      yield* setFault(Fault.pass)
      const run = yield* Fiber.join(running)
      expect(run.failures.length).toBeGreaterThan(0)
      expect(run.failures.every((f) => f.reason === "unreachable")).toBe(true)
      yield* healthBecomes(sink, true, 10_000)
      yield* verify(run, all, table)
    }), 90_000)

  it.live("refuse: writes fail unreachable fast, not ready; listening again: ready by itself, every message stored once", () =>
    Effect.gen(function*() {
      const { sink, table } = yield* sinkBehindProxy
      const all = messagesOf("ref", 1_500)
      const running = yield* load(sink, all)
      yield* Effect.sleep("400 millis")
      yield* setFault(Fault.refuse)
      expect(yield* healthBecomes(sink, false, 5_000)).toMatchObject({ ready: false, reason: "unreachable" })
      yield* Effect.sleep("1000 millis")
      yield* setFault(Fault.pass)
      const run = yield* Fiber.join(running)
      const refused = run.failures.filter((f) => f.reason === "unreachable")
      expect(refused.length).toBeGreaterThan(0)
      expect(Math.max(...refused.map((f) => f.ms))).toBeLessThan(1_000)
      yield* healthBecomes(sink, true, 10_000)
      yield* verify(run, all, table)
    }), 90_000)

  it.live("blackhole: writes fail timeout within the statement timeout plus a second, the connection dropped; back: all stored once", () =>
    Effect.gen(function*() {
      const { sink, table } = yield* sinkBehindProxy
      const all = messagesOf("blk", 1_500)
      const running = yield* load(sink, all)
      yield* Effect.sleep("400 millis")
      const acceptedBefore = proxy.accepted()
      yield* setFault(Fault.blackhole)
      expect(yield* healthBecomes(sink, false, 6_000)).toMatchObject({ ready: false, reason: "timeout" })
      yield* Effect.sleep("2500 millis")
      const back = Date.now()
      yield* setFault(Fault.pass)
      const run = yield* Fiber.join(running)
      const timedOut = run.failures.filter((f) => f.reason === "timeout")
      expect(timedOut.length).toBeGreaterThan(0)
      // while blackholed, every failure is a timeout (at the switch back, the proxy closes the
      // connections it had blackholed: a connect still waiting on one ends unreachable)
      expect(run.failures.filter((f) => f.at < back).map((f) => f.reason)).toEqual(run.failures.filter((f) => f.at < back).map(() => "timeout"))
      // never waited on for longer than the statement timeout + the client's second (+ slack for a busy machine)
      expect(Math.max(...timedOut.map((f) => f.ms))).toBeLessThan(STATEMENT_TIMEOUT_MS + 1_000 + 1_500)
      expect(Math.min(...timedOut.map((f) => f.ms))).toBeGreaterThanOrEqual(CONNECT_TIMEOUT_MS - 100)
      // the write on the open connection met the client's deadline; the connection was dropped,
      // and the next write had to open a new one (which the blackhole let time out too)
      const deadline = run.failures.findIndex((f) => /no answer from PostgreSQL within 2000 ms/.test(f.message))
      expect(deadline).toBeGreaterThanOrEqual(0)
      expect(run.failures[deadline]?.ms).toBeGreaterThanOrEqual(1_900)
      expect(run.failures[deadline + 1]?.message).toMatch(/Connection timed out/)
      // the blackholed connections were replaced by new ones
      expect(proxy.accepted()).toBeGreaterThan(acceptedBefore)
      yield* healthBecomes(sink, true, 10_000)
      yield* verify(run, all, table)
    }), 90_000)

  it.live("the server killed (SIGKILL) and restarted twice under load: every message answered once, stored once", () =>
    Effect.gen(function*() {
      const { sink, table } = yield* sinkBehindProxy
      const all = messagesOf("kill", 2_000)
      const running = yield* load(sink, all)
      for (let round = 0; round < 2; round++) {
        yield* Effect.sleep("500 millis")
        yield* Effect.promise(() => server.kill())
        expect(yield* healthBecomes(sink, false, 5_000)).toMatchObject({ ready: false })
        yield* Effect.sleep("300 millis")
        yield* Effect.promise(() => server.restart())
      }
      const run = yield* Fiber.join(running)
      expect(run.failures.length + run.unavailable).toBeGreaterThan(0)
      yield* healthBecomes(sink, true, 10_000)
      yield* verify(run, all, table)
    }), 120_000)
})
