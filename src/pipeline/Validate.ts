/**
 * The validate stage: a parsed data frame becomes a normalized {@link Envelope}, or is
 * rejected with a `ValidationError` (`nack invalid`, the connection lives on). It runs at
 * ingress, on the data frames of one socket read, before the lanes.
 */
import type { Envelope } from "../domain/Envelope.ts"
import { ValidationError } from "../domain/Errors.ts"
import { decodeDataFrame, isTraceparent, type Kind, toEpochMs } from "../domain/Frames.ts"
import * as Stage from "./Stage.ts"

/** A data frame as a connection hands it over: JSON parsed, seq checked, nothing else yet. */
export interface RawData {
  readonly device: string
  readonly epoch: number
  readonly kind: Kind
  readonly seq: number
  /** The parsed frame, still unvalidated. */
  readonly frame: object
  /** Arrival, epoch milliseconds. */
  readonly receivedAt: number
  /** The gateway instance id (GATEWAY_ID). */
  readonly gateway: string
}

/** Validates against the frame Schemas (PROTOCOL.md) and normalizes time to epoch ms. */
export const validate: Stage.Stage<RawData, Envelope, ValidationError> = Stage.map("validate", (raw: RawData) => {
  const decoded = decodeDataFrame(raw.kind, raw.frame)
  if (decoded._tag === "Failure") return Stage.reject(new ValidationError({ message: decoded.failure }))
  const f = decoded.success
  // decodeDataFrame checked the body against the schema of `raw.kind`, so kind and body agree
  return {
    device: raw.device,
    epoch: raw.epoch,
    seq: raw.seq,
    kind: raw.kind,
    deviceTs: toEpochMs(f.ts),
    receivedAt: raw.receivedAt,
    gateway: raw.gateway,
    // only a well-formed traceparent is kept: anything else is ignored (W3C), never stored
    traceparent: f.trace !== undefined && isTraceparent(f.trace) ? f.trace : null,
    body: f.body
  } as Envelope
})
