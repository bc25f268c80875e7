/**
 * The `ratelimit` scenario (in process, no server): what per-device rate limiting costs per
 * message, to decide whether the gateway can use Effect's limiter on the hot path.
 * 1,000,000 messages over 1,000 devices (round-robin, or chunks of 64 from one device, as a
 * socket read delivers them), limited by messages/s and bytes/s per device:
 *
 * - a plain token bucket ({@link TokenBucket}), one `take` per message or per chunk;
 * - Effect 4's `RateLimiter` (`effect/persistence`, in-memory store, token-bucket algorithm,
 *   `onExceeded: "fail"`): its `consume` is an Effect, so each call is run with `Effect.runSync`,
 *   per message or per chunk of 64.
 *
 * With the gateway's default limits (5,000 msgs/s, 8 MiB/s) nothing is refused in the loop;
 * the "tight" rows use 1 msg/s so that almost every message is refused (the failure path;
 * how many depends on how long the loop takes, as buckets refill meanwhile).
 *
 *   npm run bench -- --only ratelimit
 */
import { Effect } from "effect"
import { RateLimiter } from "effect/persistence"
import { fmt } from "./proc.ts"

/** A token bucket on two dimensions (messages and bytes), refilled from elapsed time. */
export class TokenBucket {
  private tokens: number
  private bytes: number
  private last: number
  private readonly msgsPerMs: number
  private readonly bytesPerMs: number
  private readonly burstMsgs: number
  private readonly burstBytes: number
  /** Full buckets holding one second's worth unless bursts are given. */
  constructor(msgsPerSec: number, bytesPerSec: number, nowMs: number, burstMsgs = msgsPerSec, burstBytes = bytesPerSec) {
    this.burstMsgs = burstMsgs
    this.burstBytes = burstBytes
    this.tokens = burstMsgs
    this.bytes = burstBytes
    this.last = nowMs
    this.msgsPerMs = msgsPerSec / 1000
    this.bytesPerMs = bytesPerSec / 1000
  }

  /** Takes `n` messages of `bytes` bytes in total if both buckets hold enough; false (and nothing taken) if not. */
  take(n: number, bytes: number, nowMs: number): boolean {
    const elapsed = nowMs - this.last
    if (elapsed > 0) {
      this.tokens = Math.min(this.burstMsgs, this.tokens + elapsed * this.msgsPerMs)
      this.bytes = Math.min(this.burstBytes, this.bytes + elapsed * this.bytesPerMs)
      this.last = nowMs
    }
    if (this.tokens < n || this.bytes < bytes) return false
    this.tokens -= n
    this.bytes -= bytes
    return true
  }
}

/** One measured case. */
export interface RateLimitRow {
  readonly name: string
  readonly nsPerMsg: number
  /** Fraction of messages refused in the last round. */
  readonly refused: number
}

const MESSAGES = 1_000_000
const DEVICES = 1_000
const CHUNK = 64
const sizes = Float64Array.from({ length: MESSAGES }, (_, i) => 100 + (i % 64))
const keys = Array.from({ length: DEVICES }, (_, i) => `dev-${i}`)
const byteKeys = keys.map((k) => `${k}:bytes`)
const chunkBytes = Float64Array.from({ length: MESSAGES / CHUNK }, (_, c) => {
  let sum = 0
  for (let i = c * CHUNK; i < (c + 1) * CHUNK; i++) sum += sizes[i]!
  return sum
})

/** Runs `round` (which returns how many of its `total` messages passed) `rounds` times; best ns per message. */
const time = (name: string, round: () => number, rounds: number, total = MESSAGES): RateLimitRow => {
  round() // warm-up (JIT, first bucket per key)
  let best = Infinity
  let passed = 0
  for (let r = 0; r < rounds; r++) {
    const started = process.hrtime.bigint()
    passed = round()
    best = Math.min(best, Number(process.hrtime.bigint() - started) / total)
  }
  return { name, nsPerMsg: best, refused: 1 - passed / total }
}

const plain = (msgsPerSec: number, perMessageClock: boolean, perChunk: boolean) => () => {
  const start = performance.now()
  const buckets = keys.map(() => new TokenBucket(msgsPerSec, 8 * 1024 * 1024, start))
  let passed = 0
  if (perChunk) {
    for (let c = 0; c < MESSAGES / CHUNK; c++) {
      if (buckets[c % DEVICES]!.take(CHUNK, chunkBytes[c]!, performance.now())) passed += CHUNK
    }
    return passed
  }
  let now = performance.now()
  for (let i = 0; i < MESSAGES; i++) {
    if (perMessageClock || i % CHUNK === 0) now = performance.now()
    if (buckets[i % DEVICES]!.take(1, sizes[i]!, now)) passed++
  }
  return passed
}

