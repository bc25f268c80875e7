/**
 * The audit trail of failed authentications: each one logged with the device id it claimed,
 * the peer address and the reason, at most {@link DETAILED_PER_FLUSH} lines per flush (one a
 * second); beyond that, one summary line with the count and the busiest addresses. A storm of
 * wrong tokens then leaves a readable trail without flooding the log.
 */
import { Effect } from "effect"

/** Failures logged one by one per flush; the rest are summarized. */
const DETAILED_PER_FLUSH = 10
/** Addresses named in a summary line. */
const TOP_SOURCES = 5
/** Addresses counted for the summary at most (more are counted under "other"). */
const MAX_COUNTED = 1_024
/** The claimed device id is cut to this length in the log. */
const MAX_DEVICE_CHARS = 128

interface Failure {
  readonly device: string
  readonly peer: string
  readonly reason: string
}

/** Failed authentications waiting for the next flush. */
export class AuthAudit {
  private detailed: Array<Failure> = []
  private suppressed = 0
  private bySource = new Map<string, number>()

  /** Records one failure. */
  record(device: string, peer: string, reason: string): void {
    if (this.detailed.length < DETAILED_PER_FLUSH) {
      this.detailed.push({ device: device.slice(0, MAX_DEVICE_CHARS), peer, reason })
      return
    }
    this.suppressed++
    const key = this.bySource.has(peer) || this.bySource.size < MAX_COUNTED ? peer : "other"
    this.bySource.set(key, (this.bySource.get(key) ?? 0) + 1)
  }

  /** The log lines for what was recorded since the last flush. */
  flush(): Effect.Effect<void> {
    if (this.detailed.length === 0) return Effect.void
    const lines: Array<Effect.Effect<void>> = this.detailed.map((f) =>
      Effect.logWarning("authentication failed").pipe(Effect.annotateLogs({ device: f.device, peer: f.peer, reason: f.reason }))
    )
    if (this.suppressed > 0) {
      const top = [...this.bySource].sort((a, b) => b[1] - a[1]).slice(0, TOP_SOURCES).map(([peer, n]) => `${peer}:${n}`)
      lines.push(
        Effect.logWarning("more authentication failures (not logged one by one)").pipe(
          Effect.annotateLogs({ failures: this.suppressed, topSources: top.join(" ") })
        )
      )
    }
    this.detailed = []
    this.suppressed = 0
    this.bySource = new Map()
    return Effect.all(lines, { discard: true })
  }
}
