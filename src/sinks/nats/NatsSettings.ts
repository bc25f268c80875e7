/**
 * What the NATS JetStream sink needs from the configuration, as plain values: the `NATS_*`
 * variables of config/GatewayConfig.ts ({@link natsSettingsOf}), or set directly by tests and
 * benchmarks ({@link natsSettings}).
 */
import { Option } from "effect"

/** The NATS sink's settings. */
export interface NatsSettings {
  /** `NATS_URL`: one server or several separated by commas (see NatsUrl.ts). */
  readonly url: string
  /** `NATS_CREDS`: a credentials file (user JWT + nkey seed), re-read at every (re)connect. */
  readonly credsFile: string | undefined
  /** `NATS_TLS_CA` / `NATS_TLS_CERT` / `NATS_TLS_KEY`: PEM files, re-read at every (re)connect. */
  readonly tlsCa: string | undefined
  readonly tlsCert: string | undefined
  readonly tlsKey: string | undefined
  /** `NATS_STREAM` (default `DEVICES`). */
  readonly stream: string
  /** `NATS_STREAM_CREATE`: create the stream at start when it is missing. */
  readonly createStream: boolean
  /** `NATS_STORAGE` of a created stream. */
  readonly storage: "file" | "memory"
  /** `NATS_DUPLICATE_WINDOW_MS`: of a created stream; an existing stream's shorter window is warned about. */
  readonly duplicateWindowMs: number
  /** `NATS_REPLICAS` of a created stream. */
  readonly replicas: number
  /** `NATS_ACK_TIMEOUT_MS`: the longest wait for one PubAck (and for any JetStream API call). */
  readonly ackTimeoutMs: number
  /** Client name shown by the server's monitoring (the gateway's id). */
  readonly clientName: string
}

/** The defaults of the `NATS_*` variables, overridden by `overrides`. */
export const natsSettings = (overrides: Partial<NatsSettings> = {}): NatsSettings => ({
  url: "nats://127.0.0.1:4222",
  credsFile: undefined,
  tlsCa: undefined,
  tlsCert: undefined,
  tlsKey: undefined,
  stream: "DEVICES",
  createStream: false,
  storage: "file",
  duplicateWindowMs: 120_000,
  replicas: 1,
  ackTimeoutMs: 5_000,
  clientName: "iot-gateway",
  ...overrides
})

/** The `NATS_*` fields of the gateway's configuration. */
export interface NatsConfigFields {
  readonly natsUrl: string
  readonly natsCreds: Option.Option<string>
  readonly natsTlsCa: Option.Option<string>
  readonly natsTlsCert: Option.Option<string>
  readonly natsTlsKey: Option.Option<string>
  readonly natsStream: string
  readonly natsStreamCreate: boolean
  readonly natsStorage: "file" | "memory"
  readonly natsDuplicateWindowMs: number
  readonly natsReplicas: number
  readonly natsAckTimeoutMs: number
  readonly gatewayId: string
}

/** The sink's settings from the gateway's configuration. */
export const natsSettingsOf = (c: NatsConfigFields): NatsSettings => ({
  url: c.natsUrl,
  credsFile: Option.getOrUndefined(c.natsCreds),
  tlsCa: Option.getOrUndefined(c.natsTlsCa),
  tlsCert: Option.getOrUndefined(c.natsTlsCert),
  tlsKey: Option.getOrUndefined(c.natsTlsKey),
  stream: c.natsStream,
  createStream: c.natsStreamCreate,
  storage: c.natsStorage,
  duplicateWindowMs: c.natsDuplicateWindowMs,
  replicas: c.natsReplicas,
  ackTimeoutMs: c.natsAckTimeoutMs,
  clientName: `iot-gateway ${c.gatewayId}`
})
