/**
 * Maps what the NATS client throws (nats.js v3: `@nats-io/nats-core` errors, JetStream API
 * errors with their `err_code`, Node socket and TLS errors) onto the sink contract: for one
 * published message, Rejected (no retry can change it) or Unavailable (may be retried), and the
 * {@link SinkFailure} the error means for a whole batch, for readiness and for a start.
 *
 * Permanent (Rejected): the payload too large for the connection (`max_payload`) or the stream
 * (10054, headers 10097), a subject that no stream takes (no responders for a subject outside
 * the stream's subjects), a subject taken by another stream (10060, we publish with
 * `Nats-Expected-Stream`), a sealed stream (10109), an invalid subject or request (10003).
 * Everything else is transient, as DESIGN.md asks: timeouts, no responders for a subject the
 * stream takes (leader election, JetStream still starting), "message id in process" (10158),
 * storage failures (10077, 10047, 10028, 10023: disk or limits full, free again later),
 * cluster trouble (10008, 10009, 10118), too many requests (10167), and unknown API errors.
 * Connection trouble (closed, refused, reset, disconnected mid-request) is `unreachable`;
 * authentication, permission and TLS errors and JetStream switched off (10039, 10076) are
 * `misconfigured` (per message still Unavailable: fixing the server's configuration lets
 * the resend through).
 */
import { errors as natsErrors } from "@nats-io/transport-node"
import { JetStreamApiError } from "@nats-io/jetstream"
import type { SinkFailure } from "../Contract.ts"
import { oneLine } from "./NatsStartError.ts"

/** JetStream API error codes (nats-server `errors.json`) the classifier knows by number. */
export const JsCode = {
  BadRequest: 10003,
  ClusterNotAvailable: 10008,
  ClusterNotLeader: 10009,
  InsufficientResources: 10023,
  MemoryResourcesExceeded: 10028,
  NotEnabledForAccount: 10039,
  StorageResourcesExceeded: 10047,
  MessageExceedsMaximum: 10054,
  StreamNotFound: 10059,
  StreamNotMatch: 10060,
  NotEnabled: 10076,
  StoreFailed: 10077,
  HeaderExceedsMaximum: 10097,
  StreamSealed: 10109,
  StreamOffline: 10118,
  DuplicateMessageInProcess: 10158,
  TooManyRequests: 10167
} as const

const PERMANENT_CODES: ReadonlySet<number> = new Set([
  JsCode.BadRequest, JsCode.MessageExceedsMaximum, JsCode.HeaderExceedsMaximum, JsCode.StreamNotMatch, JsCode.StreamSealed
])
const MISCONFIGURED_CODES: ReadonlySet<number> = new Set([
  JsCode.NotEnabledForAccount, JsCode.NotEnabled, JsCode.StreamNotFound
])

/** What one error means. */
export type NatsErrorClass =
  /** This message can never be taken (dead-letter it). */
  | { readonly outcome: "rejected"; readonly message: string }
  /**
   * Not taken this time. `failure` is what it means for the batch and for readiness;
   * `connection` is true when the error is about the connection, not the message.
   */
  | { readonly outcome: "unavailable"; readonly failure: SinkFailure; readonly connection: boolean; readonly message: string }

/** What the classifier may know about the publish that failed. */
export interface PublishContext {
  /** The subject published to. */
  readonly subject?: string
  /** Whether the stream's subjects take that subject (false: no responders means no stream for it). */
  readonly subjectInStream?: boolean
}

const rejected = (message: string): NatsErrorClass => ({ outcome: "rejected", message: oneLine(message) })
const unavailable = (failure: SinkFailure, connection: boolean, message: string): NatsErrorClass =>
  ({ outcome: "unavailable", failure, connection, message: oneLine(message) })

/** The error and its causes, outermost first (at most 6). */
const chain = (error: unknown): Array<unknown> => {
  const out: Array<unknown> = []
  let e: unknown = error
  while (e !== undefined && e !== null && out.length < 6) {
    out.push(e)
    e = e instanceof Error ? e.cause : undefined
  }
  return out
}

const messageOf = (e: unknown): string => e instanceof Error ? e.message : String(e)

/** Node's error code (`ECONNREFUSED`, `ERR_TLS_CERT_ALTNAME_INVALID`, ...), if any. */
const nodeCode = (e: unknown): string | undefined => {
  if (typeof e !== "object" || e === null || !("code" in e)) return undefined
  const code = (e as { readonly code: unknown }).code
  return typeof code === "string" ? code : undefined
}

