/**
 * What the simulator prints: the live progress line (stderr, every second) and the summary at
 * the end (stdout: a few aligned lines for people, or one JSON object with `--json`).
 */
import type { DeviceReport } from "./Device.ts"
import type { FleetOptions, FleetOutcome } from "./Fleet.ts"
import type { Stats } from "./Stats.ts"

/** The end-of-run summary (also the `--json` object). */
export interface Summary {
  /** `host:port` of the gateway. */
  readonly target: string
  readonly devices: number
  /** Frames per device per second. */
  readonly rate: number
  /** Fraction of frames that are events. */
  readonly events: number
  readonly durationS: number
  /** Seconds from the start to the end of the drain. */
  readonly elapsedS: number
  /** Ended early by SIGINT/SIGTERM. */
  readonly interrupted: boolean
  /** Why the run gave up without any session, or null. */
  readonly aborted: string | null
  readonly frames: {
    readonly produced: number
    readonly telemetry: number
    readonly events: number
    readonly traced: number
    /** Frames written at least once. */
    readonly sent: number
    /** Writes, resends included. */
    readonly writes: number
    readonly resent: number
    readonly acked: number
    readonly dupAcks: number
    /** Refused for good (`invalid`, `forbidden`): not resent. */
    readonly rejected: number
    /** Not produced: the device's backlog was full. */
    readonly overflow: number
    /** Written and never settled. */
    readonly unanswered: number
    /** Produced and never written. */
    readonly neverSent: number
    /** Answers that matched no frame in flight. */
    readonly unexpected: number
  }
  /** Every frame written got its final answer (an ack, or a nack that is not retried). */
  readonly allAnswered: boolean
  /** Every frame produced was settled and none overflowed. */
  readonly complete: boolean
  /** Acks per second over the sending time. */
  readonly ackedPerSec: number
  /** Ack latency from each frame's scheduled send time, over the run. */
  readonly latencyMs: { readonly p50: number; readonly p95: number; readonly p99: number; readonly max: number; readonly mean: number }
  /** Nacks by code (resends' included). */
  readonly nacks: Record<string, number>
  readonly sessions: {
    /** Devices that had at least one session. */
    readonly devicesConnected: number
    /** Sessions open when the drain ended. */
    readonly connectedAtEnd: number
    readonly opened: number
    /** Sessions opened again by a device that had one before. */
    readonly reconnects: number
    /** TCP connection attempts. */
    readonly attempts: number
    /** `error busy` refusals. */
    readonly busy: number
    /** Shortest wait from a `busy` to the device's next attempt (ms), null when none. */
    readonly busyWaitMinMs: number | null
    readonly goaways: number
    /** Shortest wait from a `goaway` to the device's next attempt (ms), null when none. */
    readonly goawayWaitMinMs: number | null
    /** Hellos that carried a goaway's resume hint. */
    readonly resumeHellos: number
    readonly pings: number
    /** `error` frames by code. */
    readonly errors: Record<string, number>
    /** Socket errors by code. */
    readonly socketErrors: Record<string, number>
    /** Devices that stopped for good, by cause. */
    readonly gaveUp: Record<string, number>
  }
  /**
   * The simulator's own event-loop delay (ms): when its p99 is high, the simulator (or the machine)
   * limited the timing, and latencies include that.
   */
  readonly simulatorLoopDelayMs: { readonly p99: number; readonly max: number }
  /** With `--per-device`: each device's account. */
  readonly perDevice?: ReadonlyArray<DeviceReport>
}

const round = (x: number, digits = 2): number => {
  const f = 10 ** digits
  return Math.round(x * f) / f
}

const record = (map: ReadonlyMap<string, number>): Record<string, number> =>
  Object.fromEntries([...map].sort(([a], [b]) => a.localeCompare(b)))

