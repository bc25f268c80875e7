/**
 * Per-device sliding anti-replay window (a bitmap over the most recent `size` sequence numbers
 * of the device's current epoch), marking what was *committed*. A resend inside the window is
 * answered `ack dup:true` without touching the sink; anything older falls through to the sink,
 * whose unique key keeps one row per message. State exists for at most `maxDevices` devices;
 * the least recently committed device is evicted first.
 */

interface DeviceWindow {
  epoch: number
  /** Highest committed seq of `epoch`; -1 before the first commit. */
  top: number
  /** Bit `seq % size` is set when seq (top - size < seq <= top) is committed. */
  readonly bits: Uint32Array
  /** Batch generation of the last LRU refresh (refresh once per batch, not per message). */
  touched: number
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

  /** Starts a new batch of marks: LRU positions are refreshed once per device per batch. */
  beginBatch(): void {
    this.generation++
  }

  /** Records that (device, epoch, seq) is committed. Older epochs are ignored. */
  markCommitted(device: string, epoch: number, seq: number): void {
    let w = this.devices.get(device)
    if (w === undefined) {
      if (this.devices.size >= this.maxDevices) {
        const oldest = this.devices.keys().next()
        if (!oldest.done) this.devices.delete(oldest.value)
      }
      w = { epoch, top: -1, bits: new Uint32Array(this.size >>> 5), touched: this.generation }
      this.devices.set(device, w)
    } else if (w.touched !== this.generation) {
      this.devices.delete(device)
      this.devices.set(device, w)
      w.touched = this.generation
    }
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
