/**
 * The traceparent each remote sink carries names the message's span, end to end: a gateway
 * process with tracing on, writing to a private `nats-server -js` (the `traceparent` header)
 * and a private PostgreSQL (the `traceparent` column), exporting to a local OTLP receiver. A
 * message that is not sampled carries the device's traceparent unchanged. And with the NATS
 * server killed, the outbox spill and the breaker opening are events of the `sink.write` span,
 * whose trace the breaker's log line names.
 */
import { afterAll, afterEach, describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { query } from "../sinks/postgres/support.ts"
import { Device, telemetry } from "../support/client.ts"
import { cleanupChildren, spawnGateway, tempDir } from "../support/childGateway.ts"
import { hasNatsServer, type NatsServer, requireNatsServer, startNatsServer, stopAllNatsServers } from "../support/natsServer.ts"
import { readStream } from "../support/natsStream.ts"
import { hasPostgresServer, type PostgresServer, requirePostgresServer, startPostgresServer, stopAllPostgresServers } from "../support/postgresServer.ts"
import { logLines, messageOf } from "../support/process.ts"
import { type OtlpReceiver, type ReceivedSpan, startReceiver } from "./otlpReceiver.ts"

requireNatsServer("The tracing tests of the NATS sink")
requirePostgresServer("The tracing tests of the PostgreSQL sink")

const stops: Array<() => Promise<void>> = []
afterEach(async () => {
  await cleanupChildren()
  for (const stop of stops.splice(0)) await stop()
})
afterAll(async () => {
  await stopAllNatsServers()
  await stopAllPostgresServers()
})

const SAMPLED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
const NOT_SAMPLED = "00-1af7651916cd43dd8448eb211c80319c-c7ad6b7169203331-00"

const receiver = async () => {
  const r = await startReceiver()
  stops.push(r.close)
  return r
}

/** Sends seq 1 (the device's sampled trace), 2 (its unsampled one), 3 (none); waits for the acks. */
const sendThree = async (port: number, device: string) => {
  const { d } = await Device.open(port, device)
  d.send(telemetry(1, { t: 1 }, { trace: SAMPLED }), telemetry(2, { t: 2 }, { trace: NOT_SAMPLED }), telemetry(3))
  expect((await d.take(3, 20_000)).map((a) => [a.type, a["seq"]])).toEqual([["ack", 1], ["ack", 2], ["ack", 3]])
  d.end()
}

const spanOf = (spans: ReadonlyArray<ReceivedSpan>, seq: number) =>
  spans.find((s) => s.name === "ingest telemetry" && s.attributes["message.seq"] === seq)

/** What each message's stored traceparent must be: its span's when sampled (1 and 3), the device's unchanged (2). */
const expectNamed = (r: OtlpReceiver, traceparents: ReadonlyArray<unknown>) => {
  const spans = r.spans()
  const one = spanOf(spans, 1)!
  const three = spanOf(spans, 3)!
  expect(spanOf(spans, 2)).toBeUndefined()
  expect(one.traceId).toBe(SAMPLED.slice(3, 35))
  expect(traceparents).toEqual([`00-${one.traceId}-${one.spanId}-01`, NOT_SAMPLED, `00-${three.traceId}-${three.spanId}-01`])
}

describe.runIf(hasNatsServer && hasPostgresServer)("the traceparent a sink carries", () => {
  it("NATS: the traceparent header names the message's span", async () => {
    const nats: NatsServer = await startNatsServer()
    stops.push(nats.stop)
    const r = await receiver()
    const g = await spawnGateway(tempDir("gw-trace-nats-"), {
      GATEWAY_SINK: "nats",
      NATS_URL: nats.url,
      NATS_STREAM_CREATE: "true",
      GATEWAY_OUTBOX: "off",
      OTEL_EXPORTER_OTLP_ENDPOINT: r.endpoint
    })
    await sendThree(g.port, "dev-nats")
    g.child.kill("SIGTERM")
    expect(await g.exited).toBe(0)
    const stored = (await readStream(nats.url, "DEVICES")).sort((a, b) => (a.msgId ?? "").localeCompare(b.msgId ?? ""))
    expect(stored.map((m) => m.msgId)).toEqual(["dev-nats:0:1", "dev-nats:0:2", "dev-nats:0:3"])
    expectNamed(r, stored.map((m) => m.traceparent))
    expect(r.spans().find((s) => s.name === "sink.write")?.attributes["sink.name"]).toBe("nats")
  }, 60_000)

  it("PostgreSQL: the traceparent column names the message's span", async () => {
    const pg: PostgresServer = await startPostgresServer()
    stops.push(pg.stop)
    const r = await receiver()
    const g = await spawnGateway(tempDir("gw-trace-pg-"), {
      GATEWAY_SINK: "postgres",
      DATABASE_URL: pg.url,
      GATEWAY_OUTBOX: "off",
      OTEL_EXPORTER_OTLP_ENDPOINT: r.endpoint
    })
    await sendThree(g.port, "dev-pg")
    g.child.kill("SIGTERM")
    expect(await g.exited).toBe(0)
    const rows = await Effect.runPromise(query(pg.url, "SELECT seq::int AS seq, traceparent FROM messages WHERE device = $1 ORDER BY seq", ["dev-pg"]))
    expect(rows.map((row) => Number(row["seq"]))).toEqual([1, 2, 3])
    expectNamed(r, rows.map((row) => row["traceparent"]))
  }, 90_000)

  it("NATS down: the outbox spill and the breaker opening are events of the write's span, named by the breaker's log line", async () => {
    const nats: NatsServer = await startNatsServer()
    stops.push(nats.stop)
    const r = await receiver()
    const g = await spawnGateway(tempDir("gw-trace-outage-"), {
      GATEWAY_SINK: "nats",
      NATS_URL: nats.url,
      NATS_STREAM_CREATE: "true",
      NATS_ACK_TIMEOUT_MS: "500",
      GATEWAY_STORE_RETRIES: "1",
      GATEWAY_BREAKER_FAILURES: "1",
      GATEWAY_OUTBOX: "on",
      OTEL_EXPORTER_OTLP_ENDPOINT: r.endpoint,
      OTEL_TRACES_SAMPLER: "always_on"
    })
    const { d } = await Device.open(g.port, "dev-outage")
    d.send(telemetry(1))
    expect((await d.take(1)).map((a) => a.type)).toEqual(["ack"])
    await nats.kill()
    d.send(telemetry(2))
    // the outbox takes it: acked
    expect((await d.take(1, 20_000)).map((a) => [a.type, a["seq"]])).toEqual([["ack", 2]])
    d.end()
    g.child.kill("SIGTERM")
    await g.exited
    const writes = r.spans().filter((s) => s.name === "sink.write" && s.attributes["sink.name"] === "nats")
    const events = writes.flatMap((w) => w.events.map((e) => ({ write: w, name: e.name, attributes: e.attributes })))
    const spill = events.find((e) => e.name === "outbox.spill")
    expect(spill?.attributes).toMatchObject({ "sink.name": "nats", "outbox.stored": 1 })
    const retry = events.find((e) => e.name === "sink.retry")
    expect(retry?.attributes).toMatchObject({ "sink.name": "nats", "retry.attempt": 1 })
    const opened = events.find((e) => e.name === "sink.breaker" && e.attributes["breaker.to"] === "open")
    expect(opened?.attributes).toMatchObject({ "breaker.from": "closed" })
    // the breaker's log line names the span it happened in
    const line = logLines(g.output()).find((l) => messageOf(l).startsWith("sink nats circuit open"))
    expect(line).toMatchObject({ trace_id: opened!.write.traceId, span_id: opened!.write.spanId })
  }, 90_000)
})
