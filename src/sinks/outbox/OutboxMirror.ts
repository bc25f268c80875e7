/**
 * The envelopes of the rows this process appended to the outbox, kept in memory within a byte
 * budget, so the forwarder sends them without reading them back from the file and parsing them
 * (on a 2-core machine that was about 30% of the drain's event-loop time: see bench/outbox.ts).
 * A cache, never the truth: the rows are in the file; whatever is not here (after a restart,
 * past the budget) is read from it.
 *
 * Rows ids past the forwarder's cursor are consecutive (AUTOINCREMENT in one writer; only the
 * forwarder removes rows, from the oldest), so a batch is the run of ids from the cursor on.
 */
import type { Envelope } from "../../domain/Envelope.ts"

/** The envelopes of rows `firstId`, `firstId + 1`, ...: what one append stored. */
interface Segment {
  readonly firstId: number
  readonly envelopes: ReadonlyArray<Envelope>
  /** Its share of the budget: the packed JSON's length. */
  readonly bytes: number
}

/** Recent rows in memory. */
export interface OutboxMirror {
  /** Keeps the envelopes of rows `firstId`.. (one append's, in order), if the budget has room. */
  readonly add: (firstId: number, envelopes: ReadonlyArray<Envelope>, bytes: number) => void
  /**
   * The envelopes of rows `fromId`, `fromId + 1`, ... (at most `max`) when row `fromId` is here,
   * else undefined; forgets every row below `fromId` (the forwarder has them).
   */
  readonly take: (fromId: number, max: number) => ReadonlyArray<Envelope> | undefined
  /** The first row at or after `fromId` that is here (how far a read from the file may go), or undefined. */
  readonly nextHeld: (fromId: number) => number | undefined
  /** Rows and bytes held. */
  readonly held: () => { readonly rows: number; readonly bytes: number }
}

/** A mirror holding at most `maxBytes` of envelopes (measured as their JSON). */
export const makeOutboxMirror = (maxBytes: number): OutboxMirror => {
  const segments: Array<Segment> = []
  let head = 0 // segments before it are forgotten (compacted now and then)
  let bytes = 0
  let rows = 0

  const forgetBelow = (fromId: number) => {
    while (head < segments.length) {
      const s = segments[head]!
      if (s.firstId + s.envelopes.length > fromId) break
      bytes -= s.bytes
      rows -= s.envelopes.length
      head++
    }
    if (head > 64 && head * 2 > segments.length) {
      segments.splice(0, head)
      head = 0
    }
  }

  return {
    add: (firstId, envelopes, size) => {
      if (envelopes.length === 0 || bytes + size > maxBytes) return
      segments.push({ firstId, envelopes, bytes: size })
      bytes += size
      rows += envelopes.length
    },
    take: (fromId, max) => {
      forgetBelow(fromId)
      const first = segments[head]
      if (first === undefined || first.firstId > fromId) return undefined
      const out: Array<Envelope> = []
      let next = fromId
      for (let k = head; k < segments.length && out.length < max; k++) {
        const s = segments[k]!
        if (s.firstId > next) break // a gap: the rest is read from the file
        for (let i = next - s.firstId; i < s.envelopes.length && out.length < max; i++) out.push(s.envelopes[i]!)
        next = fromId + out.length
      }
      return out
    },
    nextHeld: (fromId) => {
      for (let k = head; k < segments.length; k++) {
        const s = segments[k]!
        if (s.firstId + s.envelopes.length > fromId) return Math.max(fromId, s.firstId)
      }
      return undefined
    },
    held: () => ({ rows, bytes })
  }
}