const UNREACHABLE_NODE_CODES: ReadonlySet<string> = new Set([
  "ECONNREFUSED", "ECONNRESET", "ENOTFOUND", "EAI_AGAIN", "EHOSTUNREACH", "ENETUNREACH", "EPIPE", "ETIMEDOUT", "ECONNABORTED"
])
const TLS_CODE = /^(ERR_TLS_|ERR_SSL_|UNABLE_TO_|CERT_|DEPTH_ZERO|SELF_SIGNED|ERR_OSSL)/

/** The JetStream API error of `error` or its causes. */
const apiErrorOf = (error: unknown): { readonly code: number; readonly status: number; readonly description: string } | undefined => {
  for (const e of chain(error)) {
    if (e instanceof JetStreamApiError) return { code: e.code, status: e.status, description: e.message }
  }
  return undefined
}

/** Classifies an error of a JetStream publish (or any JetStream API call). */
export const classifyNatsError = (error: unknown, context: PublishContext = {}): NatsErrorClass => {
  const api = apiErrorOf(error)
  if (api !== undefined) return classifyApiError(api.code, api.status, api.description)
  const all = chain(error)
  for (const e of all) {
    if (e instanceof natsErrors.NoRespondersError) {
      const subject = context.subject ?? e.subject
      return context.subjectInStream === false
        ? rejected(`no stream takes subject ${subject} (no responders)`)
        : unavailable("unavailable", false, `no responders for ${subject}: JetStream or the stream leader not available now`)
    }
  }
  for (const e of all) {
    if (e instanceof natsErrors.TimeoutError) return unavailable("timeout", true, "no PubAck in time (timeout)")
    if (e instanceof natsErrors.PermissionViolationError) {
      return unavailable("misconfigured", false, `permission denied: ${e.message}`)
    }
    if (e instanceof natsErrors.AuthorizationError || e instanceof natsErrors.UserAuthenticationExpiredError) {
      return unavailable("misconfigured", true, `authentication failed: ${e.message}`)
    }
    if (e instanceof natsErrors.ClosedConnectionError || e instanceof natsErrors.DrainingConnectionError) {
      return unavailable("unreachable", true, `connection to NATS ${e instanceof natsErrors.DrainingConnectionError ? "draining" : "closed"}`)
    }
  }
  const first = all[0]
  if (first instanceof natsErrors.InvalidArgumentError) {
    if (/max_payload/.test(first.message)) return rejected(`message larger than the server's max_payload: ${first.message}`)
    if (/tls/i.test(first.message)) return unavailable("misconfigured", true, first.message)
    return rejected(first.message)
  }
  if (first instanceof natsErrors.InvalidSubjectError) return rejected(first.message)
  for (const e of all) {
    const code = nodeCode(e)
    if (code !== undefined && TLS_CODE.test(code)) return unavailable("misconfigured", true, `TLS: ${messageOf(e)} (${code})`)
    if (code !== undefined && UNREACHABLE_NODE_CODES.has(code)) return unavailable("unreachable", true, `${messageOf(e)} (${code})`)
  }
  for (const e of all) {
    if (e instanceof natsErrors.RequestError && /connection (closed|disconnected)/.test(e.message)) {
      return unavailable("unreachable", true, e.message)
    }
    if (e instanceof natsErrors.ConnectionError) return unavailable("unreachable", true, e.message)
    if (e instanceof natsErrors.ProtocolError) {
      return /tls|secure/i.test(e.message)
        ? unavailable("misconfigured", true, `TLS: ${e.message}`)
        : unavailable("unknown", true, `protocol error: ${e.message}`)
    }
  }
  return unavailable("unknown", false, messageOf(first))
}

/** Classifies a JetStream API error by its `err_code` (and HTTP-like status for unknown codes). */
export const classifyApiError = (code: number, status: number, description: string): NatsErrorClass => {
  const text = `${description} (${code})`
  if (PERMANENT_CODES.has(code)) return rejected(text)
  if (MISCONFIGURED_CODES.has(code)) return unavailable("misconfigured", false, text)
  if (status === 408) return unavailable("timeout", false, text)
  return unavailable(code === 0 && status === 0 ? "unknown" : "unavailable", false, text)
}

/** Retryable reasons are the ones a start may wait out (not ready), the others stop it. */
export const stopsStart = (c: NatsErrorClass): boolean =>
  c.outcome === "unavailable" && (c.failure === "misconfigured" || c.failure === "corrupt")
