/**
 * Each device's highest committed seq per epoch (`welcome.lastSeq`), whichever sinks took its
 * messages: raised only after every sink a message was routed to confirmed it, never before, so
 * a device that trusts it never drops a message a sink does not hold. Kept in the embedded
 * store's `device_state` table. When SQLite is the only sink, nothing needs raising: the store
 * reads the highest seq in `messages` itself (a row there is held by every sink of its route);
 * otherwise the router reports confirmed messages here and they are written behind
 * the acks, coalesced per device (one small transaction at a time; at most
 * {@link MAX_PENDING_STATES} devices waiting, past which updates are dropped: a state that lags
 * only makes a device resend what the sinks then report as duplicates).
 */
import { Context, Effect, FiberSet, Layer } from "effect"
import type { Envelope } from "../domain/Envelope.ts"
import { MessageOutcome } from "./Contract.ts"
import { LocalStore } from "./sqlite/SqliteSink.ts"
import type { DeviceSeq } from "./sqlite/SqliteStore.ts"

/** Devices whose new state may wait to be written at once. */
export const MAX_PENDING_STATES = 65_536

/** The device-state service. */
export interface DeviceStateShape {
  /** Highest committed seq of (device, epoch), or null when none is known (or the store cannot say). */
  readonly lastSeq: (device: string, epoch: number) => Effect.Effect<number | null>
  /** Messages of `batch` whose outcome is Committed or Duplicate are held by all their sinks: raise their devices' state. */
  readonly confirmed: (batch: ReadonlyArray<Envelope>, outcomes: Uint8Array) => void
}

/** Where `welcome.lastSeq` comes from. */
export class DeviceState extends Context.Service<DeviceState, DeviceStateShape>()("gateway/DeviceState") {
  /** Device states in the embedded store; `raiseHere` false when SQLite is the only sink (its `messages` say). */
  static readonly local = (raiseHere: boolean) =>
    Layer.effect(
      DeviceState,
      Effect.gen(function*() {
        const store = yield* LocalStore
        const runFork = yield* FiberSet.makeRuntime<never, void, never>()
        /** Confirmed, not yet written: key device\0epoch → [device, epoch, seq]. */
        let pending = new Map<string, [string, number, number]>()
        let writing = false

        const flush: Effect.Effect<void> = Effect.suspend(() => {
          if (pending.size === 0) {
            writing = false
            return Effect.void
          }
          const states: Array<DeviceSeq> = [...pending.values()]
          pending = new Map()
          return store.raiseStates(states).pipe(
            Effect.catch((e) => Effect.logWarning("device states not stored").pipe(Effect.annotateLogs({ error: e.message }))),
            Effect.andThen(flush)
          )
        })

        const confirmed = (batch: ReadonlyArray<Envelope>, outcomes: Uint8Array) => {
          if (!raiseHere) return
          for (let i = 0; i < batch.length; i++) {
            const o = outcomes[i]
            if (o !== MessageOutcome.Committed && o !== MessageOutcome.Duplicate) continue
            const e = batch[i]!
            const key = `${e.device}\u0000${e.epoch}`
            const known = pending.get(key)
            if (known !== undefined) {
              if (e.seq > known[2]) known[2] = e.seq
            } else if (pending.size < MAX_PENDING_STATES) pending.set(key, [e.device, e.epoch, e.seq])
          }
          if (!writing && pending.size > 0) {
            writing = true
            runFork(flush)
          }
        }

        const lastSeq = (device: string, epoch: number) =>
          store.lastSeq(device, epoch).pipe(
            Effect.map((stored) => {
              const waiting = pending.get(`${device}\u0000${epoch}`)?.[2]
              return waiting === undefined ? stored : Math.max(waiting, stored ?? waiting)
            }),
            Effect.orElseSucceed(() => null)
          )

        return { lastSeq, confirmed }
      })
    )
}
