/**
 * The node-wide memory budget (`GATEWAY_MEMORY_BUDGET`), counted in bytes (DESIGN.md): every
 * message from its ingest until its answer (held by its connection, waiting in a lane, or in a
 * batch at the sink) is charged its estimated heap cost; the connections' unread input and
 * unsent answers are sampled in. Past the high watermark telemetry is shed and loaded
 * connections stop reading; past the budget every connection stops reading and new connections
 * are refused `busy`. Connections that stopped for the budget are woken when the use falls
 * below the low watermark.
 */
import { Context, Effect, Layer, Schedule } from "effect"
import { GatewayConfig } from "../config/GatewayConfig.ts"
import * as Metrics from "../observability/Metrics.ts"

/**
 * Estimated heap cost of one message from the byte length of its frame: the parsed body and
 * the envelope around it take about twice the text (numbers and keys become heap objects), plus
 * the fixed objects of a message in flight (envelope, ticket, lane entry). Measured with the
 * flood test: see README "Memory budget".
 */
export const messageCost = (frameBytes: number): number => 2 * frameBytes + 256

/** The budget's bookkeeping; synchronous, called from the hot path. */
export class Budget {
  /** Bytes the budget allows in all. */
  readonly limit: number
  /** Above this, telemetry is shed and connections with unanswered frames stop reading. */
  readonly high: number
  /** Stopped connections resume below this (hysteresis: no flapping around `high`). */
  readonly low: number
  /** Bytes of messages between ingest and answer (exact: charged and released per message). */
  private held = 0
  /** Bytes in connection buffers (unread input, unsent answers), sampled by the listener. */
  private buffered = 0
  /** Wake-ups of connections waiting for the use to fall below `low`. */
  private readonly waiting = new Set<() => void>()

  constructor(limit: number, highPercent: number) {
    this.limit = limit
    this.high = Math.floor((limit * highPercent) / 100)
    this.low = Math.floor(this.high * 0.85)
  }

  /** Bytes in use now. */
  used(): number {
    return this.held + this.buffered
  }

  /** Bytes of messages in flight. */
  heldBytes(): number {
    return this.held
  }

  /** Bytes in connection buffers at the last sample. */
  bufferedBytes(): number {
    return this.buffered
  }

  /** True above the high watermark. */
  isHigh(): boolean {
    return this.held + this.buffered >= this.high
  }

  /** True when the budget is spent. */
  isFull(): boolean {
    return this.held + this.buffered >= this.limit
  }

  /** Charges the messages of one socket read. */
  charge(bytes: number): void {
    this.held += bytes
  }

  /** Releases what was charged for answered (or abandoned) messages. */
  release(bytes: number): void {
    if (bytes <= 0) return
    this.held -= bytes
    if (this.waiting.size > 0 && this.held + this.buffered < this.low) this.relieve()
  }

  /** Records the sampled connection buffers. */
  setBuffered(bytes: number): void {
    this.buffered = bytes
    if (this.waiting.size > 0 && this.held + this.buffered < this.low) this.relieve()
  }

  /** Calls `wake` once the use falls below the low watermark (at most once per registration). */
  onRelief(wake: () => void): void {
    this.waiting.add(wake)
  }

  /** Forgets a registration (the connection closed). */
  forget(wake: () => void): void {
    this.waiting.delete(wake)
  }

  /** Wakes the waiting connections after the current work (never inside another connection's). */
  private relieve(): void {
    const wakes = [...this.waiting]
    this.waiting.clear()
    queueMicrotask(() => {
      for (const wake of wakes) wake()
    })
  }
}

/** How often the budget's gauges are published. */
const GAUGE_EVERY = "250 millis"

/** The memory budget as a service. */
export class MemoryBudget extends Context.Service<MemoryBudget, Budget>()("gateway/MemoryBudget") {
  /** The budget of GATEWAY_MEMORY_BUDGET / GATEWAY_MEMORY_HIGH_PERCENT, with its gauges. */
  static readonly layer = Layer.effect(
    MemoryBudget,
    Effect.gen(function*() {
      const config = yield* GatewayConfig
      const budget = new Budget(config.memoryBudget, config.memoryHighPercent)
      Metrics.record(Metrics.memoryBudgetBytes, budget.limit)
      const held = Metrics.memoryUsed("messages")
      const buffered = Metrics.memoryUsed("buffers")
      yield* Effect.sync(() => {
        Metrics.record(held, budget.heldBytes())
        Metrics.record(buffered, budget.bufferedBytes())
      }).pipe(Effect.repeat(Schedule.spaced(GAUGE_EVERY)), Effect.forkScoped)
      return budget
    })
  )
}
