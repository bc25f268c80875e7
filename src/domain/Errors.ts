/**
 * The gateway's error taxonomy (DESIGN.md): one tagged error class per class of failure, each
 * carrying the wire code that PROTOCOL.md names for it. Stages declare which of these they can
 * fail with, so the type checker shows how every stage can fail.
 */
import { Data } from "effect"

/** Wire codes of the `error` frame (fatal for the connection). */
export type ErrorCode = "protocol" | "frame_too_large" | "auth" | "busy" | "timeout" | "replaced" | "shutdown"

/** Wire codes of the `nack` frame (one message not committed). */
export type NackCode = "invalid" | "forbidden" | "rate_limited" | "shed" | "unavailable"

/** Bad framing, not JSON, frame too large, hello missing: answered with `error`, then close. */
export class ProtocolError extends Data.TaggedError("ProtocolError")<{
  readonly code: "protocol" | "frame_too_large" | "timeout"
  readonly message: string
}> {}

/** Bad credential (fatal, `error auth`) or a kind the device may not send (`nack forbidden`). */
export class AuthError extends Data.TaggedError("AuthError")<{
  /** `unverifiable`: the gateway could not check the credential now (its keys are unavailable): not the device's fault. */
  readonly reason: "credential" | "forbidden" | "unverifiable"
  readonly message: string
}> {}

/** A data frame whose body fails its schema: `nack invalid`, the connection lives on. */
export class ValidationError extends Data.TaggedError("ValidationError")<{
  readonly message: string
}> {}

/** Shed, busy or rate limited: the gateway protects itself. */
export class OverloadError extends Data.TaggedError("OverloadError")<{
  readonly reason: "shed" | "busy" | "rate_limited"
  readonly retryAfterMs?: number
}> {}

/** The sink is unreachable, timed out or busy: retried with backoff, then `nack unavailable`. */
export class TransientUpstreamError extends Data.TaggedError("TransientUpstreamError")<{
  readonly sink: string
  readonly message: string
  readonly cause?: unknown
}> {
  /** Transient errors are worth another try. */
  get isRetryable(): boolean {
    return true
  }
}

/** The sink rejects the write itself (constraint, schema, size): no retry, dead letter, nack. */
export class PermanentPersistenceError extends Data.TaggedError("PermanentPersistenceError")<{
  readonly sink: string
  readonly message: string
  readonly cause?: unknown
}> {
  /** Permanent errors never succeed on retry. */
  get isRetryable(): boolean {
    return false
  }
}

