/**
 * Test support: the gateway as an operator runs it, a real child process (`node src/main.ts`)
 * whose `listening` log line gives its ports. Call {@link cleanupChildren} after each test: it
 * kills what is still running and removes the temporary directories.
 */
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { tempDir as makeTempDir } from "./gateway.ts"

/** The repository's root (the gateway's working directory). */
export const CWD = Path.resolve(import.meta.dirname, "../..")
/** Node flags of `npm start` that matter in tests. */
export const NODE_ARGS = ["--disable-warning=ExperimentalWarning"]


/** A gateway child process. */
export interface GatewayProcess {
  readonly child: ChildProcess.ChildProcess
  readonly port: number
  readonly adminPort: number
  /** Everything written to stdout and stderr so far. */
  readonly output: () => string
  /** Resolves with the exit code (null when killed by a signal). */
  readonly exited: Promise<number | null>
}

const children = new Set<ChildProcess.ChildProcess>()
const dirs = new Set<string>()

/** A temporary directory removed after the test (once its gateway is dead). */
export const tempDir = (prefix: string) => {
  const dir = makeTempDir(prefix)
  dirs.add(dir)
  return dir
}

export const track = (child: ChildProcess.ChildProcess) => {
  children.add(child)
  const exited = new Promise<number | null>((resolve) => {
    child.once("exit", (code) => {
      children.delete(child)
      resolve(code)
    })
  })
  let output = ""
  child.stdout?.setEncoding("utf8")
  child.stderr?.setEncoding("utf8")
  child.stdout?.on("data", (d: string) => (output += d))
  child.stderr?.on("data", (d: string) => (output += d))
  return { exited, output: () => output }
}

/** Kills the children still running and removes the temporary directories. */
export const cleanupChildren = async (): Promise<void> => {
  const alive = [...children]
  await Promise.all(alive.map((child) =>
    new Promise<void>((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) return resolve()
      child.once("exit", () => resolve())
      child.kill("SIGKILL")
    })
  ))
  children.clear()
  for (const dir of dirs) Fs.rmSync(dir, { recursive: true, force: true })
  dirs.clear()
}

export const gatewayEnv = (dataDir: string, env: Record<string, string>): NodeJS.ProcessEnv => {
  const base: NodeJS.ProcessEnv = {}
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("GATEWAY_")) base[k] = v
  return { ...base, GATEWAY_PORT: "0", GATEWAY_ADMIN_PORT: "0", GATEWAY_DATA_DIR: dataDir, ...env }
}

export const spawnRaw = (dataDir: string, env: Record<string, string>) =>
  ChildProcess.spawn(process.execPath, [...NODE_ARGS, "src/main.ts"], {
    cwd: CWD,
    env: gatewayEnv(dataDir, env),
    stdio: ["ignore", "pipe", "pipe"]
  })

/** The annotations of a `listening` log line, if `line` is one. */
export const listeningOf = (line: string): { port: number; adminPort: number } | undefined => {
  let json: unknown
  try {
    json = JSON.parse(line)
  } catch {
    return undefined
  }
  if (typeof json !== "object" || json === null) return undefined
  const record = json as { message?: unknown; annotations?: { port?: unknown; adminPort?: unknown } }
  const message = Array.isArray(record.message) ? record.message[0] : record.message
  if (message !== "listening") return undefined
  const { port, adminPort } = record.annotations ?? {}
  return typeof port === "number" && typeof adminPort === "number" ? { port, adminPort } : undefined
}

/** Spawns the gateway on `dataDir` and waits for its `listening` line. */
export const spawnGateway = (dataDir: string, env: Record<string, string> = {}): Promise<GatewayProcess> => {
  const child = spawnRaw(dataDir, env)
  const { exited, output } = track(child)
  return new Promise((resolve, reject) => {
    let pending = ""
    const timer = setTimeout(() => {
      child.kill("SIGKILL")
      reject(new Error(`gateway did not log "listening" within 15 s; output:\n${output()}`))
    }, 15_000)
    const onData = (d: string) => {
      pending += d
      let nl = pending.indexOf("\n")
      while (nl !== -1) {
        const bound = listeningOf(pending.slice(0, nl))
        pending = pending.slice(nl + 1)
        if (bound !== undefined) {
          clearTimeout(timer)
          child.stdout?.off("data", onData)
          return resolve({ child, ...bound, output, exited })
        }
        nl = pending.indexOf("\n")
      }
    }
    child.stdout?.on("data", onData)
    void exited.then((code) => {
      clearTimeout(timer)
      reject(new Error(`gateway exited with ${code} before listening; output:\n${output()}`))
    })
  })
}

/** Runs the gateway until it exits by itself (within 15 s). */
export const runToExit = async (dataDir: string, env: Record<string, string>) => {
  const child = spawnRaw(dataDir, env)
  const { exited, output } = track(child)
  const code = await withTimeout(exited, 15_000, "gateway did not exit")
  return { code, output: output() }
}

/** Rejects with `what` when `p` takes longer than `ms`. */
export const withTimeout = <A>(p: Promise<A>, ms: number, what: string): Promise<A> =>
  new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`${what} within ${ms} ms`)), ms)
    p.then((a) => {
      clearTimeout(t)
      resolve(a)
    }, (e: unknown) => {
      clearTimeout(t)
      reject(e instanceof Error ? e : new Error(String(e)))
    })
  })
