/**
 * Span events for what happens to a write on its way to a sink (a retry, a breaker transition,
 * an outbox spill): recorded on the span current when it happens (the `sink.write` span of the
 * write), so a trace shows why a message took long or went to the outbox. Outside a span, or
 * on a span that is not sampled, nothing is recorded.
 */
import { Clock, Effect, Option } from "effect"

/** Adds the event `name` with `attributes` to the current span, if there is one. */
export const spanEvent = (name: string, attributes: Record<string, unknown>): Effect.Effect<void> =>
  Effect.flatMap(Effect.option(Effect.currentSpan), (span) =>
    Option.isNone(span)
      ? Effect.void
      : Effect.flatMap(Clock.currentTimeNanos, (now) => Effect.sync(() => span.value.event(name, now, attributes))))
