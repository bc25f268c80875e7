/**
 * Time slices for the work of socket reads, shared by every connection: control traffic first.
 * When many devices flood at once, each socket read carries up to 64 KB of frames to parse and
 * validate; handled all in one turn of the event loop, sixty such reads block it for half a
 * second, and a ping, a hello or a `/readyz` request waits several turns behind them. So the
 * big reads of open sessions take turns: within one turn of the event loop they are handled
 * until the slice (a few milliseconds) is spent, and the rest wait, in order, for the next
 * turn, after the event loop has polled for new input. Opening a session (authentication,
 * admission, a store read) takes turns the same way on a clock of its own (a second instance),
 * so a storm of hellos does not stall the loop either, and hellos never queue behind a flood's
 * reads. Small reads never wait (they are the pings).
 */

/** Reads of at most this many bytes are control traffic (a ping, a hello, a few frames): never deferred. */
export const SMALL_READ_BYTES = 4096

/** The shared slice clock. */
export class ReadSlices {
  private readonly sliceMs: number
  /** When the current slice began (`performance.now()`), or -1 when no slice runs this turn. */
  private started = -1
  /** Reads waiting for the next slice, in arrival order. */
  private waiting: Array<() => void> = []
  private ending = false

  constructor(sliceMs: number) {
    this.sliceMs = sliceMs
  }

  /** True when a big read may be handled now; else call {@link later} and ask again when woken. */
  tryEnter(now: number): boolean {
    if (this.started < 0) {
      this.started = now
      this.endAfterThisTurn()
      return true
    }
    return now - this.started < this.sliceMs
  }

  /** Calls `wake` when the next slice begins. */
  later(wake: () => void): void {
    this.waiting.push(wake)
    this.endAfterThisTurn()
  }

  private endAfterThisTurn(): void {
    if (this.ending) return
    this.ending = true
    setImmediate(() => {
      this.ending = false
      this.started = -1
      const woken = this.waiting
      this.waiting = []
      for (const wake of woken) wake()
    })
  }
}
