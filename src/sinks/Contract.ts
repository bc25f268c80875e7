/**
 * The sink driver contract (issue "Downstream"): what every driver (SQLite, NATS JetStream,
 * PostgreSQL) implements, and nothing else. A batch of envelopes in, one outcome per message
 * out; a failure of one message never fails its batch. A failure of the whole batch is one
 * error type, {@link SinkError}, whose {@link SinkFailure reason} says whether retrying may help;
 * each driver maps its own codes (SQLite result codes, PostgreSQL SQLSTATE, JetStream API error
 * codes, timeouts, connection loss) onto these reasons with a classifier of its own. Retries,
 * the circuit breaker and the outbox wrap any driver; the highest committed seq per device and
 * the dead letters are services of their own, not a sink's.
 */
import { Data, type Effect } from "effect"
import type { Envelope } from "../domain/Envelope.ts"

/** Per-message outcome codes, a byte each (no object per message). */
export const MessageOutcome = {
  /** Written now, durably (as the driver defines durable: see its module). */
  Committed: 0,
  /** Already there: committed before (the key, or JetStream's message id, was seen). */
  Duplicate: 1,
  /** Refused for good (too large, a constraint, a schema): dead-lettered, nacked, never retried. */
  Rejected: 2,
  /** Not taken this time (the route or the server could not take it): may be retried. */
  Unavailable: 3
} as const
export type MessageOutcome = (typeof MessageOutcome)[keyof typeof MessageOutcome]

/** The result of a batch: `outcomes[i]` is the outcome of `batch[i]`; `reasons` explains every Rejected or Unavailable one. */
export interface BatchResult {
  readonly outcomes: Uint8Array
  readonly reasons: ReadonlyMap<number, string>
}

/** Why a sink failed a whole batch (or its health check). */
export type SinkFailure =
  /** Cannot reach the server: refused, reset, DNS, the connection lost mid-batch. Retryable. */
  | "unreachable"
  /** No answer in time (a hung or blackholed server, a slow commit). Retryable. */
  | "timeout"
  /** Reached, but cannot take writes now: leader election, no quorum, shutting down, overloaded, disk full. Retryable. */
  | "unavailable"
  /** The configuration is wrong: missing stream or table, bad credentials, no permission. Not retryable. */
  | "misconfigured"
  /** The store is damaged or not the one it was (a corrupt file, a file deleted or moved). Not retryable. */
  | "corrupt"
  /** A bug or a state the driver does not know. Not retryable. */
  | "unknown"

/** Reasons worth a retry. */
export const isRetryable = (reason: SinkFailure): boolean =>
  reason === "unreachable" || reason === "timeout" || reason === "unavailable"

/** A whole batch (or health check) failed: the one error type at the sink boundary. */
export class SinkError extends Data.TaggedError("SinkError")<{
  /** The driver's name (`sqlite`, `nats`, `postgres`). */
  readonly sink: string
  readonly reason: SinkFailure
  readonly message: string
  readonly cause?: unknown
}> {
  /** True when retrying may succeed. */
  get retryable(): boolean {
    return isRetryable(this.reason)
  }
}

/** Whether a sink can take writes now, and why not. */
export type SinkHealth =
  | { readonly ready: true }
  | { readonly ready: false; readonly reason: SinkFailure; readonly message: string }

/** What every sink driver implements. */
export interface SinkDriver {
  /** Short driver name for metrics, logs and spans (`sqlite`, `nats`, `postgres`). */
  readonly name: string
  /**
   * Writes a batch; succeeds with one outcome per message once every Committed one is durable.
   * Fails only when no message of the batch could be decided.
   */
  readonly write: (batch: ReadonlyArray<Envelope>) => Effect.Effect<BatchResult, SinkError>
  /** Whether the sink can take writes now (readiness); follows real writes, not only the connection. */
  readonly health: Effect.Effect<SinkHealth>
}

/** The message id of an envelope in every sink: `<device>:<epoch>:<seq>` (JetStream's `Nats-Msg-Id`). */
export const messageId = (e: { readonly device: string; readonly epoch: number; readonly seq: number }): string =>
  `${e.device}:${e.epoch}:${e.seq}`
