/**
 * The gateway's configuration, read from the environment with `effect/Config` (names from
 * DESIGN.md's operating interface). A bad value fails at start with one line that names the
 * variable and what it expected ({@link describeConfigError}).
 */
import { Config, ConfigProvider, Context, Effect, Layer, Option, Redacted, Schema } from "effect"
import * as Os from "node:os"
import { parseNatsUrl } from "../sinks/nats/NatsUrl.ts"
import { libpqConfig } from "../sinks/postgres/PostgresSettings.ts"

/** Decimal integers only: `0x10`, `1e3` or ` 7` are refused, not read as numbers. */
const int = (name: string, fallback: number, min: number, max = Number.MAX_SAFE_INTEGER) =>
  Config.schema(
    Schema.String.check(Schema.isPattern(/^-?\d{1,16}$/, { message: `expected an integer from ${min} to ${max}` })).pipe(
      Schema.decodeTo(Schema.NumberFromString)
    ).check(
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
  /**
   * Where messages go: `sqlite` (the embedded store), `nats` (JetStream, `NATS_*`), `postgres`
   * (`DATABASE_URL`, `PG_*`), or several separated by commas (each takes every message); checked
   * by sinks/routing/Routes.ts. Dead letters and device states stay in the embedded store.
   */
  sink: Config.String("GATEWAY_SINK").pipe(Config.withDefault("sqlite")),
  /** Routing rules by kind and device (sinks/routing/Routes.ts); every message to GATEWAY_SINK when unset. */
  routesFile: Config.option(Config.String("GATEWAY_ROUTES_FILE")),
  /** Batches of a remote sink failed in a row (past their retries) that open its circuit breaker. */
  breakerFailures: int("GATEWAY_BREAKER_FAILURES", 5, 1, 1_000),
  /** Milliseconds an open breaker waits before a trial batch (doubled after each failed trial, at most 60 s). */
  breakerOpenMs: int("GATEWAY_BREAKER_OPEN_MS", 5_000, 10, 600_000),
  /** Store and forward for remote sinks (sinks/outbox/): what they cannot take now is committed to a local outbox and forwarded later. */
  outbox: Config.Literals(["on", "off"], "GATEWAY_OUTBOX").pipe(Config.withDefault("on" as const)),
  /** Bytes of stored envelopes per outbox (per remote sink and process) at most; past it: nack unavailable. */
  outboxMaxBytes: int("GATEWAY_OUTBOX_MAX_BYTES", 512 * 1024 * 1024, 1024 * 1024),
  /** Messages per outbox at most. */
  outboxMaxMessages: int("GATEWAY_OUTBOX_MAX_MESSAGES", 5_000_000, 1),
  /** Messages per forwarded write. */
  outboxDrainBatch: int("GATEWAY_OUTBOX_DRAIN_BATCH", 2_000, 1, 100_000),
  /** Milliseconds a sink's full queue may hold up a batch when there are several sinks (then: nack unavailable). */
  sinkStallMs: int("GATEWAY_SINK_STALL_MS", 1_000, 1, 600_000),
  devicesFile: Config.option(Config.String("GATEWAY_DEVICES")),
  /** Fleet keys for JWT device credentials (see auth/JwksSource.ts): a JWKS file, re-read when it changes, or a URL; not both. */
  jwksFile: Config.option(Config.String("GATEWAY_JWKS_FILE")),
  jwksUrl: Config.option(Config.String("GATEWAY_JWKS_URL")),
  /** The `iss` / `aud` a device JWT must carry, when set. */
  jwtIssuer: Config.option(Config.String("GATEWAY_JWT_ISSUER")),
  jwtAudience: Config.option(Config.String("GATEWAY_JWT_AUDIENCE")),
  /** Seconds of clock skew tolerated on a device JWT's `exp` / `nbf`. */
  jwtClockToleranceS: int("GATEWAY_JWT_CLOCK_TOLERANCE_S", 30, 0, 300),
  /** TLS on the device port: certificate chain and key (PEM files; both or neither). */
  tlsCert: Config.option(Config.String("GATEWAY_TLS_CERT")),
  tlsKey: Config.option(Config.String("GATEWAY_TLS_KEY")),
  /** CA bundle (PEM) for client certificates: when set, every device must present one naming it. */
  tlsCa: Config.option(Config.String("GATEWAY_TLS_CA")),
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
  /** Telemetry older than this when its batch is taken is shed (a bounded delay, not a backlog). */
  bulkMaxAgeMs: int("GATEWAY_BULK_MAX_AGE_MS", 5_000, 1),
  maxInflight: int("GATEWAY_MAX_INFLIGHT", 1_024, 1),
  batchMax: int("GATEWAY_BATCH_MAX", 4_096, 1),
  batchLingerMs: int("GATEWAY_BATCH_LINGER_MS", 0, 0, 60_000),
  /** The least time between two batches' takes while messages keep coming (group commit). */
  batchIntervalMs: int("GATEWAY_BATCH_INTERVAL_MS", 4, 0, 1_000),
  maxFrameBytes: int("GATEWAY_MAX_FRAME_BYTES", 65_536, 64, 16 * 1024 * 1024),
  keepaliveMs: int("GATEWAY_KEEPALIVE_MS", 30_000, 100),
  helloTimeoutMs: int("GATEWAY_HELLO_TIMEOUT_MS", 5_000, 10),
  dedupWindow: int("GATEWAY_DEDUP_WINDOW", 1_024, 32, 1 << 20),
  dedupDevices: int("GATEWAY_DEDUP_DEVICES", 100_000, 1),
  drainTimeoutMs: int("GATEWAY_DRAIN_TIMEOUT_MS", 10_000, 0),
  sqliteSync: Config.Literals(["normal", "full"], "GATEWAY_SQLITE_SYNC").pipe(Config.withDefault("normal" as const)),
  storeRetries: int("GATEWAY_STORE_RETRIES", 5, 0, 100),
  /** Bytes that frames may hold node-wide (lanes, held events, batches, connection buffers). */
  memoryBudget: int("GATEWAY_MEMORY_BUDGET", defaultMemoryBudget(), 1 << 20),
  /** Percent of the budget above which telemetry is shed and loaded connections stop reading. */
  memoryHighPercent: int("GATEWAY_MEMORY_HIGH_PERCENT", 80, 10, 100),
  /** Bytes of unanswered frames one connection may hold before it stops reading. */
  connectionMaxBytes: int("GATEWAY_CONNECTION_MAX_BYTES", 8 * 1024 * 1024, 64 * 1024),
  /** Bytes per sink batch at most (one frame more when a single frame is larger). */
  batchMaxBytes: int("GATEWAY_BATCH_MAX_BYTES", 1024 * 1024, 64 * 1024),
  /** New connections admitted per second (token bucket), and the bucket's size. */
  acceptRate: int("GATEWAY_ACCEPT_RATE", 2_000, 1),
  acceptBurst: int("GATEWAY_ACCEPT_BURST", 2_000, 1),
  /** Per-device rate limits (0 = none), unless the registry gives the device's class others. */
  deviceMsgsPerSec: int("GATEWAY_DEVICE_MSGS_PER_SEC", 5_000, 0),
  deviceBytesPerSec: int("GATEWAY_DEVICE_BYTES_PER_SEC", 8 * 1024 * 1024, 0),
  /** Flapping: more than `flapLimit` connections of one device within `flapWindowMs` bans it for `flapBanMs`. */
  flapLimit: int("GATEWAY_FLAP_LIMIT", 20, 1),
  flapWindowMs: int("GATEWAY_FLAP_WINDOW_MS", 60_000, 100),
  flapBanMs: int("GATEWAY_FLAP_BAN_MS", 60_000, 100),
  /** Connections not yet welcomed, node-wide (0 = a quarter of the connection cap). */
  unauthenticatedMax: int("GATEWAY_UNAUTHENTICATED_MAX", 0, 0),
  /** Connections not yet welcomed from one address at once. */
  unauthenticatedPerSource: int("GATEWAY_UNAUTHENTICATED_PER_SOURCE", 256, 1),
  /** Failed authentications from one address within the window before it is refused for the rest of it. */
  authFailLimit: int("GATEWAY_AUTH_FAIL_LIMIT", 20, 1),
  authFailWindowMs: int("GATEWAY_AUTH_FAIL_WINDOW_MS", 60_000, 100),
  /** Secret that signs the resume hint of `goaway` (shared by the nodes of a fleet); default: kept in the data dir. */
  resumeSecret: Config.option(Config.Redacted("GATEWAY_RESUME_SECRET")),
  /** Worker processes on the device port (1 = this process alone). */
  workers: int("GATEWAY_WORKERS", 1, 1, 256),
  /** Bind the device port with SO_REUSEPORT (set by the primary for its workers). */
  reusePort: Config.Boolean("GATEWAY_REUSE_PORT").pipe(Config.withDefault(false)),
  /** NATS JetStream sink (sinks/nats/): one server or several, comma-separated (see sinks/nats/NatsUrl.ts). */
  natsUrl: Config.schema(
    Schema.String.check(Schema.makeFilter((s: string) => {
      const parsed = parseNatsUrl(s)
      return typeof parsed === "string" ? parsed : undefined
    })),
    "NATS_URL"
  ).pipe(Config.withDefault("nats://127.0.0.1:4222")),
  /** NATS credentials file (`.creds`: user JWT and nkey seed). */
  natsCreds: Config.option(Config.String("NATS_CREDS")),
  /** TLS to NATS: CA bundle, client certificate and key (PEM files). */
  natsTlsCa: Config.option(Config.String("NATS_TLS_CA")),
  natsTlsCert: Config.option(Config.String("NATS_TLS_CERT")),
  natsTlsKey: Config.option(Config.String("NATS_TLS_KEY")),
  /** The JetStream stream the sink publishes into (it must take `devices.>` subjects). */
  natsStream: Config.schema(
    Schema.String.check(Schema.isPattern(/^[A-Za-z0-9_-]{1,64}$/, { message: "expected 1..64 of A-Z a-z 0-9 _ -" })),
    "NATS_STREAM"
  ).pipe(Config.withDefault("DEVICES")),
  /** Create the stream at start when it does not exist (otherwise a missing stream stops the start). */
  natsStreamCreate: Config.Boolean("NATS_STREAM_CREATE").pipe(Config.withDefault(false)),
  natsStorage: Config.Literals(["file", "memory"], "NATS_STORAGE").pipe(Config.withDefault("file" as const)),
  /** The stream's duplicate window (created streams); an existing shorter one is warned about at start. */
  natsDuplicateWindowMs: int("NATS_DUPLICATE_WINDOW_MS", 120_000, 1_000, 7 * 24 * 3_600_000),
  natsReplicas: int("NATS_REPLICAS", 1, 1, 5),
  /** Every publish waits at most this long for its PubAck (a hung server is detected). */
  natsAckTimeoutMs: int("NATS_ACK_TIMEOUT_MS", 5_000, 100, 600_000),
  /** PostgreSQL sink (sinks/postgres/): libpq URI; the PG* libpq variables fill what it leaves out. Redacted: it may hold a password. */
  databaseUrl: Config.Redacted("DATABASE_URL").pipe(Config.withDefault(Redacted.make(""))),
  libpq: libpqConfig,
  /** The messages table, `name` or `schema.name`, created at start when missing. */
  pgTable: Config.String("PG_TABLE").pipe(Config.withDefault("messages")),
  /** The server's statement_timeout, and (plus a second) the client's deadline for an answer. */
  pgStatementTimeoutMs: int("PG_STATEMENT_TIMEOUT_MS", 5_000, 100, 600_000),
  /** The longest wait for a new connection. */
  pgConnectTimeoutMs: int("PG_CONNECT_TIMEOUT_MS", 5_000, 100, 600_000),
  /** Connections kept open (batches written at once). */
  pgPoolSize: int("PG_POOL_SIZE", 4, 1, 64)
})

/** Default memory budget: an eighth of the machine's memory, between 64 MiB and 512 MiB. */
function defaultMemoryBudget(): number {
  return Math.min(512 * 1024 * 1024, Math.max(64 * 1024 * 1024, Math.floor(Os.totalmem() / 8)))
}

/** The resolved configuration. */
export type GatewayConfigShape = Config.Success<typeof gatewayConfig> & {
  /** True when no credential is configured (no registry, no client CA, no JWT keys): the listener was forced to loopback. */
  readonly openAccess: boolean
}

/** The configuration as a service, so every stage reads the same resolved values. */
export class GatewayConfig extends Context.Service<GatewayConfig, GatewayConfigShape>()("gateway/GatewayConfig") {
  /** Reads the environment (or the current ConfigProvider). */
  static readonly layer = Layer.effect(
    GatewayConfig,
    Effect.map(gatewayConfig, (c) => {
      // a client certificate is a credential too: with mutual TLS the port may face the network
      const openAccess = Option.isNone(c.devicesFile) && Option.isNone(c.tlsCa) && Option.isNone(c.jwksFile) && Option.isNone(c.jwksUrl)
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
