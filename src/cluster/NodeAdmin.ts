/**
 * The node's admin port, served by the primary on GATEWAY_ADMIN_HOST:GATEWAY_ADMIN_PORT (the
 * workers' own admin ports are on loopback, ports the primary learns over IPC):
 *
 * - `/metrics`: every listening worker's `/metrics`, fetched over loopback and merged
 *   (summed; see {@link ./MetricsMerge.ts}), plus the counters of workers that are gone (from their last
 *   scrape, so the node's counters never go down) and the primary's own `gateway_workers`,
 *   `gateway_worker_restarts_total` and resident memory (so `process_resident_memory_bytes` is
 *   the whole node's). A worker that does not answer in time counts with its last
 *   scrape's counters.
 * - `/readyz`: 200 only when every worker is listening and its own `/readyz` is 200; otherwise
 *   503 with one line per worker that is not ready; 503 `draining` once the node drains.
 * - `/healthz`: 200 while the primary serves.
 *
 * `node:http` rather than `effect/http`: the primary stays small (it loads neither the HTTP
 * stack nor the gateway's modules), and it serves three fixed paths.
 */
import { Effect, FiberSet, Metric, Semaphore } from "effect"
import { PrometheusMetrics } from "effect/observability"
import * as Http from "node:http"
import * as ClusterMetrics from "./ClusterMetrics.ts"
import * as MetricsMerge from "./MetricsMerge.ts"
import { NodeStartError } from "./NodeStartError.ts"
import type { Supervisor, WorkerView } from "./Supervisor.ts"

/** What the node's admin port serves from. */
export interface NodeAdminOptions {
  readonly host: string
  readonly port: number
  readonly supervisor: Supervisor
  /** True once the node drains. */
  readonly isDraining: () => boolean
  /** How long a worker may take to answer a scrape or a readiness probe (default 2 s). */
  readonly workerTimeoutMs?: number
}

interface Reply {
  readonly status: number
  readonly body: string
  readonly type?: string
}

const PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"
const TEXT = "text/plain; charset=utf-8"

/** GET `path` from a worker's admin port on loopback. */
const get = (port: number, path: string, timeoutMs: number) =>
  Effect.callback<Reply, Error>((resume) => {
    const request = Http.get({ host: "127.0.0.1", port, path }, (response) => {
      let body = ""
      response.setEncoding("utf8")
      response.on("data", (chunk: string) => (body += chunk))
      response.on("end", () => resume(Effect.succeed({ status: response.statusCode ?? 0, body })))
      response.on("error", (e) => resume(Effect.fail(e)))
    })
    request.on("error", (e) => resume(Effect.fail(e)))
    return Effect.sync(() => request.destroy())
  }).pipe(Effect.timeout(timeoutMs))

/** Serves the node's admin port for the lifetime of the scope; returns the bound port. */
export const make = Effect.fn("NodeAdmin.make")(function*(options: NodeAdminOptions) {
  const timeoutMs = options.workerTimeoutMs ?? 2_000
  const { supervisor } = options
  /** Counters of the workers that are gone. */
  let retired = MetricsMerge.empty
  /** The counters of each live worker's last scrape, by incarnation. */
  const last = new Map<number, MetricsMerge.Exposition>()

  const listening = () =>
    supervisor.workers().filter((w): w is WorkerView & { incarnation: number; adminPort: number } =>
      w.state === "listening" && w.incarnation !== undefined && w.adminPort !== undefined
    )

  // one scrape at a time: `retired` and `last` are read and written across its suspensions
  const oneScrape = yield* Semaphore.make(1)
  const metrics = oneScrape.withPermits(1)(Effect.gen(function*() {
    const live = listening()
    const scrapes = yield* Effect.forEach(
      live,
      (w) =>
        get(w.adminPort, "/metrics", timeoutMs).pipe(
          Effect.map((r) => (r.status === 200 ? MetricsMerge.parse(r.body) : undefined)),
          Effect.orElseSucceed(() => undefined)
        ),
      { concurrency: "unbounded" }
    )
    const alive = new Set(live.map((w) => w.incarnation))
    for (const [incarnation, counters] of last) {
      if (alive.has(incarnation)) continue
      retired = MetricsMerge.merge([retired, counters])
      last.delete(incarnation)
    }
    const parts = live.map((w, i) => {
      const scraped = scrapes[i]
      if (scraped === undefined) return last.get(w.incarnation) ?? MetricsMerge.empty
      last.set(w.incarnation, MetricsMerge.cumulative(scraped))
      return scraped
    })
    yield* Metric.update(ClusterMetrics.residentMemory, process.memoryUsage.rss())
    yield* Metric.update(ClusterMetrics.workerRestarts, 0) // exported at 0 before the first restart, so increase() sees it
    const own = MetricsMerge.parse(yield* PrometheusMetrics.format())
    return { status: 200, body: MetricsMerge.render(MetricsMerge.merge([...parts, retired, own])), type: PROMETHEUS }
  }))

  const readiness = Effect.gen(function*() {
    if (options.isDraining()) return { status: 503, body: "draining\n" }
    const problems = yield* Effect.forEach(
      supervisor.workers(),
      (w) =>
        w.state !== "listening" || w.adminPort === undefined
          ? Effect.succeed(`worker ${w.index}: ${w.state}`)
          : get(w.adminPort, "/readyz", timeoutMs).pipe(
            Effect.map((r) => (r.status === 200 ? undefined : `worker ${w.index}: ${r.body.trim() || `status ${r.status}`}`)),
            Effect.orElseSucceed(() => `worker ${w.index}: not answering`)
          ),
      { concurrency: "unbounded" }
    )
    const notReady = problems.filter((p) => p !== undefined)
    return notReady.length === 0 ? { status: 200, body: "ready\n" } : { status: 503, body: notReady.join("\n") + "\n" }
  })

  const route = (request: Http.IncomingMessage): Effect.Effect<Reply> => {
    if (request.method !== "GET" && request.method !== "HEAD") return Effect.succeed({ status: 405, body: "method not allowed\n" })
    switch ((request.url ?? "/").split("?")[0]) {
      case "/metrics":
        return metrics
      case "/readyz":
        return readiness
      case "/healthz":
        return Effect.succeed({ status: 200, body: "ok\n" })
      default:
        return Effect.succeed({ status: 404, body: "not found\n" })
    }
  }

  const runFork = yield* FiberSet.makeRuntime<never, void, never>()
  const server = yield* Effect.acquireRelease(
    Effect.sync(() =>
      Http.createServer((request, response) => {
        runFork(Effect.map(route(request), (reply) => {
          response.writeHead(reply.status, { "content-type": reply.type ?? TEXT })
          response.end(request.method === "HEAD" ? undefined : reply.body)
        }))
      })
    ),
    (server) =>
      Effect.callback<void>((resume) => {
        server.close(() => resume(Effect.void))
        server.closeAllConnections()
      })
  )
  const port = yield* Effect.callback<number, NodeStartError>((resume) => {
    server.once("error", (e) =>
      resume(Effect.fail(new NodeStartError({ message: `admin port ${options.host}:${options.port}: ${e.message}`, exitCode: 1 }))))
    server.listen({ host: options.host, port: options.port }, () => {
      const address = server.address()
      resume(Effect.succeed(typeof address === "object" && address !== null ? address.port : options.port))
    })
  })
  return { port }
})
