/**
 * Where ended spans go: a batch span processor ({@link SpanBatcher}: a bounded queue, exported in
 * batches off the hot path, on a timer or when a batch is full, one request at a time; spans
 * beyond the queue are dropped, never waited for) in front of OpenTelemetry's OTLP/HTTP exporter
 * machinery, under the resource of `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`. The
 * exporter reads the endpoint, headers, timeout and compression variables itself and retries
 * what the collector says to retry. `http/json` is OpenTelemetry's JSON exporter unchanged;
 * `http/protobuf` (the default) is the same HTTP delegate with the gateway's own encoding
 * ({@link makeProtobufEncoder}). Dropped spans and failed exports are logged, at most one line
 * per 10 s each, with how many; never raised. The SDK's modules are loaded only when tracing is on.
 */
import type { Attributes } from "@opentelemetry/api"
import { Effect, Schedule, type Scope } from "effect"
import type { FinishedSpan, SpanSink } from "./GatewayTracer.ts"
import type { TracingSettings } from "./OtelEnv.ts"
import { SpanBatcher } from "./SpanBatcher.ts"

/** The instrumentation scope the gateway's spans are reported under. */
export const SCOPE_NAME = "iot-gateway"

/** How long the flush at shutdown may take (a collector that is down must not hold the exit). */
const SHUTDOWN_TIMEOUT_MS = 3_000

/** How often dropped spans and failed exports are reported (one line each, when there were any). */
const REPORT_EVERY = "10 seconds"

/** An OTLP trace exporter taking the gateway's spans: `done(ok)` once per batch. */
interface SpanExporter {
  readonly export: (spans: Array<FinishedSpan>, done: (ok: boolean) => void) => void
  readonly shutdown: () => Promise<void>
}

/** The exporter of `settings.protocol` (OTLP/HTTP; the `OTEL_EXPORTER_OTLP_*` variables read by OpenTelemetry). */
const makeExporter = async (settings: TracingSettings): Promise<SpanExporter> => {
  const [{ defaultResource, resourceFromAttributes }, { toReadableSpan }] = await Promise.all([
    import("@opentelemetry/resources"),
    import("./ReadableSpans.ts")
  ])
  const resource = defaultResource().merge(resourceFromAttributes(settings.resource))
  const scope = { name: SCOPE_NAME }
  if (settings.protocol === "http/json") {
    const { OTLPTraceExporter } = await import("@opentelemetry/exporter-trace-otlp-http")
    const exporter = new OTLPTraceExporter()
    return {
      export: (spans, done) => exporter.export(spans.map((s) => toReadableSpan(s, resource, scope)), (r) => done(r.code === 0)),
      shutdown: () => exporter.shutdown()
    }
  }
  const [{ OTLPExporterBase }, { convertLegacyHttpOptions, createOtlpHttpExportDelegate }, { ProtobufTraceSerializer }, { makeProtobufEncoder }] =
    await Promise.all([
      import("@opentelemetry/otlp-exporter-base"),
      import("@opentelemetry/otlp-exporter-base/node-http"),
      import("@opentelemetry/otlp-transformer"),
      import("./OtlpProtobuf.ts")
    ])
  const encode = makeProtobufEncoder(resource.attributes as Attributes, scope)
  const serializer = {
    serializeRequest: (spans: Array<FinishedSpan>) => encode(spans),
    deserializeResponse: (data: Uint8Array) => ProtobufTraceSerializer.deserializeResponse(data)
  }
  const metrics = { name: "span" as const, countItems: (spans: Array<FinishedSpan>) => spans.length }
  const options = convertLegacyHttpOptions({}, "TRACES", "v1/traces", { "Content-Type": "application/x-protobuf" })
  const exporter = new OTLPExporterBase(createOtlpHttpExportDelegate(options, serializer, "otlp_http_span_exporter", metrics, undefined))
  return {
    export: (spans, done) => exporter.export(spans, (r) => done(r.code === 0)),
    shutdown: () => exporter.shutdown()
  }
}

/**
 * The export of `settings`, for the life of the scope: at the scope's end what is queued is
 * exported (within {@link SHUTDOWN_TIMEOUT_MS}) and the exporter shut down.
 */
export const makeSpanSink = (settings: TracingSettings): Effect.Effect<SpanSink, never, Scope.Scope> =>
  Effect.gen(function*() {
    const exporter = yield* Effect.promise(() => makeExporter(settings))
    const batcher = new SpanBatcher<FinishedSpan>(settings.batch, exporter.export)
    const report = Effect.suspend(() => {
      const { dropped, failed } = batcher.takeCounts()
      return Effect.all([
        dropped === 0 ? Effect.void : Effect.logWarning("trace spans dropped: the export queue was full (OTEL_BSP_MAX_QUEUE_SIZE)").pipe(
          Effect.annotateLogs({ spans: dropped, maxQueueSize: settings.batch.maxQueueSize })
        ),
        failed === 0 ? Effect.void : Effect.logWarning("trace export failed").pipe(Effect.annotateLogs({ spans: failed }))
      ], { discard: true })
    })
    // at the end: what is queued is exported (bounded in time), then what was lost is said
    yield* Effect.addFinalizer(() =>
      Effect.promise(() => batcher.shutdown().finally(() => exporter.shutdown().catch(() => undefined))).pipe(
        Effect.timeoutOption(SHUTDOWN_TIMEOUT_MS),
        Effect.andThen(report)
      )
    )
    yield* report.pipe(Effect.repeat(Schedule.spaced(REPORT_EVERY)), Effect.forkScoped)
    return { ended: (span) => batcher.add(span) } satisfies SpanSink
  })
