/**
 * How a message that stopped in the pipeline is answered on the wire (PROTOCOL.md): a
 * settlement is an ack, a rejection is the nack of its error class (DESIGN.md's taxonomy
 * table). The one place where taxonomy errors become nack codes.
 */
import { ackFrame, type Kind, nackFrame } from "../domain/Frames.ts"
import * as Metrics from "../observability/Metrics.ts"
import { Rejected, type Settled, type StageDefect, type StageError } from "./Stage.ts"

/** How long a device should wait before resending after an upstream failure. */
export const UNAVAILABLE_RETRY_AFTER_MS = 1_000
/** How long a device should wait before resending after a stage's bug (a deploy may fix it). */
const DEFECT_RETRY_AFTER_MS = 5_000

/** The answer frame of a stopped message, and its outcome label. */
export interface Answer {
  readonly frame: string
  readonly outcome: Metrics.MessageOutcome
}

/** The answer to message `seq` (of `kind`) that stopped with `stop`. */
export const answerOf = (seq: number, stop: Settled | Rejected<StageError | StageDefect>, kind: Kind): Answer => {
  if (!(stop instanceof Rejected)) {
    return stop.as === "duplicate"
      ? { frame: ackFrame(seq, true), outcome: "duplicate" }
      : { frame: ackFrame(seq, false), outcome: stop.as }
  }
  const e = stop.error
  switch (e._tag) {
    case "ValidationError":
      return { frame: nackFrame(seq, "invalid", e.message), outcome: "invalid" }
    case "AuthError":
      return { frame: nackFrame(seq, "forbidden", e.message), outcome: "forbidden" }
    case "OverloadError":
      // events are never shed (PROTOCOL.md): an event a stage sheds is nacked unavailable (retry)
      if (e.reason === "shed" && kind === "telemetry") {
        return { frame: nackFrame(seq, "shed", "shed under overload", e.retryAfterMs), outcome: "shed" }
      }
      return e.reason === "shed"
        ? {
          frame: nackFrame(seq, "unavailable", "overloaded: resend later", e.retryAfterMs ?? UNAVAILABLE_RETRY_AFTER_MS),
          outcome: "unavailable"
        }
        : {
          frame: nackFrame(seq, "rate_limited", "rate limited", e.retryAfterMs ?? UNAVAILABLE_RETRY_AFTER_MS),
          outcome: "rate_limited"
        }
    case "TransientUpstreamError":
      return {
        frame: nackFrame(seq, "unavailable", `${e.sink} unavailable: ${e.message}`, UNAVAILABLE_RETRY_AFTER_MS),
        outcome: "unavailable"
      }
    case "PermanentPersistenceError":
      return { frame: nackFrame(seq, "invalid", `rejected by ${e.sink}: ${e.message}`), outcome: "rejected" }
    case "StageDefect":
      return { frame: nackFrame(seq, "unavailable", e.message, DEFECT_RETRY_AFTER_MS), outcome: "unavailable" }
    default:
      // only reachable past the types (plain JS, casts): answered like a stage's bug
      return {
        frame: nackFrame(seq, "unavailable", "a stage rejected the message with an unknown error", DEFECT_RETRY_AFTER_MS),
        outcome: "unavailable"
      }
  }
}

/**
 * Message and error counts of a chunk, recorded once per chunk (not once per message). Every
 * answered message is counted by kind and outcome; every rejection by its error class.
 */
export class Tally {
  private readonly telemetry: Partial<Record<Metrics.MessageOutcome, number>> = {}
  private readonly event: Partial<Record<Metrics.MessageOutcome, number>> = {}
  private readonly errors: Partial<Record<Metrics.ErrorClass, number>> = {}

  /** Counts one message of `kind` with `outcome`. */
  add(kind: Kind, outcome: Metrics.MessageOutcome): void {
    const counts = kind === "telemetry" ? this.telemetry : this.event
    counts[outcome] = (counts[outcome] ?? 0) + 1
  }

  /** Counts one rejection by its error class. */
  addError(stop: Settled | Rejected<StageError | StageDefect>): void {
    if (stop instanceof Rejected) this.errors[stop.error._tag] = (this.errors[stop.error._tag] ?? 0) + 1
  }

  /** Records the counts into the metrics. */
  record(): void {
    for (const [outcome, n] of Object.entries(this.telemetry)) {
      Metrics.record(Metrics.messages("telemetry", outcome as Metrics.MessageOutcome), n)
    }
    for (const [outcome, n] of Object.entries(this.event)) {
      Metrics.record(Metrics.messages("event", outcome as Metrics.MessageOutcome), n)
    }
    for (const [errorClass, n] of Object.entries(this.errors)) Metrics.record(Metrics.errors(errorClass as Metrics.ErrorClass), n)
  }
}
