/**
 * The benchmark: runs the raw `node:net` baseline and the gateway (SQLite sink, dedup on) side
 * by side under the same loads, and prints acked msgs/s, ack latency p50/p99/max, the server's
 * peak RSS, and the gateway/baseline ratio; plus the overload scenarios.
 *
 *   npm run bench                       # every scenario below, in this order
 *   npm run bench -- --seconds 5 --only throughput
 *   npm run bench -- --only storm,idle  # a comma-separated list
 *   npm run bench -- --old-space 256    # cap V8's old generation (less RSS, more major GCs)
 *
 * Scenarios (`--only <name>`):
 * - `stages`: stage costs in ns per message (in process; bench/stages.ts)
 * - `throughput`, `latency`: the load of bench/load.ts, `--seconds` each (default 10); the
 *   throughput scenario also runs the gateway with the example stages (unit-conversion and
 *   threshold from a stages file), to show what they cost end to end. `latency` paces by a
 *   shared budget handed to connections in turn (bursty: up to ~40 frames in one write), so it
 *   is labelled "bursty"; the fleet shape is `fleet`
 * - `fleet`: the fleet-shaped load of bench/fleet.ts: `--fleet-devices` (1000,10000) devices,
 *   each sending its share of `--fleet-rate` (20,000 msgs/s in all) on its own schedule, one
 *   frame per write, window 16; the raw baseline and the gateway in the same run, latency from
 *   the scheduled send time and from the write, CPU per message of each, and the ratios; the
 *   fleet settles for `--fleet-settle` seconds (2) before the measured interval, and what was
 *   due meanwhile (the devices' first frames) is reported in its own column
 * - `storm`: `--devices` (10,000) connect at once; `--timeout` (60 s) (bench/storm.ts)
 * - `idle`: RSS per idle connection, `--connections` (10,000) (bench/idle.ts)
 * - `burst`: `--factor` (10) × the sink rate for `--seconds` (default 30), `--sink-rate` (2000),
 *   `--burst-devices` (200) × `--burst-window` (256), `--memory-budget` MiB (128)
 *   (bench/burst.ts, bench/slowGateway.ts)
 * - `workers`: the throughput load against GATEWAY_WORKERS=1 and 2 and the raw baseline, with
 *   the CPU share of the load generator and of the server's process tree
 * - `nats`: the JetStream sink driver next to a bare pipelined publisher into the same stream,
 *   on a private nats-server (bench/nats.ts)
 * - `postgres`: the PostgreSQL sink driver next to a bare batched INSERT loop (same statement,
 *   table and batch size, no Effect), taking turns, on the shared server (bench/postgres.ts)
 * - `outbox`: the store-and-forward outbox around the JetStream sink: the server killed for 5 s
 *   under a load at half the sink's rate, time to drain after the restart, the stream audited;
 *   the Stream forwarder vs a plain loop (bench/outbox.ts)
 * - `sinks`: the throughput and latency loads against the raw baseline and the gateway writing to
 *   each sink in turn (SQLite, NATS JetStream on a private server, PostgreSQL, SQLite + NATS),
 *   end to end (bench/sinks.ts)
 * - `ratelimit`: per-device rate limiting cost in ns per message (in process; bench/ratelimit.ts)
 * - `store`: the SQLite writer's own CPU per row in the fleet's pattern, and WAL bytes per row
 *   (in process, on the sink's functions; bench/store.ts)
 * - `tls`: the throughput load against the raw baseline over node:net and node:tls and the gateway
 *   over plain TCP, TLS and mutual TLS (one client certificate per device), `--rounds` (1) times
 *   in turn (bench/tls.ts); `tls-storm`: the storm over plain TCP, TLS and mutual TLS,
 *   `--devices` (5,000), one client certificate per device (issuing 5,000 takes ~2.5 min) or
 *   `--storm-certs N` shared by the devices (bench/tlsStorm.ts). Both need `openssl` (bench/pki.ts).
 * - `tracing`: the throughput load against the raw baseline and the gateway with tracing off, at
 *   1 % and at 100 % sampling, exporting OTLP to a local receiver that answers 200 at once,
 *   `--rounds` (1) times in turn; ratios per round and their median (bench/tracing.ts)
 */
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { parseArgs } from "node:util"
import { runBurst, burstTable } from "./burst.ts"
import { idleTable, runIdle } from "./idle.ts"
import type { LoadOptions } from "./load.ts"
import { type FleetRow, measure, measureFleet } from "./measure.ts"
import { checkFileLimit, fmt, gatewayArgv, gatewayEnv, type NodeFlags, removeDir, startServer, tempDir } from "./proc.ts"
import { rateLimitTable, runRateLimitBench } from "./ratelimit.ts"
import { natsTable, runNatsBench } from "./nats.ts"
import { postgresTable, runPostgresBench } from "./postgres.ts"
import { outboxTable, runOutboxBench } from "./outbox.ts"
import { runSinksBench, sinksTable } from "./sinks.ts"
import { runStageBench, stageTable } from "./stages.ts"
import { runStoreBench, storeTable } from "./store.ts"
import { runStorm, stormTable } from "./storm.ts"
import { hasOpenssl } from "./pki.ts"
import { runTls, tlsTable } from "./tls.ts"
import { runTlsStorm, tlsStormTable } from "./tlsStorm.ts"
import { runSpanCosts, runTracingBench, spanCostTable, tracingTable } from "./tracing.ts"

