/**
 * Test support: private PostgreSQL servers (never the machine's shared one on 5432), each made by
 * `initdb` in a temporary directory and run by `postgres` on a free loopback port, for the sink's
 * chaos tests and the tests that need a server of their own (password authentication). As root,
 * PostgreSQL refuses to run: the server then runs as the `postgres` user (`setpriv`, or
 * `runuser`), owning its directory. `kill` (SIGKILL to the server's whole process group) and
 * `restart` keep the data and the port; `stop` removes everything. {@link stopAllPostgresServers}
 * after a file (and a process exit hook) ends whatever a test left running.
 */
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { freePort } from "./natsServer.ts"

const which = (name: string): string | null => {
  const found = ChildProcess.spawnSync("sh", ["-c", `command -v ${name}`], { encoding: "utf8" })
  const path = found.status === 0 ? found.stdout.trim() : ""
  return path === "" ? null : path
}

/** The directory holding `initdb` and `postgres`, or null when PostgreSQL's server is not installed. */
export const postgresBinDir: string | null = (() => {
  const candidates: Array<string> = []
  try {
    const versions = Fs.readdirSync("/usr/lib/postgresql").sort((a, b) => Number(b) - Number(a))
    for (const v of versions) candidates.push(`/usr/lib/postgresql/${v}/bin`)
  } catch {
    // not the Debian layout
  }
  const onPath = which("initdb")
  if (onPath !== null) candidates.push(Path.dirname(Fs.realpathSync(onPath)))
  candidates.push("/usr/local/bin", "/usr/sbin", "/usr/local/pgsql/bin")
  for (const dir of candidates) {
    if (Fs.existsSync(Path.join(dir, "initdb")) && Fs.existsSync(Path.join(dir, "postgres"))) return dir
  }
  return null
})()

/** True when tests can start private PostgreSQL servers. */
export const hasPostgresServer = postgresBinDir !== null

/**
 * Call at the top of a test file: without PostgreSQL's server binaries it warns loudly (the
 * file's tests are then skipped by `describe.runIf(hasPostgresServer)`), or throws when
 * GATEWAY_REQUIRE_SERVICES=1.
 */
export const requirePostgresServer = (what: string): void => {
  if (hasPostgresServer) return
  const reason = `${what} need PostgreSQL's server binaries \`initdb\` and \`postgres\` (apt-get install postgresql)`
  if (process.env["GATEWAY_REQUIRE_SERVICES"] === "1") throw new Error(reason)
  console.warn(`SKIPPED LOUDLY: ${reason}`)
}

/** Options of one private server. */
export interface PostgresServerOptions {
  /** Password of the superuser `postgres`; TCP connections then need it (scram-sha-256). Default: trust. */
  readonly password?: string
  /** More `-c name=value` settings. */
  readonly settings?: Readonly<Record<string, string>>
}

/** A running (or killed, restartable) private server. */
export interface PostgresServer {
  readonly port: number
  /** `postgres://postgres[:password]@127.0.0.1:<port>/postgres` */
  readonly url: string
  readonly dataDir: string
  /** Everything it logged (all runs). */
  readonly output: () => string
  readonly running: () => boolean
  /** SIGKILL to the postmaster and every backend (no shutdown at all); the data and port are kept. */
  readonly kill: () => Promise<void>
  /** Starts it again on the same port and data; resolves when it accepts connections. */
  readonly restart: () => Promise<void>
  /** Stops it (SIGTERM, SIGKILL after 5 s) and removes its directory. */
  readonly stop: () => Promise<void>
}

const servers = new Set<PostgresServer>()
const processes = new Set<ChildProcess.ChildProcess>()
process.once("exit", () => {
  for (const child of processes) {
    try {
      if (child.pid !== undefined) process.kill(-child.pid, "SIGKILL")
    } catch {
      // already gone
    }
  }
})

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

/** The user to run as, when this process is root (PostgreSQL refuses to run as root). */
const runAs = (): { readonly uid: number; readonly gid: number; readonly user: string } | undefined => {
  if (process.getuid?.() !== 0) return undefined
  const id = ChildProcess.spawnSync("id", ["-u", "postgres"], { encoding: "utf8" })
  const gid = ChildProcess.spawnSync("id", ["-g", "postgres"], { encoding: "utf8" })
  if (id.status !== 0 || gid.status !== 0) throw new Error("running as root, and there is no `postgres` user to run PostgreSQL as")
  return { uid: Number(id.stdout.trim()), gid: Number(gid.stdout.trim()), user: "postgres" }
}

/** `command args` as `user` (setpriv, else runuser), or as is when not root. */
const asUser = (user: ReturnType<typeof runAs>, command: string, args: ReadonlyArray<string>): [string, Array<string>] => {
  if (user === undefined) return [command, [...args]]
  const setpriv = which("setpriv")
  if (setpriv !== null) return [setpriv, ["--reuid", String(user.uid), "--regid", String(user.gid), "--clear-groups", "--", command, ...args]]
  const runuser = which("runuser")
  if (runuser !== null) return [runuser, ["-u", user.user, "--", command, ...args]]
  throw new Error("running as root without setpriv or runuser: cannot run PostgreSQL as the postgres user")
}

