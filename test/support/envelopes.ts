/**
 * Test support: envelopes as the ingest stages make them, for testing stages without a gateway.
 */
import type { EventEnvelope, TelemetryEnvelope } from "../../src/domain/Envelope.ts"

/** The normalized fields of message `seq` of `device` (epoch 1, times derived from seq). */
const header = (device: string, seq: number) => ({
  device,
  epoch: 1,
  seq,
  deviceTs: 1_700_000_000_000 + seq,
  receivedAt: 1_700_000_000_500 + seq,
  gateway: "gw-test",
  traceparent: null
})

/** A telemetry envelope. */
export const telemetryEnvelope = (
  device: string,
  seq: number,
  metrics: Record<string, number> = { temp: 20 },
  tags?: Record<string, string>
): TelemetryEnvelope => ({
  ...header(device, seq),
  kind: "telemetry",
  body: tags === undefined ? { metrics } : { metrics, tags }
})

/** An event envelope. */
export const eventEnvelope = (device: string, seq: number, name = "boot"): EventEnvelope => ({
  ...header(device, seq),
  kind: "event",
  body: { name }
})

/** `n` telemetry envelopes of `device` in `epoch`, seqs `from` … `from + n - 1`. */
export const telemetryIn = (device: string, epoch: number, from: number, n: number): Array<TelemetryEnvelope> =>
  Array.from({ length: n }, (_, i) => ({ ...telemetryEnvelope(device, from + i), epoch }))
