/**
 * One simulator run: builds the devices, drives them from one send schedule, sweeps nack retries,
 * keeps sessions alive, reports progress every second, and ends in three steps: the schedule ends
 * (after `duration`, or at {@link FleetRun.stop}), the devices get up to `drain` to settle what
 * they hold (reconnecting and resending as needed), then every session says `bye` and closes.
 *
 * A run that has had no session and heard nothing from any gateway line for 5 s (or the whole
 * duration, if shorter) ends early: nothing answers at that address.
 */
import { monitorEventLoopDelay } from "node:perf_hooks"
import type { Credentials } from "./Credentials.ts"
import { type DeviceContext, type DeviceReport, SimDevice } from "./Device.ts"
import type { Dial } from "./Dial.ts"
import { newRunId } from "./FrameText.ts"
import { SendSchedule } from "./Schedule.ts"
import { Stats } from "./Stats.ts"

/** What to simulate. */
export interface FleetOptions {
  readonly devices: number
  /** Device ids are `prefix + index`. */
  readonly prefix: string
  readonly epoch: number
  /** Frames per device per second. */
  readonly rate: number
  /** Fraction of frames that are events. */
  readonly events: number
  readonly durationMs: number
  readonly window: number
  readonly backlog: number
  /** Schedule jitter, a fraction of the period (0..1). */
  readonly jitter: number
  /** First connections per second (0: all at once); device i boots at i / connectRate. */
  readonly connectRate: number
  readonly traceRatio: number
  /** Longest wait for every frame to settle once the schedule ended (ms). */
  readonly drainMs: number
  readonly maxBackoffMs: number
  readonly connectTimeoutMs: number
}

/** What a run produced. */
export interface FleetOutcome {
  readonly stats: Stats
  /** From the schedule's start to the end of the drain (ms). */
  readonly elapsedMs: number
  /** From the schedule's start to its end (ms). */
  readonly sendingMs: number
  /** True when {@link FleetRun.stop} ended it. */
  readonly interrupted: boolean
  /** Why it ended before its time without a session, when it did. */
  readonly aborted: string | undefined
  /** Sessions open when the drain ended. */
  readonly connectedAtEnd: number
  readonly unanswered: number
  readonly neverSent: number
  readonly reports: ReadonlyArray<DeviceReport>
  /** The simulator's own event-loop delay over the run (ms): high values mean it limited the timing. */
  readonly loopDelayMs: { readonly p99: number; readonly max: number }
}

/** A run in progress. */
export interface FleetRun {
  readonly outcome: Promise<FleetOutcome>
  /** Ends the schedule now and drains; a second call skips the rest of the drain. */
  readonly stop: () => void
}

/** What the run tells its caller as it goes. */
export interface FleetHooks {
  /** Called every second with the run's stats and the seconds since the start. */
  readonly onSecond: (stats: Stats, elapsedS: number, secondS: number) => void
  /** A warning for the person running it (already rate-limited to 5 a second). */
  readonly warn: (message: string) => void
}

const SWEEP_MS = 20
const KEEPALIVE_CHECK_MS = 250
const CLOSE_WAIT_MS = 2_000
const NO_ANSWER_ABORT_MS = 5_000
const WARNINGS_PER_SECOND = 5

