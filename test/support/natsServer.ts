/**
 * Test support: private `nats-server -js` processes (never the machine's shared one on 4222),
 * each on free loopback ports with its own store directory, for the NATS sink's tests, chaos
 * tests and benchmarks: one server, or a cluster joined by routes. A server is ready when its
 * monitoring `/healthz` answers 200 (JetStream included); `kill` and `restart` keep its store
 * and ports, `stop` removes the store. {@link stopAllNatsServers} after a file (and a process
 * exit hook) ends whatever a test left running.
 */
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Http from "node:http"
import * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"

/** The `nats-server` binary on PATH, or null when it is not installed. */
export const natsServerBinary: string | null = (() => {
  const found = ChildProcess.spawnSync("sh", ["-c", "command -v nats-server"], { encoding: "utf8" })
  const path = found.status === 0 ? found.stdout.trim() : ""
  return path === "" ? null : path
})()

/** True when tests can start private NATS servers. */
export const hasNatsServer = natsServerBinary !== null

/**
 * Call at the top of a test file: without `nats-server` it warns loudly (the file's tests are
 * then skipped by `describe.runIf(hasNatsServer)`), or throws when GATEWAY_REQUIRE_SERVICES=1.
 */
export const requireNatsServer = (what: string): void => {
  if (hasNatsServer) return
  const reason = `${what} need the \`nats-server\` command (apt-get install nats-server, or a release binary on PATH)`
  if (process.env["GATEWAY_REQUIRE_SERVICES"] === "1") throw new Error(reason)
  console.warn(`SKIPPED LOUDLY: ${reason}`)
}

/** A free TCP port on loopback (bound once and released). */
export const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const server = Net.createServer()
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const address = server.address()
      const port = typeof address === "object" && address !== null ? address.port : 0
      server.close(() => resolve(port))
    })
  })

/** Options of one private server. */
export interface NatsServerOptions {
  /** Server name (cluster members need distinct ones). */
  readonly name?: string
  /** Client port (default: a free one). */
  readonly port?: number
  /** Monitoring port (default: a free one). */
  readonly monitorPort?: number
  /** JetStream on (default true). */
  readonly jetstream?: boolean
  /** Cluster membership: its name, this server's route port and the route ports of all members. */
  readonly cluster?: { readonly name: string; readonly port: number; readonly routes: ReadonlyArray<number> }
  /** More configuration text, appended (e.g. `max_payload: 8192`, an `authorization` block). */
  readonly extraConfig?: string
}

/** A running (or killed, restartable) private server. */
export interface NatsServer {
  readonly name: string
  /** `nats://127.0.0.1:<port>` */
  readonly url: string
  readonly port: number
  readonly monitorPort: number
  readonly storeDir: string
  /** The configuration file it runs with. */
  readonly configFile: string
  /** Everything it logged (all runs). */
  readonly output: () => string
  readonly running: () => boolean
  readonly pid: () => number | undefined
  /** SIGKILL (no shutdown at all); the store and ports are kept for {@link restart}. */
  readonly kill: () => Promise<void>
  /** SIGSTOP (a hung server: sockets open, nothing answered); resolves once the kernel shows it stopped. */
  readonly pause: () => Promise<void>
  /** SIGCONT after {@link pause}. */
  readonly resume: () => void
  /** Starts it again on the same ports and store; resolves when ready. */
  readonly restart: () => Promise<void>
  /** Waits until `/healthz` answers 200. */
  readonly ready: (timeoutMs?: number) => Promise<void>
  /** Stops it (SIGTERM, then SIGKILL after 5 s) and removes its directory. */
  readonly stop: () => Promise<void>
}

const servers = new Set<NatsServer>()
const processes = new Set<ChildProcess.ChildProcess>()
process.once("exit", () => {
  for (const child of processes) child.kill("SIGKILL")
})

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

/** GET `http://127.0.0.1:<port><path>`: the status code, or 0 when nothing answers. */
const httpStatus = (port: number, path: string): Promise<number> =>
  new Promise((resolve) => {
    const req = Http.get({ host: "127.0.0.1", port, path, timeout: 1_000 }, (res) => {
      res.resume()
      resolve(res.statusCode ?? 0)
    })
    req.on("timeout", () => req.destroy())
    req.on("error", () => resolve(0))
  })

/**
 * Creates a server's directory and configuration without starting it: for clusters, whose
 * members must all be started before any is ready.
 */
