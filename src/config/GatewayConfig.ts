/**
 * The gateway's configuration, read from the environment with `effect/Config` (names from
 * DESIGN.md's operating interface). A bad value fails at start with one line that names the
 * variable and what it expected ({@link describeConfigError}).
 */
import { Config, ConfigProvider, Context, Effect, Layer, Option, Schema } from "effect"
import * as Os from "node:os"

const int = (name: string, fallback: number, min: number, max = Number.MAX_SAFE_INTEGER) =>
  Config.schema(
    Schema.NumberFromString.check(
      Schema.isInt({ message: `expected an integer from ${min} to ${max}` }),
      Schema.isBetween({ minimum: min, maximum: max }, { message: `expected an integer from ${min} to ${max}` })
    ),
    name
  ).pipe(Config.withDefault(fallback))

const port = (name: string, fallback: number) => int(name, fallback, 0, 65535)

/** Everything the gateway reads at start. */
export const gatewayConfig = Config.all({
  /** Device listener address; forced to loopback when no device registry is configured. */
  host: Config.String("GATEWAY_HOST").pipe(Config.withDefault("127.0.0.1")),
  port: port("GATEWAY_PORT", 7000),
  adminPort: port("GATEWAY_ADMIN_PORT", 9464),
  adminHost: Config.String("GATEWAY_ADMIN_HOST").pipe(Config.withDefault("127.0.0.1")),
  dataDir: Config.String("GATEWAY_DATA_DIR").pipe(Config.withDefault("./data")),
  sink: Config.Literals(["sqlite"], "GATEWAY_SINK").pipe(Config.withDefault("sqlite" as const)),
  devicesFile: Config.option(Config.String("GATEWAY_DEVICES")),
  /** The stages file: user stages after ingest (see config/StagesFile.ts); none when unset. */
  stagesFile: Config.option(Config.String("GATEWAY_STAGES_FILE")),
  gatewayId: Config.schema(
    Schema.String.check(Schema.isPattern(/^[\x21-\x7e]{1,128}$/, { message: "expected 1..128 printable ASCII characters" })),
    "GATEWAY_ID"
  ).pipe(Config.withDefault(`${Os.hostname()}-${process.pid}`)),
  maxConnections: int("GATEWAY_MAX_CONNECTIONS", 10_000, 1),
  busyRetryMs: int("GATEWAY_BUSY_RETRY_MS", 1_000, 1),
  criticalQueue: int("GATEWAY_CRITICAL_QUEUE", 16_384, 1),
  bulkQueue: int("GATEWAY_BULK_QUEUE", 65_536, 1),
  maxInflight: int("GATEWAY_MAX_INFLIGHT", 1_024, 1),
  batchMax: int("GATEWAY_BATCH_MAX", 4_096, 1),
  batchLingerMs: int("GATEWAY_BATCH_LINGER_MS", 0, 0, 60_000),
  maxFrameBytes: int("GATEWAY_MAX_FRAME_BYTES", 65_536, 64, 16 * 1024 * 1024),
  keepaliveMs: int("GATEWAY_KEEPALIVE_MS", 30_000, 100),
  helloTimeoutMs: int("GATEWAY_HELLO_TIMEOUT_MS", 5_000, 10),
  dedupWindow: int("GATEWAY_DEDUP_WINDOW", 1_024, 32, 1 << 20),
  dedupDevices: int("GATEWAY_DEDUP_DEVICES", 100_000, 1),
  drainTimeoutMs: int("GATEWAY_DRAIN_TIMEOUT_MS", 10_000, 0),
  sqliteSync: Config.Literals(["normal", "full"], "GATEWAY_SQLITE_SYNC").pipe(Config.withDefault("normal" as const)),
  storeRetries: int("GATEWAY_STORE_RETRIES", 5, 0, 100)
})

/** The resolved configuration. */
export type GatewayConfigShape = Config.Success<typeof gatewayConfig> & {
  /** True when the device registry is absent and the listener was forced to loopback. */
  readonly openAccess: boolean
}

/** The configuration as a service, so every stage reads the same resolved values. */
export class GatewayConfig extends Context.Service<GatewayConfig, GatewayConfigShape>()("gateway/GatewayConfig") {
  /** Reads the environment (or the current ConfigProvider). */
  static readonly layer = Layer.effect(
    GatewayConfig,
    Effect.map(gatewayConfig, (c) => {
      const openAccess = Option.isNone(c.devicesFile)
      return GatewayConfig.of({ ...c, host: openAccess ? loopbackOf(c.host) : c.host, openAccess })
    })
  )

  /** A fixed configuration (tests): defaults overridden by `overrides`. */
  static readonly layerWith = (overrides: Record<string, string>) =>
    GatewayConfig.layer.pipe(
      Layer.provide(ConfigProvider.layer(ConfigProvider.fromEnvRecord(overrides)))
    )
}

const LOOPBACK = /^(127\.\d+\.\d+\.\d+|::1|localhost)$/
const loopbackOf = (host: string) => LOOPBACK.test(host) ? host : "127.0.0.1"

/** One line for a configuration failure: the variable and what it expected. */
export const describeConfigError = (error: Config.ConfigError): string =>
  `invalid configuration: ${error.message.replace(/^SchemaError\(|\)$/g, "").replace(/\s*\n\s*/g, " ")}`
