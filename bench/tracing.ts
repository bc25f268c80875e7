/**
 * What tracing costs: the throughput load (bench/load.ts) against the raw baseline and the
 * gateway with tracing off, at 1 % sampling and at 100 %, exporting OTLP/HTTP (protobuf, the
 * default) to a local receiver in this process that answers 200 at once (it only counts what
 * it gets: requests, bytes and `ingest` spans, found by their name's bytes, which both
 * encodings carry as is). The configurations run in turn, `rounds` times, so a slow spell of
 * the machine hits them alike; every ratio is against the baseline of the same round, and the
 * cost of tracing against the gateway with tracing off of the same round.
 */
import * as Http from "node:http"
import type { AddressInfo } from "node:net"
import type { LoadOptions } from "./load.ts"
import { runLoad } from "./load.ts"
import { measureWith } from "./measure.ts"
import { fmt, gatewayArgv, gatewayEnv, type NodeFlags, removeDir, startServer, tempDir } from "./proc.ts"

/** One configuration of a round. */
export interface TracingRow {
  readonly round: number
  readonly config: string
  readonly msgsPerSec: number
  readonly p50Ms: number
  readonly p99Ms: number
  readonly serverCpu: number
  readonly rssMb: number
  readonly nacked: number
  /** Messages acked over the server's life (warm-up included), and the ingest spans the receiver got. */
  readonly ackedTotal: number
  readonly ingestSpans: number
  readonly requests: number
  readonly bytes: number
}

