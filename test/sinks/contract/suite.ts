/**
 * The sink contract suite (issue 11): the same assertions, run against every driver of
 * src/sinks/Contract.ts (SQLite, NATS JetStream, PostgreSQL), each through a
 * {@link ContractHarness} of its own that makes a fresh driver on a fresh store, reads back what
 * the store holds, makes the store or its server really unavailable and available again, and
 * makes a message the driver refuses for good.
 *
 * What every driver must do:
 * 1. a fresh batch: every message Committed, no reasons, each stored exactly once with its traceparent;
 * 2. the same batch again: every message Duplicate, still stored once; one key twice in one batch:
 *    one Committed and one Duplicate, stored once;
 * 3. a batch of good messages and one the driver refuses: only that one Rejected, with a reason,
 *    and not stored; the others Committed and stored; the sink stays ready;
 * 4. the store or server unavailable: a write fails with a retryable {@link SinkError}, or every
 *    message of it is Unavailable with a reason (none Committed); health turns not ready with a
 *    retryable reason and a message; nothing Committed before is missing. Available again: health
 *    ready again within the harness's deadline WITHOUT any write (only health polled), the batch
 *    that was not taken is taken on a resend (Committed, or Duplicate if the server had it), a
 *    fresh batch Committed, and each stored exactly once;
 * 5. health ready at start (asked once, not polled);
 * 6. the outcome array as long as the batch, for batches of 0, 1 and 1000.
 *
 * A harness whose store cannot be made unavailable for real says why ({@link OutageAbsent}): the
 * outage test then still runs, says so loudly, and asserts what it can without the outage (the
 * driver stays ready and commits); nothing is skipped silently. A harness whose service binary is
 * missing runs no test, with a loud warning (or fails when GATEWAY_REQUIRE_SERVICES=1: the
 * harness's `require` decides, as test/support/natsServer.ts does).
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect, Exit, type Scope } from "effect"
import type { Envelope } from "../../../src/domain/Envelope.ts"
import { type BatchResult, isRetryable, MessageOutcome, messageId, SinkError, type SinkDriver, type SinkHealth } from "../../../src/sinks/Contract.ts"
import { eventEnvelope, telemetryEnvelope } from "../../support/envelopes.ts"

/** What the store holds for one message key. */
export interface StoredKey {
  /** Rows (or stream messages) with that key. */
  readonly count: number
  /** True when the stored message carries a traceparent. */
  readonly traceparent: boolean
}

/**
 * A real outage of the store or server a driver writes to, and its repair: a killed server
 * restarted, a full filesystem given room again.
 */
export interface Outage {
  readonly kind: "outage"
  /** The condition, in words (shown in the test's name). */
  readonly condition: string
  /** Makes the store or server unavailable; resolves once it is. */
  readonly begin: Effect.Effect<void>
  /** Makes it available again; resolves once it is (the driver may not have noticed yet). Safe to call twice. */
  readonly end: Effect.Effect<void>
}

/** The harness cannot make this store unavailable for real, and why. */
export interface OutageAbsent {
  readonly kind: "absent"
  readonly because: string
}

/** One fresh driver on a fresh store, for the life of a scope. */
export interface DriverInstance {
  readonly driver: SinkDriver
  /**
   * What the store holds for `keys` (the {@link messageId} form `<device>:<epoch>:<seq>`): a key
   * that is not stored may be absent from the map or have count 0.
   */
  readonly stored: (keys: ReadonlyArray<string>) => Effect.Effect<ReadonlyMap<string, StoredKey>>
  /** How to make this instance's store unavailable, or why it cannot be. */
  readonly outage: Outage | OutageAbsent
}

