/**
 * Test support: an in-process gateway on real sockets (ports 0) with its own data directory,
 * built from the same layers as production; only the configuration differs.
 */
import { Context, Effect, Exit, Layer, Logger, Scope } from "effect"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { GatewayConfig } from "../../src/config/GatewayConfig.ts"
import * as Gateway from "../../src/Gateway.ts"
import { Listener } from "../../src/ingress/Listener.ts"
import { AdminPort } from "../../src/observability/Admin.ts"
import { MessageTracer, type TracingConfigError } from "../../src/observability/Tracing.ts"
import type { StagesFileError } from "../../src/config/StagesFile.ts"
import type { Pipeline } from "../../src/pipeline/Pipeline.ts"
import * as Catalog from "../../src/stages/Catalog.ts"

/** A running in-process gateway. */
export interface TestGateway {
  readonly port: number
  readonly adminPort: number
  readonly dataDir: string
  /** Runs the shutdown sequence (drain) and waits for it. */
  readonly stop: () => Promise<void>
}

/** A fresh temporary directory. */
export const tempDir = (prefix = "gw-test-") => Fs.mkdtempSync(Path.join(Os.tmpdir(), prefix))

/**
 * Starts a gateway with the given environment overrides (ports default to 0); tracing off
 * unless given; user stages from GATEWAY_STAGES_FILE unless a pipeline layer is given.
 */
export const startGateway = async (
  env: Record<string, string> = {},
  tracing: Layer.Layer<MessageTracer, TracingConfigError> = MessageTracer.disabled,
  pipeline: Layer.Layer<Pipeline, StagesFileError, GatewayConfig> = Catalog.layer
): Promise<TestGateway> => {
  const dataDir = env["GATEWAY_DATA_DIR"] ?? tempDir()
  const config = GatewayConfig.layerWith({
    GATEWAY_PORT: "0",
    GATEWAY_ADMIN_PORT: "0",
    GATEWAY_DATA_DIR: dataDir,
    GATEWAY_ID: "test-gw",
    ...env
  })
  const scope = Effect.runSync(Scope.make())
  const quiet = Logger.layer([])
  const services = await Effect.runPromise(
    Layer.buildWithScope(Gateway.layer(config, tracing, pipeline).pipe(Layer.provide(quiet)), scope)
  )
  const port = Context.get(services, Listener).port
  const adminPort = Context.get(services, AdminPort).port
  let stopped: Promise<void> | undefined
  return {
    port,
    adminPort,
    dataDir,
    stop: () => (stopped ??= Effect.runPromise(Scope.close(scope, Exit.void)))
  }
}
