/**
 * The fleet's send schedule: every device sends every `periodMs`, device i's phase offset being
 * i/devices of the period (so the fleet's frames are spread evenly over time, not sent in bursts),
 * optionally jittered, from its boot time until the end of the run. One binary min-heap over
 * the devices' next due times lets a single timer drive any number of devices.
 */

/** What the schedule is made of. */
export interface SchedulePlan {
  readonly devices: number
  /** Time 0 of the run (a `performance.now()` value). */
  readonly origin: number
  /** Time between two frames of one device (ms). */
  readonly periodMs: number
  /** No frame whose unjittered time is at or after `origin + durationMs` is scheduled. */
  readonly durationMs: number
  /**
   * Jitter as a fraction of the period (0..1): each frame's time moves by a uniform amount in
   * ±jitter/2 of the period, so a device's frames never swap order.
   */
  readonly jitter: number
  /** When device i boots (ms after origin): its first frame is the first one due at or after it. */
  readonly bootMs: (device: number) => number
}

/** The devices' next due times, earliest first. */
export class SendSchedule {
  private readonly plan: SchedulePlan
  private readonly heap: Int32Array
  private size = 0
  /** Next due time per device (a `performance.now()` value). */
  private readonly due: Float64Array
  /** Number of the next frame per device (its unjittered time is origin + offset + k × period). */
  private readonly next: Float64Array

  constructor(plan: SchedulePlan) {
    this.plan = plan
    this.heap = new Int32Array(plan.devices)
    this.due = new Float64Array(plan.devices)
    this.next = new Float64Array(plan.devices)
    for (let i = 0; i < plan.devices; i++) {
      const offset = this.offset(i)
      const k = Math.max(0, Math.ceil((plan.bootMs(i) - offset) / plan.periodMs))
      this.next[i] = k
      if (this.place(i)) this.push(i)
    }
  }

  /** Device i's phase offset: i/devices of the period. */
  offset(device: number): number {
    return (device / this.plan.devices) * this.plan.periodMs
  }

  /** The earliest due time of any device; Infinity when no frame is left to schedule. */
  nextDue(): number {
    return this.size === 0 ? Infinity : this.due[this.heap[0]!]!
  }

  /** Devices that still have frames to send. */
  get remaining(): number {
    return this.size
  }

  /**
   * Calls `emit(device, scheduledAt)` for every frame due at or before `now`, earliest first, and
   * moves each device on to its next frame. Returns how many frames were emitted.
   */
  runDue(now: number, emit: (device: number, scheduledAt: number) => void): number {
    let emitted = 0
    while (this.size > 0) {
      const i = this.heap[0]!
      const at = this.due[i]!
      if (at > now) break
      emit(i, at)
      emitted++
      this.next[i] = this.next[i]! + 1
      if (this.place(i)) this.siftDown(0)
      else this.removeTop()
    }
    return emitted
  }

  /** Ends the schedule: no frame is emitted any more. */
  clear(): void {
    this.size = 0
  }

  /** Sets device i's due time for its next frame; false when that frame is past the end. */
  private place(i: number): boolean {
    const p = this.plan
    const base = this.offset(i) + this.next[i]! * p.periodMs
    if (base >= p.durationMs) return false
    const jitter = p.jitter === 0 ? 0 : (Math.random() - 0.5) * p.jitter * p.periodMs
    this.due[i] = p.origin + base + jitter
    return true
  }

  private push(i: number): void {
    let at = this.size++
    this.heap[at] = i
    while (at > 0) {
      const parent = (at - 1) >> 1
      if (this.due[this.heap[parent]!]! <= this.due[i]!) break
      this.heap[at] = this.heap[parent]!
      this.heap[parent] = i
      at = parent
    }
  }

  private removeTop(): void {
    this.size--
    if (this.size > 0) {
      this.heap[0] = this.heap[this.size]!
      this.siftDown(0)
    }
  }

  private siftDown(from: number): void {
    const heap = this.heap
    const due = this.due
    let at = from
    const item = heap[at]!
    const itemDue = due[item]!
    for (;;) {
      const left = 2 * at + 1
      if (left >= this.size) break
      const right = left + 1
      const child = right < this.size && due[heap[right]!]! < due[heap[left]!]! ? right : left
      if (due[heap[child]!]! >= itemDue) break
      heap[at] = heap[child]!
      at = child
    }
    heap[at] = item
  }
}
