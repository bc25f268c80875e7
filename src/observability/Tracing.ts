/**
 * Traces over OTLP (Jaeger reads OTLP), configured by the standard `OTEL_*` variables
 * ({@link readTracingSettings}: endpoint, protocol, sampler, batch processor, resource). Each
 * message's sampling is decided once, by a plain call, before any span work
 * ({@link GatewayTracer}): a sampled message gets an `ingest <kind>` span continuing the device's
 * `trace`, ended at its answer with its outcome, and its stored traceparent names that span; a
 * message that is not sampled gets no span at all, and keeps the device's traceparent unchanged
 * (none when it sent none). With tracing off, {@link MessageTracer} does nothing and costs one branch.
 */
import { Context, Effect, Layer, Tracer } from "effect"
import type { Kind } from "../domain/Frames.ts"
import { makeGatewayTracer, type MessageSpan } from "./GatewayTracer.ts"
import { readTracingSettings, TracingConfigError, type TracingSettings } from "./OtelEnv.ts"
import { makeSpanSink } from "./SpanExport.ts"

export { MessageSpan } from "./GatewayTracer.ts"
export { TracingConfigError } from "./OtelEnv.ts"

/** A started ingest span and the traceparent that names it downstream. */
export interface IngestSpan {
  readonly span: MessageSpan
  readonly traceparent: string
}

/** Starts per-message ingest spans when tracing is on. */
export interface MessageTracerShape {
  readonly enabled: boolean
  /**
   * Starts the span of one message when the sampler says so, continuing `trace` (a valid
   * traceparent, or undefined), from `at` (the `performance.now()` reading of the read that
   * brought it; now when omitted); undefined when the message is not sampled.
   */
  readonly start: (kind: Kind, device: string, seq: number, trace: string | undefined, at?: number) => IngestSpan | undefined
}

/** The per-message tracer service. */
export class MessageTracer extends Context.Service<MessageTracer, MessageTracerShape>()("gateway/MessageTracer") {
  /** Tracing off: no spans, the device's traceparent passes through. */
  static readonly disabled = Layer.succeed(MessageTracer, MessageTracer.of({ enabled: false, start: () => undefined }))
}

/**
 * Tracing with `settings`: the OTLP export for the life of the layer (flushed when it closes),
 * the gateway's tracer as Effect's tracer (for `withSpan` in the layers it is provided to), and
 * the per-message start.
 */
export const layer = (settings: TracingSettings): Layer.Layer<MessageTracer> =>
  Layer.unwrap(Effect.map(makeSpanSink(settings), (sink) => {
    const { tracer, startMessage } = makeGatewayTracer(settings.sampler, sink)
    return Layer.merge(
      Layer.succeed(Tracer.Tracer, tracer),
      Layer.succeed(MessageTracer, MessageTracer.of({ enabled: true, start: startMessage }))
    )
  }))

/**
 * Tracing as configured by the environment (read when the layer is built): OTLP + per-message
 * spans, or nothing; a variable that is set but wrong fails with a {@link TracingConfigError}.
 */
export const layerFromEnv = (serviceName: string): Layer.Layer<MessageTracer, TracingConfigError> =>
  Layer.unwrap(Effect.map(
    Effect.try({
      try: () => readTracingSettings(serviceName),
      catch: (e) => (e instanceof TracingConfigError ? e : new TracingConfigError({ message: String(e) }))
    }),
    (settings) => (settings === undefined ? MessageTracer.disabled : layer(settings))
  ))
