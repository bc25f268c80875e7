/**
 * The outbox's SQLite file (OutboxStore.ts) on real files, without its thread:
 * - packing: envelopes go in as JSON and come back equal (annotations included); a value JSON
 *   cannot hold, or a key that is not an integer, is left out with its reason;
 * - appends store a prefix of the batch within the bounds (messages and bytes), never more;
 * - reads return the oldest rows past a cursor, in insertion order; ids are never reused, even
 *   after the table was emptied and the file reopened;
 * - property: whatever the appends, removals (the forwarder's oldest-first with the size it read,
 *   or arbitrary ranges, some told a wrong size) and reopenings, the depth (messages, bytes) is never negative, never past the bounds, and is
 *   what the rows hold, after a reopen too;
 * - one process at a time: a second connection to an open outbox is refused (EXCLUSIVE locking).
 */
import { afterAll, describe, expect, it } from "@effect/vitest"
import { Schema } from "effect"
import * as Arbitrary from "effect/Arbitrary"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { DatabaseSync } from "node:sqlite"
import type { Envelope } from "../../../src/domain/Envelope.ts"
import {
  append,
  type Depth,
  openOutbox,
  packRows,
  parseRows,
  prepare,
  readAfter,
  readDepth,
  removeRange
} from "../../../src/sinks/outbox/OutboxStore.ts"
import { eventEnvelope, telemetryEnvelope } from "../../support/envelopes.ts"
import { tempDir } from "../../support/gateway.ts"

const dirs: Array<string> = []
afterAll(() => {
  for (const d of dirs) Fs.rmSync(d, { recursive: true, force: true })
})
const freshFile = () => {
  const dir = tempDir("gw-outbox-store-")
  dirs.push(dir)
  return Path.join(dir, "sub", "outbox.db")
}

const open = (file: string) => {
  const db = openOutbox(file, "normal")
  return { db, st: prepare(db) }
}

const UNBOUNDED = { maxMessages: 1e9, maxBytes: 1e12 }

/** The depth as the rows say it, by counting them. */
const counted = (db: DatabaseSync) =>
  db.prepare("SELECT count(*) AS n, total(bytes) AS b, total(length(CAST(envelope AS BLOB))) AS real FROM outbox").get() as {
    n: number
    b: number
    real: number
  }

