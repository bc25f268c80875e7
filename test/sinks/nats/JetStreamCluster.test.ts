/**
 * The NATS JetStream sink on a 3-node cluster (private `nats-server -js` processes on loopback,
 * joined by routes) with an R3 stream (load project): the stream's leader is killed (SIGKILL)
 * in the middle of a steady load retried as the commit stage would (same message ids); the
 * driver keeps publishing once a new leader is elected, and the stream read back holds every
 * message exactly once: each Committed or Duplicate one, and no id that was never sent.
 */
import { afterAll, describe, expect, it } from "@effect/vitest"
import { Effect, Fiber, Logger } from "effect"
import type { Envelope } from "../../../src/domain/Envelope.ts"
import { MessageOutcome, messageId } from "../../../src/sinks/Contract.ts"
import { makeJetStreamSink } from "../../../src/sinks/nats/JetStreamSink.ts"
import { natsSettings } from "../../../src/sinks/nats/NatsSettings.ts"
import { eventEnvelope, telemetryEnvelope } from "../../support/envelopes.ts"
import { hasNatsServer, type NatsCluster, requireNatsServer, startNatsCluster, stopAllNatsServers } from "../../support/natsServer.ts"
import { commitAll, healthBecomes } from "../../support/natsSink.ts"
import { readStream, withManager } from "../../support/natsStream.ts"

requireNatsServer("The NATS JetStream cluster test")

let cluster: NatsCluster | undefined
afterAll(async () => {
  await cluster?.stop()
  await stopAllNatsServers()
})

const quiet = Effect.provide(Logger.layer([]))

/** The name of the server leading `stream` now (asks live members until one knows, 30 s at most). */
const leaderOf = (urls: string, stream: string) =>
  Effect.promise(() =>
    withManager(urls, async (jsm) => {
      const deadline = Date.now() + 30_000
      while (Date.now() < deadline) {
        // while no leader is elected, the request goes unanswered (timeout) or says so
        const leader = await jsm.streams.info(stream).then((i) => i.cluster?.leader, () => undefined)
        if (leader !== undefined && leader !== "") return leader
        await new Promise((r) => setTimeout(r, 100))
      }
      throw new Error(`no leader for ${stream} within 30 s`)
    })
  )

describe.runIf(hasNatsServer)("JetStreamSink on a 3-node cluster", () => {
  it.live("the R3 stream's leader killed mid-load: publishing goes on after re-election, every acked message stored exactly once", () =>
    Effect.gen(function*() {
      const c = yield* Effect.promise(() => startNatsCluster(3))
      cluster = c
      const sink = yield* makeJetStreamSink(natsSettings({ url: c.urls, createStream: true, replicas: 3, ackTimeoutMs: 2_000 })).pipe(quiet)
      expect(sink.stream()).toMatchObject({ replicas: 3, created: true })
      yield* healthBecomes(sink, true, 10_000)

      // the leader is found before the load (asking takes seconds): the kill must land inside it
      const leader = yield* leaderOf(c.urls, "DEVICES")
      const victim = c.servers.find((s) => s.name === leader)
      if (victim === undefined) return yield* Effect.die(new Error(`leader ${leader} is not a member`))
      const all: Array<Envelope> = []
      for (let d = 0; d < 20; d++) {
        for (let s = 1; s <= 1_500; s++) all.push(s % 50 === 0 ? eventEnvelope(`dev-${d}`, s, "door") : telemetryEnvelope(`dev-${d}`, s))
      }
      const load = yield* Effect.forkChild(commitAll(sink, all, { batchSize: 250, retryMs: 100, deadlineMs: 90_000, idOf: messageId }))

      yield* Effect.sleep("300 millis")
      yield* Effect.promise(() => victim.kill())
      const killedAt = Date.now()
      const survivors = c.servers.filter((s) => s !== victim).map((s) => s.url).join(",")
      const newLeader = yield* leaderOf(survivors, "DEVICES")
      expect(newLeader).not.toBe(leader)

      const run = yield* Fiber.join(load)
      expect(run.rejected).toEqual([])
      expect(run.settled.size).toBe(all.length)
      for (const [id, times] of run.committedTimes) expect(times, id).toBe(1)
      // the kill landed in the load, and publishing went on after it
      const committedAfter = [...run.committedAt.values()].filter((t) => t > killedAt).length
      expect(committedAfter).toBeGreaterThan(0)
      expect(run.committedAt.size).toBeLessThan(all.length + 1)

      // read back from the whole cluster again (the victim restarted, caught up)
      yield* Effect.promise(() => victim.restart())
      yield* leaderOf(c.urls, "DEVICES")
      const stored = yield* Effect.promise(() => readStream(c.urls, "DEVICES"))
      const counts = new Map<string, number>()
      for (const m of stored) counts.set(m.msgId ?? "?", (counts.get(m.msgId ?? "?") ?? 0) + 1)
      const sent = new Set(all.map(messageId))
      for (const [id, count] of counts) {
        expect(sent.has(id), `${id} was never sent`).toBe(true)
        expect(count, `${id} stored ${count} times`).toBe(1)
      }
      for (const [id, outcome] of run.settled) {
        expect([MessageOutcome.Committed, MessageOutcome.Duplicate]).toContain(outcome)
        expect(counts.get(id), `${id} acked but not stored`).toBe(1)
      }
      expect(stored.length).toBe(all.length)
      // subjects and trace headers as on a single server
      expect(stored.find((m) => m.msgId === "dev-3:1:50")?.subject).toBe("devices.event.dev-3")
    }), 150_000)
})
