/**
 * Child-process plumbing shared by the benchmark scenarios: start a server (the gateway, a
 * custom gateway entry, or the raw baseline) as a child process and wait for its JSON
 * `listening` line, stop it, and read what Linux says about it (`/proc`: RSS, peak RSS, CPU
 * time of the process and of its descendants, e.g. worker processes).
 */
import { type ChildProcess, spawn } from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"

/** A server running as a child process, with the ports from its `listening` line. */
export interface Server {
  readonly child: ChildProcess
  readonly pid: number
  readonly port: number
  /** The admin port, when the line names one (the gateway does, the baseline does not). */
  readonly adminPort: number | undefined
}

interface ListeningLine {
  readonly message?: string
  readonly port?: number
  readonly adminPort?: number
  readonly annotations?: { readonly port?: number; readonly adminPort?: number }
}

/**
 * Spawns `node argv…` with `env` added to this process's environment and resolves once it
 * prints a JSON line whose message is `listening`; rejects if it exits first or takes longer
 * than `timeoutMs`. Later stdout is read and dropped (so the child never blocks on a full pipe).
 */
export const startServer = (
  argv: ReadonlyArray<string>,
  env: NodeJS.ProcessEnv,
  timeoutMs = 30_000
): Promise<Server> =>
  new Promise((resolve, reject) => {
    const child = spawn(process.execPath, argv, { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "inherit"] })
    let buf = ""
    let done = false
    const timer = setTimeout(() => {
      if (done) return
      done = true
      child.kill("SIGKILL")
      reject(new Error(`server did not log "listening" within ${timeoutMs} ms`))
    }, timeoutMs)
    child.stdout!.on("data", (d: Buffer) => {
      if (done) return
      buf += d.toString()
      const lines = buf.split("\n")
      buf = lines.pop() ?? ""
      for (const line of lines) {
        if (!line.includes('"listening"')) continue
        const parsed = JSON.parse(line) as ListeningLine
        const port = parsed.port ?? parsed.annotations?.port
        if (port === undefined || done) continue
        done = true
        clearTimeout(timer)
        resolve({ child, pid: child.pid!, port, adminPort: parsed.adminPort ?? parsed.annotations?.adminPort })
      }
    })
    child.on("exit", (code, signal) => {
      if (done) return
      done = true
      clearTimeout(timer)
      reject(new Error(`server exited early with ${code ?? signal}`))
    })
  })

/** Sends SIGTERM and waits for the exit (SIGKILL after `graceMs`). */
export const stopServer = (s: Server, graceMs = 20_000): Promise<void> =>
  new Promise((resolve) => {
    if (s.child.exitCode !== null || s.child.signalCode !== null) return resolve()
    const kill = setTimeout(() => s.child.kill("SIGKILL"), graceMs)
    s.child.removeAllListeners("exit")
    s.child.on("exit", () => {
      clearTimeout(kill)
      resolve()
    })
    s.child.kill("SIGTERM")
  })

/** Node flags of the gateway process (the same as `npm start` unless the bench says otherwise). */
export interface NodeFlags {
  readonly semiSpaceMb: number
  readonly oldSpaceMb?: number | undefined
}

/** The argv of a gateway process running `entry` (default `src/main.ts`). */
export const gatewayArgv = (flags: NodeFlags, entry = "src/main.ts"): Array<string> => [
  "--disable-warning=ExperimentalWarning",
  `--max-semi-space-size=${flags.semiSpaceMb}`,
  ...(flags.oldSpaceMb === undefined ? [] : [`--max-old-space-size=${flags.oldSpaceMb}`]),
  entry
]

