/**
 * Per-address limits on unauthenticated traffic: the count of connections not yet welcomed
 * per address and node-wide (never negative, back to zero when all left), the per-address cap,
 * blocks after too many failed authentications (until the window's end), and bounded records.
 */
import { describe, expect, it } from "@effect/vitest"
import { Schema } from "effect"
import * as Arbitrary from "effect/Arbitrary"
import { SourceGuard } from "../../src/admission/SourceGuard.ts"

const int = (minimum: number, maximum: number) => Schema.Int.check(Schema.isBetween({ minimum, maximum }))

const guard = (perSource = 3, failLimit = 2, failWindowMs = 1_000, maxSources = 1_000) =>
  new SourceGuard({ unauthenticatedPerSource: perSource, failLimit, failWindowMs, maxSources })

describe("SourceGuard", () => {
  it("caps the connections one address holds before their welcome; leaving gives the slot back", () => {
    const g = guard(2)
    g.enter("a")
    expect(g.full("a")).toBe(false)
    g.enter("a")
    expect(g.full("a")).toBe(true)
    expect(g.full("b")).toBe(false)
    expect(g.unauthenticated).toBe(2)
    g.leave("a")
    expect(g.full("a")).toBe(false)
    g.leave("a")
    expect(g.unauthenticated).toBe(0)
    expect(g.size).toBe(0) // nothing left to remember
  })

  it("blocks an address after more than failLimit failures in the window, until the window ends", () => {
    const g = guard(3, 2, 1_000)
    expect(g.failed("a", 100)).toEqual({ blockedMs: 0, justBlocked: false })
    expect(g.failed("a", 200)).toEqual({ blockedMs: 0, justBlocked: false })
    expect(g.failed("a", 300)).toEqual({ blockedMs: 800, justBlocked: true }) // window 100..1100
    expect(g.blockedFor("a", 600)).toBe(500)
    expect(g.blockedFor("b", 600)).toBe(0)
    expect(g.failed("a", 700)).toEqual({ blockedMs: 400, justBlocked: false }) // not extended
    expect(g.blockedFor("a", 1_100)).toBe(0)
    // a new window counts afresh
    expect(g.failed("a", 1_200)).toEqual({ blockedMs: 0, justBlocked: false })
  })

  it("failures spread over windows never block", () => {
    const g = guard(3, 2, 1_000)
    for (let t = 0; t < 20_000; t += 600) expect(g.failed("a", t).blockedMs).toBe(0)
  })

  it.prop(
    "counts never go negative, the node-wide count is the sum of live connections, records stay bounded",
    {
      maxSources: int(1, 4),
      ops: Arbitrary.array(Arbitrary.schema(Schema.Struct({ address: int(0, 6), enter: Schema.Boolean, fail: Schema.Boolean })), { maxLength: 300 })
    },
    ({ maxSources, ops }) => {
      const g = guard(1_000, 3, 1_000, maxSources)
      const live = new Map<string, number>()
      let t = 0
      for (const op of ops) {
        const a = `10.0.0.${op.address}`
        t += 37
        if (op.fail) g.failed(a, t)
        else if (op.enter) {
          g.enter(a)
          live.set(a, (live.get(a) ?? 0) + 1)
        } else if ((live.get(a) ?? 0) > 0) {
          g.leave(a)
          live.set(a, live.get(a)! - 1)
        }
        expect(g.size).toBeLessThanOrEqual(maxSources)
        expect(g.unauthenticated).toBe([...live.values()].reduce((x, y) => x + y, 0))
      }
    }
  )
})
