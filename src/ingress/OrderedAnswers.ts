/**
 * A connection's pending-answer table: every data frame takes a ticket in arrival order, its
 * answer (ack or nack) may arrive in any order (events overtake telemetry, validation answers
 * are immediate), and answers leave in ticket order, so acks on one connection come in the
 * order the frames were sent (PROTOCOL.md). Its size is the connection's in-flight count,
 * which the connection bounds by pausing reads. Each ticket also carries the bytes its message
 * was charged against the memory budget: answering the ticket gives them back, once.
 */
/**
 * The empty tables every idle connection shares (never written: `open` makes a connection its
 * own on its first ticket, and a table drained after a burst goes back to these).
 */
const NONE: Array<string | undefined> = []
const NO_COSTS: Array<number> = []

/**
 * A table drained with at most this many tickets is kept for the next ones (its storage is ~8
 * bytes a ticket, at most ~1 KB); a larger one, from a burst, is let go.
 */
const KEEP_TABLES_UP_TO = 64

export class OrderedAnswers {
  /** Answers of tickets `base .. base + slots.length - 1`; undefined while pending. */
  private slots: Array<string | undefined> = NONE
  /** Bytes charged for each ticket of `slots` (0 once answered). */
  private costs: Array<number> = NO_COSTS
  /** Ticket of `slots[0]`. */
  private base = 0
  /** Index of the oldest ticket not yet written. */
  private head = 0
  /** Bytes charged for the tickets not yet answered. */
  private charged = 0

  /** Tickets taken and not yet written out. */
  get inflight(): number {
    return this.slots.length - this.head
  }

  /** Bytes charged for the messages not yet answered. */
  get pendingBytes(): number {
    return this.charged
  }

  /** Takes the next ticket for a message charged `cost` bytes. */
  open(cost = 0): number {
    if (this.slots === NONE) {
      this.slots = []
      this.costs = []
    }
    this.slots.push(undefined)
    this.costs.push(cost)
    this.charged += cost
    return this.base + this.slots.length - 1
  }

  /** Records the answer of a ticket; returns the bytes its message had charged (0 when already answered or abandoned). */
  resolve(ticket: number, frame: string): number {
    const i = ticket - this.base
    if (i < this.head || i >= this.slots.length || this.slots[i] !== undefined) return 0
    this.slots[i] = frame
    const cost = this.costs[i]!
    this.costs[i] = 0
    this.charged -= cost
    return cost
  }

  /** Forgets every pending ticket (the connection is gone); returns the bytes they had charged. */
  abandon(): number {
    const freed = this.charged
    this.base += this.slots.length
    this.slots = NONE
    this.costs = NO_COSTS
    this.head = 0
    this.charged = 0
    return freed
  }

  /** Removes and returns, concatenated, every answer that is now in order ("" when none). */
  takeReady(): string {
    let out = ""
    const slots = this.slots
    let head = this.head
    while (head < slots.length) {
      const frame = slots[head]
      if (frame === undefined) break
      out += frame
      slots[head++] = undefined
    }
    if (head === slots.length) {
      this.base += head
      this.head = 0
      if (head > KEEP_TABLES_UP_TO) {
        this.slots = NONE
        this.costs = NO_COSTS
      } else {
        // a device with a frame or a few in flight keeps its small tables: making them anew for
        // every message was two arrays and their growth per frame (popped, not `length = 0`,
        // which frees their storage)
        const costs = this.costs
        while (slots.length > 0) {
          slots.pop()
          costs.pop()
        }
      }
    } else if (head > 1024 && head * 2 > slots.length) {
      this.slots = slots.slice(head)
      this.costs = this.costs.slice(head)
      this.base += head
      this.head = 0
    } else {
      this.head = head
    }
    return out
  }
}