/** What the suite needs from a driver. */
export interface ContractHarness {
  /**
   * Undefined when the driver can be tested here; else why not (a service binary missing).
   * The harness warns loudly (or throws under GATEWAY_REQUIRE_SERVICES=1) itself.
   */
  readonly missing: string | undefined
  /** Before the file's tests (start a private server). */
  readonly setup?: () => Promise<void>
  /** After the file's tests (stop it, remove its files). */
  readonly teardown?: () => Promise<void>
  /** A fresh driver on a fresh store; closing the scope closes both. */
  readonly make: Effect.Effect<DriverInstance, unknown, Scope.Scope>
  /** A message `device`/`seq` that this driver refuses for good, and what makes it refused. */
  readonly refused: { readonly what: string; readonly make: (device: string, seq: number) => Envelope }
  /** How long a health change may take to show (polled every 50 ms). */
  readonly healthDeadlineMs: number
  /** Per-test timeout. */
  readonly timeoutMs?: number
}

const OUTCOME_NAMES = ["Committed", "Duplicate", "Rejected", "Unavailable"] as const

/** Outcome codes as names, for readable diffs (an unknown code as `?<n>`). */
export const outcomeNames = (outcomes: Uint8Array): Array<string> => [...outcomes].map((o) => OUTCOME_NAMES[o] ?? `?${o}`)

/** A W3C traceparent derived from a message's seq. */
export const traceparentOf = (seq: number): string => `00-${"c".repeat(32)}-${seq.toString(16).padStart(16, "0")}-01`

/** `count` messages of `device` from seq `from`, with traceparents; every fifth an event, the others telemetry. */
export const envelopes = (device: string, from: number, count: number): Array<Envelope> =>
  Array.from({ length: count }, (_, i): Envelope => {
    const seq = from + i
    const e: Envelope = seq % 5 === 0 ? eventEnvelope(device, seq, "door") : telemetryEnvelope(device, seq, { temp: seq % 50 })
    return { ...e, traceparent: traceparentOf(seq) }
  })

const keysOf = (batch: ReadonlyArray<Envelope>): Array<string> => batch.map(messageId)

/** Each Rejected or Unavailable message has a reason; every reason names a message of the batch. */
const expectReasons = (result: BatchResult, size: number) => {
  expect(result.outcomes.length, "one outcome per message").toBe(size)
  for (let i = 0; i < size; i++) {
    const o = result.outcomes[i]
    if (o === MessageOutcome.Rejected || o === MessageOutcome.Unavailable) {
      const reason = result.reasons.get(i)
      expect(typeof reason === "string" && reason.length > 0, `outcome ${i} (${OUTCOME_NAMES[o]}) has a reason`).toBe(true)
    }
  }
  for (const i of result.reasons.keys()) {
    expect(Number.isInteger(i) && i >= 0 && i < size, `reason index ${i} within the batch of ${size}`).toBe(true)
  }
}

/** Writes `batch`; checks the outcome array's length and the reasons; returns the result. */
const write = (driver: SinkDriver, batch: ReadonlyArray<Envelope>) =>
  Effect.map(driver.write(batch), (result) => {
    expectReasons(result, batch.length)
    return result
  })

/** Writes `batch` and expects every message to have `outcome`. */
const writeExpecting = (driver: SinkDriver, batch: ReadonlyArray<Envelope>, outcome: MessageOutcome) =>
  Effect.map(write(driver, batch), (result) => {
    expect(outcomeNames(result.outcomes)).toEqual(new Array<string>(batch.length).fill(OUTCOME_NAMES[outcome]))
    if (outcome === MessageOutcome.Committed || outcome === MessageOutcome.Duplicate) {
      expect([...result.reasons.entries()], "no reasons for a batch taken whole").toEqual([])
    }
    return result
  })

/** Expects each of `keys` stored exactly once, with a traceparent. */
const expectStoredOnce = (instance: DriverInstance, keys: ReadonlyArray<string>) =>
  Effect.gen(function*() {
    const stored = yield* instance.stored(keys)
    const wrong: Array<string> = []
    for (const k of keys) {
      const s = stored.get(k)
      if (s === undefined || s.count !== 1 || !s.traceparent) wrong.push(`${k}: ${s === undefined ? "missing" : `count ${s.count}, traceparent ${s.traceparent}`}`)
    }
    expect(wrong, `of ${keys.length} keys, these are not stored exactly once with a traceparent`).toEqual([])
  })