/** Starts a private server (initdb first) and waits until it accepts connections. */
export const startPostgresServer = async (options: PostgresServerOptions = {}): Promise<PostgresServer> => {
  if (postgresBinDir === null) throw new Error("PostgreSQL's server binaries are not installed")
  const bin = postgresBinDir
  const user = runAs()
  const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "gw-pg-"))
  // the server's user must reach its directory: every parent needs o+x (the temp dir's does)
  Fs.chmodSync(dir, 0o711)
  const dataDir = Path.join(dir, "data")
  const socketDir = Path.join(dir, "sock")
  Fs.mkdirSync(socketDir)
  if (user !== undefined) {
    Fs.chownSync(dir, user.uid, user.gid)
    Fs.chownSync(socketDir, user.uid, user.gid)
  }
  const initArgs = ["-D", dataDir, "-U", "postgres", "--no-sync", "--encoding=UTF8", "--locale=C", "--auth-local=trust"]
  if (options.password !== undefined) {
    const pwfile = Path.join(dir, "pw")
    Fs.writeFileSync(pwfile, options.password + "\n", { mode: 0o600 })
    if (user !== undefined) Fs.chownSync(pwfile, user.uid, user.gid)
    initArgs.push(`--pwfile=${pwfile}`, "--auth-host=scram-sha-256")
  } else {
    initArgs.push("--auth-host=trust")
  }
  const [initCmd, initArgv] = asUser(user, Path.join(bin, "initdb"), initArgs)
  const init = ChildProcess.spawnSync(initCmd, initArgv, { encoding: "utf8" })
  if (init.status !== 0) throw new Error(`initdb failed (${init.status}):\n${init.stdout}\n${init.stderr}`)

  const port = await freePort()
  const settings: Record<string, string> = {
    listen_addresses: "127.0.0.1",
    port: String(port),
    unix_socket_directories: socketDir,
    // a process kill keeps what the kernel was given: fsync only matters for a power loss
    fsync: "off",
    max_connections: "50",
    shared_buffers: "16MB",
    logging_collector: "off",
    ...options.settings
  }
  const args = ["-D", dataDir, ...Object.entries(settings).flatMap(([k, v]) => ["-c", `${k}=${v}`])]
  let child: ChildProcess.ChildProcess | undefined
  let exited: Promise<void> = Promise.resolve()
  let output = ""
  let runOutput = ""
  const start = () => {
    if (child !== undefined) throw new Error("the server is already running")
    const [cmd, argv] = asUser(user, Path.join(bin, "postgres"), args)
    // its own process group, so that a kill reaches every backend too
    const c = ChildProcess.spawn(cmd, argv, { stdio: ["ignore", "pipe", "pipe"], detached: true })
    child = c
    runOutput = ""
    processes.add(c)
    c.stdout?.setEncoding("utf8")
    c.stderr?.setEncoding("utf8")
    const log = (d: string) => {
      output += d
      runOutput += d
    }
    c.stdout?.on("data", log)
    c.stderr?.on("data", log)
    exited = new Promise((resolve) => {
      c.once("exit", () => {
        processes.delete(c)
        if (child === c) child = undefined
        resolve()
      })
    })
  }
  const ready = async (timeoutMs = 30_000) => {
    const deadline = Date.now() + timeoutMs
    while (Date.now() < deadline) {
      if (child === undefined) throw new Error(`PostgreSQL exited before it was ready:\n${output.slice(-2_000)}`)
      if (runOutput.includes("database system is ready to accept connections")) return
      await sleep(50)
    }
    throw new Error(`PostgreSQL not ready within ${timeoutMs} ms:\n${output.slice(-2_000)}`)
  }
  const signalGroup = (signal: NodeJS.Signals) => {
    const pid = child?.pid
    if (pid === undefined) return
    try {
      process.kill(-pid, signal)
    } catch {
      // already gone
    }
  }
  const server: PostgresServer = {
    port,
    url: `postgres://postgres${options.password === undefined ? "" : `:${encodeURIComponent(options.password)}`}@127.0.0.1:${port}/postgres`,
    dataDir,
    output: () => output,
    running: () => child !== undefined,
    kill: async () => {
      if (child === undefined) return
      signalGroup("SIGKILL")
      await exited
      // the backends were in the same group; give the kernel a moment to reap them
      await sleep(100)
    },
    restart: async () => {
      start()
      await ready()
    },
    stop: async () => {
      if (child !== undefined) {
        signalGroup("SIGTERM")
        const t = setTimeout(() => signalGroup("SIGKILL"), 5_000)
        await exited
        clearTimeout(t)
      }
      servers.delete(server)
      Fs.rmSync(dir, { recursive: true, force: true })
    }
  }
  servers.add(server)
  start()
  try {
    await ready()
  } catch (e) {
    await server.stop()
    throw e
  }
  return server
}

/** Stops every server this process started and removes their directories. */
export const stopAllPostgresServers = async (): Promise<void> => {
  await Promise.all([...servers].map((s) => s.stop()))
}