/** Starts a run against the gateway `dial` reaches. */
export const runFleet = (o: FleetOptions, dial: Dial, credentials: Credentials, hooks: FleetHooks): FleetRun => {
  const stats = new Stats()
  const waiting = new Set<SimDevice>()
  let warnings = 0
  let suppressed = 0
  const ctx: DeviceContext = {
    stats,
    dial,
    credentials,
    epoch: o.epoch,
    window: o.window,
    backlog: o.backlog,
    events: o.events,
    traceRatio: o.traceRatio,
    runId: newRunId(),
    maxBackoffMs: o.maxBackoffMs,
    connectTimeoutMs: o.connectTimeoutMs,
    waiting,
    warn: (message) => {
      if (warnings++ < WARNINGS_PER_SECOND) hooks.warn(message)
      else suppressed++
    }
  }
  const loopDelay = monitorEventLoopDelay({ resolution: 10 })
  loopDelay.enable()
  const devices: Array<SimDevice> = []
  for (let i = 0; i < o.devices; i++) devices.push(new SimDevice(i, `${o.prefix}${i}`, ctx))

  const bootMs = (i: number) => (o.connectRate > 0 ? (i * 1000) / o.connectRate : 0)
  const origin = performance.now() + 10
  const schedule = new SendSchedule({
    devices: o.devices,
    origin,
    periodMs: 1000 / o.rate,
    durationMs: o.durationMs,
    jitter: o.jitter,
    bootMs
  })
  for (const d of devices) d.start(10 + bootMs(d.index))

  let phase: "sending" | "draining" | "closing" = "sending"
  let interrupted = false
  let aborted: string | undefined
  let sendingEnd = 0
  let drainDeadline = 0
  let resolve: (outcome: FleetOutcome) => void = () => undefined
  const outcome = new Promise<FleetOutcome>((r) => (resolve = r))

  // ---- the schedule ----
  const emit = (i: number, at: number) => devices[i]!.produce(at)
  let producer: ReturnType<typeof setTimeout> | undefined
  const produce = () => {
    schedule.runDue(performance.now(), emit)
    const next = schedule.nextDue()
    producer = next === Infinity ? undefined : setTimeout(produce, Math.max(0, next - performance.now()))
  }
  producer = setTimeout(produce, 10)
  const endOfSending = setTimeout(() => endSending(), 10 + o.durationMs)

  const endSending = () => {
    if (phase !== "sending") return
    phase = "draining"
    sendingEnd = performance.now()
    schedule.clear()
    clearTimeout(producer)
    clearTimeout(endOfSending)
    drainDeadline = performance.now() + o.drainMs
  }

  // ---- housekeeping ----
  const sweeper = setInterval(() => {
    if (waiting.size === 0) return
    const now = performance.now()
    for (const d of [...waiting]) d.sweep(now)
  }, SWEEP_MS)
  const keeper = setInterval(() => {
    const now = performance.now()
    for (const d of devices) d.keepalive(now)
  }, KEEPALIVE_CHECK_MS)
  const drainer = setInterval(() => {
    if (phase === "draining" && (stats.pending === 0 || performance.now() >= drainDeadline)) void finish()
  }, SWEEP_MS)
  let lastSecond = performance.now()
  const ticker = setInterval(() => {
    const now = performance.now()
    hooks.onSecond(stats, (now - origin) / 1000, (now - lastSecond) / 1000)
    lastSecond = now
    if (suppressed > 0) hooks.warn(`(${suppressed} more warnings in the last second)`)
    warnings = 0
    suppressed = 0
    if (devices.every((d) => d.isStopped)) {
      aborted = stats.sessions === 0 ? "every device was refused" : undefined
      void finish()
    } else if (stats.sessions === 0 && stats.gatewayLines === 0 && now - origin >= Math.min(NO_ANSWER_ABORT_MS, o.durationMs)) {
      const errors = [...stats.socketErrors].map(([code, n]) => `${code} ×${n}`).join(", ")
      aborted = `nothing answered${errors === "" ? "" : ` (${errors})`}`
      void finish()
    }
  }, 1000)

  // ---- the end ----
  const finish = async () => {
    if (phase === "closing") return
    if (phase === "sending") endSending()
    phase = "closing"
    clearInterval(sweeper)
    clearInterval(keeper)
    clearInterval(drainer)
    clearInterval(ticker)
    const end = performance.now()
    loopDelay.disable()
    const connectedAtEnd = stats.connected
    // `bye`: the gateway answers what is pending, then closes (answers still count)
    let timer: ReturnType<typeof setTimeout> | undefined
    await Promise.race([
      Promise.all(devices.map((d) => d.stop())),
      new Promise<void>((r) => (timer = setTimeout(r, CLOSE_WAIT_MS)))
    ])
    clearTimeout(timer)
    for (const d of devices) d.destroy()
    let unanswered = 0
    let neverSent = 0
    for (const d of devices) {
      const out = d.outstanding()
      unanswered += out.unanswered
      neverSent += out.neverSent
    }
    resolve({
      stats,
      elapsedMs: end - origin,
      sendingMs: sendingEnd - origin,
      interrupted,
      aborted,
      connectedAtEnd,
      unanswered,
      neverSent,
      reports: devices.map((d) => d.report()),
      loopDelayMs: { p99: loopDelay.percentile(99) / 1e6, max: loopDelay.max / 1e6 }
    })
  }

  const stop = () => {
    interrupted = true
    if (phase === "sending") endSending()
    else void finish()
  }
  return { outcome, stop }
}
