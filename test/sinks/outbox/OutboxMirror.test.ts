/**
 * The outbox's in-memory mirror of what this process appended (OutboxMirror.ts): runs of rows
 * from a given id, across appends, stopping at a gap; rows below the cursor forgotten; nothing
 * kept past the byte budget; and, as a property, whatever it gives for an id is the envelope
 * appended with that id.
 */
import { describe, expect, it } from "@effect/vitest"
import { Schema } from "effect"
import * as Arbitrary from "effect/Arbitrary"
import type { Envelope } from "../../../src/domain/Envelope.ts"
import { makeOutboxMirror } from "../../../src/sinks/outbox/OutboxMirror.ts"
import { envelopes } from "./outboxSupport.ts"

const seqs = (xs: ReadonlyArray<Envelope> | undefined) => xs?.map((e) => e.seq)

describe("OutboxMirror", () => {
  it("gives runs of rows from an id, across appends, up to a gap; forgets what is below", () => {
    const m = makeOutboxMirror(1_000_000)
    m.add(11, envelopes("d", 11, 5), 500) // ids 11..15
    m.add(16, envelopes("d", 16, 5), 500) // ids 16..20
    m.add(31, envelopes("d", 31, 2), 200) // ids 31..32 (21..30 only in the file)
    expect(m.take(10, 100)).toBeUndefined()
    expect(m.nextHeld(1)).toBe(11)
    expect(seqs(m.take(13, 4))).toEqual([13, 14, 15, 16])
    expect(seqs(m.take(17, 100))).toEqual([17, 18, 19, 20])
    expect(m.take(21, 100)).toBeUndefined()
    expect(m.nextHeld(21)).toBe(31)
    expect(m.held()).toEqual({ rows: 2, bytes: 200 })
    expect(seqs(m.take(31, 100))).toEqual([31, 32])
    expect(m.take(33, 100)).toBeUndefined()
    expect(m.held()).toEqual({ rows: 0, bytes: 0 })
    expect(m.nextHeld(33)).toBeUndefined()
  })

  it("keeps nothing past its budget (a later append that fits is kept)", () => {
    const m = makeOutboxMirror(1_000)
    m.add(1, envelopes("d", 1, 5), 600)
    m.add(6, envelopes("d", 6, 5), 600) // does not fit: left to the file
    m.add(11, envelopes("d", 11, 1), 300)
    expect(m.held()).toEqual({ rows: 6, bytes: 900 })
    expect(seqs(m.take(1, 100))).toEqual([1, 2, 3, 4, 5])
    expect(m.take(6, 100)).toBeUndefined()
    expect(m.nextHeld(6)).toBe(11)
    expect(makeOutboxMirror(0).held()).toEqual({ rows: 0, bytes: 0 })
  })

  it.prop(
    "whatever it gives for an id is what was appended with that id",
    {
      appends: Arbitrary.array(Arbitrary.schema(Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 30 }))), { maxLength: 40 }),
      takes: Arbitrary.array(Arbitrary.schema(Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 50 }))), { maxLength: 40 }),
      budget: Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 20_000 }))
    },
    ({ appends, budget, takes }) => {
      const m = makeOutboxMirror(budget)
      let nextId = 1
      for (const n of appends) {
        // seq = id: what comes back for id i must be seq i
        m.add(nextId, envelopes("d", nextId, n), n * 100)
        nextId += n
      }
      let cursor = 0
      for (const max of takes) {
        const got = m.take(cursor + 1, max)
        if (got === undefined) {
          cursor += max // as if read from the file
          continue
        }
        expect(got.length).toBeGreaterThan(0)
        expect(got.length).toBeLessThanOrEqual(max)
        expect(seqs(got)).toEqual(got.map((_, i) => cursor + 1 + i))
        cursor += got.length
      }
      expect(m.held().bytes).toBeLessThanOrEqual(budget)
    },
    { arbitrary: { runs: 200 } }
  )
})
