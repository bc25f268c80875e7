/**
 * The hand-shake that lets the SQLite checkpointer restart the WAL under steady writes
 * (SqliteCheckpointer.ts): the checkpointer asks, the writer holds between two batches, the
 * checkpointer copies the WAL's last frames and lets it go on. Two 32-bit slots in shared
 * memory: the state, and how long the writer may hold.
 */

const IDLE = 0
const WANTED = 1
const HOLDING = 2

const STATE = 0
const HOLD_MS = 1

/** One side of the hand-shake, over the shared slots (see {@link WalRestart.shared}). */
export class WalRestart {
  private readonly slots: Int32Array

  constructor(slots: Int32Array) {
    this.slots = slots
  }

  /** The shared slots, to hand to both threads. */
  static shared(): Int32Array {
    return new Int32Array(new SharedArrayBuffer(8))
  }

  /**
   * The writer's side, between two batches: when the checkpointer asks, holds until it is done
   * or for the time it allowed, whichever comes first. Costs one atomic read otherwise.
   */
  holdIfWanted(): void {
    if (Atomics.compareExchange(this.slots, STATE, WANTED, HOLDING) !== WANTED) return
    Atomics.notify(this.slots, STATE)
    Atomics.wait(this.slots, STATE, HOLDING, Atomics.load(this.slots, HOLD_MS))
    Atomics.compareExchange(this.slots, STATE, HOLDING, IDLE)
  }

  /**
   * The checkpointer's side: asks the writer to hold for up to `holdMs` and, once it does
   * (within `reachMs`), runs `whileHeld`, then lets it go. An idle writer never comes: nothing
   * is written then, and the last pass already copied everything.
   */
  whileWriterHolds(holdMs: number, reachMs: number, whileHeld: () => void): void {
    Atomics.store(this.slots, HOLD_MS, holdMs)
    Atomics.store(this.slots, STATE, WANTED)
    Atomics.wait(this.slots, STATE, WANTED, reachMs)
    if (Atomics.compareExchange(this.slots, STATE, WANTED, IDLE) === WANTED) return
    try {
      whileHeld()
    } finally {
      Atomics.compareExchange(this.slots, STATE, HOLDING, IDLE)
      Atomics.notify(this.slots, STATE)
    }
  }
}
