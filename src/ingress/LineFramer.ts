/**
 * Newline framing of PROTOCOL.md over a byte stream: a frame is one line ended by `\n`
 * (a `\r` before it is dropped), blank lines are ignored, and a frame longer than
 * `maxFrameBytes` (its `\r\n` or `\n` excluded) is refused. It never holds more than `maxFrameBytes` of an
 * unfinished frame, so a 50 MB line without a newline costs at most that much memory.
 */

/** What {@link LineFramer.push} found wrong: a frame (finished or not) over the limit. */
export interface FrameTooLarge {
  readonly _tag: "FrameTooLarge"
  readonly size: number
}

/** Receives one frame: `buf[start, end)` (valid only during the call). */
export type FrameHandler = (buf: Buffer, start: number, end: number) => void

const NL = 10
const CR = 13

/** Incremental line splitter; one per connection. */
export class LineFramer {
  private readonly maxFrameBytes: number
  /** Bytes of the unfinished frame carried over from earlier chunks (at most maxFrameBytes). */
  private pending: Buffer | undefined = undefined

  constructor(maxFrameBytes: number) {
    this.maxFrameBytes = maxFrameBytes
  }

  /** Bytes held for the unfinished frame. */
  get bufferedBytes(): number {
    return this.pending?.length ?? 0
  }

  /**
   * Feeds one chunk; calls `onFrame` for each complete non-blank frame in order. Returns a
   * {@link FrameTooLarge} as soon as a frame exceeds the limit (the framer is then unusable:
   * the protocol closes the connection), else `undefined`.
   */
  push(chunk: Buffer, onFrame: FrameHandler): FrameTooLarge | undefined {
    let start = 0
    let nl = chunk.indexOf(NL)
    if (this.pending !== undefined && nl !== -1) {
      const size = this.pending.length + nl - (endsWithCR(chunk, 0, nl, this.pending) ? 1 : 0)
      if (size > this.maxFrameBytes) return tooLarge(size)
      const line = Buffer.concat([this.pending, chunk.subarray(0, nl)])
      this.pending = undefined
      emit(line, 0, line.length, onFrame)
      start = nl + 1
      nl = chunk.indexOf(NL, start)
    }
    while (nl !== -1) {
      const size = nl - start - (nl > start && chunk[nl - 1] === CR ? 1 : 0)
      if (size > this.maxFrameBytes) return tooLarge(size)
      emit(chunk, start, nl, onFrame)
      start = nl + 1
      nl = chunk.indexOf(NL, start)
    }
    if (start < chunk.length) {
      // a trailing \r may be the first half of the \r\n that ends a frame of exactly the limit
      const held = (this.pending?.length ?? 0) + chunk.length - start - (chunk[chunk.length - 1] === CR ? 1 : 0)
      if (held > this.maxFrameBytes) return tooLarge(held)
      const rest = chunk.subarray(start)
      this.pending = this.pending === undefined ? Buffer.from(rest) : Buffer.concat([this.pending, rest])
    }
    return undefined
  }

  /** Convenience form of {@link push} that returns the frames as copies (tests, tools). */
  pushAll(chunk: Buffer): Array<Buffer> | FrameTooLarge {
    const out: Array<Buffer> = []
    const r = this.push(chunk, (buf, s, e) => out.push(Buffer.from(buf.subarray(s, e))))
    return r ?? out
  }
}

/** True when the frame made of `pending` + `chunk[start, nl)` ends with `\r`. */
const endsWithCR = (chunk: Buffer, start: number, nl: number, pending: Buffer) =>
  nl > start ? chunk[nl - 1] === CR : pending[pending.length - 1] === CR

const tooLarge = (size: number): FrameTooLarge => ({ _tag: "FrameTooLarge", size })

const emit = (buf: Buffer, start: number, end: number, onFrame: FrameHandler) => {
  if (end > start && buf[end - 1] === CR) end--
  if (isBlank(buf, start, end)) return
  onFrame(buf, start, end)
}

const isBlank = (buf: Buffer, start: number, end: number) => {
  for (let i = start; i < end; i++) {
    const b = buf[i]
    if (b !== 32 && b !== 9 && b !== CR) return false
  }
  return true
}
