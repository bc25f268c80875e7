/**
 * Admission control (DESIGN.md's first box): who may connect, decided in two steps.
 * - At accept (before any fiber exists): the drain, a block on an address after too many
 *   failed authentications, the connection cap (lowered to fit the open-files limit), the
 *   memory budget, and the cap on connections not yet welcomed per address ({@link SourceGuard}).
 *   Refused sockets get `error busy`. At the node-wide cap on connections not yet welcomed,
 *   the one that waited longest for its hello (a second or more) is closed to make room, so
 *   clients without a credential cannot keep a device out; else the new one is refused. Failed authentications are logged, rate-limited ({@link AuthAudit}).
 * - At hello (after authentication): a flapping ban, then, unless the hello carries a valid
 *   resume hint from a `goaway`, the saturation rule (lanes or memory above the high
 *   watermark) and the accept-rate token bucket; what passes counts toward flapping.
 * Every `busy` carries a jittered `retryAfterMs` spread over a window sized to the backlog (the
 * refusals of the last second over the accept rate), so a storm of N devices comes back at
 * about the rate the node admits, not all at once.
 */
import { Context, Effect, Layer, Option, Redacted, Schedule } from "effect"
import { GatewayConfig } from "../config/GatewayConfig.ts"
import * as Metrics from "../observability/Metrics.ts"
import { Lanes } from "../pipeline/Lanes.ts"
import { connectionCap, openFilesLimit, reservedDescriptors } from "./FileLimit.ts"
import { AuthAudit } from "./AuthAudit.ts"
import { FlapGuard } from "./FlapGuard.ts"
import { MemoryBudget } from "./MemoryBudget.ts"
import { ResumeHints, secretFromDataDir } from "./ResumeHint.ts"
import { SourceGuard } from "./SourceGuard.ts"
import { TokenBucket } from "./TokenBucket.ts"

/** Why a connection was refused (the `reason` label of `gateway_admission_refusals_total`). */
export type RefusalReason =
  | "connections"
  | "descriptors"
  | "draining"
  | "memory"
  | "saturated"
  | "rate"
  | "flapping"
  | "unauthenticated"
  | "evicted"
  | "source"
  | "auth_failures"

/** A refusal: the `busy` frame's message and retryAfterMs. */
export interface Refusal {
  readonly reason: RefusalReason
  readonly message: string
  readonly retryAfterMs: number
}

/** A connection not yet welcomed for this long may be closed to make room for a new one. */
export const EVICT_AFTER_MS = 1_000

/** Lane fill (0..1) above which new connections are refused. */
const SATURATED = 0.8

/** The admission decisions; synchronous. */
export interface AdmissionShape {
  /** The connection cap in force (GATEWAY_MAX_CONNECTIONS, lowered to fit the open-files limit). */
  readonly maxConnections: number
  /**
   * Decides at accept, given the open and the still-closing refused connections and the peer's
   * address; an admitted connection counts as unauthenticated until {@link welcomedOrGone}.
   */
  readonly atAccept: (open: number, refusing: number, draining: boolean, peer: string) => Refusal | undefined
  /**
   * True when the node-wide cap on connections not yet welcomed is reached: the listener then
   * closes the oldest of them that waited at least {@link EVICT_AFTER_MS} before it admits a
   * new one (a device says hello at once; a client that holds sockets open without one loses
   * them first); while none waited that long (a reconnection storm whose hellos queue), the
   * new connection is refused instead.
   */
  readonly unauthenticatedFull: () => boolean
  /** The `busy` for a connection closed because it waited longest for its hello (counted). */
  readonly evicted: () => Refusal
  /** An admitted connection was welcomed or closed before that (call once per admitted connection). */
  readonly welcomedOrGone: (peer: string) => void
  /** A hello from `peer` claiming `device` failed authentication for `reason`: logged (rate-limited) and counted against the address. */
  readonly authFailed: (peer: string, device: string, reason: string, nowMs: number) => void
  /** Decides after the hello authenticated `device`; `resume` is the hello's resume hint. */
  readonly atHello: (device: string, resume: unknown, nowMs: number) => Refusal | undefined
  /** The resume hint for a `goaway` to `device`. */
  readonly resumeHint: (device: string, nowMs: number) => string
  /** True when a refused socket must be closed at once (descriptors are short): no graceful linger. */
  readonly tightOnDescriptors: (open: number, refusing: number) => boolean
}

