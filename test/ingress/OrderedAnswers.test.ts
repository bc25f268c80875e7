import { describe, expect, it } from "@effect/vitest"
import { Schema } from "effect"
import * as Arbitrary from "effect/Arbitrary"
import { OrderedAnswers } from "../../src/ingress/OrderedAnswers.ts"

const int = (minimum: number, maximum: number) => Schema.Int.check(Schema.isBetween({ minimum, maximum }))

const answer = (ticket: number) => `{"type":"ack","seq":${ticket}}\n`
const answersUpTo = (n: number) => Array.from({ length: n }, (_, i) => answer(i)).join("")

/** Deterministic PRNG (mulberry32) for inputs too large to generate element by element. */
const mulberry32 = (seed: number) => {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/** Resolves tickets in `order`, calling takeReady after each, checking the invariants as it goes. */
const resolveAll = (oa: OrderedAnswers, opened: number, order: ReadonlyArray<number>) => {
  const resolved = new Array<boolean>(opened).fill(false)
  let out = ""
  let written = 0
  let firstPending = 0
  for (const ticket of order) {
    oa.resolve(ticket, answer(ticket))
    resolved[ticket] = true
    const ready = oa.takeReady()
    out += ready
    written += ready.length === 0 ? 0 : ready.split("\n").length - 1
    while (firstPending < opened && resolved[firstPending]) firstPending++
    // exactly the answers of the resolved prefix have left, in ticket order
    if (written !== firstPending) expect.unreachable(`after ticket ${ticket}: wrote ${written}, expected ${firstPending}`)
    if (oa.inflight !== opened - written) {
      expect.unreachable(`inflight ${oa.inflight}, expected ${opened - written}`)
    }
  }
  return out
}

describe("OrderedAnswers", () => {
  it.prop(
    "answers resolved in any order leave in ticket order",
    { keys: Arbitrary.array(Arbitrary.schema(int(0, 1_000_000)), { minLength: 1, maxLength: 300 }) },
    ({ keys }) => {
      const n = keys.length
      // a random permutation: the tickets sorted by their keys
      const order = keys.map((k, i) => [k, i] as const).sort((a, b) => a[0] - b[0] || a[1] - b[1]).map(([, i]) => i)
      const oa = new OrderedAnswers()
      for (let i = 0; i < n; i++) expect(oa.open()).toBe(i)
      expect(oa.inflight).toBe(n)
      const out = resolveAll(oa, n, order)
      expect(out).toBe(answersUpTo(n))
      expect(oa.inflight).toBe(0)
      expect(oa.takeReady()).toBe("")
    },
    { arbitrary: { runs: 300, size: 300 } }
  )

  it.prop(
    "opens interleaved with resolves keep ticket order and the in-flight count",
    {
      ops: Arbitrary.array(
        Arbitrary.schema(Schema.Struct({ open: Schema.Boolean, pick: int(0, 10_000) })),
        { maxLength: 300 }
      )
    },
    ({ ops }) => {
      const oa = new OrderedAnswers()
      let opened = 0
      const pending: Array<number> = []
      const resolved = new Set<number>()
      let out = ""
      let next = 0 // first ticket not yet written
      let expected = ""
      for (const op of ops) {
        if (op.open || pending.length === 0) {
          expect(oa.open()).toBe(opened)
          pending.push(opened++)
        } else {
          const [ticket] = pending.splice(op.pick % pending.length, 1)
          oa.resolve(ticket!, answer(ticket!))
          resolved.add(ticket!)
        }
        out += oa.takeReady()
        while (resolved.has(next)) expected += answer(next++)
        expect(out).toBe(expected)
        expect(oa.inflight).toBe(opened - next)
      }
      for (const ticket of pending) oa.resolve(ticket, answer(ticket))
      out += oa.takeReady()
      expect(out).toBe(answersUpTo(opened))
      expect(oa.inflight).toBe(0)
    },
    { arbitrary: { runs: 300, size: 300 } }
  )

  it.prop(
    "more than 2048 tickets resolved nearly in order (compaction) keep ticket order",
    { n: int(2049, 3500), jitter: int(1, 300), seed: int(0, 2 ** 31 - 1) },
    ({ jitter, n, seed }) => {
      const random = mulberry32(seed)
      const oa = new OrderedAnswers()
      for (let i = 0; i < n; i++) oa.open()
      // each ticket is resolved about `jitter` places from its own position: the written prefix
      // grows while later tickets are still pending, which is when the table compacts
      const order = Array.from({ length: n }, (_, i) => [i + random() * jitter, i] as const)
        .sort((a, b) => a[0] - b[0])
        .map(([, i]) => i)
      const out = resolveAll(oa, n, order)
      expect(out).toBe(answersUpTo(n))
      expect(oa.inflight).toBe(0)
      // numbering continues after compactions
      expect(oa.open()).toBe(n)
      oa.resolve(n, answer(n))
      expect(oa.takeReady()).toBe(answer(n))
    },
    { arbitrary: { runs: 25 } }
  )

  it("compacts past 2048 tickets without losing or reordering answers", () => {
    const oa = new OrderedAnswers()
    const n = 3000
    for (let i = 0; i < n; i++) oa.open()
    for (let t = 1; t <= 1700; t++) {
      oa.resolve(t, answer(t))
      expect(oa.takeReady()).toBe("")
    }
    expect(oa.inflight).toBe(n)
    oa.resolve(0, answer(0))
    // 1701 answers leave at once; 1701 > 1024 and 2 * 1701 > 3000: the table compacts here
    expect(oa.takeReady()).toBe(answersUpTo(1701))
    expect(oa.inflight).toBe(n - 1701)
    // a late answer for a written ticket is ignored, before and after compaction
    oa.resolve(5, "stale\n")
    oa.resolve(1700, "stale\n")
    expect(oa.takeReady()).toBe("")
    // tickets keep counting across the compaction
    expect(oa.open()).toBe(n)
    expect(oa.inflight).toBe(n + 1 - 1701)
    let out = ""
    for (let t = n; t >= 1701; t--) {
      oa.resolve(t, answer(t))
      out += oa.takeReady()
      if (t > 1701) expect(out).toBe("")
    }
    expect(out).toBe(answersUpTo(n + 1).slice(answersUpTo(1701).length))
    expect(oa.inflight).toBe(0)
  })

  it("ignores answers for tickets not yet opened", () => {
    const oa = new OrderedAnswers()
    for (let i = 0; i < 5; i++) oa.open()
    oa.resolve(7, "early\n")
    for (let i = 0; i < 5; i++) oa.resolve(i, answer(i))
    expect(oa.takeReady()).toBe(answersUpTo(5))
    expect(oa.open()).toBe(5)
    expect(oa.open()).toBe(6)
    expect(oa.open()).toBe(7)
    expect(oa.takeReady()).toBe("") // 7's early answer was not kept
    expect(oa.inflight).toBe(3)
  })

  it("drained tables that are kept (small) or let go (after a burst) number, order and charge the next tickets right", () => {
    const oa = new OrderedAnswers()
    let ticket = 0
    let out = ""
    // one frame in flight at a time, as a fleet device sends; then bursts of 3, 64, 65 and 500
    for (const burst of [...Array.from({ length: 1_000 }, () => 1), 3, 64, 65, 500, 1, 1, 2]) {
      const first = ticket
      for (let i = 0; i < burst; i++) expect(oa.open(10 + i)).toBe(ticket++)
      expect(oa.pendingBytes).toBe(burst * 10 + (burst * (burst - 1)) / 2)
      // answered last to first: nothing leaves before the first of the burst is answered
      for (let t = ticket - 1; t >= first; t--) {
        expect(oa.resolve(t, answer(t))).toBe(10 + t - first)
        if (t > first) expect(oa.takeReady()).toBe("")
      }
      expect(oa.resolve(first, answer(first))).toBe(0) // answered once
      out += oa.takeReady()
      expect(oa.inflight).toBe(0)
      expect(oa.pendingBytes).toBe(0)
    }
    expect(out).toBe(answersUpTo(ticket))
  })
})
