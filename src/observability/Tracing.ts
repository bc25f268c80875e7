/**
 * Traces over OTLP (Jaeger reads OTLP) with `@effect/opentelemetry`, switched on by the standard
 * `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`); sampling follows the
 * standard `OTEL_TRACES_SAMPLER` variables. Each message gets an ingest span continuing the
 * device's `trace`, started by a plain function call (no Effect per message) and ended at its
 * answer; with tracing off, {@link MessageTracer} does nothing and costs one branch.
 */
import { Context, Effect, Layer, Option, Tracer } from "effect"
import { isTraceparent, type Kind } from "../domain/Frames.ts"

/** A started ingest span and the traceparent that names it downstream. */
export interface IngestSpan {
  readonly span: Tracer.Span
  readonly traceparent: string
}

/** Starts per-message ingest spans when tracing is on. */
export interface MessageTracerShape {
  readonly enabled: boolean
  /** Starts the span of one message, continuing `trace` when it is a valid traceparent. */
  readonly start: (kind: Kind, device: string, seq: number, trace: string | undefined) => IngestSpan | undefined
}

/** The per-message tracer service. */
export class MessageTracer extends Context.Service<MessageTracer, MessageTracerShape>()("gateway/MessageTracer") {
  /** Tracing off: no spans, the device's traceparent passes through. */
  static readonly disabled = Layer.succeed(MessageTracer, MessageTracer.of({ enabled: false, start: () => undefined }))

  /** Tracing on, with the current Effect tracer (the OTLP one in production). */
  static readonly enabled = Layer.effect(
    MessageTracer,
    Effect.map(Effect.tracer, (tracer) =>
      MessageTracer.of({
        enabled: true,
        start: (kind, device, seq, trace) => {
          const parent = trace !== undefined && isTraceparent(trace)
            ? Option.some(Tracer.externalSpan({
              traceId: trace.slice(3, 35),
              spanId: trace.slice(36, 52),
              sampled: trace.endsWith("1")
            }))
            : Option.none()
          const span = tracer.span({
            name: `ingest ${kind}`,
            parent,
            annotations: Context.empty(),
            links: [],
            startTime: process.hrtime.bigint(),
            kind: "server",
            root: Option.isNone(parent),
            sampled: true
          })
          span.attribute("device.id", device)
          span.attribute("message.seq", seq)
          return { span, traceparent: `00-${span.traceId}-${span.spanId}-${span.sampled ? "01" : "00"}` }
        }
      }))
  )
}

/** The OTLP endpoint from the standard variables, if tracing is configured. */
export const otlpEndpoint = (env: NodeJS.ProcessEnv = process.env): string | undefined =>
  env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] ?? env["OTEL_EXPORTER_OTLP_ENDPOINT"]

/**
 * The OpenTelemetry SDK exporting spans over OTLP/HTTP (the exporter reads the OTEL_* variables).
 * Loaded on demand: the SDK costs ~40 MB of memory, which a gateway without tracing never pays.
 */
export const otlpLayer = (serviceName: string) =>
  Layer.unwrap(Effect.promise(async () => {
    const [NodeSdk, { OTLPTraceExporter }, { BatchSpanProcessor }] = await Promise.all([
      import("@effect/opentelemetry/NodeSdk"),
      import("@opentelemetry/exporter-trace-otlp-http"),
      import("@opentelemetry/sdk-trace-base")
    ])
    return NodeSdk.layer(() => ({
      resource: { serviceName: process.env["OTEL_SERVICE_NAME"] ?? serviceName },
      spanProcessor: new BatchSpanProcessor(new OTLPTraceExporter())
    }))
  }))

/** Tracing as configured by the environment: OTLP + per-message spans, or nothing. */
export const layerFromEnv = (serviceName: string) =>
  otlpEndpoint() === undefined
    ? MessageTracer.disabled
    : MessageTracer.enabled.pipe(Layer.provideMerge(otlpLayer(serviceName)))
