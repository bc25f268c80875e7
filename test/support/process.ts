/**
 * Test support: the gateway as a child process (`node src/main.ts`, or any command line that
 * execs it), its JSON log lines, and cleanup (SIGKILL of whatever a test left running).
 */
import * as ChildProcess from "node:child_process"
import * as Path from "node:path"

/** The repository root (where `src/main.ts` is). */
export const ROOT = Path.resolve(import.meta.dirname, "../..")
/** The pinned Node 24 binary, by absolute path. */
export const NODE = Path.join(ROOT, "node_modules/.bin/node")
export const NODE_ARGS = ["--disable-warning=ExperimentalWarning"]

/** A gateway child process. */
export interface GatewayChild {
  readonly child: ChildProcess.ChildProcess
  /** Everything written to stdout and stderr so far. */
  readonly output: () => string
  /** Resolves with the exit code (null when killed by a signal). */
  readonly exited: Promise<number | null>
}

/** A started gateway child, with its bound ports. */
export interface RunningGateway extends GatewayChild {
  readonly port: number
  readonly adminPort: number
}

/** One JSON log line, as the gateway writes them when stdout is not a terminal. */
export interface LogLine {
  readonly message: unknown
  readonly level?: string
  readonly annotations?: Record<string, unknown>
}

const children = new Set<ChildProcess.ChildProcess>()

/** The environment for a child: ours without any GATEWAY_*, then ports 0, the data dir and `env`. */
export const childEnv = (dataDir: string, env: Record<string, string>): NodeJS.ProcessEnv => {
  const base: NodeJS.ProcessEnv = {}
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("GATEWAY_")) base[k] = v
  return { ...base, GATEWAY_PORT: "0", GATEWAY_ADMIN_PORT: "0", GATEWAY_DATA_DIR: dataDir, ...env }
}

/** Spawns `command` (default: the pinned node on src/main.ts) with the gateway environment. */
export const spawnChild = (
  dataDir: string,
  env: Record<string, string>,
  command: readonly [string, ReadonlyArray<string>] = [NODE, [...NODE_ARGS, "src/main.ts"]]
): GatewayChild => {
  const child = ChildProcess.spawn(command[0], [...command[1]], {
    cwd: ROOT,
    env: childEnv(dataDir, env),
    stdio: ["ignore", "pipe", "pipe"]
  })
  children.add(child)
  const exited = new Promise<number | null>((resolve) => {
    child.once("exit", (code) => {
      children.delete(child)
      resolve(code)
    })
  })
  let output = ""
  child.stdout.setEncoding("utf8")
  child.stderr.setEncoding("utf8")
  child.stdout.on("data", (d: string) => (output += d))
  child.stderr.on("data", (d: string) => (output += d))
  return { child, exited, output: () => output }
}

/** The JSON log lines of `output` (other lines skipped). */
export const logLines = (output: string): Array<LogLine> => {
  const out: Array<LogLine> = []
  for (const line of output.split("\n")) {
    if (!line.startsWith("{")) continue
    try {
      const json = JSON.parse(line) as unknown
      if (typeof json === "object" && json !== null && "message" in json) out.push(json as LogLine)
    } catch {
      // not a log line
    }
  }
  return out
}

/** The text of a log line's message (the logger writes a string, or an array for several). */
export const messageOf = (line: LogLine): string =>
  Array.isArray(line.message) ? String(line.message[0]) : String(line.message)

/** Spawns the gateway and waits (up to `timeoutMs`) for its `listening` line. */
export const startChild = async (
  dataDir: string,
  env: Record<string, string> = {},
  command?: readonly [string, ReadonlyArray<string>],
  timeoutMs = 15_000
): Promise<RunningGateway> => {
  const g = spawnChild(dataDir, env, command)
  const deadline = Date.now() + timeoutMs
  let exitCode: number | null | undefined
  void g.exited.then((code) => (exitCode = code))
  while (Date.now() < deadline) {
    const listening = logLines(g.output()).find((l) => messageOf(l) === "listening")
    const port = listening?.annotations?.["port"]
    const adminPort = listening?.annotations?.["adminPort"]
    if (typeof port === "number" && typeof adminPort === "number") return { ...g, port, adminPort }
    if (exitCode !== undefined) throw new Error(`gateway exited with ${exitCode} before listening; output:\n${g.output()}`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  g.child.kill("SIGKILL")
  throw new Error(`gateway did not log "listening" within ${timeoutMs} ms; output:\n${g.output()}`)
}

/** Runs the gateway until it exits by itself (within `timeoutMs`). */
export const runToExit = async (dataDir: string, env: Record<string, string>, timeoutMs = 15_000) => {
  const g = spawnChild(dataDir, env)
  const timer = setTimeout(() => g.child.kill("SIGKILL"), timeoutMs)
  const code = await g.exited
  clearTimeout(timer)
  return { code, output: g.output() }
}

/** SIGKILLs every child still running and waits for them (for afterEach). */
export const killChildren = async (): Promise<void> => {
  await Promise.all([...children].map((child) =>
    new Promise<void>((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) return resolve()
      child.once("exit", () => resolve())
      child.kill("SIGKILL")
    })
  ))
  children.clear()
}
