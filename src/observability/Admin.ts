/**
 * The admin HTTP port: Prometheus text at `/metrics`, liveness at `/healthz` (the process
 * serves), readiness at `/readyz` (false while draining or when a sink cannot take writes: its
 * last write failed, its breaker is open, or its store is corrupt or lost; the body says which
 * and why, one sink per line). Before it serves, every series whose labels are known at start
 * is made to exist at 0 ({@link Metrics.initialize}), so the first scrape shows the whole contract.
 */
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import { Context, Effect, Layer, Option } from "effect"
import { HttpRouter, HttpServer, HttpServerResponse } from "effect/http"
import { PrometheusMetrics } from "effect/observability"
import { createServer } from "node:http"
import { GatewayConfig } from "../config/GatewayConfig.ts"
import { Lifecycle } from "../Lifecycle.ts"
import { Router } from "../sinks/routing/Router.ts"
import * as Metrics from "./Metrics.ts"

const readiness = Layer.unwrap(Effect.gen(function*() {
  const lifecycle = yield* Lifecycle
  const router = yield* Router
  return HttpRouter.add(
    "GET",
    "/readyz",
    Effect.gen(function*() {
      if (lifecycle.isDraining()) return HttpServerResponse.text("draining\n", { status: 503 })
      const all = yield* router.status
      const down = all.filter((s) => !s.health.ready)
      // ready, and what is not as usual (a sink whose outbox takes its messages, a breaker not closed)
      const degraded = all.flatMap((s) => (s.detail === undefined ? [] : [`sink ${s.sink}: ${s.detail}\n`]))
      if (down.length === 0) return HttpServerResponse.text(["ready\n", ...degraded].join(""))
      const lines = down.map((s) => `sink ${s.sink} unavailable${s.health.ready ? "" : `: ${s.health.message}`}\n`)
      return HttpServerResponse.text(lines.join(""), { status: 503 })
    })
  )
}))

const routes = Layer.mergeAll(
  PrometheusMetrics.layerHttp({ path: "/metrics" }),
  HttpRouter.add("GET", "/healthz", HttpServerResponse.text("ok\n")),
  readiness
)

/** The bound admin address. */
export class AdminPort extends Context.Service<AdminPort, { readonly port: number }>()("gateway/AdminPort") {}

/** The admin server on GATEWAY_ADMIN_HOST:GATEWAY_ADMIN_PORT. */
export const layer = Layer.unwrap(Effect.gen(function*() {
  const config = yield* GatewayConfig
  Metrics.initialize({ tls: Option.isSome(config.tlsCert) })
  const server = NodeHttpServer.layer(createServer, { port: config.adminPort, host: config.adminHost })
  const port = Layer.effect(
    AdminPort,
    Effect.map(HttpServer.HttpServer, (s) => ({ port: "port" in s.address ? s.address.port : 0 }))
  )
  return HttpRouter.serve(routes, { disableLogger: true, disableListenLog: true }).pipe(
    Layer.merge(port),
    Layer.provide(server)
  )
}))
