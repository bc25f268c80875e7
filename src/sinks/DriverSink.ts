/**
 * The gateway's {@link Sink} service made of a {@link SinkDriver} (the contract of issue
 * "Downstream"): the driver takes the messages; the local SQLite store keeps the dead letters
 * (the driver's own rejections included, written before the batch is answered). Until the
 * device-state service exists, a remote sink does not know a device's last committed seq:
 * `welcome.lastSeq` is null and devices resend from their own records (the sink's message id
 * makes a resend a duplicate, not a second copy).
 */
import { Effect } from "effect"
import type { Envelope } from "../domain/Envelope.ts"
import { PermanentPersistenceError, TransientUpstreamError } from "../domain/Errors.ts"
import { type BatchResult, MessageOutcome, type SinkDriver, type SinkError } from "./Contract.ts"
import type { SinkShape, WriteResult } from "./Sink.ts"

/** The Sink service writing through `driver`, with `local` keeping the dead letters. */
export const fromDriver = (driver: SinkDriver, local: SinkShape): SinkShape => ({
  name: driver.name,
  write: (batch) =>
    driver.write(batch).pipe(
      Effect.mapError(toTaxonomy),
      Effect.flatMap((result) => deadLetterRejections(local, batch, result).pipe(Effect.as(toWriteResult(result))))
    ),
  deadLetter: local.deadLetter,
  lastSeq: () => Effect.succeed(null),
  isHealthy: Effect.map(driver.health, (h) => h.ready),
  unavailableReason: Effect.map(driver.health, (h) => (h.ready ? undefined : `${h.reason}: ${h.message}`))
})

/** A whole-batch failure in the error taxonomy: retryable → transient, else permanent. */
const toTaxonomy = (e: SinkError): TransientUpstreamError | PermanentPersistenceError =>
  e.retryable
    ? new TransientUpstreamError({ sink: e.sink, message: `${e.reason}: ${e.message}`, cause: e })
    : new PermanentPersistenceError({ sink: e.sink, message: `${e.reason}: ${e.message}` })

/** The driver's outcomes as the commit stage reads them: {@link MessageOutcome} and Outcome are the same codes (tested). */
const toWriteResult = (result: BatchResult): WriteResult => ({ outcomes: result.outcomes, rejections: result.reasons })

/** Stores the dead letters of the messages the driver refused for good, before they are answered. */
const deadLetterRejections = (local: SinkShape, batch: ReadonlyArray<Envelope>, result: BatchResult) => {
  const records: Array<{ envelope: Envelope; reason: string }> = []
  for (let i = 0; i < result.outcomes.length; i++) {
    if (result.outcomes[i] === MessageOutcome.Rejected) records.push({ envelope: batch[i]!, reason: `sink: ${result.reasons.get(i) ?? "rejected"}` })
  }
  return records.length === 0 ? Effect.void : local.deadLetter(records)
}
