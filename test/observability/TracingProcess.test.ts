/**
 * The OTEL_* variables as an operator sets them: the gateway as a child process (`node
 * src/main.ts`) exporting to a local OTLP receiver. Every sampler of OTEL_TRACES_SAMPLER (a
 * message span or none per message, decided as OpenTelemetry's sampler of that name decides,
 * the device's sampled flag honoured by the parent-based ones; a message not sampled keeps the
 * device's traceparent unchanged, or none; a batch of unsampled messages exports nothing),
 * OTEL_SDK_DISABLED, a wrong value (exit 78, one line), and the batch processor's variables
 * (OTEL_BSP_*): batch size, schedule delay, queue size (dropped spans logged) and export timeout.
 */
import { afterEach, describe, expect, it } from "@effect/vitest"
import { context } from "@opentelemetry/api"
import { SamplingDecision, TraceIdRatioBasedSampler } from "@opentelemetry/sdk-trace-base"
import { Device, telemetry } from "../support/client.ts"
import { cleanupChildren, runToExit, spawnGateway, tempDir } from "../support/childGateway.ts"
import { logLines, messageOf } from "../support/process.ts"
import { type MessageRow, rows } from "../support/store.ts"
import { type OtlpReceiver, type ReceivedSpan, startReceiver } from "./otlpReceiver.ts"

const receivers: Array<OtlpReceiver> = []
afterEach(async () => {
  await cleanupChildren()
  for (const r of receivers.splice(0)) await r.close()
})

const hex = (bytes: number) => Array.from(crypto.getRandomValues(new Uint8Array(bytes)), (b) => b.toString(16).padStart(2, "0")).join("")

/** What one device sent: seq → its `trace` (undefined: none). */
type Sent = ReadonlyMap<number, string | undefined>

/** Seqs 1..n/3 with a sampled traceparent, then as many with a not-sampled one, then as many with none. */
const frames = (perGroup: number): Sent => {
  const sent = new Map<number, string | undefined>()
  for (let i = 1; i <= 3 * perGroup; i++) {
    sent.set(i, i <= perGroup ? `00-${hex(16)}-${hex(8)}-01` : i <= 2 * perGroup ? `00-${hex(16)}-${hex(8)}-00` : undefined)
  }
  return sent
}

interface Run {
  readonly receiver: OtlpReceiver
  readonly stored: ReadonlyArray<MessageRow>
  readonly output: string
  readonly code: number | null
  readonly spans: ReadonlyArray<ReceivedSpan>
}

/** A gateway with `env` (and the receiver as endpoint): `sent` from one device, then SIGTERM (the export is flushed). */
const traced = async (env: Record<string, string>, sent: Sent, options: { readonly delayMs?: number; readonly whileRunning?: (r: OtlpReceiver) => Promise<void> } = {}): Promise<Run> => {
  const receiver = await startReceiver(options.delayMs === undefined ? {} : { delayMs: options.delayMs })
  receivers.push(receiver)
  const dataDir = tempDir("gw-otel-")
  const g = await spawnGateway(dataDir, { OTEL_EXPORTER_OTLP_ENDPOINT: receiver.endpoint, ...env })
  const { d } = await Device.open(g.port, "dev-1")
  d.send(...[...sent].map(([seq, trace]) => telemetry(seq, { t: seq }, trace === undefined ? {} : { trace })))
  const answers = await d.take(sent.size, 20_000)
  expect(answers.every((a) => a.type === "ack")).toBe(true)
  d.end()
  await options.whileRunning?.(receiver)
  g.child.kill("SIGTERM")
  const code = await g.exited
  return { receiver, stored: rows(dataDir, "dev-1"), output: g.output(), code, spans: receiver.spans() }
}

const ingestSeqs = (spans: ReadonlyArray<ReceivedSpan>) =>
  spans.filter((s) => s.name === "ingest telemetry").map((s) => Number(s.attributes["message.seq"])).sort((a, b) => a - b)

