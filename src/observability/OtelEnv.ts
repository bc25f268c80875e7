/**
 * The standard `OTEL_*` variables the gateway's tracing reads, checked at start: a value that is
 * set but wrong stops the start with one line naming the variable and what it expected (as every
 * other setting), instead of OpenTelemetry's silent fallback to a default. Empty values count as
 * unset (OpenTelemetry's rule). The exporter itself also reads the endpoint, headers, timeout
 * and compression variables; they are checked here first.
 *
 * Tracing is on when `OTEL_SDK_DISABLED` is not `true`, `OTEL_TRACES_EXPORTER` is `otlp` (or
 * unset) and an endpoint is configured (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
 * `OTEL_EXPORTER_OTLP_ENDPOINT`; with `OTEL_TRACES_EXPORTER=otlp` set explicitly, the standard
 * default `http://localhost:4318`), and the sampler is not `always_off`.
 */
import { Data } from "effect"
import { makeSampler, SAMPLER_NAMES, type Sampler, type SamplerName } from "./TraceSampler.ts"

/** A tracing variable that is set but wrong. */
export class TracingConfigError extends Data.TaggedError("TracingConfigError")<{ readonly message: string }> {}

/** The OTLP encodings the gateway exports (`OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`). */
export type OtlpProtocol = "http/protobuf" | "http/json"

/** The batch span processor's settings (`OTEL_BSP_*`), with the standard defaults. */
export interface BatchSettings {
  /** Milliseconds between two exports at most (`OTEL_BSP_SCHEDULE_DELAY`, 5000). */
  readonly scheduledDelayMillis: number
  /** Spans held for export at most; beyond, new ones are dropped (`OTEL_BSP_MAX_QUEUE_SIZE`, 2048). */
  readonly maxQueueSize: number
  /** Spans per export request at most (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, 512). */
  readonly maxExportBatchSize: number
  /** Milliseconds an export may take (`OTEL_BSP_EXPORT_TIMEOUT`, 30000). */
  readonly exportTimeoutMillis: number
}

/** Everything tracing needs once it is on. */
export interface TracingSettings {
  readonly protocol: OtlpProtocol
  readonly sampler: Sampler
  readonly batch: BatchSettings
  /** The resource's attributes: `service.name` and those of `OTEL_RESOURCE_ATTRIBUTES`. */
  readonly resource: Readonly<Record<string, string>>
}

type Env = Readonly<Record<string, string | undefined>>

const get = (env: Env, name: string): string | undefined => {
  const v = env[name]?.trim()
  return v === undefined || v === "" ? undefined : v
}

const fail = (name: string, value: string, expected: string) =>
  new TracingConfigError({ message: `${name}=${JSON.stringify(value)}: expected ${expected}` })

const bool = (env: Env, name: string): boolean => {
  const v = get(env, name)
  if (v === undefined) return false
  const lower = v.toLowerCase()
  if (lower === "true") return true
  if (lower === "false") return false
  throw fail(name, v, "true or false")
}

/** The largest delay Node's timers take (a larger one fires after 1 ms). */
const MAX_MS = 2_147_483_647

const int = (env: Env, name: string, fallback: number, min: number, max = MAX_MS): number => {
  const v = get(env, name)
  if (v === undefined) return fallback
  if (!/^\d{1,10}$/.test(v) || Number(v) < min || Number(v) > max) throw fail(name, v, `an integer from ${min} to ${max}`)
  return Number(v)
}

/**
 * A `key=value,key=value` list (headers, resource attributes): each key and value trimmed and
 * percent-decoded; a value may hold further `=` (a base64 token), as the exporter reads it.
 */
export const parseKeyValues = (name: string, value: string): Record<string, string> => {
  const out: Record<string, string> = {}
  for (const entry of value.split(",")) {
    if (entry.trim() === "") continue
    const eq = entry.indexOf("=")
    const key = eq === -1 ? "" : entry.slice(0, eq).trim()
    if (eq === -1 || key === "") {
      throw fail(name, value, "a comma-separated list of key=value (',' and '=' percent-encoded)")
    }
    try {
      out[decodeURIComponent(key)] = decodeURIComponent(entry.slice(eq + 1).trim())
    } catch {
      throw fail(name, value, "valid percent-encoding in keys and values")
    }
  }
  return out
}