/** The admission service. */
export class Admission extends Context.Service<Admission, AdmissionShape>()("gateway/Admission") {
  /** Admission from the configuration, the lanes and the memory budget. */
  static readonly layer = Layer.effect(
    Admission,
    Effect.gen(function*() {
      const config = yield* GatewayConfig
      const lanes = yield* Lanes
      const budget = yield* MemoryBudget
      const limit = openFilesLimit()
      const reserved = limit === undefined ? 0 : reservedDescriptors(limit)
      const cap = connectionCap(config.maxConnections, limit)
      if (cap < config.maxConnections) {
        yield* Effect.logWarning("open-files limit below GATEWAY_MAX_CONNECTIONS: connection cap lowered").pipe(
          Effect.annotateLogs({ openFilesLimit: limit, maxConnections: config.maxConnections, cap, reserved })
        )
      }
      const hints = new ResumeHints(
        Option.match(config.resumeSecret, {
          onNone: () => secretFromDataDir(config.dataDir),
          onSome: (s) => Buffer.from(Redacted.value(s), "utf8")
        })
      )
      const sources = new SourceGuard({
        unauthenticatedPerSource: config.unauthenticatedPerSource,
        failLimit: config.authFailLimit,
        failWindowMs: config.authFailWindowMs,
        maxSources: config.dedupDevices
      })
      const unauthenticatedMax = config.unauthenticatedMax > 0 ? config.unauthenticatedMax : Math.max(1, Math.floor(cap / 4))
      const audit = new AuthAudit()
      yield* Effect.suspend(() => audit.flush()).pipe(Effect.repeat(Schedule.spaced("1 second")), Effect.forkScoped)
      const bucket = new TokenBucket(config.acceptRate, config.acceptBurst, Date.now())
      const flaps = new FlapGuard({
        limit: config.flapLimit,
        windowMs: config.flapWindowMs,
        banMs: config.flapBanMs,
        maxDevices: config.dedupDevices
      })
      // refusals of the current and the previous second: the backlog the retries must spread over
      let second = 0
      let thisSecond = 0
      let lastSecond = 0
      const retryAfter = (nowMs: number) => {
        const s = Math.floor(nowMs / 1000)
        if (s !== second) {
          lastSecond = s === second + 1 ? thisSecond : 0
          thisSecond = 0
          second = s
        }
        thisSecond++
        const backlog = Math.max(thisSecond, lastSecond)
        const window = Math.max(config.busyRetryMs, Math.ceil((backlog / config.acceptRate) * 1000))
        return config.busyRetryMs + Math.floor(Math.random() * window)
      }
      const refuse = (reason: RefusalReason, message: string, nowMs: number, retryAfterMs = retryAfter(nowMs)): Refusal => {
        Metrics.record(Metrics.admissionRefusals(reason), 1)
        return { reason, message, retryAfterMs }
      }
      const descriptorsLeft = (open: number, refusing: number) =>
        limit === undefined ? Infinity : limit - reserved / 4 - open - refusing

      return Admission.of({
        maxConnections: cap,
        atAccept: (open, refusing, draining, peer) => {
          const now = Date.now()
          if (draining) return refuse("draining", "gateway is shutting down, retry later", now)
          const blocked = sources.blockedFor(peer, now)
          if (blocked > 0) return refuse("auth_failures", "too many failed authentications from this address, retry later", now, blocked)
          if (open >= cap) {
            return refuse(cap < config.maxConnections ? "descriptors" : "connections", "too many connections, retry later", now)
          }
          if (descriptorsLeft(open, refusing) <= 0) return refuse("descriptors", "too many connections, retry later", now)
          if (budget.isFull()) return refuse("memory", "gateway memory budget spent, retry later", now)
          if (sources.unauthenticated >= unauthenticatedMax) {
            return refuse("unauthenticated", "too many connections waiting for their hello, retry later", now)
          }
          if (sources.full(peer)) return refuse("source", "too many connections from this address waiting for their hello, retry later", now)
          sources.enter(peer)
          return undefined
        },
        unauthenticatedFull: () => sources.unauthenticated >= unauthenticatedMax,
        evicted: () => refuse("evicted", "closed to make room: no hello in time, retry later", Date.now()),
        welcomedOrGone: (peer) => sources.leave(peer),
        authFailed: (peer, device, reason, nowMs) => {
          Metrics.record(Metrics.authFailures, 1)
          audit.record(device, peer, reason)
          if (sources.failed(peer, nowMs).justBlocked) Metrics.record(Metrics.authBlocks, 1)
        },
        atHello: (device, resume, nowMs) => {
          const banned = flaps.bannedFor(device, nowMs)
          if (banned > 0) return refuse("flapping", "device reconnects too often: banned for a while", nowMs, banned)
          if (!hints.verify(device, resume, nowMs)) {
            if (budget.isHigh() || lanes.fill() >= SATURATED) {
              return refuse("saturated", "gateway saturated, retry later", nowMs)
            }
            if (bucket.take(1, nowMs) > 0) return refuse("rate", "too many new connections, retry later", nowMs)
          }
          // only admitted connections count toward flapping (refusals the gateway caused do not)
          const flap = flaps.connect(device, nowMs)
          if (flap.waitMs > 0) {
            if (flap.justBanned) Metrics.record(Metrics.flapBans, 1)
            return refuse("flapping", "device reconnects too often: banned for a while", nowMs, flap.waitMs)
          }
          return undefined
        },
        resumeHint: (device, nowMs) => hints.issue(device, nowMs),
        tightOnDescriptors: (open, refusing) => descriptorsLeft(open, refusing) <= reserved / 2
      })
    })
  )
}