const floor = () => {
  let sum = 0
  for (let i = 0; i < MESSAGES; i++) sum += sizes[i]! + (i % DEVICES)
  return sum > 0 ? MESSAGES : 0
}

type Limiter = RateLimiter.RateLimiter

const newLimiter = (): Limiter =>
  Effect.runSync(RateLimiter.make.pipe(Effect.provide(RateLimiter.layerStoreMemory)))

const consume = (limiter: Limiter, key: string, tokens: number, limit: number) =>
  limiter.consume({ algorithm: "token-bucket", onExceeded: "fail", window: 1000, limit, key, tokens })

const passes = <A, E>(self: Effect.Effect<A, E>) => Effect.match(self, { onFailure: () => false, onSuccess: () => true })

/** Effect's limiter: `withBytes` adds a second consume (the bytes key) per call; `chunk` calls once per 64 messages. */
const effect = (msgsPerSec: number, withBytes: boolean, mode: "message" | "chunk" | "loop", total = MESSAGES) => () => {
  const limiter = newLimiter()
  const one = (d: number, tokens: number, bytes: number) =>
    withBytes
      ? Effect.andThen(consume(limiter, keys[d]!, tokens, msgsPerSec), consume(limiter, byteKeys[d]!, bytes, 8 * 1024 * 1024))
      : consume(limiter, keys[d]!, tokens, msgsPerSec)
  let passed = 0
  if (mode === "message") {
    for (let i = 0; i < total; i++) if (Effect.runSync(passes(one(i % DEVICES, 1, sizes[i]!)))) passed++
  } else if (mode === "chunk") {
    for (let c = 0; c < MESSAGES / CHUNK; c++) {
      if (Effect.runSync(passes(one(c % DEVICES, CHUNK, chunkBytes[c]!)))) passed += CHUNK
    }
  } else {
    // one runSync per chunk of 64, a consume per message inside it (a socket read's frames, one Effect)
    for (let c = 0; c < MESSAGES / CHUNK; c++) {
      passed += Effect.runSync(Effect.gen(function*() {
        let ok = 0
        for (let i = c * CHUNK; i < (c + 1) * CHUNK; i++) if (yield* passes(one(c % DEVICES, 1, sizes[i]!))) ok++
        return ok
      }))
    }
  }
  return passed
}

/** Measures every case (plain bucket best of 5, Effect's limiter best of 2, each after a warm-up round). */
export const runRateLimitBench = (): Array<RateLimitRow> => {
  const L = 5_000
  const rows = [
    time("floor: plain loop over the messages, no limiting", floor, 5),
    time("token bucket, per message, clock read per message", plain(L, true, false), 5),
    time("token bucket, per message, clock read per 64", plain(L, false, false), 5),
    time("token bucket, per chunk of 64 (one take, one clock read)", plain(L, true, true), 5),
    time("token bucket, per message, tight limit (refusals)", plain(1, false, false), 5)
  ]
  rows.push(
    time("Effect RateLimiter, runSync per message, msgs only", effect(L, false, "message"), 2),
    time("Effect RateLimiter, runSync per message, msgs + bytes", effect(L, true, "message"), 2),
    time("Effect RateLimiter, runSync per chunk of 64, msgs + bytes", effect(L, true, "chunk"), 2),
    time("Effect RateLimiter, runSync per 64, a consume per message inside, msgs + bytes", effect(L, true, "loop"), 2),
    // refusals cost ~15 µs each (an error object per call): 100,000 messages are enough
    time("Effect RateLimiter, runSync per message, tight limit (refusals, msgs only; 100,000 messages)", effect(1, false, "message", 100_000), 2, 100_000)
  )
  return rows
}

/** The rows as a markdown table. */
export const rateLimitTable = (rows: ReadonlyArray<RateLimitRow>): string => [
  `\n### ratelimit: per-device rate limiting, ${fmt(MESSAGES)} messages over ${fmt(DEVICES)} devices (in process, best of 5 / 2)`,
  "| case | ns/msg | refused |",
  "|---|---:|---:|",
  ...rows.map((r) => `| ${r.name} | ${fmt(r.nsPerMsg, 1)} | ${fmt(r.refused * 100, 1)}% |`)
].join("\n")