/** The OTLP receiver: answers 200 at once, counts. */
const startReceiver = async () => {
  const counts = { requests: 0, bytes: 0, ingestSpans: 0 }
  const needle = Buffer.from("ingest ")
  const server = Http.createServer((req, res) => {
    const chunks: Array<Buffer> = []
    req.on("data", (d: Buffer) => chunks.push(d))
    req.on("end", () => {
      const body = Buffer.concat(chunks)
      counts.requests++
      counts.bytes += body.length
      for (let at = body.indexOf(needle); at !== -1; at = body.indexOf(needle, at + needle.length)) counts.ingestSpans++
      res.writeHead(200, { "content-type": String(req.headers["content-type"] ?? "application/x-protobuf") }).end()
    })
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  return {
    endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    take: () => {
      const out = { ...counts }
      counts.requests = counts.bytes = counts.ingestSpans = 0
      return out
    },
    close: () => new Promise<void>((resolve) => server.close(() => resolve()))
  }
}

/** The configurations of a round, in the order they run. */
const CONFIGS = (endpoint: string): ReadonlyArray<{ readonly name: string; readonly env: NodeJS.ProcessEnv | undefined }> => [
  { name: "raw node:net", env: undefined },
  { name: "gateway, tracing off", env: {} },
  {
    name: "gateway, 1 % sampled",
    env: { OTEL_EXPORTER_OTLP_ENDPOINT: endpoint, OTEL_TRACES_SAMPLER: "parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG: "0.01" }
  },
  { name: "gateway, 100 % sampled", env: { OTEL_EXPORTER_OTLP_ENDPOINT: endpoint, OTEL_TRACES_SAMPLER: "parentbased_always_on" } },
  {
    // the default queue (2048 spans) overflows at this rate: with room, every span is exported
    name: "gateway, 100 % sampled, queue 262144",
    env: {
      OTEL_EXPORTER_OTLP_ENDPOINT: endpoint,
      OTEL_TRACES_SAMPLER: "parentbased_always_on",
      OTEL_BSP_MAX_QUEUE_SIZE: "262144",
      OTEL_BSP_MAX_EXPORT_BATCH_SIZE: "8192"
    }
  }
]

/** Runs every configuration `rounds` times, in turn. */
export const runTracingBench = async (load: Omit<LoadOptions, "port">, flags: NodeFlags, rounds: number): Promise<Array<TracingRow>> => {
  const receiver = await startReceiver()
  const rows: Array<TracingRow> = []
  // the OTEL_* variables of this process must not leak into the gateways
  const clean: NodeJS.ProcessEnv = {}
  for (const k of Object.keys(process.env)) if (k.startsWith("OTEL_")) clean[k] = ""
  try {
    for (let round = 1; round <= rounds; round++) {
      for (const config of CONFIGS(receiver.endpoint)) {
        const dataDir = tempDir()
        const server = config.env === undefined
          ? () => startServer(["bench/baseline.ts", "0"], {})
          : () => startServer(gatewayArgv(flags), gatewayEnv(dataDir, { ...clean, ...config.env }))
        receiver.take()
        let ackedTotal = 0
        const prefix = `${load.devicePrefix}-${round}-${rows.length}`
        const r = await measureWith(config.name, server, async (port, warmUp) => {
          const result = await runLoad(
            warmUp ? { ...load, port, durationMs: 1_000, devicePrefix: `${prefix}-warm` } : { ...load, port, devicePrefix: prefix }
          )
          ackedTotal += result.acked
          return result
        })
        const got = receiver.take() // the server has stopped: its last spans were flushed
        removeDir(dataDir)
        rows.push({
          round,
          config: config.name,
          msgsPerSec: r.msgsPerSec,
          p50Ms: r.p50Ms,
          p99Ms: r.p99Ms,
          serverCpu: r.serverCpu,
          rssMb: r.rssMb,
          nacked: r.nacked,
          ackedTotal,
          ingestSpans: got.ingestSpans,
          requests: got.requests,
          bytes: got.bytes
        })
      }
    }
  } finally {
    await receiver.close()
  }
  return rows
}

const median = (xs: ReadonlyArray<number>) => {
  const s = [...xs].sort((a, b) => a - b)
  return s.length === 0 ? NaN : s.length % 2 === 1 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2
}

/** The rows as a Markdown table, with the ratios of each round and their median and spread. */
export const tracingTable = (heading: string, rows: ReadonlyArray<TracingRow>): Array<string> => {
  const byRound = new Map<number, Array<TracingRow>>()
  for (const r of rows) byRound.set(r.round, [...(byRound.get(r.round) ?? []), r])
  const usPerMsg = (r: TracingRow) => (r.serverCpu * 1e6) / Math.max(1, r.msgsPerSec)
  const usPerMsgOf = (round: number, config: string) => {
    const base = byRound.get(round)?.find((x) => x.config === config)
    return base === undefined ? NaN : usPerMsg(base)
  }
  const ratio = (r: TracingRow, of: string) => {
    const base = byRound.get(r.round)?.find((x) => x.config === of)
    return base === undefined || base.msgsPerSec === 0 ? NaN : r.msgsPerSec / base.msgsPerSec
  }
  const lines = [
    heading,
    "| round | server | acked msgs/s | ×raw | ×tracing off | server CPU µs/msg | ×tracing off | p50 ms | p99 ms | server CPU | peak RSS MB | ingest spans received / acked | export requests | export MB | nacks |",
    "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ...rows.map((r) => {
      const traced = r.config.includes("sampled")
      const gateway = r.config !== "raw node:net"
      return `| ${r.round} | ${r.config} | ${fmt(r.msgsPerSec)} | ${fmt(ratio(r, "raw node:net"), 3)} | ${
        gateway ? fmt(ratio(r, "gateway, tracing off"), 3) : ""
      } | ${fmt(usPerMsg(r), 2)} | ${gateway ? fmt(usPerMsg(r) / usPerMsgOf(r.round, "gateway, tracing off"), 3) : ""} | ${fmt(r.p50Ms, 2)} | ${fmt(r.p99Ms, 2)} | ${
        fmt(r.serverCpu * 100)
      }% | ${fmt(r.rssMb)} | ${
        traced ? `${fmt(r.ingestSpans)} / ${fmt(r.ackedTotal)} (${fmt((100 * r.ingestSpans) / Math.max(1, r.ackedTotal), 1)} %)` : ""
      } | ${traced ? r.requests : ""} | ${traced ? fmt(r.bytes / 1e6, 1) : ""} | ${r.nacked} |`
    })
  ]
  const pcts = (xs: ReadonlyArray<number>) => xs.map((c) => `${fmt(100 * c, 1)} %`).join(", ")
  const summary = (config: string) => {
    const mine = rows.filter((r) => r.config === config)
    const costs = mine.map((r) => 1 - ratio(r, "gateway, tracing off"))
    const cpu = mine.map((r) => usPerMsg(r) / usPerMsgOf(r.round, "gateway, tracing off") - 1)
    const vsRaw = mine.map((r) => ratio(r, "raw node:net"))
    return `${config}: ×raw median ${fmt(median(vsRaw), 3)}; throughput cost vs tracing off: median ${fmt(100 * median(costs), 1)} % (rounds: ${
      pcts(costs)
    }); server CPU per message vs tracing off: median ${fmt(100 * median(cpu), 1)} % (rounds: ${pcts(cpu)})`
  }
  lines.push(summary("gateway, tracing off").replace(/; throughput cost.*$/, ""))
  for (const config of new Set(rows.map((r) => r.config))) if (config.includes("sampled")) lines.push(summary(config))
  return lines
}

// ---- in process: what one message's tracing costs ----

/** One measured piece of per-message tracing work, in ns. */
export interface SpanCost {
  readonly name: string
  readonly ns: number
}

/**
 * In process, best of `rounds`: the sampler's decision for a message it does not sample, a
 * sampled message span started and finished (into a queue that keeps them), and a span encoded
 * for OTLP/protobuf by the gateway and by OpenTelemetry JS's serializer (from the same spans).
 */
export const runSpanCosts = async (n = 200_000, rounds = 5): Promise<Array<SpanCost>> => {
  const [{ makeGatewayTracer }, { makeSampler }, { makeProtobufEncoder }, { toReadableSpan }, { ProtobufTraceSerializer, JsonTraceSerializer }, { defaultResource, resourceFromAttributes }] =
    await Promise.all([
      import("../src/observability/GatewayTracer.ts"),
      import("../src/observability/TraceSampler.ts"),
      import("../src/observability/OtlpProtobuf.ts"),
      import("../src/observability/ReadableSpans.ts"),
      import("@opentelemetry/otlp-transformer"),
      import("@opentelemetry/resources")
    ])
  type Finished = Parameters<Parameters<typeof makeGatewayTracer>[1]["ended"]>[0]
  const spans: Array<Finished> = []
  const sink = { ended: (s: Finished) => void spans.push(s) }
  const best = (f: () => number) => {
    let min = Infinity
    for (let r = 0; r < rounds; r++) min = Math.min(min, f())
    return min
  }
  const startFinish = (ratio: number) => () => {
    const t = makeGatewayTracer(makeSampler("parentbased_traceidratio", ratio), sink)
    spans.length = 0
    const at = performance.now()
    const t0 = performance.now()
    for (let i = 0; i < n; i++) t.startMessage("telemetry", "tp-17", i, undefined, at)?.finish("committed", at)
    return ((performance.now() - t0) * 1e6) / n
  }
  const unsampled = best(startFinish(0.01))
  const sampled = best(startFinish(1))
  const resource = defaultResource().merge(resourceFromAttributes({ "service.name": "iot-gateway" }))
  const scope = { name: "iot-gateway" }
  const encode = makeProtobufEncoder(resource.attributes, scope)
  const batch = spans.slice(0, 512)
  const per = (f: () => unknown, times = 100) => () => {
    const t0 = performance.now()
    for (let i = 0; i < times; i++) f()
    return ((performance.now() - t0) * 1e6) / (times * batch.length)
  }
  const readable = batch.map((s) => toReadableSpan(s, resource, scope))
  return [
    { name: "start + finish, 1 % sampled (per message, mostly the decision)", ns: unsampled },
    { name: "start + finish, sampled (per message)", ns: sampled },
    { name: "OTLP/protobuf encoding, the gateway's (per span)", ns: best(per(() => encode(batch))) },
    { name: "OTLP/protobuf encoding, OpenTelemetry JS's (per span, from ReadableSpans)", ns: best(per(() => ProtobufTraceSerializer.serializeRequest(readable), 20)) },
    { name: "OTLP/JSON encoding, OpenTelemetry JS's (per span, from ReadableSpans)", ns: best(per(() => JsonTraceSerializer.serializeRequest(readable), 20)) }
  ]
}

/** The in-process costs as a Markdown table. */
export const spanCostTable = (costs: ReadonlyArray<SpanCost>): string =>
  ["| tracing work | ns |", "|---|---:|", ...costs.map((c) => `| ${c.name} | ${fmt(c.ns)} |`)].join("\n")