const { values: args } = parseArgs({
  options: {
    seconds: { type: "string" },
    only: { type: "string" },
    "semi-space": { type: "string", default: "8" },
    "old-space": { type: "string" },
    devices: { type: "string" },
    "storm-certs": { type: "string" },
    rounds: { type: "string", default: "1" },
    timeout: { type: "string", default: "60" },
    connections: { type: "string", default: "10000" },
    "sink-rate": { type: "string", default: "2000" },
    "burst-devices": { type: "string", default: "200" },
    "burst-window": { type: "string", default: "256" },
    factor: { type: "string", default: "10" },
    "memory-budget": { type: "string", default: "128" },
    "fleet-devices": { type: "string", default: "1000,10000" },
    "fleet-rate": { type: "string", default: "20000" },
    "fleet-settle": { type: "string", default: "2" }
  }
})
const seconds = Number(args.seconds ?? 10)
const flags: NodeFlags = {
  semiSpaceMb: Number(args["semi-space"]),
  oldSpaceMb: args["old-space"] === undefined ? undefined : Number(args["old-space"])
}
const SCENARIOS = ["stages", "throughput", "latency", "fleet", "storm", "idle", "burst", "workers", "ratelimit", "store", "tls", "tls-storm", "nats", "postgres", "outbox", "sinks", "tracing"] as const
const only = args.only === undefined ? undefined : new Set(args.only.split(",").map((s) => s.trim()))
for (const name of only ?? []) {
  if (!(SCENARIOS as ReadonlyArray<string>).includes(name)) {
    console.error(`unknown scenario ${name}; one of ${SCENARIOS.join(", ")}`)
    process.exit(2)
  }
}
const wanted = (name: (typeof SCENARIOS)[number]) => only === undefined || only.has(name)

const baseline = () => startServer(["bench/baseline.ts", "0"], {})
const gateway = (dataDir: string, env: NodeJS.ProcessEnv = {}) => () => startServer(gatewayArgv(flags), gatewayEnv(dataDir, env))

/** A stages file with the example stages that need no service. */
const exampleStages = (dir: string) => {
  const file = Path.join(dir, "stages.json")
  Fs.writeFileSync(file, JSON.stringify({
    stages: [
      // bench/load.ts sends temp, humidity and battery: every message is converted (a copy each)
      { stage: "unit-conversion", options: { conversions: [{ from: "temp", to: "temp_f", preset: "celsius_to_fahrenheit" }] } },
      { stage: "threshold", options: { limits: [{ metric: "temp_f", above: 1000 }, { metric: "battery", below: 3.3 }] } }
    ]
  }))
  return file
}

const loads: Record<"throughput" | "latency", Omit<LoadOptions, "port">> = {
  throughput: { connections: 50, window: 256, rate: 0, eventRatio: 0, durationMs: seconds * 1000, devicePrefix: "tp" },
  latency: { connections: 1000, window: 64, rate: 20_000, eventRatio: 0.05, durationMs: seconds * 1000, devicePrefix: "lat" }
}

const heading = (name: string, load: Omit<LoadOptions, "port">) => {
  const pace = load.rate > 0 ? `${fmt(load.rate)} msgs/s (bursty: a shared budget handed to connections in turn)` : "unpaced"
  return `\n### ${name}: ${load.connections} connections × window ${load.window}, ${pace}, ${fmt(load.eventRatio * 100)}% events, ${seconds} s`
}