const url = (env: Env, name: string): string | undefined => {
  const v = get(env, name)
  if (v === undefined) return undefined
  let parsed: URL
  try {
    parsed = new URL(v)
  } catch {
    throw fail(name, v, "an http:// or https:// URL")
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") throw fail(name, v, "an http:// or https:// URL")
  return v
}

const protocol = (env: Env, name: string): OtlpProtocol | undefined => {
  const v = get(env, name)
  if (v === undefined) return undefined
  if (v === "http/protobuf" || v === "http/json") return v
  throw fail(name, v, v === "grpc" ? "http/protobuf or http/json (grpc is not supported)" : "http/protobuf or http/json")
}

const sampler = (env: Env): Sampler => {
  const v = get(env, "OTEL_TRACES_SAMPLER") ?? "parentbased_always_on"
  if (!(SAMPLER_NAMES as ReadonlyArray<string>).includes(v)) throw fail("OTEL_TRACES_SAMPLER", v, `one of ${SAMPLER_NAMES.join(", ")}`)
  const name = v as SamplerName
  if (name !== "traceidratio" && name !== "parentbased_traceidratio") return makeSampler(name)
  const arg = get(env, "OTEL_TRACES_SAMPLER_ARG")
  if (arg === undefined) return makeSampler(name, 1)
  const ratio = /^(\d+(\.\d*)?|\.\d+)(e-?\d+)?$/i.test(arg) ? Number(arg) : NaN
  if (!(ratio >= 0 && ratio <= 1)) throw fail("OTEL_TRACES_SAMPLER_ARG", arg, "a number from 0 to 1 (the ratio of traces sampled)")
  return makeSampler(name, ratio)
}

/** The resource attributes: `OTEL_RESOURCE_ATTRIBUTES`, then `service.name` from `OTEL_SERVICE_NAME` (or the default). */
const resource = (env: Env, serviceName: string): Record<string, string> => {
  const raw = get(env, "OTEL_RESOURCE_ATTRIBUTES")
  const attributes = raw === undefined ? {} : parseKeyValues("OTEL_RESOURCE_ATTRIBUTES", raw)
  return { ...attributes, "service.name": get(env, "OTEL_SERVICE_NAME") ?? attributes["service.name"] ?? serviceName }
}

/**
 * The tracing settings of `env`, or undefined when tracing is off; throws a
 * {@link TracingConfigError} for a variable that is set but wrong.
 */
export const readTracingSettings = (serviceName: string, env: Env = process.env): TracingSettings | undefined => {
  if (bool(env, "OTEL_SDK_DISABLED")) return undefined
  const exporter = get(env, "OTEL_TRACES_EXPORTER")
  if (exporter === "none") return undefined
  if (exporter !== undefined && exporter !== "otlp") throw fail("OTEL_TRACES_EXPORTER", exporter, "otlp or none")
  const endpoint = url(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") ?? url(env, "OTEL_EXPORTER_OTLP_ENDPOINT")
  if (endpoint === undefined && exporter === undefined) return undefined
  for (const name of ["OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"]) {
    const v = get(env, name)
    if (v !== undefined) parseKeyValues(name, v)
  }
  for (const name of ["OTEL_EXPORTER_OTLP_TIMEOUT", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"]) int(env, name, 0, 1)
  for (const name of ["OTEL_EXPORTER_OTLP_COMPRESSION", "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION"]) {
    const v = get(env, name)
    if (v !== undefined && v !== "gzip" && v !== "none") throw fail(name, v, "gzip or none")
  }
  const chosen = sampler(env)
  if (chosen.name === "always_off") return undefined
  const batch: BatchSettings = {
    scheduledDelayMillis: int(env, "OTEL_BSP_SCHEDULE_DELAY", 5_000, 0),
    // bounded: queued spans are outside the memory budget (1,000,000 spans is ~1 GB at most)
    maxQueueSize: int(env, "OTEL_BSP_MAX_QUEUE_SIZE", 2_048, 1, 1_000_000),
    maxExportBatchSize: int(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512, 1, 65_536),
    exportTimeoutMillis: int(env, "OTEL_BSP_EXPORT_TIMEOUT", 30_000, 1)
  }
  if (batch.maxExportBatchSize > batch.maxQueueSize) {
    throw fail("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", String(batch.maxExportBatchSize), `at most OTEL_BSP_MAX_QUEUE_SIZE (${batch.maxQueueSize})`)
  }
  return {
    protocol: protocol(env, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") ?? protocol(env, "OTEL_EXPORTER_OTLP_PROTOCOL") ?? "http/protobuf",
    sampler: chosen,
    batch,
    resource: resource(env, serviceName)
  }
}
