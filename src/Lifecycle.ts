/**
 * Shutdown state shared by the stages: whether the gateway is draining (readiness false), the
 * drain deadline (`GATEWAY_DRAIN_TIMEOUT_MS` from the signal), and what a cut drain left behind,
 * which decides the exit code.
 */
import { Context, Effect, Layer } from "effect"
import { GatewayConfig } from "./config/GatewayConfig.ts"

/** Mutable drain state (read synchronously by the admin endpoints and the stages). */
export interface LifecycleShape {
  /** True from the first shutdown step on. */
  readonly isDraining: () => boolean
  /** Starts draining now; idempotent. */
  readonly beginDrain: Effect.Effect<void>
  /** Milliseconds left until the drain deadline (the full timeout before draining starts). */
  readonly remainingMs: Effect.Effect<number>
  /** Records that the drain was cut with work left (makes the exit code non-zero). */
  readonly markCut: (what: string) => void
  /** What was cut, empty when everything drained. */
  readonly cuts: () => ReadonlyArray<string>
}

/** The lifecycle service. */
export class Lifecycle extends Context.Service<Lifecycle, LifecycleShape>()("gateway/Lifecycle") {
  /** Lifecycle with the configured drain timeout. */
  static readonly layer = Layer.effect(
    Lifecycle,
    Effect.gen(function*() {
      const { drainTimeoutMs } = yield* GatewayConfig
      let deadline: number | undefined
      const cuts: Array<string> = []
      const now = Effect.clockWith((c) => c.currentTimeMillis)
      return Lifecycle.of({
        isDraining: () => deadline !== undefined,
        beginDrain: Effect.map(now, (t) => {
          deadline ??= t + drainTimeoutMs
        }),
        remainingMs: Effect.map(now, (t) => Math.max(0, (deadline ?? t + drainTimeoutMs) - t)),
        markCut: (what) => {
          if (cuts.length < 16) cuts.push(what)
        },
        cuts: () => cuts
      })
    })
  )
}