/** The fleet shape at each size: the raw baseline and the gateway in the same run, and the guard ratios. */
const fleetScenario = async (devices: number, rate: number): Promise<Array<string>> => {
  checkFileLimit(devices * 2)
  const settle = Number(args["fleet-settle"])
  const fleet = {
    devices,
    rate,
    window: 16,
    eventRatio: 0.05,
    durationMs: seconds * 1000,
    settleMs: settle * 1000,
    devicePrefix: `fl${devices}`
  }
  const dataDir = tempDir()
  const raw = await measureFleet("raw node:net", baseline, fleet)
  const gw = await measureFleet("gateway (sqlite)", gateway(dataDir), fleet)
  removeDir(dataDir)
  const usPerMsg = (r: FleetRow) => (r.serverCpu * 1e6) / Math.max(1, r.msgsPerSec)
  const pct = (cores: number) => `${fmt(cores * 100)}%`
  return [
    `\n### fleet: ${fmt(devices)} devices, ${fmt(rate)} msgs/s in all (each device one frame every ${fmt((devices * 1000) / rate)} ms on its own schedule, one frame per write), window 16, 5% events, ${settle} s settling + ${seconds} s measured`,
    "latency from the scheduled send time (and from the write) of the sends due in the measured interval; first-seconds p99: those due while the fleet settled (every device's first frames after joining); CPU in % of one core over the measured interval, all threads; server µs/msg = server CPU per acked message",
    "| server | acked msgs/s | p50 ms | p99 ms | max ms | p99 from write ms | first-seconds p99 ms | server CPU | server µs/msg | load generator CPU | peak RSS MB | behind | nacks |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ...[raw, gw].map((r) =>
      `| ${r.server} | ${fmt(r.msgsPerSec)} | ${fmt(r.p50Ms, 2)} | ${fmt(r.p99Ms, 2)} | ${fmt(r.maxMs, 1)} | ${fmt(r.writeP99Ms, 2)} | ${fmt(r.settleP99Ms, 2)} | ${pct(r.serverCpu)} | ${fmt(usPerMsg(r), 1)} | ${pct(r.loadCpu)} | ${fmt(r.rssMb)} | ${r.behind} | ${r.nacked} |`
    ),
    `guard: gateway p99 ${fmt(gw.p99Ms, 2)} ms vs raw ${fmt(raw.p99Ms, 2)} ms = ${fmt(gw.p99Ms / raw.p99Ms, 2)}× raw; CPU per message ${fmt(usPerMsg(gw) / usPerMsg(raw), 2)}× raw`
  ]
}

/** The throughput and latency scenarios: the baseline, the gateway, and (throughput) the gateway with stages. */
const loadScenario = async (name: "throughput" | "latency"): Promise<Array<string>> => {
  const load = loads[name]
  const dataDir = tempDir()
  const raw = await measure("raw node:net", baseline, load)
  const gw = await measure("gateway (sqlite)", gateway(dataDir), load)
  const servers = [raw, gw]
  if (name === "throughput") {
    const stagedDir = tempDir()
    const staged = gateway(stagedDir, { GATEWAY_STAGES_FILE: exampleStages(stagedDir) })
    servers.push(await measure("gateway (sqlite) + 2 example stages", staged, load))
    removeDir(stagedDir)
  }
  removeDir(dataDir)
  return [
    heading(name, load),
    "| server | acked msgs/s | p50 ms | p99 ms | max ms | peak RSS MB | nacks |",
    "|---|---:|---:|---:|---:|---:|---:|",
    ...servers.map((r) =>
      `| ${r.server} | ${fmt(r.msgsPerSec)} | ${fmt(r.p50Ms, 2)} | ${fmt(r.p99Ms, 2)} | ${fmt(r.maxMs, 1)} | ${fmt(r.rssMb)} | ${r.nacked} |`
    ),
    `gateway/raw throughput ratio: ${fmt(gw.msgsPerSec / raw.msgsPerSec, 3)}`
  ]
}

/** The throughput load against the baseline and GATEWAY_WORKERS=1 and 2, with CPU shares. */
const workersScenario = async (): Promise<Array<string>> => {
  const load = { ...loads.throughput, devicePrefix: "wk" }
  const raw = await measure("raw node:net", baseline, load)
  const rows = [raw]
  for (const workers of [1, 2]) {
    const dataDir = tempDir()
    rows.push(await measure(`gateway, GATEWAY_WORKERS=${workers}`, gateway(dataDir, { GATEWAY_WORKERS: String(workers) }), load))
    removeDir(dataDir)
  }
  const [, one, two] = rows
  const pct = (cores: number) => `${fmt(cores * 100)}%`
  return [
    heading("workers", load).replace("\n### workers:", `\n### workers: GATEWAY_WORKERS 1 vs 2,`),
    `CPU in % of one core over the measured interval (${Os.cpus().length} cores: ${Os.cpus().length * 100}% is all of them); server = the process and its children`,
    "| server | acked msgs/s | p50 ms | p99 ms | peak RSS MB (sum) | load generator CPU | server CPU | server processes | nacks |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ...rows.map((r) =>
      `| ${r.server} | ${fmt(r.msgsPerSec)} | ${fmt(r.p50Ms, 2)} | ${fmt(r.p99Ms, 2)} | ${fmt(r.rssMb)} | ${pct(r.loadCpu)} | ${pct(r.serverCpu)} | ${r.processes} | ${r.nacked} |`
    ),
    `2 workers / 1 worker: ${fmt(two!.msgsPerSec / one!.msgsPerSec, 3)}; 1 worker / raw: ${fmt(one!.msgsPerSec / raw.msgsPerSec, 3)}; 2 workers / raw: ${
      fmt(two!.msgsPerSec / raw.msgsPerSec, 3)
    }`
  ]
}