describe("OutboxStore", () => {
  it("envelopes go in as JSON and come back equal, in insertion order, past a cursor", () => {
    const { db, st } = open(freshFile())
    const annotated = { ...telemetryEnvelope("dev-a", 2, { temp: 21.5 }, { site: "p7" }), alerts: ["hot"], traceparent: "00-abc-def-01" }
    const batch: Array<Envelope> = [telemetryEnvelope("dev-a", 1), annotated, eventEnvelope("dev-\"q\"", 3, "boot")]
    const packed = packRows(batch)
    expect(packed.positions).toEqual([0, 1, 2])
    expect(append(db, st, packed.text, UNBOUNDED, 1_000)).toBe(3)
    const rows = readAfter(st, 0, 10)
    expect([...rows.ids]).toEqual([1, 2, 3])
    expect(parseRows(rows)).toEqual(batch)
    expect([...readAfter(st, 1, 1).ids]).toEqual([2])
    const keys = db.prepare("SELECT device, epoch, seq, enqueued_at FROM outbox ORDER BY id").all()
    expect(keys.map((k) => ({ ...k }))).toEqual([
      { device: "dev-a", epoch: 1, seq: 1, enqueued_at: 1_000 },
      { device: "dev-a", epoch: 1, seq: 2, enqueued_at: 1_000 },
      { device: "dev-\"q\"", epoch: 1, seq: 3, enqueued_at: 1_000 }
    ])
    expect(readDepth(st)).toEqual({ messages: 3, bytes: counted(db).real, oldestAt: 1_000, lastId: 3 })
    db.close()
  })

  it("leaves out what JSON cannot hold and keys that are not integers, with the reason", () => {
    const cyclic: Record<string, unknown> = {}
    cyclic["self"] = cyclic
    const batch: Array<Envelope> = [
      telemetryEnvelope("dev-a", 1),
      { ...telemetryEnvelope("dev-a", 2), big: 10n } as unknown as Envelope,
      { ...telemetryEnvelope("dev-a", 3), cyclic } as unknown as Envelope,
      { ...telemetryEnvelope("dev-a", 4), seq: 4.5 },
      telemetryEnvelope("dev-a", 5)
    ]
    const packed = packRows(batch, [4, 1, 2, 3, 0])
    expect(packed.positions).toEqual([4, 0])
    expect([...packed.refused.keys()].sort()).toEqual([1, 2, 3])
    expect(packed.refused.get(1)).toMatch(/cannot be stored as JSON: .*BigInt/)
    expect(packed.refused.get(3)).toMatch(/must be integers/)
    const { db, st } = open(freshFile())
    append(db, st, packed.text, UNBOUNDED, 1)
    expect(parseRows(readAfter(st, 0, 10)).map((e) => e?.seq)).toEqual([5, 1])
    db.close()
  })

  it("stores a prefix of a batch within the bounds: messages, then bytes", () => {
    const { db, st } = open(freshFile())
    const batch = Array.from({ length: 10 }, (_, i) => telemetryEnvelope("dev-b", i + 1))
    const rowBytes = Buffer.byteLength(JSON.stringify(batch[0]))
    expect(append(db, st, packRows(batch).text, { maxMessages: 4, maxBytes: 1e9 }, 1)).toBe(4)
    expect(append(db, st, packRows(batch).text, { maxMessages: 4, maxBytes: 1e9 }, 1)).toBe(0)
    expect(readDepth(st).messages).toBe(4)
    // room for two more rows' bytes (the rows are the same size within a byte or two)
    const limit = { maxMessages: 100, maxBytes: readDepth(st).bytes + 2 * rowBytes + 1 }
    expect(append(db, st, packRows(batch.slice(4)).text, limit, 2)).toBe(2)
    expect(parseRows(readAfter(st, 0, 100)).map((e) => e?.seq)).toEqual([1, 2, 3, 4, 5, 6])
    db.close()
  })

  it("ids are never reused: a cursor held across an emptied, reopened outbox stays valid", () => {
    const file = freshFile()
    const first = open(file)
    append(first.db, first.st, packRows([telemetryEnvelope("d", 1), telemetryEnvelope("d", 2)]).text, UNBOUNDED, 1)
    expect(removeRange(first.db, first.st, 1, 2)).toBe(2)
    expect(readDepth(first.st)).toEqual({ messages: 0, bytes: 0, oldestAt: null, lastId: 2 })
    first.db.close()
    const again = open(file)
    expect(readDepth(again.st).lastId).toBe(2)
    append(again.db, again.st, packRows([telemetryEnvelope("d", 3)]).text, UNBOUNDED, 5)
    expect([...readAfter(again.st, 2, 10).ids]).toEqual([3])
    expect(readDepth(again.st)).toMatchObject({ messages: 1, oldestAt: 5, lastId: 3 })
    again.db.close()
  })

  it("one process (one connection) at a time: a second opening is refused while the first holds the file", () => {
    const file = freshFile()
    const { db } = open(file)
    expect(() => openOutbox(file, "normal")).toThrow(/locked/)
    db.close()
    open(file).db.close()
  })

  const Op = Schema.Union([
    Schema.Struct({ op: Schema.Literal("append"), sizes: Schema.Array(Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 400 }))) }),
    Schema.Struct({ op: Schema.Literal("forward"), n: Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 30 })) }),
    Schema.Struct({
      op: Schema.Literal("remove"),
      from: Schema.Int.check(Schema.isBetween({ minimum: -5, maximum: 200 })),
      span: Schema.Int.check(Schema.isBetween({ minimum: -3, maximum: 40 })),
      // a removal told a size the rows cannot have (as if they had changed since they were read): counted instead
      wrongSize: Schema.Boolean
    }),
    Schema.Struct({ op: Schema.Literal("reopen") })
  ])

  it.prop(
    "the depth is never negative, never past the bounds, and is what the rows hold (reopened too)",
    {
      maxMessages: Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 60 })),
      maxKb: Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 12 })),
      ops: Arbitrary.array(Arbitrary.schema(Op), { maxLength: 40 })
    },
    ({ maxKb, maxMessages, ops }) => {
      const file = freshFile()
      const limits = { maxMessages, maxBytes: maxKb * 1024 }
      let s = open(file)
      let seq = 0
      /** The model: the stored rows, oldest first (id, bytes). */
      let model: Array<{ id: number; bytes: number }> = []
      const check = (d: Depth) => {
        expect(d.messages).toBeGreaterThanOrEqual(0)
        expect(d.bytes).toBeGreaterThanOrEqual(0)
        expect(d.messages).toBeLessThanOrEqual(limits.maxMessages)
        expect(d.bytes).toBeLessThanOrEqual(limits.maxBytes)
        const c = counted(s.db)
        expect({ messages: d.messages, bytes: d.bytes }).toEqual({ messages: c.n, bytes: c.real })
        expect({ messages: d.messages, bytes: d.bytes }).toEqual({
          messages: model.length,
          bytes: model.reduce((a, r) => a + r.bytes, 0)
        })
      }
      try {
        for (const op of ops) {
          if (op.op === "append") {
            const batch = op.sizes.map((size) => telemetryEnvelope("dev-p", ++seq, { temp: 1 }, { pad: "x".repeat(size) }))
            const before = readDepth(s.st).lastId
            const stored = append(s.db, s.st, packRows(batch).text, limits, seq)
            expect(stored).toBeLessThanOrEqual(batch.length)
            for (let i = 0; i < stored; i++) model.push({ id: before + 1 + i, bytes: Buffer.byteLength(JSON.stringify(batch[i])) })
            // what was not stored did not fit: the next one would pass a bound
            if (stored < batch.length) {
              const next = Buffer.byteLength(JSON.stringify(batch[stored]))
              const d = readDepth(s.st)
              expect(d.messages + 1 > limits.maxMessages || d.bytes + next > limits.maxBytes).toBe(true)
            }
          } else if (op.op === "forward") {
            const rows = readAfter(s.st, 0, op.n)
            if (rows.ids.length > 0) {
              const removed = removeRange(s.db, s.st, rows.ids[0]!, rows.ids[rows.ids.length - 1]!, { count: rows.ids.length, bytes: rows.bytes })
              expect(removed).toBe(rows.ids.length)
              model = model.slice(removed)
            }
          } else if (op.op === "remove") {
            const to = op.from + op.span
            const removed = removeRange(s.db, s.st, op.from, to, op.wrongSize ? { count: -1, bytes: 1 } : undefined)
            const kept = model.filter((r) => r.id < op.from || r.id > to)
            expect(removed).toBe(model.length - kept.length)
            model = kept
          } else {
            s.db.close()
            s = open(file)
          }
          check(readDepth(s.st))
        }
      } finally {
        s.db.close()
        Fs.rmSync(Path.dirname(file), { recursive: true, force: true })
      }
    },
    { arbitrary: { runs: 100 } }
  )
})