/** The environment every benchmark gateway gets: ephemeral ports, its own data directory. */
export const gatewayEnv = (dataDir: string, env: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv => ({
  GATEWAY_PORT: "0",
  GATEWAY_ADMIN_PORT: "0",
  GATEWAY_DATA_DIR: dataDir,
  GATEWAY_MAX_CONNECTIONS: "20000",
  ...env
})

/** A fresh temporary directory (for GATEWAY_DATA_DIR). */
export const tempDir = (): string => Fs.mkdtempSync(Path.join(Os.tmpdir(), "gw-bench-"))

/** Removes a directory made by {@link tempDir}. */
export const removeDir = (dir: string): void => Fs.rmSync(dir, { recursive: true, force: true })

/** A field of `/proc/<pid>/status` in KB (`VmRSS`, `VmHWM`), 0 when the process is gone. */
export const statusKb = (pid: number, field: "VmRSS" | "VmHWM"): number => {
  try {
    const status = Fs.readFileSync(`/proc/${pid}/status`, "utf8")
    return Number(new RegExp(`${field}:\\s+(\\d+)`).exec(status)?.[1] ?? 0)
  } catch {
    return 0
  }
}

/** `pid` and all its descendants (from `/proc/<pid>/task/<tid>/children`). */
export const processTree = (pid: number): Array<number> => {
  const out: Array<number> = []
  const visit = (p: number) => {
    out.push(p)
    let tasks: Array<string> = []
    try {
      tasks = Fs.readdirSync(`/proc/${p}/task`)
    } catch {
      return
    }
    for (const tid of tasks) {
      let children = ""
      try {
        children = Fs.readFileSync(`/proc/${p}/task/${tid}/children`, "utf8")
      } catch {
        continue
      }
      for (const c of children.split(" ")) if (c.trim() !== "") visit(Number(c))
    }
  }
  visit(pid)
  return out
}

const CLOCK_TICKS_PER_SEC = 100

/** CPU time (user + system, all threads) of one process in ms, 0 when it is gone. */
export const cpuMs = (pid: number): number => {
  try {
    const stat = Fs.readFileSync(`/proc/${pid}/stat`, "utf8")
    // the command name (field 2) may hold spaces: fields are counted after its closing ')'
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLOCK_TICKS_PER_SEC // utime, stime
  } catch {
    return 0
  }
}

/** CPU ms per pid of the process tree under `pid` (compare two snapshots with {@link cpuDeltaMs}). */
export const treeCpu = (pid: number): Map<number, number> => new Map(processTree(pid).map((p) => [p, cpuMs(p)]))

/** CPU ms used between two {@link treeCpu} snapshots (processes born in between count from 0). */
export const cpuDeltaMs = (before: Map<number, number>, after: Map<number, number>): number => {
  let sum = 0
  for (const [p, ms] of after) sum += ms - (before.get(p) ?? 0)
  return sum
}

/** Sum of VmRSS over the process tree under `pid`, in KB. */
export const treeRssKb = (pid: number): number => processTree(pid).reduce((sum, p) => sum + statusKb(p, "VmRSS"), 0)

/** Resolves after `ms` (at once when `ms` ≤ 0). */
export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)))

/** Formats a number with thousands separators and `d` decimals. */
export const fmt = (n: number, d = 0): string =>
  n.toLocaleString("en-US", { maximumFractionDigits: d, minimumFractionDigits: d })

/** The soft limit on open files of this process (`ulimit -n`), or undefined if unknown. */
export const openFileLimit = (): number | undefined => {
  try {
    const limits = Fs.readFileSync("/proc/self/limits", "utf8")
    const m = /Max open files\s+(\d+|unlimited)/.exec(limits)
    return m === null ? undefined : m[1] === "unlimited" ? Infinity : Number(m[1])
  } catch {
    return undefined
  }
}

/** Warns on stderr when this process cannot open `needed` sockets (plus some slack). */
export const checkFileLimit = (needed: number): void => {
  const limit = openFileLimit()
  if (limit !== undefined && limit < needed + 100) {
    console.warn(`warning: ulimit -n is ${limit}, below the ${needed + 100} file descriptors this scenario needs; raise it (ulimit -n ${needed + 1000})`)
  }
}

/** One sample of the admin port's Prometheus text. */
export interface MetricSample {
  readonly name: string
  readonly labels: string
  readonly value: number
}

/** Reads `/metrics` from the gateway's admin port (empty when it does not answer within 2 s). */
export const scrapeMetrics = async (adminPort: number | undefined): Promise<Array<MetricSample>> => {
  if (adminPort === undefined) return []
  try {
    const res = await fetch(`http://127.0.0.1:${adminPort}/metrics`, { signal: AbortSignal.timeout(2_000) })
    const out: Array<MetricSample> = []
    for (const line of (await res.text()).split("\n")) {
      const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line)
      if (m !== null) out.push({ name: m[1]!, labels: m[2] ?? "", value: Number(m[3]) })
    }
    return out
  } catch {
    return []
  }
}

/** Sum of the samples named `name` whose labels contain every string of `having` (undefined: none). */
export const metricSum = (
  samples: ReadonlyArray<MetricSample>,
  name: string,
  having: ReadonlyArray<string> = []
): number | undefined => {
  let sum: number | undefined
  for (const s of samples) {
    if (s.name === name && having.every((h) => s.labels.includes(h))) sum = (sum ?? 0) + s.value
  }
  return sum
}

/** Kernel TCP counters of this network namespace (`/proc/net/netstat` TcpExt), e.g. ListenOverflows. */
export const tcpExt = (): Map<string, number> => {
  const out = new Map<string, number>()
  try {
    const lines = Fs.readFileSync("/proc/net/netstat", "utf8").split("\n")
    for (let i = 0; i + 1 < lines.length; i += 2) {
      const names = lines[i]!.split(" ")
      const values = lines[i + 1]!.split(" ")
      if (names[0] !== "TcpExt:") continue
      for (let k = 1; k < names.length; k++) out.set(names[k]!, Number(values[k]))
    }
  } catch {
    // not Linux: no counters
  }
  return out
}
