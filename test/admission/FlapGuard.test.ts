/**
 * Flapping bans: more than `limit` connections of one device within `windowMs` ban it for
 * `banMs` (waitMs = the time left until the ban ends); counting restarts after the window and
 * after a ban; devices are independent; the records are bounded with least-recently-seen
 * eviction.
 */
import { describe, expect, it } from "@effect/vitest"
import { Schema } from "effect"
import * as Arbitrary from "effect/Arbitrary"
import { FlapGuard } from "../../src/admission/FlapGuard.ts"

const int = (minimum: number, maximum: number) => Schema.Int.check(Schema.isBetween({ minimum, maximum }))

const guard = (limit: number, windowMs: number, banMs: number, maxDevices = 1_000) =>
  new FlapGuard({ limit, windowMs, banMs, maxDevices })

const ALLOWED = { waitMs: 0, justBanned: false }

/** A connect of device `device` after `dt` ms (small gaps are common so that bans happen). */
const Op = Schema.Struct({ device: int(0, 7), dt: int(0, 4_000), small: Schema.Boolean })
const gap = (op: typeof Op.Type) => op.small ? op.dt % 40 : op.dt

describe("FlapGuard", () => {
  it("bans the connection after `limit` in the window, for banMs, with waitMs = time left of the ban", () => {
    const g = guard(3, 10_000, 1_500)
    expect(g.connect("d", 0)).toEqual(ALLOWED)
    expect(g.connect("d", 100)).toEqual(ALLOWED)
    expect(g.connect("d", 200)).toEqual(ALLOWED)
    expect(g.connect("d", 300)).toEqual({ waitMs: 1_500, justBanned: true })
    // during the ban: the time left, and the ban is not counted again nor extended
    expect(g.connect("d", 400)).toEqual({ waitMs: 1_400, justBanned: false })
    expect(g.connect("d", 1_799)).toEqual({ waitMs: 1, justBanned: false })
    // at its end: admitted, and counting starts afresh
    expect(g.connect("d", 1_800)).toEqual(ALLOWED)
    expect(g.connect("d", 1_801)).toEqual(ALLOWED)
    expect(g.connect("d", 1_802)).toEqual(ALLOWED)
    expect(g.connect("d", 1_803)).toEqual({ waitMs: 1_500, justBanned: true })
  })

  it("bannedFor tells the time left of a ban and counts nothing", () => {
    const g = guard(2, 10_000, 1_000)
    expect(g.bannedFor("d", 0)).toBe(0)
    expect(g.size).toBe(0) // asking does not make a record
    for (let i = 0; i < 10; i++) expect(g.bannedFor("d", i)).toBe(0)
    expect(g.connect("d", 10)).toEqual(ALLOWED) // the questions above were not connections
    expect(g.connect("d", 11)).toEqual(ALLOWED)
    expect(g.connect("d", 12)).toEqual({ waitMs: 1_000, justBanned: true })
    expect(g.bannedFor("d", 500)).toBe(512)
    expect(g.bannedFor("d", 1_012)).toBe(0)
    expect(g.bannedFor("other", 500)).toBe(0)
  })

  it("restarts counting after the window", () => {
    const g = guard(3, 10_000, 1_500)
    for (const t of [0, 1, 2]) expect(g.connect("d", t)).toEqual(ALLOWED)
    // a full window later the count is back to zero
    for (const t of [10_000, 10_001, 10_002]) expect(g.connect("d", t)).toEqual(ALLOWED)
    expect(g.connect("d", 10_003)).toEqual({ waitMs: 1_500, justBanned: true })
    // slower than the limit forever: never banned
    const slow = guard(3, 1_000, 5_000)
    for (let t = 0; t < 60_000; t += 334) expect(slow.connect("s", t)).toEqual(ALLOWED)
  })

  it("counts each device on its own", () => {
    const g = guard(2, 10_000, 1_000)
    expect(g.connect("a", 0)).toEqual(ALLOWED)
    expect(g.connect("a", 1)).toEqual(ALLOWED)
    expect(g.connect("a", 2).justBanned).toBe(true)
    for (let i = 0; i < 2; i++) expect(g.connect("b", 3 + i)).toEqual(ALLOWED)
    expect(g.connect("a", 10).waitMs).toBe(992)
    expect(g.size).toBe(2)
  })

  it("keeps at most maxDevices records, evicting the least recently seen", () => {
    const g = guard(1, 60_000, 60_000, 2)
    expect(g.connect("a", 0)).toEqual(ALLOWED)
    expect(g.connect("a", 1)).toEqual({ waitMs: 60_000, justBanned: true }) // a banned
    expect(g.connect("b", 2)).toEqual(ALLOWED)
    expect(g.connect("a", 3).waitMs).toBe(59_998) // a seen again: b is now the least recent
    expect(g.connect("c", 4)).toEqual(ALLOWED) // evicts b, not a
    expect(g.size).toBe(2)
    expect(g.connect("a", 5).waitMs).toBe(59_996) // a's ban survived
    expect(g.connect("b", 6)).toEqual(ALLOWED) // b was forgotten: a fresh count (evicts c)
    expect(g.connect("d", 7)).toEqual(ALLOWED) // evicts a, the least recent now
    expect(g.size).toBe(2)
    expect(g.connect("a", 8)).toEqual(ALLOWED) // forgotten with its ban
    for (let i = 0; i < 1_000; i++) g.connect(`x-${i}`, 9 + i)
    expect(g.size).toBe(2)
  })

  it.prop(
    "bans only devices over the limit in a window, for banMs, and never admits more than 2 × limit per window",
    {
      limit: int(1, 5),
      windowMs: int(100, 5_000),
      banMs: int(100, 5_000),
      ops: Arbitrary.array(Arbitrary.schema(Op), { maxLength: 200 })
    },
    ({ banMs, limit, ops, windowMs }) => {
      const g = guard(limit, windowMs, banMs)
      /** Per device: the times of its counted connects since its last ban ended, and the ban's end. */
      const state = new Map<string, { counted: Array<number>; admitted: Array<number>; banEnd: number }>()
      let t = 0
      for (const op of ops) {
        t += gap(op)
        const device = `dev-${op.device}`
        const s = state.get(device) ?? { counted: [], admitted: [], banEnd: 0 }
        state.set(device, s)
        const r = g.connect(device, t)
        if (t < s.banEnd) {
          // inside a ban: told the time left, not counted, not banned again
          expect(r).toEqual({ waitMs: s.banEnd - t, justBanned: false })
          continue
        }
        if (r.justBanned) {
          // a new ban is exactly banMs, and only after more than `limit` counted connects within the window
          expect(r.waitMs).toBe(banMs)
          const recent = s.counted.filter((c) => c > t - windowMs).length + 1
          expect({ t, recent, limit }).toEqual({ t, recent: expect.toSatisfy((n: number) => n > limit), limit })
          s.banEnd = t + banMs
          s.counted = []
          continue
        }
        expect(r).toEqual(ALLOWED)
        s.counted.push(t)
        s.admitted.push(t)
        // the count cannot run away: within any window at most 2 × limit admitted connects
        const inWindow = s.admitted.filter((a) => a > t - windowMs).length
        expect(inWindow).toBeLessThanOrEqual(2 * limit)
      }
    },
    { arbitrary: { runs: 400 } }
  )

  it.prop(
    "a device's answers do not depend on other devices, unless it was evicted (then it starts afresh)",
    {
      limit: int(1, 4),
      windowMs: int(100, 3_000),
      banMs: int(100, 3_000),
      maxDevices: int(1, 5),
      ops: Arbitrary.array(Arbitrary.schema(Op), { maxLength: 200 })
    },
    ({ banMs, limit, maxDevices, ops, windowMs }) => {
      const g = guard(limit, windowMs, banMs, maxDevices)
      // the model: recency order (least recent first) and, per remembered device, a fresh guard
      // that saw only that device's connects since it was (re)admitted to the records
      const recency: Array<string> = []
      const solo = new Map<string, FlapGuard>()
      let t = 0
      for (const op of ops) {
        t += gap(op)
        const device = `dev-${op.device}`
        if (solo.has(device)) {
          recency.splice(recency.indexOf(device), 1)
        } else {
          if (recency.length >= maxDevices) solo.delete(recency.shift()!)
          solo.set(device, guard(limit, windowMs, banMs, 1))
        }
        recency.push(device)
        expect(g.connect(device, t)).toEqual(solo.get(device)!.connect(device, t))
        expect(g.size).toBe(recency.length)
        expect(g.size).toBeLessThanOrEqual(maxDevices)
      }
    },
    { arbitrary: { runs: 400 } }
  )
})
