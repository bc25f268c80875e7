/**
 * A connection's pending-answer table: every data frame takes a ticket in arrival order, its
 * answer (ack or nack) may arrive in any order (events overtake telemetry, validation answers
 * are immediate), and answers leave in ticket order, so acks on one connection come in the
 * order the frames were sent (PROTOCOL.md). Its size is the connection's in-flight count,
 * which the connection bounds by pausing reads.
 */
export class OrderedAnswers {
  /** Answers of tickets `base .. base + slots.length - 1`; undefined while pending. */
  private slots: Array<string | undefined> = []
  /** Ticket of `slots[0]`. */
  private base = 0
  /** Index of the oldest ticket not yet written. */
  private head = 0

  /** Tickets taken and not yet written out. */
  get inflight(): number {
    return this.slots.length - this.head
  }

  /** Takes the next ticket. */
  open(): number {
    this.slots.push(undefined)
    return this.base + this.slots.length - 1
  }

  /** Records the answer of a ticket. */
  resolve(ticket: number, frame: string): void {
    const i = ticket - this.base
    if (i >= this.head && i < this.slots.length) this.slots[i] = frame
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
      this.slots = []
      this.head = 0
    } else if (head > 1024 && head * 2 > slots.length) {
      this.slots = slots.slice(head)
      this.base += head
      this.head = 0
    } else {
      this.head = head
    }
    return out
  }
}
