/**
 * Per-device sliding anti-replay window (a bitmap over the most recent `size` sequence numbers
 * of the device's current epoch), marking what was *committed*. A resend inside the window is
 * answered `ack dup:true` without touching the sink; anything older falls through to the sink,
 * whose unique key keeps one row per message. State exists for at most `maxDevices` devices;
 * eviction approximates least recently committed first with a clock (second chance): a commit
 * only stamps its device with the batch, and the eviction goes over devices in the order they
 * were placed, moving one committed since it was placed to the back and evicting the first that
 * was not. (Moving a device to the back at each commit cost a map delete and insert a message.)
 */

interface DeviceWindow {
  epoch: number
  /** Highest committed seq of `epoch`; -1 before the first commit. */
  top: number
  /** Bit `seq % size` is set when seq (top - size < seq <= top) is committed. */
  readonly bits: Uint32Array
  /** Batch generation of its last commit. */
  touched: number
  /** Batch generation when it was last placed at the back of the eviction order. */
  placed: number
}

/** A bounded set of per-device windows; synchronous, for the per-message hot path. */
export class DedupWindow {
  /** Window size in sequence numbers (a multiple of 32). */
  readonly size: number
  private readonly devices = new Map<string, DeviceWindow>()
  private generation = 0

  /** Most devices with state at once. */
  readonly maxDevices: number

  constructor(size: number, maxDevices: number) {
    this.size = Math.ceil(size / 32) * 32
    this.maxDevices = maxDevices
  }

  /** Number of devices with state (bounded by `maxDevices`). */
  get deviceCount(): number {
    return this.devices.size
  }

  /** True when (device, epoch, seq) is known to be committed. False means "write it". */
  isCommitted(device: string, epoch: number, seq: number): boolean {
    const w = this.devices.get(device)
    if (w === undefined || w.epoch !== epoch || seq > w.top || seq <= w.top - this.size) return false
    const bit = seq % this.size
    return (w.bits[bit >>> 5] & (1 << (bit & 31))) !== 0
  }

  /** Starts a new batch of marks (the unit of recency for eviction). */
  beginBatch(): void {
    this.generation++
  }

  /** Records that (device, epoch, seq) is committed. Older epochs are ignored. */
  markCommitted(device: string, epoch: number, seq: number): void {
    let w = this.devices.get(device)
    if (w === undefined) {
      if (this.devices.size >= this.maxDevices) this.evictOne()
      w = { epoch, top: -1, bits: new Uint32Array(this.size >>> 5), touched: this.generation, placed: this.generation }
      this.devices.set(device, w)
    } else w.touched = this.generation
    if (epoch !== w.epoch) {
      if (epoch < w.epoch) return
      w.epoch = epoch
      w.top = -1
      w.bits.fill(0)
    }
    if (seq <= w.top - this.size) return
    if (seq > w.top) this.advance(w, seq)
    const bit = seq % this.size
    w.bits[bit >>> 5] |= 1 << (bit & 31)
  }

  /**
   * Evicts the device committed least recently: from the front of the map (the order devices
   * were placed in), a device committed since it was placed goes to the back (second chance)
   * and the first one that was not is evicted. Each commit earns at most one move.
   */
  private evictOne(): void {
    for (const [device, w] of this.devices) {
      this.devices.delete(device)
      if (w.touched === w.placed) return
      w.placed = w.touched
      this.devices.set(device, w)
    }
  }

  /** Moves the window's top to `seq`, clearing the bits of the seqs it slides over. */
  private advance(w: DeviceWindow, seq: number): void {
    if (w.top < 0 || seq - w.top >= this.size) {
      w.bits.fill(0)
    } else {
      for (let s = w.top + 1; s <= seq; s++) {
        const bit = s % this.size
        w.bits[bit >>> 5] &= ~(1 << (bit & 31))
      }
    }
    w.top = seq
  }
}