/** Expects none of `keys` stored. */
const expectNotStored = (instance: DriverInstance, keys: ReadonlyArray<string>) =>
  Effect.gen(function*() {
    const stored = yield* instance.stored(keys)
    expect(keys.filter((k) => (stored.get(k)?.count ?? 0) > 0), "stored although refused").toEqual([])
  })

/** Polls health every 50 ms until its readiness is `ready`; fails the test after `ms`. */
const healthBecomes = (driver: SinkDriver, ready: boolean, ms: number): Effect.Effect<SinkHealth> =>
  Effect.gen(function*() {
    const deadline = Date.now() + ms
    for (;;) {
      const h = yield* driver.health
      if (h.ready === ready) return h
      if (Date.now() > deadline) {
        return yield* Effect.die(new Error(`health not ${ready ? "ready" : "not ready"} within ${ms} ms: last ${JSON.stringify(h)}`))
      }
      yield* Effect.sleep("50 millis")
    }
  })

/**
 * Registers the contract tests of one driver: `name` (`sqlite`, `nats`, `postgres`) and its
 * harness. Without the driver's service (`harness.missing`) no test is registered to run (the
 * harness has warned loudly).
 */
export const contractSuite = (name: string, harness: ContractHarness): void => {
  const runs = harness.missing === undefined
  const timeout = harness.timeoutMs ?? 60_000
  const deadline = harness.healthDeadlineMs

  if (runs && harness.setup !== undefined) beforeAll(harness.setup, 120_000)
  if (runs && harness.teardown !== undefined) afterAll(harness.teardown, 60_000)

  const fresh = Effect.orDie(harness.make)

  describe.runIf(runs)(`sink contract: ${name}`, () => {
    it.live("(5) health is ready at start", () =>
      Effect.gen(function*() {
        const { driver } = yield* fresh
        expect(yield* driver.health).toEqual({ ready: true })
      }), timeout)

    it.live("(1) a fresh batch: every message Committed, each stored exactly once with its traceparent", () =>
      Effect.gen(function*() {
        const instance = yield* fresh
        const batch = envelopes("contract-fresh", 1, 20)
        yield* writeExpecting(instance.driver, batch, MessageOutcome.Committed)
        yield* expectStoredOnce(instance, keysOf(batch))
      }), timeout)

    it.live("(2) the same batch again: every message Duplicate, still stored once", () =>
      Effect.gen(function*() {
        const instance = yield* fresh
        const batch = envelopes("contract-dup", 1, 20)
        yield* writeExpecting(instance.driver, batch, MessageOutcome.Committed)
        yield* writeExpecting(instance.driver, batch, MessageOutcome.Duplicate)
        // once more, in another order and with new messages among them
        const mixed = [...envelopes("contract-dup", 21, 5), ...batch.slice().reverse()]
        const r = yield* write(instance.driver, mixed)
        expect(outcomeNames(r.outcomes)).toEqual([...new Array<string>(5).fill("Committed"), ...new Array<string>(20).fill("Duplicate")])
        yield* expectStoredOnce(instance, keysOf(mixed))
      }), timeout)

    it.live("(2) one key twice in one batch: one Committed and one Duplicate, stored once", () =>
      Effect.gen(function*() {
        const instance = yield* fresh
        const [a, b, c] = envelopes("contract-twice", 1, 3) as [Envelope, Envelope, Envelope]
        const batch = [a, b, a, c]
        const r = yield* write(instance.driver, batch)
        const names = outcomeNames(r.outcomes)
        expect([names[1], names[3]], "the other messages").toEqual(["Committed", "Committed"])
        expect([names[0], names[2]].sort(), "the key written twice").toEqual(["Committed", "Duplicate"])
        yield* expectStoredOnce(instance, keysOf([a, b, c]))
      }), timeout)

    it.live(`(3) one refused message (${harness.refused.what}) among good ones: only it Rejected, with a reason; the others Committed and stored`, () =>
      Effect.gen(function*() {
        const instance = yield* fresh
        const good = envelopes("contract-reject", 1, 6)
        const bad = harness.refused.make("contract-reject", 100)
        const batch = [...good.slice(0, 3), bad, ...good.slice(3)]
        const r = yield* write(instance.driver, batch)
        expect(outcomeNames(r.outcomes)).toEqual(["Committed", "Committed", "Committed", "Rejected", "Committed", "Committed", "Committed"])
        expect([...r.reasons.keys()], "a reason for the refused message only").toEqual([3])
        yield* expectStoredOnce(instance, keysOf(good))
        yield* expectNotStored(instance, [messageId(bad)])
        // refused alone, and refused again: a rejection is no outage
        const again = yield* write(instance.driver, [bad])
        expect(outcomeNames(again.outcomes)).toEqual(["Rejected"])
        expect(yield* instance.driver.health).toEqual({ ready: true })
      }), timeout)

    it.live("(4) unavailable: never Committed, retryable, not ready with a reason; available again: ready without traffic, writes Committed, nothing lost", () =>
      Effect.gen(function*() {
        const instance = yield* fresh
        const { driver, outage } = instance
        const before = envelopes("contract-outage", 1, 50)
        const during = envelopes("contract-outage", 51, 50)
        const after = envelopes("contract-outage", 101, 50)
        yield* writeExpecting(driver, before, MessageOutcome.Committed)

        if (outage.kind === "absent") {
          console.warn(`NOT TESTED LOUDLY: ${name} sink contract (4), unavailability: ${outage.because}; asserting only that it stays ready and commits`)
          expect(yield* driver.health).toEqual({ ready: true })
          yield* writeExpecting(driver, during, MessageOutcome.Committed)
          yield* expectStoredOnce(instance, keysOf([...before, ...during]))
          return
        }

        // the outage is repaired whatever happens below (the next test needs the server)
        yield* Effect.addFinalizer(() => outage.end)
        yield* outage.begin

        const exit = yield* Effect.exit(write(driver, during))
        if (Exit.isFailure(exit)) {
          const error = yield* Effect.flip(exit)
          expect(error, `${outage.condition}: the whole batch failed with a SinkError`).toBeInstanceOf(SinkError)
          expect(error.retryable, `${outage.condition}: the batch failed for a reason a retry may outlive (${error.reason}: ${error.message})`).toBe(true)
        } else {
          // every message Unavailable, each with its reason (checked by write)
          expect(outcomeNames(exit.value.outcomes), `${outage.condition}: none taken`).toEqual(new Array<string>(during.length).fill("Unavailable"))
        }

        const down = yield* healthBecomes(driver, false, deadline)
        const why = down.ready ? { reason: undefined, message: "" } : down
        expect(why.reason !== undefined && isRetryable(why.reason), `${outage.condition}: not ready for a reason a retry may outlive (${why.reason}: ${why.message})`).toBe(true)
        expect(why.message.length, "not ready, saying why").toBeGreaterThan(0)

        yield* outage.end
        // ready again by itself: health is polled, nothing is written meanwhile
        yield* healthBecomes(driver, true, deadline)
        yield* expectStoredOnce(instance, keysOf(before))

        // not taken, resent: Committed (or Duplicate, had the store kept one it could not acknowledge)
        const resent = yield* write(driver, during)
        expect(outcomeNames(resent.outcomes).filter((o) => o !== "Committed" && o !== "Duplicate"), "the batch not taken, resent").toEqual([])
        yield* writeExpecting(driver, after, MessageOutcome.Committed)
        yield* expectStoredOnce(instance, keysOf([...before, ...during, ...after]))
        expect(yield* driver.health).toEqual({ ready: true })
      }), timeout)

    it.live("(6) one outcome per message: batches of 0, 1 and 1000", () =>
      Effect.gen(function*() {
        const instance = yield* fresh
        const none = yield* write(instance.driver, [])
        expect(none.outcomes.length).toBe(0)
        const one = envelopes("contract-sizes", 1, 1)
        yield* writeExpecting(instance.driver, one, MessageOutcome.Committed)
        const thousand = envelopes("contract-sizes", 2, 1000)
        yield* writeExpecting(instance.driver, thousand, MessageOutcome.Committed)
        yield* expectStoredOnce(instance, keysOf([...one, ...thousand]))
        yield* writeExpecting(instance.driver, thousand, MessageOutcome.Duplicate)
      }), timeout)
  })
}
