/**
 * The gateway composed from its stages, in the order of DESIGN.md's flow. Layers are acquired
 * bottom-up and released top-down, which is the shutdown order: the listener drains first
 * (readiness false, goaway, answer in-flight), then the admin port closes, then the persistence
 * stage empties the lanes, then the sink flushes and closes.
 */
import { type Config, Effect, Layer } from "effect"
import { Admission } from "./admission/Admission.ts"
import { MemoryBudget } from "./admission/MemoryBudget.ts"
import { DeviceAuth } from "./auth/DeviceAuth.ts"
import * as WorkerLink from "./cluster/WorkerLink.ts"
import { GatewayConfig } from "./config/GatewayConfig.ts"
import { Listener } from "./ingress/Listener.ts"
import { SessionRegistry } from "./ingress/Sessions.ts"
import { Lifecycle } from "./Lifecycle.ts"
import * as Admin from "./observability/Admin.ts"
import * as RuntimeMetrics from "./observability/RuntimeMetrics.ts"
import * as Tracing from "./observability/Tracing.ts"
import { Dedup } from "./pipeline/Dedup.ts"
import { Lanes } from "./pipeline/Lanes.ts"
import * as Persistence from "./pipeline/Persistence.ts"
import type { Pipeline } from "./pipeline/Pipeline.ts"
import * as Catalog from "./stages/Catalog.ts"
import type { StagesFileError } from "./config/StagesFile.ts"
import * as Sinks from "./sinks/Sinks.ts"

/**
 * Logs the `listening` line once both ports are bound. A worker of a node (GATEWAY_WORKERS > 1)
 * reports its ports to the primary instead and logs `worker listening`: the node's one
 * `listening` line is the primary's, with the node's admin port.
 */
const announce = Layer.effectDiscard(Effect.gen(function*() {
  const listener = yield* Listener
  const admin = yield* Admin.AdminPort
  const config = yield* GatewayConfig
  const ports = { port: listener.port, adminPort: admin.port }
  const isWorker = yield* WorkerLink.reportListening(ports)
  yield* Effect.logInfo(isWorker ? "worker listening" : "listening").pipe(
    Effect.annotateLogs({ ...ports, host: config.host, sink: config.sink })
  )
}))

/**
 * The whole gateway, given its configuration, tracing and user-stage layers (by default the
 * stages of GATEWAY_STAGES_FILE). A pipeline layer that still needs a service nobody provided
 * is refused by the compiler here.
 */
export const layer = <E = never>(
  config: Layer.Layer<GatewayConfig, Config.ConfigError> = GatewayConfig.layer,
  tracing: Layer.Layer<Tracing.MessageTracer, Tracing.TracingConfigError> = Tracing.layerFromEnv("iot-gateway"),
  pipeline?: Layer.Layer<Pipeline, E, GatewayConfig>
) => {
  const stages: Layer.Layer<Pipeline, E | StagesFileError, GatewayConfig> = pipeline ?? Catalog.layer
  return announce.pipe(
    Layer.provideMerge(Listener.layer),
    Layer.provideMerge(Admin.layer),
    Layer.provideMerge(Persistence.layer),
    Layer.provideMerge(Admission.layer),
    Layer.provideMerge(
      Layer.mergeAll(Lanes.layer, Dedup.layer, SessionRegistry.layer, DeviceAuth.layer, stages)
    ),
    Layer.provideMerge(Layer.mergeAll(Sinks.layer.pipe(Layer.provide(Lifecycle.layer)), Lifecycle.layer, MemoryBudget.layer, RuntimeMetrics.layer)),
    // below the sinks, so that their own fibers' spans (sink.write) are exported too, and flushed last
    Layer.provideMerge(tracing),
    Layer.provideMerge(config)
  )
}
