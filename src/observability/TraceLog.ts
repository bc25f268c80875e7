/**
 * The JSON log line (DESIGN.md: one JSON object per line on stdout when not a terminal), as
 * Effect's `Logger.consoleJson` writes it, plus the trace context when tracing is on and a span
 * is current:
 * `trace_id`, `span_id` (the span of the work that logged) and `trace_flags` (`01` when it is
 * sampled, i.e. exported), at the top level of the line, so a log search and a trace view can
 * be joined on them. Lines logged outside any span are unchanged.
 */
import { Context, Formatter, Logger, Tracer } from "effect"

/** A structured log entry, with the trace context when a span was current. */
export type TracedEntry = ReturnType<typeof Logger.formatStructured.log> & {
  readonly trace_id?: string
  readonly span_id?: string
  readonly trace_flags?: "00" | "01"
}

/** Effect's structured entry, with `trace_id`, `span_id` and `trace_flags` when the fiber is inside a span. */
export const formatStructuredTraced: Logger.Logger<unknown, TracedEntry> = Logger.make((options) => {
  const entry = Logger.formatStructured.log(options)
  // with tracing off, Effect's own (native) tracer still makes spans: ids nothing exports
  if (options.fiber.getRef(Tracer.Tracer) === Tracer.nativeTracer) return entry
  const span = Context.getOrUndefined(options.fiber.context, Tracer.ParentSpan)
  if (span === undefined || span.traceId === "noop") return entry
  return { ...entry, trace_id: span.traceId, span_id: span.spanId, trace_flags: span.sampled ? "01" : "00" }
})

/** One JSON object per line on the console, with the trace context (see the module). */
export const consoleJson: Logger.Logger<unknown, void> = Logger.withConsoleLog(
  Logger.map(formatStructuredTraced, (entry) => Formatter.formatJson(entry))
)
