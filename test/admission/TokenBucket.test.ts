/**
 * The token bucket of admission (accept rate) and of the per-device rate limits, against an
 * exact model in integer milli-tokens: it never admits more than `burst + rate × elapsed` over
 * any interval of takes, its decisions agree with the model (up to floating-point rounding at
 * the exact boundary), and the wait it returns is exact: taking after it succeeds, and it is
 * never more than a millisecond longer than needed.
 */
import { describe, expect, it } from "@effect/vitest"
import { Schema } from "effect"
import * as Arbitrary from "effect/Arbitrary"
import { TokenBucket } from "../../src/admission/TokenBucket.ts"

const int = (minimum: number, maximum: number) => Schema.Int.check(Schema.isBetween({ minimum, maximum }))

/**
 * One step: wait `dt` ms (or, when `retry` is set and the previous take was refused, exactly the
 * wait it returned; with `early` one millisecond less), then take `1 + n % burst` tokens.
 */
const Op = Schema.Struct({
  dt: int(0, 3_000),
  n: int(0, 10_000),
  retry: Schema.Boolean,
  early: Schema.Boolean
})

/** Slack for floating-point sums of refills (tokens). */
const EPS = 1e-6

interface Take {
  readonly at: number
  readonly n: number
  readonly admitted: boolean
}