const main = async () => {
  console.log(`node ${process.version}, ${Os.cpus().length} cores, ${Os.cpus()[0]?.model ?? "?"}`)
  const lines: Array<string> = []
  const emit = (block: ReadonlyArray<string>) => {
    lines.push(...block)
    console.log(block.join("\n"))
  }
  if (wanted("stages")) emit(["\n### stages: cost per message (in process, best of 5)", stageTable(await runStageBench())])
  if (wanted("throughput")) emit(await loadScenario("throughput"))
  if (wanted("latency")) emit(await loadScenario("latency"))
  if (wanted("fleet")) {
    for (const devices of String(args["fleet-devices"]).split(",").map(Number)) emit(await fleetScenario(devices, Number(args["fleet-rate"])))
  }
  if (wanted("storm")) {
    const timeoutMs = Number(args.timeout) * 1000
    emit([stormTable(await runStorm({ devices: Number(args.devices ?? 10_000), timeoutMs, flags }), timeoutMs)])
  }
  if (wanted("idle")) {
    const o = { connections: Number(args.connections), settleMs: 3_000, flags }
    emit([idleTable(await runIdle(o), o)])
  }
  if (wanted("burst")) {
    const o = {
      seconds: Number(args.seconds ?? 30),
      sinkRate: Number(args["sink-rate"]),
      factor: Number(args.factor),
      devices: Number(args["burst-devices"]),
      window: Number(args["burst-window"]),
      eventRatio: 0.05,
      pingers: 20,
      memoryBudgetMiB: Number(args["memory-budget"]),
      finalWaitMs: 10_000,
      flags
    }
    emit([burstTable(await runBurst(o), o)])
  }
  if (wanted("workers")) emit(await workersScenario())
  if (wanted("ratelimit")) emit([rateLimitTable(runRateLimitBench())])
  if (wanted("store")) emit([storeTable(runStoreBench())])
  const noOpenssl = (name: string) => `\n### ${name}: skipped, the \`openssl\` command is not installed (apt-get install openssl)`
  if (wanted("tls") && !hasOpenssl()) emit([noOpenssl("tls")])
  else if (wanted("tls")) {
    const o = { load: { ...loads.throughput, devicePrefix: "tls" }, flags, rounds: Number(args.rounds) }
    emit([tlsTable(await runTls(o), o)])
  }
  if (wanted("nats")) emit([natsTable(await runNatsBench())])
  if (wanted("postgres")) emit([postgresTable(await runPostgresBench())])
  if (wanted("outbox")) emit([outboxTable(await runOutboxBench())])
  if (wanted("tracing")) {
    const load = { ...loads.throughput, devicePrefix: "trc" }
    const rounds = Number(args.rounds)
    emit(["\n### tracing: the work per message and per span (in process, best of 5)", spanCostTable(await runSpanCosts())])
    emit(tracingTable(heading(`tracing (OTLP/HTTP protobuf to a local receiver answering 200 at once), ${rounds} round(s) in turn`, load), await runTracingBench(load, flags, rounds)))
  }
  if (wanted("sinks")) {
    for (const name of ["throughput", "latency"] as const) {
      const load = { ...loads[name], devicePrefix: `sk-${name}` }
      emit(sinksTable(heading(name, load).replace(/^\n### /, ""), await runSinksBench(load, flags)))
    }
  }
  if (wanted("tls-storm") && !hasOpenssl()) emit([noOpenssl("tls-storm")])
  else if (wanted("tls-storm")) {
    const devices = Number(args.devices ?? 5_000)
    const o = { devices, timeoutMs: Number(args.timeout) * 1000, flags, certs: Number(args["storm-certs"] ?? devices), goalMs: 20_000 }
    emit([tlsStormTable(await runTlsStorm(o), o)])
  }
  console.log("\n" + lines.join("\n"))
}

main().then(() => process.exit(0), (e: unknown) => {
  console.error(e)
  process.exit(1)
})