/** The stored traceparent of each message: the span's when sampled, else the device's unchanged (null when it sent none). */
const expectStored = (run: Run, sent: Sent) => {
  const spans = new Map(run.spans.filter((s) => s.name === "ingest telemetry").map((s) => [Number(s.attributes["message.seq"]), s]))
  expect(run.stored.map((r) => r.seq)).toEqual([...sent.keys()])
  for (const r of run.stored) {
    const span = spans.get(r.seq)
    const device = sent.get(r.seq)
    if (span !== undefined) {
      expect(r.traceparent).toBe(`00-${span.traceId}-${span.spanId}-01`)
      if (device !== undefined) {
        expect(span.traceId).toBe(device.slice(3, 35))
        expect(span.parentSpanId).toBe(device.slice(36, 52))
      }
    } else {
      expect(r.traceparent).toBe(device ?? null)
    }
  }
}

const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i)

/** OpenTelemetry JS's ratio sampler on a trace id. */
const otelRatio = (ratio: number, traceId: string) =>
  new TraceIdRatioBasedSampler(ratio).shouldSample(context.active(), traceId).decision === SamplingDecision.RECORD_AND_SAMPLED

describe("OTEL_* variables, gateway process", () => {
  it("samples each message as OTEL_TRACES_SAMPLER says, before any span work", async () => {
    const sent = frames(4) // 1-4 sampled by the device, 5-8 not, 9-12 no trace
    const cases: ReadonlyArray<{ readonly env: Record<string, string>; readonly want: ReadonlyArray<number> }> = [
      { env: { OTEL_TRACES_SAMPLER: "always_on" }, want: range(1, 12) },
      { env: { OTEL_TRACES_SAMPLER: "traceidratio", OTEL_TRACES_SAMPLER_ARG: "0" }, want: [] },
      { env: { OTEL_TRACES_SAMPLER: "traceidratio", OTEL_TRACES_SAMPLER_ARG: "1" }, want: range(1, 12) },
      { env: {}, want: [...range(1, 4), ...range(9, 12)] }, // parentbased_always_on, the default
      { env: { OTEL_TRACES_SAMPLER: "parentbased_always_off" }, want: range(1, 4) },
      { env: { OTEL_TRACES_SAMPLER: "parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG: "0" }, want: range(1, 4) },
      { env: { OTEL_TRACES_SAMPLER: "parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG: "1" }, want: [...range(1, 4), ...range(9, 12)] }
    ]
    const runs = await Promise.all(cases.map((c) => traced(c.env, sent)))
    runs.forEach((run, i) => {
      const c = cases[i]!
      expect({ env: c.env, seqs: ingestSeqs(run.spans) }).toEqual({ env: c.env, seqs: c.want })
      expectStored(run, sent)
      expect(run.code).toBe(0)
      // a batch span only where a sampled message is: nothing of the pipeline for unsampled ones
      const pipeline = run.spans.filter((s) => s.name === "sink.batch" || s.name === "stage commit" || s.name === "sink.write")
      if (c.want.length === 0) expect(pipeline).toEqual([])
      else expect(pipeline.length).toBeGreaterThanOrEqual(3)
    })
  }, 90_000)

  it("takes traceidratio on the device's trace id, as OpenTelemetry JS's TraceIdRatioBased sampler does, whatever its flag", async () => {
    const sent = frames(12)
    const run = await traced({ OTEL_TRACES_SAMPLER: "traceidratio", OTEL_TRACES_SAMPLER_ARG: "0.5" }, sent)
    const want = [...sent].filter(([, t]) => t !== undefined && otelRatio(0.5, t.slice(3, 35))).map(([seq]) => seq)
    const got = ingestSeqs(run.spans).filter((seq) => sent.get(seq) !== undefined)
    expect(got).toEqual(want)
    expectStored(run, sent)
  }, 60_000)

  it("exports nothing with OTEL_SDK_DISABLED=true or the always_off sampler; the device's traceparent is stored as sent", async () => {
    const sent = frames(2)
    for (const env of [{ OTEL_SDK_DISABLED: "true" }, { OTEL_TRACES_SAMPLER: "always_off" }]) {
      const run = await traced(env, sent)
      expect(run.receiver.requests).toEqual([])
      expectStored(run, sent)
    }
  }, 60_000)

  it("refuses a wrong OTEL_* value at start: one line naming the variable, exit 78 (a node of workers too)", async () => {
    for (const workers of ["1", "2"]) {
      const r = await runToExit(tempDir("gw-otel-"), {
        GATEWAY_WORKERS: workers,
        OTEL_EXPORTER_OTLP_ENDPOINT: "http://127.0.0.1:9",
        OTEL_TRACES_SAMPLER: "sometimes"
      })
      expect({ workers, code: r.code }).toEqual({ workers, code: 78 })
      const errors = logLines(r.output).filter((l) => l.level === "ERROR")
      expect(errors.map(messageOf)).toEqual([
        `invalid configuration: OTEL_TRACES_SAMPLER="sometimes": expected one of always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio`
      ])
    }
  }, 30_000)

  it("exports in batches of OTEL_BSP_MAX_EXPORT_BATCH_SIZE, OTEL_BSP_SCHEDULE_DELAY after the first span waited", async () => {
    const sent = frames(3)
    let whileRunning = 0
    const run = await traced(
      { OTEL_TRACES_SAMPLER: "always_on", OTEL_BSP_MAX_EXPORT_BATCH_SIZE: "2", OTEL_BSP_SCHEDULE_DELAY: "50" },
      sent,
      {
        whileRunning: async (r) => {
          // well before the default delay (5 s) would send a partial batch
          const deadline = performance.now() + 3_000
          while (ingestSeqs(r.spans()).length < 9 && performance.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20))
          whileRunning = ingestSeqs(r.spans()).length
        }
      }
    )
    expect(whileRunning).toBe(9) // exported while the gateway ran: the 50 ms delay, not the shutdown flush
    for (const r of run.receiver.requests) expect(r.spans.length).toBeLessThanOrEqual(2)
    expect(run.receiver.requests.length).toBeGreaterThanOrEqual(6)

    const held = await traced({ OTEL_TRACES_SAMPLER: "always_on", OTEL_BSP_SCHEDULE_DELAY: "60000" }, sent, {
      whileRunning: async (r) => {
        await new Promise((resolve) => setTimeout(resolve, 500))
        whileRunning = r.requests.length
      }
    })
    expect(whileRunning).toBe(0) // a partial batch waits for the delay…
    expect(ingestSeqs(held.spans)).toEqual(range(1, 9)) // …or for the shutdown, which flushes it
    expect(held.receiver.requests).toHaveLength(1)
  }, 60_000)

  it("drops what OTEL_BSP_MAX_QUEUE_SIZE cannot hold (and says so), and gives up an export after OTEL_BSP_EXPORT_TIMEOUT", async () => {
    const sent = frames(10)
    const run = await traced(
      {
        OTEL_TRACES_SAMPLER: "always_on",
        OTEL_BSP_MAX_QUEUE_SIZE: "4",
        OTEL_BSP_MAX_EXPORT_BATCH_SIZE: "4",
        OTEL_BSP_EXPORT_TIMEOUT: "200",
        OTEL_EXPORTER_OTLP_TIMEOUT: "10000"
      },
      sent,
      { delayMs: 5_000, whileRunning: () => new Promise((resolve) => setTimeout(resolve, 700)) }
    )
    // the receiver answers nothing for 5 s: exports are given up after 200 ms, so several went
    const times = run.receiver.requests.map((r) => r.at)
    expect(times.length).toBeGreaterThanOrEqual(2)
    expect(times[1]! - times[0]!).toBeLessThan(3_000) // not the exporter's 10 s, nor the receiver's 5 s
    // at most a queue's worth waited at any time: of the 30 messages' spans and the batch spans, some were dropped
    expect(ingestSeqs(run.spans).length).toBeLessThan(30)
    const dropped = logLines(run.output).filter((l) => messageOf(l).startsWith("trace spans dropped"))
    expect(dropped.length).toBeGreaterThanOrEqual(1)
    expect(Number(dropped[0]!.annotations?.["spans"])).toBeGreaterThan(0)
    expect(logLines(run.output).some((l) => messageOf(l) === "trace export failed")).toBe(true)
  }, 60_000)
})