describe("TokenBucket", () => {
  it.prop(
    "agrees with an exact model, never exceeds burst + rate × elapsed, and its waits are exact",
    {
      rate: int(1, 5_000),
      burst: int(1, 300),
      start: int(0, 2_000_000_000),
      ops: Arbitrary.array(Arbitrary.schema(Op), { minLength: 1, maxLength: 120 })
    },
    ({ burst, ops, rate, start }) => {
      const bucket = new TokenBucket(rate, burst, start)
      // the model, in milli-tokens: rate tokens/s = rate milli-tokens/ms, so everything is an integer
      let model = burst * 1000
      const capacity = burst * 1000
      let t = start
      let lastRefused: { readonly n: number; readonly wait: number } | undefined
      const takes: Array<Take> = []

      const refill = (to: number) => {
        model = Math.min(capacity, model + (to - t) * rate)
        t = to
      }
      const step = (at: number, n: number): number => {
        refill(at)
        const wait = bucket.take(n, at)
        const modelAdmits = model >= n * 1000
        if ((wait === 0) !== modelAdmits) {
          // only rounding at the exact boundary may decide otherwise
          expect({ at, n, model, wait, nearBoundary: Math.abs(model - n * 1000) <= EPS * 1000 }).toMatchObject({
            nearBoundary: true
          })
        }
        if (wait === 0) {
          model -= n * 1000 // follow the bucket's decision (they agree but at a rounding tie)
        } else {
          // the exact wait is ceil(missing / rate), at least 1 ms: never shorter (the retry would
          // fail), at most a millisecond longer (rounding)
          const exact = Math.max(1, Math.ceil((n * 1000 - model) / rate))
          expect({ at, n, wait, exact, ok: wait >= exact && wait <= exact + 1 }).toMatchObject({ ok: true })
          expect(Number.isInteger(wait)).toBe(true)
        }
        takes.push({ at, n, admitted: wait === 0 })
        return wait
      }

      for (const op of ops) {
        const n = 1 + (op.n % burst)
        if (op.retry && lastRefused !== undefined) {
          const { n: again, wait } = lastRefused
          lastRefused = undefined
          if (op.early && wait > 1) {
            // one millisecond before the returned wait: refused, unless the wait was rounded up
            // past an exact boundary (step() checked that against the model); then due within 1 ms
            const early = step(t + wait - 1, again)
            if (early > 0) {
              expect(early).toBeLessThanOrEqual(2)
              // the first answer's promise holds: at its deadline the take succeeds
              expect(step(t + 1, again)).toBe(0)
            }
            continue
          }
          // taking after the returned wait succeeds
          expect(step(t + wait, again)).toBe(0)
          continue
        }
        const wait = step(t + op.dt, n)
        lastRefused = wait > 0 ? { n, wait } : undefined
      }

      // never more than burst + rate × elapsed over any interval of takes
      for (let i = 0; i < takes.length; i++) {
        let admitted = 0
        for (let j = i; j < takes.length; j++) {
          if (takes[j]!.admitted) admitted += takes[j]!.n
          const allowed = burst + (rate * (takes[j]!.at - takes[i]!.at)) / 1000
          if (admitted > allowed + EPS) {
            expect.unreachable(`admitted ${admitted} tokens between ${takes[i]!.at} and ${takes[j]!.at}, allowed ${allowed}`)
          }
        }
      }
    },
    { arbitrary: { runs: 500 } }
  )

  it.prop(
    "a storm of takes at one instant admits exactly the burst, then one per 1000/rate ms",
    { rate: int(1, 5_000), burst: int(1, 500), start: int(0, 1_000_000) },
    ({ burst, rate, start }) => {
      const bucket = new TokenBucket(rate, burst, start)
      let admitted = 0
      for (let i = 0; i < burst + 50; i++) if (bucket.take(1, start) === 0) admitted++
      expect(admitted).toBe(burst)
      const wait = bucket.take(1, start)
      expect(wait).toBe(Math.max(1, Math.ceil(1000 / rate)))
      expect(bucket.take(1, start + wait)).toBe(0)
      // a second later: rate more (capped by the burst), not more
      const later = start + wait + 1000
      let more = 0
      for (let i = 0; i < burst + rate + 10; i++) if (bucket.take(1, later) === 0) more++
      expect(more).toBeLessThanOrEqual(Math.min(burst, rate) + 1)
      expect(more).toBeGreaterThanOrEqual(Math.min(burst, rate))
    },
    { arbitrary: { runs: 200 } }
  )

  it.prop(
    "wait takes nothing and tells what take would",
    {
      rate: int(1, 5_000),
      burst: int(1, 300),
      ops: Arbitrary.array(Arbitrary.schema(Op), { minLength: 1, maxLength: 100 })
    },
    ({ burst, ops, rate }) => {
      const bucket = new TokenBucket(rate, burst, 0)
      let t = 0
      for (const op of ops) {
        t += op.dt
        const n = 1 + (op.n % burst)
        const first = bucket.wait(n, t)
        expect(bucket.wait(n, t)).toBe(first) // asking again changes nothing
        if (op.retry) expect(bucket.take(n, t)).toBe(first)
      }
    },
    { arbitrary: { runs: 300 } }
  )

  it("refills continuously, caps at the burst, and ignores a clock that goes backwards", () => {
    const b = new TokenBucket(10, 5, 1_000) // 1 token per 100 ms, 5 at most
    for (let i = 0; i < 5; i++) expect(b.take(1, 1_000)).toBe(0)
    expect(b.take(1, 1_000)).toBe(100)
    expect(b.take(1, 1_050)).toBe(50)
    expect(b.take(1, 1_100)).toBe(0)
    // an earlier reading neither refills nor breaks the bucket
    expect(b.take(1, 900)).toBe(100)
    expect(b.take(1, 1_200)).toBe(0)
    // ten seconds idle: still only the burst
    let n = 0
    while (b.take(1, 11_200) === 0) n++
    expect(n).toBe(5)
  })

  it("a take larger than the burst waits for a full bucket, then passes and leaves a debt", () => {
    const b = new TokenBucket(10, 10, 0) // 10 tokens/s, burst 10
    expect(b.take(4, 0)).toBe(0) // 6 left
    // 25 can never be there: wait for the bucket to be full (4 tokens = 400 ms)
    expect(b.take(25, 0)).toBe(400)
    expect(b.take(25, 400)).toBe(0) // passes: 10 - 25 = -15
    // the debt is paid before anything else passes: 16 tokens at 10/s
    expect(b.take(1, 400)).toBe(1_600)
    expect(b.take(1, 1_999)).toBeGreaterThan(0)
    expect(b.take(1, 2_000)).toBe(0)
  })
})
