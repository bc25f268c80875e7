/**
 * Test support for the outbox's tests: envelopes of a few devices, a log capture, waiting for
 * the outbox to empty, and the audit of a stream read back (every message answered Committed
 * there exactly once, each device's messages in seq order).
 */
import { expect } from "@effect/vitest"
import { Effect, Layer, Logger } from "effect"
import type { Envelope } from "../../../src/domain/Envelope.ts"
import { messageId } from "../../../src/sinks/Contract.ts"
import type { OutboxedDriver } from "../../../src/sinks/outbox/Outbox.ts"
import { telemetryEnvelope } from "../../support/envelopes.ts"
import type { StoredMessage } from "../../support/natsStream.ts"

/** `count` envelopes of `device` from seq `from`. */
export const envelopes = (device: string, from: number, count: number): Array<Envelope> =>
  Array.from({ length: count }, (_, i) => telemetryEnvelope(device, from + i, { temp: (from + i) % 50 }))

/** One log line: level and message. */
export interface LogLine {
  readonly level: string
  readonly message: string
}

/** A logger layer that keeps every line in `into` instead of printing it. */
export const captureLogs = (into: Array<LogLine>): Layer.Layer<never> =>
  Logger.layer([
    Logger.make((o) => {
      const m = o.message
      into.push({ level: o.logLevel, message: Array.isArray(m) ? m.map(String).join(" ") : String(m) })
    })
  ])

/** Polls the outbox's depth every 50 ms until it is empty; dies after `ms`. */
export const drained = (outbox: OutboxedDriver, ms: number): Effect.Effect<void> =>
  Effect.gen(function*() {
    const deadline = Date.now() + ms
    for (;;) {
      const d = yield* outbox.depth
      if (d.messages === 0) return
      if (Date.now() > deadline) return yield* Effect.die(new Error(`outbox not empty within ${ms} ms: ${JSON.stringify(d)}`))
      yield* Effect.sleep("50 millis")
    }
  })

/**
 * Checks a stream read back against the messages answered Committed: each of them there exactly
 * once, nothing there twice, and each device's messages in seq order (stream order).
 */
export const auditStream = (stored: ReadonlyArray<StoredMessage>, committed: ReadonlyArray<Envelope>): void => {
  const times = new Map<string, number>()
  const lastSeq = new Map<string, number>()
  const outOfOrder: Array<string> = []
  for (const m of stored) {
    const id = m.msgId ?? "?"
    times.set(id, (times.get(id) ?? 0) + 1)
    const p = m.payload as { readonly device: string; readonly epoch: number; readonly seq: number }
    const key = `${p.device}:${p.epoch}`
    const last = lastSeq.get(key)
    if (last !== undefined && p.seq <= last) outOfOrder.push(`${key}: ${p.seq} after ${last}`)
    lastSeq.set(key, p.seq)
  }
  expect([...times].filter(([, n]) => n !== 1)).toEqual([])
  const missing = committed.map(messageId).filter((id) => !times.has(id))
  expect(missing.slice(0, 10), `${missing.length} Committed messages are not in the stream`).toEqual([])
  expect(outOfOrder.slice(0, 10), `${outOfOrder.length} out of order`).toEqual([])
}