/** Builds the summary of a finished run. */
export const summarize = (
  target: string,
  o: FleetOptions,
  out: FleetOutcome,
  perDevice: boolean
): Summary => {
  const s = out.stats
  const l = s.latency
  const summary: Summary = {
    target,
    devices: o.devices,
    rate: o.rate,
    events: o.events,
    durationS: o.durationMs / 1000,
    elapsedS: round(out.elapsedMs / 1000),
    interrupted: out.interrupted,
    aborted: out.aborted ?? null,
    frames: {
      produced: s.produced,
      telemetry: s.produced - s.events,
      events: s.events,
      traced: s.traced,
      sent: s.sent,
      writes: s.writes,
      resent: s.resent,
      acked: s.acked,
      dupAcks: s.dupAcks,
      rejected: s.rejected,
      overflow: s.overflow,
      unanswered: out.unanswered,
      neverSent: out.neverSent,
      unexpected: s.unexpected
    },
    allAnswered: out.unanswered === 0,
    complete: out.unanswered === 0 && out.neverSent === 0 && s.overflow === 0,
    ackedPerSec: round(s.acked / Math.max(0.001, out.sendingMs / 1000), 1),
    latencyMs: {
      p50: round(l.percentile(0.5), 3),
      p95: round(l.percentile(0.95), 3),
      p99: round(l.percentile(0.99), 3),
      max: round(l.max, 3),
      mean: round(l.mean(), 3)
    },
    nacks: record(s.nacks),
    sessions: {
      devicesConnected: s.devicesConnected,
      connectedAtEnd: out.connectedAtEnd,
      opened: s.sessions,
      reconnects: s.reconnects,
      attempts: s.attempts,
      busy: s.busy,
      busyWaitMinMs: s.busyWaitMinMs === Infinity ? null : round(s.busyWaitMinMs, 1),
      goaways: s.goaways,
      goawayWaitMinMs: s.goawayWaitMinMs === Infinity ? null : round(s.goawayWaitMinMs, 1),
      resumeHellos: s.resumeHellos,
      pings: s.pings,
      errors: record(s.errors),
      socketErrors: record(s.socketErrors),
      gaveUp: record(s.gaveUp)
    },
    simulatorLoopDelayMs: { p99: round(out.loopDelayMs.p99, 3), max: round(out.loopDelayMs.max, 3) }
  }
  return perDevice ? { ...summary, perDevice: out.reports } : summary
}

/** Above this event-loop delay p99 (ms) the summary says the simulator limited the timing. */
const LAG_WARNING_MS = 50

const ms = (x: number): string => (x >= 100 ? `${Math.round(x)} ms` : x >= 10 ? `${x.toFixed(1)} ms` : `${x.toFixed(2)} ms`)

const counts = (r: Record<string, number>): string => {
  const parts = Object.entries(r).filter(([, n]) => n > 0).map(([k, n]) => `${k} ${n}`)
  return parts.length === 0 ? "none" : parts.join(", ")
}

/** The summary as aligned lines for people (newline-terminated). */
export const formatSummary = (x: Summary): string => {
  const f = x.frames
  const s = x.sessions
  const lines = [
    `simulated ${x.devices} devices × ${x.rate}/s (${round(x.events * 100, 1)}% events) for ${x.durationS} s against ${x.target}` +
    `${x.interrupted ? " (interrupted)" : ""}${x.aborted === null ? "" : ` — aborted: ${x.aborted}`}`,
    `frames     produced ${f.produced}  sent ${f.sent}  acked ${f.acked} (dup ${f.dupAcks})  rejected ${f.rejected}  resent ${f.resent}  overflow ${f.overflow}`,
    `answered   ${
      x.allAnswered
        ? `every sent frame was answered${f.neverSent > 0 ? ` (${f.neverSent} produced, never sent)` : ""}`
        : `${f.unanswered} sent frames never answered${f.neverSent > 0 ? `, ${f.neverSent} never sent` : ""}`
    }`,
    `latency    p50 ${ms(x.latencyMs.p50)}  p95 ${ms(x.latencyMs.p95)}  p99 ${ms(x.latencyMs.p99)}  max ${ms(x.latencyMs.max)}  (ack − scheduled send)`,
    `throughput ${x.ackedPerSec} acked/s`,
    `nacks      ${counts(x.nacks)}`,
    `sessions   ${s.devicesConnected}/${x.devices} devices connected  reconnects ${s.reconnects}  busy ${s.busy}  goaways ${s.goaways}  attempts ${s.attempts}`
  ]
  const errors = counts(s.errors)
  const socket = counts(s.socketErrors)
  if (errors !== "none" || socket !== "none") lines.push(`errors     gateway: ${errors}; socket: ${socket}`)
  if (Object.keys(s.gaveUp).length > 0) lines.push(`gave up    ${counts(s.gaveUp)}`)
  const lag = x.simulatorLoopDelayMs
  if (lag.p99 > LAG_WARNING_MS) {
    lines.push(`simulator  its event loop lagged (p99 ${ms(lag.p99)}, max ${ms(lag.max)}): the latencies include the simulator's own delay`)
  }
  if (f.unexpected > 0) lines.push(`unexpected ${f.unexpected} answers matched no frame in flight`)
  return lines.join("\n") + "\n"
}

/** The live progress line of the last second. */
export const progressLine = (
  s: Stats,
  devices: number,
  elapsedS: number,
  ackedPerSec: number
): string => {
  const nacks = counts(record(s.nacks))
  const none = s.second.count === 0
  return `[${elapsedS.toFixed(0).padStart(4)} s] connected ${s.connected}/${devices}  acked ${Math.round(ackedPerSec)}/s  ` +
    `p50 ${none ? "-" : ms(s.second.percentile(0.5))}  p99 ${none ? "-" : ms(s.second.percentile(0.99))}  nacks ${nacks}  ` +
    `reconnects ${s.reconnects}  busy ${s.busy}`
}
