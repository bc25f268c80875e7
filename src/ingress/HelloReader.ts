/**
 * Reads the first line of a connection, before anyone knows who is on the other end. It holds
 * at most {@link HELLO_MAX_BYTES} (a hello's token is at most 4096 characters, so a valid hello
 * fits), never `maxFrameBytes`: thousands of unauthenticated connections cost a few KB each,
 * not 64 KB (DESIGN.md: "until its hello is read, a connection may buffer no more than a hello
 * can need"). Blank lines before the hello are skipped. Whatever follows the hello in the same
 * read is handed back untouched, to be framed after welcome with the full frame limit.
 */

/** Longest first line accepted (its `\r\n` excluded). */
export const HELLO_MAX_BYTES = 8 * 1024

/** What one read gave. */
export type HelloRead =
  | { readonly _tag: "Pending" }
  | { readonly _tag: "TooLarge" }
  | { readonly _tag: "Line"; readonly line: Buffer; readonly rest: Buffer | undefined }

const PENDING: HelloRead = { _tag: "Pending" }
const TOO_LARGE: HelloRead = { _tag: "TooLarge" }
const NL = 10
const CR = 13

/** The pre-authentication line reader of one connection. */
export class HelloReader {
  /** Bytes of the unfinished first line (at most HELLO_MAX_BYTES + 1). */
  private parts: Array<Buffer> = []
  private size = 0

  /** Bytes held. */
  get bufferedBytes(): number {
    return this.size
  }

  /** Feeds one socket read. */
  push(chunk: Buffer): HelloRead {
    let start = 0
    while (start < chunk.length) {
      const nl = chunk.indexOf(NL, start)
      if (nl === -1) {
        this.size += chunk.length - start
        if (this.size > HELLO_MAX_BYTES + 1) return TOO_LARGE // +1: a trailing \r of a \r\n split across reads
        this.parts.push(chunk.subarray(start))
        return PENDING
      }
      let line = this.parts.length === 0 ? chunk.subarray(start, nl) : Buffer.concat([...this.parts, chunk.subarray(start, nl)])
      this.parts = []
      this.size = 0
      if (line.length > 0 && line[line.length - 1] === CR) line = line.subarray(0, line.length - 1)
      if (line.length > HELLO_MAX_BYTES) return TOO_LARGE
      start = nl + 1
      if (isBlank(line)) continue
      return { _tag: "Line", line, rest: start < chunk.length ? chunk.subarray(start) : undefined }
    }
    return PENDING
  }
}

const isBlank = (line: Buffer) => {
  for (let i = 0; i < line.length; i++) {
    const b = line[i]
    if (b !== 32 && b !== 9 && b !== CR) return false
  }
  return true
}
