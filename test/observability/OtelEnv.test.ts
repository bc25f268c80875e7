/**
 * The OTEL_* variables as the gateway reads them: when tracing is on, the sampler, the batch
 * processor's settings, the protocol and the resource, with the standard defaults; a value
 * that is set but wrong is one error naming the variable and what it expected.
 */
import { describe, expect, it } from "@effect/vitest"
import { readTracingSettings, TracingConfigError } from "../../src/observability/OtelEnv.ts"

const ENDPOINT = { OTEL_EXPORTER_OTLP_ENDPOINT: "http://127.0.0.1:4318" }
const read = (env: Record<string, string>) => readTracingSettings("iot-gateway", env)
const error = (env: Record<string, string>): string => {
  try {
    read(env)
  } catch (e) {
    if (e instanceof TracingConfigError) return e.message
    throw e
  }
  throw new Error("no error")
}

describe("OtelEnv", () => {
  it("is off without an endpoint, with OTEL_SDK_DISABLED=true, OTEL_TRACES_EXPORTER=none or the always_off sampler", () => {
    expect(read({})).toBeUndefined()
    expect(read({ ...ENDPOINT, OTEL_SDK_DISABLED: "true" })).toBeUndefined()
    expect(read({ ...ENDPOINT, OTEL_SDK_DISABLED: "TRUE" })).toBeUndefined()
    expect(read({ ...ENDPOINT, OTEL_TRACES_EXPORTER: "none" })).toBeUndefined()
    expect(read({ ...ENDPOINT, OTEL_TRACES_SAMPLER: "always_off" })).toBeUndefined()
    expect(read({ ...ENDPOINT, OTEL_SDK_DISABLED: "false" })).toBeDefined()
    expect(read({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "https://collector:4318/v1/traces" })).toBeDefined()
    // an empty value is unset (OpenTelemetry's rule)
    expect(read({ OTEL_EXPORTER_OTLP_ENDPOINT: "" })).toBeUndefined()
    // OTEL_TRACES_EXPORTER=otlp alone: the standard default endpoint
    expect(read({ OTEL_TRACES_EXPORTER: "otlp" })).toBeDefined()
  })

  it("has the standard defaults: parentbased_always_on, http/protobuf, the batch processor's 5000/2048/512/30000", () => {
    const s = read(ENDPOINT)!
    expect(s.sampler).toMatchObject({ name: "parentbased_always_on", parentBased: true, ratio: 1 })
    expect(s.protocol).toBe("http/protobuf")
    expect(s.batch).toEqual({ scheduledDelayMillis: 5_000, maxQueueSize: 2_048, maxExportBatchSize: 512, exportTimeoutMillis: 30_000 })
    expect(s.resource).toEqual({ "service.name": "iot-gateway" })
  })

  it("reads every sampler and its argument, the batch settings, the protocol (the traces one first) and the resource", () => {
    expect(read({ ...ENDPOINT, OTEL_TRACES_SAMPLER: "traceidratio", OTEL_TRACES_SAMPLER_ARG: "0.25" })!.sampler).toMatchObject({
      name: "traceidratio",
      ratio: 0.25,
      parentBased: false,
      bound: Math.floor(0.25 * 0xffffffff)
    })
    expect(read({ ...ENDPOINT, OTEL_TRACES_SAMPLER: "parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG: "1e-2" })!.sampler).toMatchObject({
      ratio: 0.01,
      parentBased: true
    })
    // the ratio samplers without an argument: 1 (the standard default)
    expect(read({ ...ENDPOINT, OTEL_TRACES_SAMPLER: "traceidratio" })!.sampler.ratio).toBe(1)
    // the argument of the other samplers is not theirs to read
    expect(read({ ...ENDPOINT, OTEL_TRACES_SAMPLER: "always_on", OTEL_TRACES_SAMPLER_ARG: "0.1" })!.sampler).toMatchObject({ name: "always_on", ratio: 1 })
    expect(read({ ...ENDPOINT, OTEL_TRACES_SAMPLER: "parentbased_always_off" })!.sampler).toMatchObject({ parentBased: true, bound: 0 })
    expect(read({
      ...ENDPOINT,
      OTEL_BSP_SCHEDULE_DELAY: "100",
      OTEL_BSP_MAX_QUEUE_SIZE: "10",
      OTEL_BSP_MAX_EXPORT_BATCH_SIZE: "3",
      OTEL_BSP_EXPORT_TIMEOUT: "250"
    })!.batch).toEqual({ scheduledDelayMillis: 100, maxQueueSize: 10, maxExportBatchSize: 3, exportTimeoutMillis: 250 })
    expect(read({ ...ENDPOINT, OTEL_EXPORTER_OTLP_PROTOCOL: "http/json" })!.protocol).toBe("http/json")
    expect(read({ ...ENDPOINT, OTEL_EXPORTER_OTLP_PROTOCOL: "http/json", OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: "http/protobuf" })!.protocol).toBe(
      "http/protobuf"
    )
    expect(read({
      ...ENDPOINT,
      OTEL_RESOURCE_ATTRIBUTES: "deployment.environment=prod, service.name=from-attributes,site=a%2Cb%3Dc",
      OTEL_SERVICE_NAME: "edge-7"
    })!.resource).toEqual({ "deployment.environment": "prod", "service.name": "edge-7", site: "a,b=c" })
    // without OTEL_SERVICE_NAME, service.name of OTEL_RESOURCE_ATTRIBUTES wins over the default
    expect(read({ ...ENDPOINT, OTEL_RESOURCE_ATTRIBUTES: "service.name=from-attributes" })!.resource["service.name"]).toBe("from-attributes")
  })

  it("refuses a value that is set but wrong, naming the variable and what it expected", () => {
    expect(error({ ...ENDPOINT, OTEL_TRACES_SAMPLER: "ratio" })).toBe(
      `OTEL_TRACES_SAMPLER="ratio": expected one of always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio`
    )
    expect(error({ ...ENDPOINT, OTEL_TRACES_SAMPLER: "traceidratio", OTEL_TRACES_SAMPLER_ARG: "1.5" })).toBe(
      `OTEL_TRACES_SAMPLER_ARG="1.5": expected a number from 0 to 1 (the ratio of traces sampled)`
    )
    expect(error({ ...ENDPOINT, OTEL_TRACES_SAMPLER: "parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG: "ten percent" })).toMatch(
      /^OTEL_TRACES_SAMPLER_ARG="ten percent": expected a number from 0 to 1/
    )
    expect(error({ ...ENDPOINT, OTEL_EXPORTER_OTLP_PROTOCOL: "grpc" })).toBe(
      `OTEL_EXPORTER_OTLP_PROTOCOL="grpc": expected http/protobuf or http/json (grpc is not supported)`
    )
    expect(error({ ...ENDPOINT, OTEL_BSP_MAX_QUEUE_SIZE: "0" })).toBe(`OTEL_BSP_MAX_QUEUE_SIZE="0": expected an integer from 1 to 1000000`)
    expect(error({ ...ENDPOINT, OTEL_BSP_SCHEDULE_DELAY: "5s" })).toBe(`OTEL_BSP_SCHEDULE_DELAY="5s": expected an integer from 0 to 2147483647`)
    // past what Node's timers take (they would fire after 1 ms), and a zero export timeout
    expect(error({ ...ENDPOINT, OTEL_BSP_SCHEDULE_DELAY: "9999999999" })).toBe(`OTEL_BSP_SCHEDULE_DELAY="9999999999": expected an integer from 0 to 2147483647`)
    expect(error({ ...ENDPOINT, OTEL_BSP_EXPORT_TIMEOUT: "0" })).toBe(`OTEL_BSP_EXPORT_TIMEOUT="0": expected an integer from 1 to 2147483647`)
    expect(error({ ...ENDPOINT, OTEL_BSP_MAX_QUEUE_SIZE: "2000000" })).toBe(`OTEL_BSP_MAX_QUEUE_SIZE="2000000": expected an integer from 1 to 1000000`)
    expect(error({ ...ENDPOINT, OTEL_BSP_MAX_QUEUE_SIZE: "10", OTEL_BSP_MAX_EXPORT_BATCH_SIZE: "20" })).toBe(
      `OTEL_BSP_MAX_EXPORT_BATCH_SIZE="20": expected at most OTEL_BSP_MAX_QUEUE_SIZE (10)`
    )
    expect(error({ OTEL_EXPORTER_OTLP_ENDPOINT: "localhost:4318" })).toBe(
      `OTEL_EXPORTER_OTLP_ENDPOINT="localhost:4318": expected an http:// or https:// URL`
    )
    expect(error({ ...ENDPOINT, OTEL_EXPORTER_OTLP_HEADERS: "authorization" })).toMatch(/^OTEL_EXPORTER_OTLP_HEADERS="authorization": expected a comma-separated list of key=value/)
    expect(error({ ...ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_HEADERS: "a=%E0%A4%A" })).toMatch(/^OTEL_EXPORTER_OTLP_TRACES_HEADERS=.*percent-encoding/)
    expect(error({ ...ENDPOINT, OTEL_RESOURCE_ATTRIBUTES: "=x" })).toMatch(/^OTEL_RESOURCE_ATTRIBUTES="=x"/)
    expect(error({ ...ENDPOINT, OTEL_SDK_DISABLED: "yes" })).toBe(`OTEL_SDK_DISABLED="yes": expected true or false`)
    expect(error({ ...ENDPOINT, OTEL_TRACES_EXPORTER: "jaeger" })).toBe(`OTEL_TRACES_EXPORTER="jaeger": expected otlp or none`)
    expect(error({ ...ENDPOINT, OTEL_EXPORTER_OTLP_COMPRESSION: "zstd" })).toBe(`OTEL_EXPORTER_OTLP_COMPRESSION="zstd": expected gzip or none`)
    // a token with '=' in its value is a header value, as the exporter reads it
    expect(read({ ...ENDPOINT, OTEL_EXPORTER_OTLP_HEADERS: "authorization=Basic dXNlcjpwYXNz==" })).toBeDefined()
  })
})
