/**
 * The benchmark: runs the raw `node:net` baseline and the gateway (SQLite sink, dedup on) side
 * by side under the same loads, and prints acked msgs/s, ack latency p50/p99/max, the server's
 * peak RSS, and the gateway/baseline ratio.
 *
 *   npm run bench                       # both scenarios, 10 s each
 *   npm run bench -- --seconds 5 --only throughput
 *   npm run bench -- --old-space 256    # cap V8's old generation (less RSS, more major GCs)
 *   npm run bench -- --only stages      # stage costs in ns per message (in process)
 *
 * The throughput scenario also runs the gateway with the example stages (unit-conversion and
 * threshold from a stages file), to show what they cost end to end.
 */
import { type ChildProcess, spawn } from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { parseArgs } from "node:util"
import { type LoadOptions, type LoadResult, runLoad } from "./load.ts"
import { runStageBench, stageTable } from "./stages.ts"

const { values: args } = parseArgs({
  options: {
    seconds: { type: "string", default: "10" },
    only: { type: "string" },
    "semi-space": { type: "string", default: "8" },
    "old-space": { type: "string" }
  }
})
const seconds = Number(args.seconds)
const node = process.execPath

interface Server {
  readonly child: ChildProcess
  readonly port: number
}

const start = (argv: ReadonlyArray<string>, env: NodeJS.ProcessEnv): Promise<Server> =>
  new Promise((resolve, reject) => {
    const child = spawn(node, argv, { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "inherit"] })
    let buf = ""
    child.stdout!.on("data", (d: Buffer) => {
      buf += d.toString()
      for (const line of buf.split("\n")) {
        if (!line.includes('"listening"')) continue
        const parsed = JSON.parse(line) as { port?: number; annotations?: { port?: number } }
        const port = parsed.port ?? parsed.annotations?.port
        if (port !== undefined) resolve({ child, port })
      }
    })
    child.on("exit", (code) => reject(new Error(`server exited early with ${code}`)))
  })

const peakRssMb = (pid: number) => {
  const status = Fs.readFileSync(`/proc/${pid}/status`, "utf8")
  const kb = Number(/VmHWM:\s+(\d+)/.exec(status)?.[1] ?? 0)
  return kb / 1024
}

const stop = (s: Server) =>
  new Promise<void>((resolve) => {
    s.child.removeAllListeners("exit")
    s.child.on("exit", () => resolve())
    s.child.kill("SIGTERM")
  })

interface Row extends LoadResult {
  readonly server: string
  readonly rssMb: number
}

const measure = async (name: string, server: () => Promise<Server>, load: Omit<LoadOptions, "port">) => {
  const s = await server()
  await runLoad({ ...load, port: s.port, durationMs: 1_000, devicePrefix: `${load.devicePrefix}-warm` }) // warm-up
  const r = await runLoad({ ...load, port: s.port })
  const rssMb = peakRssMb(s.child.pid!)
  await stop(s)
  return { server: name, rssMb, ...r } satisfies Row
}

const baseline = () => start(["bench/baseline.ts", "0"], {})
const gateway = (dataDir: string, env: NodeJS.ProcessEnv = {}) => () =>
  start([
    "--disable-warning=ExperimentalWarning",
    `--max-semi-space-size=${args["semi-space"]}`,
    ...(args["old-space"] === undefined ? [] : [`--max-old-space-size=${args["old-space"]}`]),
    "src/main.ts"
  ], {
    GATEWAY_PORT: "0",
    GATEWAY_ADMIN_PORT: "0",
    GATEWAY_DATA_DIR: dataDir,
    GATEWAY_MAX_CONNECTIONS: "20000",
    ...env
  })

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

const scenarios: Record<string, Omit<LoadOptions, "port">> = {
  throughput: { connections: 50, window: 256, rate: 0, eventRatio: 0, durationMs: seconds * 1000, devicePrefix: "tp" },
  latency: { connections: 1000, window: 64, rate: 20_000, eventRatio: 0.05, durationMs: seconds * 1000, devicePrefix: "lat" }
}

const fmt = (n: number, d = 0) => n.toLocaleString("en-US", { maximumFractionDigits: d, minimumFractionDigits: d })

const main = async () => {
  console.log(`node ${process.version}, ${Os.cpus().length} cores, ${Os.cpus()[0]?.model ?? "?"}`)
  const lines: Array<string> = []
  if (args.only === undefined || args.only === "stages") {
    lines.push("\n### stages: cost per message (in process, best of 5)")
    lines.push(stageTable(await runStageBench()))
    console.log(lines.slice(-2).join("\n"))
  }
  for (const [name, load] of Object.entries(scenarios)) {
    if (args.only !== undefined && args.only !== name) continue
    const dataDir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "gw-bench-"))
    const raw = await measure("raw node:net", baseline, load)
    const gw = await measure("gateway (sqlite)", gateway(dataDir), load)
    const servers = [raw, gw]
    if (name === "throughput") {
      const stagedDir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "gw-bench-"))
      const staged = gateway(stagedDir, { GATEWAY_STAGES_FILE: exampleStages(stagedDir) })
      servers.push(await measure("gateway (sqlite) + 2 example stages", staged, load))
      Fs.rmSync(stagedDir, { recursive: true, force: true })
    }
    Fs.rmSync(dataDir, { recursive: true, force: true })
    const pace = load.rate > 0 ? `${fmt(load.rate)} msgs/s` : "unpaced"
    lines.push(`\n### ${name}: ${load.connections} connections × window ${load.window}, ${pace}, ${fmt(load.eventRatio * 100)}% events, ${seconds} s`)
    lines.push("| server | acked msgs/s | p50 ms | p99 ms | max ms | peak RSS MB | nacks |")
    lines.push("|---|---:|---:|---:|---:|---:|---:|")
    for (const r of servers) {
      lines.push(`| ${r.server} | ${fmt(r.msgsPerSec)} | ${fmt(r.p50Ms, 2)} | ${fmt(r.p99Ms, 2)} | ${fmt(r.maxMs, 1)} | ${fmt(r.rssMb)} | ${r.nacked} |`)
    }
    lines.push(`gateway/raw throughput ratio: ${fmt(gw.msgsPerSec / raw.msgsPerSec, 3)}`)
    console.log(lines.slice(-(4 + servers.length)).join("\n"))
  }
  console.log("\n" + lines.join("\n"))
}

main().then(() => process.exit(0), (e: unknown) => {
  console.error(e)
  process.exit(1)
})