export const prepareNatsServer = async (options: NatsServerOptions = {}): Promise<NatsServer & { readonly start: () => void }> => {
  if (natsServerBinary === null) throw new Error("nats-server is not installed")
  const binary = natsServerBinary
  const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "gw-nats-"))
  const storeDir = Path.join(dir, "store")
  const name = options.name ?? `gw-test-${Path.basename(dir)}`
  const port = options.port ?? (await freePort())
  const monitorPort = options.monitorPort ?? (await freePort())
  const lines = [
    `server_name: ${JSON.stringify(name)}`,
    `listen: "127.0.0.1:${port}"`,
    `http: "127.0.0.1:${monitorPort}"`
  ]
  if (options.jetstream ?? true) lines.push(`jetstream { store_dir: ${JSON.stringify(storeDir)} }`)
  if (options.cluster !== undefined) {
    const routes = options.cluster.routes.map((p) => `"nats-route://127.0.0.1:${p}"`).join(", ")
    lines.push(`cluster { name: ${JSON.stringify(options.cluster.name)}, listen: "127.0.0.1:${options.cluster.port}", routes: [${routes}] }`)
  }
  if (options.extraConfig !== undefined) lines.push(options.extraConfig)
  const configFile = Path.join(dir, "server.conf")
  Fs.writeFileSync(configFile, lines.join("\n") + "\n")

  let child: ChildProcess.ChildProcess | undefined
  let exited: Promise<void> = Promise.resolve()
  let output = ""
  const start = () => {
    if (child !== undefined) throw new Error(`${name} is already running`)
    const c = ChildProcess.spawn(binary, ["-c", configFile], { stdio: ["ignore", "pipe", "pipe"] })
    child = c
    processes.add(c)
    c.stdout?.setEncoding("utf8")
    c.stderr?.setEncoding("utf8")
    c.stdout?.on("data", (d: string) => (output += d))
    c.stderr?.on("data", (d: string) => (output += d))
    exited = new Promise((resolve) => {
      c.once("exit", () => {
        processes.delete(c)
        if (child === c) child = undefined
        resolve()
      })
    })
  }
  const ready = async (timeoutMs = 20_000) => {
    const deadline = Date.now() + timeoutMs
    while (Date.now() < deadline) {
      if (child === undefined) throw new Error(`${name} exited before it was ready:\n${output.slice(-2_000)}`)
      if ((await httpStatus(monitorPort, "/healthz")) === 200) return
      await sleep(50)
    }
    throw new Error(`${name} not ready within ${timeoutMs} ms:\n${output.slice(-2_000)}`)
  }
  const kill = async () => {
    const c = child
    if (c === undefined) return
    c.kill("SIGKILL")
    await exited
  }
  const pause = async () => {
    const c = child
    if (c?.pid === undefined) throw new Error(`${name} is not running`)
    c.kill("SIGSTOP")
    // SIGSTOP is asynchronous: a server busy on another core may still answer for a moment
    for (let i = 0; i < 200; i++) {
      const stat = Fs.readFileSync(`/proc/${c.pid}/stat`, "utf8")
      if (/^\d+ \(.*\) [Tt] /.test(stat)) return
      await sleep(5)
    }
    throw new Error(`${name} did not stop`)
  }
  const server: NatsServer & { readonly start: () => void } = {
    name,
    url: `nats://127.0.0.1:${port}`,
    port,
    monitorPort,
    storeDir,
    configFile,
    output: () => output,
    running: () => child !== undefined,
    pid: () => child?.pid,
    start,
    kill,
    pause,
    resume: () => {
      child?.kill("SIGCONT")
    },
    ready,
    restart: async () => {
      start()
      await ready()
    },
    stop: async () => {
      const c = child
      if (c !== undefined) {
        c.kill("SIGCONT")
        c.kill("SIGTERM")
        const t = setTimeout(() => c.kill("SIGKILL"), 5_000)
        await exited
        clearTimeout(t)
      }
      servers.delete(server)
      Fs.rmSync(dir, { recursive: true, force: true })
    }
  }
  servers.add(server)
  return server
}

/** True when a start failed because a port picked free was taken meanwhile (another process bound it first). */
const portTaken = (error: unknown) => error instanceof Error && /address already in use/i.test(error.message)

/** Up to 3 starts while the ports picked free are taken before the server binds them. */
const retryTakenPorts = async <A>(start: () => Promise<A>, portsPicked = true): Promise<A> => {
  for (let attempt = 1;; attempt++) {
    try {
      return await start()
    } catch (error) {
      if (!portsPicked || attempt >= 3 || !portTaken(error)) throw error
    }
  }
}

/** Starts one private server and waits until it is ready (on other free ports if one was taken meanwhile). */
export const startNatsServer = (options: NatsServerOptions = {}): Promise<NatsServer> =>
  retryTakenPorts(async () => {
    const server = await prepareNatsServer(options)
    server.start()
    try {
      await server.ready()
    } catch (error) {
      await server.stop()
      throw error
    }
    return server
  }, options.port === undefined && options.monitorPort === undefined)

/** A cluster of private servers on loopback, every member routed to every other. */
export interface NatsCluster {
  readonly servers: ReadonlyArray<NatsServer>
  /** Every member's client URL, comma-separated (the `NATS_URL` form). */
  readonly urls: string
  readonly stop: () => Promise<void>
}

/** Starts `size` servers (JetStream on) as one cluster and waits until every member is ready. */
export const startNatsCluster = (size = 3, extraConfig?: string): Promise<NatsCluster> =>
  retryTakenPorts(() => startClusterOnce(size, extraConfig))

const startClusterOnce = async (size: number, extraConfig: string | undefined): Promise<NatsCluster> => {
  const routePorts: Array<number> = []
  for (let i = 0; i < size; i++) routePorts.push(await freePort())
  const clusterName = `gw-cluster-${process.pid}-${routePorts[0]}`
  const members: Array<NatsServer & { readonly start: () => void }> = []
  for (let i = 0; i < size; i++) {
    members.push(await prepareNatsServer({
      name: `n${i + 1}-${routePorts[0]}`,
      cluster: { name: clusterName, port: routePorts[i] ?? 0, routes: routePorts },
      ...(extraConfig === undefined ? {} : { extraConfig })
    }))
  }
  for (const m of members) m.start()
  try {
    await Promise.all(members.map((m) => m.ready(30_000)))
  } catch (error) {
    await Promise.all(members.map((m) => m.stop()))
    throw error
  }
  return {
    servers: members,
    urls: members.map((m) => m.url).join(","),
    stop: async () => {
      await Promise.all(members.map((m) => m.stop()))
    }
  }
}

/** Stops every server this process started and removes their directories. */
export const stopAllNatsServers = async (): Promise<void> => {
  await Promise.all([...servers].map((s) => s.stop()))
}
