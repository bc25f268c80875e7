import { describe, expect, it } from "@effect/vitest"
import { Schema } from "effect"
import * as Arbitrary from "effect/Arbitrary"
import { type FrameTooLarge, LineFramer } from "../../src/ingress/LineFramer.ts"
import { cutInto } from "../support/chunks.ts"

// ---- generators ----

const int = (minimum: number, maximum: number) => Schema.Int.check(Schema.isBetween({ minimum, maximum }))

/** A short JSON-ish frame: no '\n' or '\r'; includes 2- and 3-byte UTF-8 characters (é, €). */
const Frame = Schema.String.check(Schema.isPattern(/^[a-z0-9{}":, é€]{1,40}$/))
/** An ASCII frame of 1..40 bytes (always shorter than the smallest limit under test, 64). */
const AsciiFrame = Schema.String.check(Schema.isPattern(/^[a-z0-9{}":, ]{1,40}$/))
/** Content of a blank line: spaces, tabs and carriage returns only. */
const BlankContent = Schema.String.check(Schema.isPattern(/^[ \t\r]{0,6}$/))

/** Raw cut positions, reduced modulo the stream length + 1 (repeats give empty chunks). */
const Cuts = Arbitrary.array(Arbitrary.schema(int(0, 1_000_000)), { maxLength: 30 })
/** 0: cut at the random positions; n > 0: fixed chunks of n bytes. */
const ChunkSize = int(0, 700)

// ---- helpers ----

const pushAllOk = (framer: LineFramer, chunk: Buffer): Array<Buffer> => {
  const r = framer.pushAll(chunk)
  if (!Array.isArray(r)) return expect.unreachable(`unexpected refusal: ${JSON.stringify(r)}`)
  return r
}

interface Fed {
  /** Every frame handed to the callback, including those of the refusing chunk. */
  readonly frames: Array<Buffer>
  readonly refusal: FrameTooLarge | undefined
  /** Index of the refusing chunk, -1 when none refused. */
  readonly refusedAt: number
  /** bufferedBytes after each push that did not refuse. */
  readonly buffered: Array<number>
}

/** Pushes chunks until the first refusal (the framer is unusable after it). */
const feed = (framer: LineFramer, chunks: ReadonlyArray<Buffer>): Fed => {
  const frames: Array<Buffer> = []
  const buffered: Array<number> = []
  for (const [i, chunk] of chunks.entries()) {
    const r = framer.push(chunk, (buf, s, e) => frames.push(Buffer.from(buf.subarray(s, e))))
    if (r !== undefined) return { frames, refusal: r, refusedAt: i, buffered }
    buffered.push(framer.bufferedBytes)
  }
  return { frames, refusal: undefined, refusedAt: -1, buffered }
}

/** Index of the chunk holding byte `offset` of the stream (chunks.length when past the end). */
const chunkIndexOf = (chunks: ReadonlyArray<Buffer>, offset: number): number => {
  let end = 0
  for (const [i, chunk] of chunks.entries()) {
    end += chunk.length
    if (offset < end) return i
  }
  return chunks.length
}

const isBlank = (s: string) => /^[ \t\r]*$/.test(s)
const strings = (bufs: ReadonlyArray<Buffer>) => bufs.map((b) => b.toString("utf8"))

// ---- properties ----

describe("LineFramer", () => {
  it.prop(
    "(a) any chunking yields the same frames as feeding the stream whole",
    {
      frames: Arbitrary.array(Arbitrary.schema(Frame), { maxLength: 40 }),
      crlf: Arbitrary.array(Arbitrary.schema(Schema.Boolean), { minLength: 1, maxLength: 8 }),
      terminated: Schema.Boolean,
      cuts: Cuts,
      chunkSize: int(0, 64)
    },
    ({ chunkSize, crlf, cuts, frames, terminated }) => {
      const sep = (i: number) => crlf[i % crlf.length] ? "\r\n" : "\n"
      const text = frames.map((f, i) => f + (i < frames.length - 1 || terminated ? sep(i) : "")).join("")
      const bytes = Buffer.from(text, "utf8")

      const whole = new LineFramer(4096)
      const wholeFrames = strings(pushAllOk(whole, bytes))

      const chunked = new LineFramer(4096)
      const chunkedFrames: Array<string> = []
      for (const chunk of cutInto(bytes, cuts, chunkSize)) chunkedFrames.push(...strings(pushAllOk(chunked, chunk)))

      expect(chunkedFrames.join("\n")).toBe(wholeFrames.join("\n"))
      expect(chunkedFrames).toEqual(wholeFrames)
      // both agree with the frames that were actually sent
      const complete = terminated ? frames : frames.slice(0, -1)
      expect(wholeFrames).toEqual(complete.filter((f) => !isBlank(f)))
      // and hold the same unfinished tail
      const tail = terminated || frames.length === 0 ? 0 : Buffer.byteLength(frames[frames.length - 1]!, "utf8")
      expect(chunked.bufferedBytes).toBe(tail)
      expect(whole.bufferedBytes).toBe(tail)
    },
    { arbitrary: { runs: 300, size: 40 } }
  )

  it.prop(
    "(b) blank and whitespace-only lines are never emitted; a '\\r' before '\\n' is dropped",
    {
      lines: Arbitrary.array(
        Arbitrary.schema(Schema.Struct({
          blank: Schema.Boolean,
          content: Frame,
          ws: BlankContent,
          crlf: Schema.Boolean
        })),
        { maxLength: 40 }
      ),
      cuts: Cuts,
      chunkSize: int(0, 32)
    },
    ({ chunkSize, cuts, lines }) => {
      const text = lines.map((l) => (l.blank ? l.ws : l.content) + (l.crlf ? "\r\n" : "\n")).join("")
      const framer = new LineFramer(4096)
      const fed = feed(framer, cutInto(Buffer.from(text, "utf8"), cuts, chunkSize))
      expect(fed.refusal).toBeUndefined()
      const got = strings(fed.frames)
      for (const f of got) {
        expect(isBlank(f), JSON.stringify(f)).toBe(false)
        expect(f.includes("\n")).toBe(false)
        expect(f.endsWith("\r"), JSON.stringify(f)).toBe(false)
      }
      expect(got).toEqual(lines.filter((l) => !l.blank && !isBlank(l.content)).map((l) => l.content))
      expect(framer.bufferedBytes).toBe(0)
    },
    { arbitrary: { runs: 300, size: 40 } }
  )

  it.prop(
    "(c) a frame longer than maxFrameBytes is refused by the chunk that takes it past the limit",
    {
      max: int(64, 4096),
      before: Arbitrary.array(
        Arbitrary.schema(Schema.Struct({ frame: AsciiFrame, exact: Schema.Boolean, crlf: Schema.Boolean })),
        { maxLength: 6 }
      ),
      over: int(1, 600),
      newline: Schema.Boolean,
      after: Arbitrary.array(Arbitrary.schema(AsciiFrame), { maxLength: 4 }),
      cuts: Cuts,
      chunkSize: ChunkSize
    },
    ({ after, before, chunkSize, cuts, max, newline, over }) => {
      // frames of up to 40 bytes, or exactly `max` bytes (LF-terminated: allowed, not longer than the limit)
      const prefixFrames = before.map((b) => b.exact ? "x".repeat(max) : b.frame)
      const prefix = before.map((b, i) => prefixFrames[i] + (!b.exact && b.crlf ? "\r\n" : "\n")).join("")
      const start = prefix.length // ASCII: bytes == characters
      const long = "y".repeat(max + over)
      const text = prefix + long + (newline ? "\n" + after.map((f) => f + "\n").join("") : "")
      const chunks = cutInto(Buffer.from(text, "utf8"), cuts, chunkSize)

      const fed = feed(new LineFramer(max), chunks)

      if (fed.refusal === undefined) return expect.unreachable("oversize frame was not refused")
      expect(fed.refusal._tag).toBe("FrameTooLarge")
      expect(fed.refusal.size).toBeGreaterThan(max)
      // no later than the chunk holding byte max + 1 of the long frame ...
      expect(fed.refusedAt).toBeLessThanOrEqual(chunkIndexOf(chunks, start + max))
      // ... and not before the long frame began
      expect(fed.refusedAt).toBeGreaterThanOrEqual(chunkIndexOf(chunks, start))
      // every frame before it was delivered, nothing after it
      expect(strings(fed.frames)).toEqual(prefixFrames.filter((f) => !isBlank(f)))
      // max + 1 when the last byte held is a '\r': the first half of a '\r\n' split across reads
      for (const b of fed.buffered) expect(b).toBeLessThanOrEqual(max + 1)
    },
    { arbitrary: { runs: 300, size: 30 } }
  )

  it.prop(
    "(d) garbage never throws; emitted frames are within the limit and contain no '\\n'",
    {
      max: int(64, 300),
      raw: Arbitrary.array(Arbitrary.schema(int(0, 511)), { maxLength: 1500 }),
      cuts: Cuts,
      chunkSize: int(0, 400)
    },
    ({ chunkSize, cuts, max, raw }) => {
      // bias towards the interesting bytes; the rest is uniform (invalid UTF-8 included)
      const special = [0x0a, 0x0a, 0x0d, 0xff, 0x20, 0x09, 0xc3, 0x80]
      const bytes = Buffer.from(raw.map((r) => r < 64 ? special[r % special.length]! : r % 256))
      const chunks = cutInto(bytes, cuts, chunkSize)

      const fed = feed(new LineFramer(max), chunks)

      for (const f of fed.frames) {
        expect(f.length).toBeLessThanOrEqual(max)
        expect(f.includes(0x0a)).toBe(false)
      }
      // max + 1 when the last byte held is a '\r': the first half of a '\r\n' split across reads
      for (const b of fed.buffered) expect(b).toBeLessThanOrEqual(max + 1)

      // reference: split the whole stream on '\n'
      const lines: Array<Buffer> = []
      let from = 0
      for (let nl = bytes.indexOf(0x0a); nl !== -1; nl = bytes.indexOf(0x0a, from)) {
        lines.push(bytes.subarray(from, nl))
        from = nl + 1
      }
      const tail = bytes.subarray(from)
      const toFrame = (line: Buffer) => line.length > 0 && line[line.length - 1] === 0x0d ? line.subarray(0, -1) : line
      const firstOver = [...lines, tail].findIndex((l) => l.length > max)
      const expected = (firstOver === -1 ? lines : lines.slice(0, firstOver))
        .map(toFrame)
        .filter((f) => !isBlank(f.toString("latin1")))
        .map((f) => f.toString("hex"))
      // A line of exactly max + 1 bytes ending in '\r' holds a frame of max bytes: whether it is
      // refused is left open here (see the report); every other case is exact.
      const offending = firstOver === -1 ? undefined : [...lines, tail][firstOver]!
      const borderline = offending !== undefined && offending.length === max + 1 && offending[max] === 0x0d
      if (borderline) {
        expect(fed.frames.map((f) => f.toString("hex"))).toEqual(expected.slice(0, fed.frames.length))
        return
      }
      expect(fed.refusal !== undefined).toBe(firstOver !== -1)
      expect(fed.frames.map((f) => f.toString("hex"))).toEqual(expected)
      if (fed.refusal === undefined) expect(fed.buffered[fed.buffered.length - 1] ?? 0).toBe(tail.length)
    },
    { arbitrary: { runs: 300, size: 1500 } }
  )

  // ---- examples ----

  it("refuses a 50 MB stream without newline fed in 64 KiB chunks, holding at most maxFrameBytes", () => {
    const chunk = Buffer.alloc(64 * 1024, 0x61)
    const total = 50 * 1024 * 1024
    for (const max of [65_536, 4096, 100_000]) {
      const framer = new LineFramer(max)
      let refusedAt = -1
      let fed = 0
      let peak = 0
      while (fed < total) {
        const r = framer.push(chunk, () => expect.unreachable("no frame expected"))
        fed += chunk.length
        if (r !== undefined) {
          expect(r._tag).toBe("FrameTooLarge")
          expect(r.size).toBeGreaterThan(max)
          refusedAt = fed
          break
        }
        peak = Math.max(peak, framer.bufferedBytes)
        expect(framer.bufferedBytes).toBeLessThanOrEqual(max)
      }
      // refused by the first chunk that took the frame past the limit
      expect(refusedAt).toBe(Math.ceil((max + 1) / chunk.length) * chunk.length)
      expect(peak).toBeLessThanOrEqual(max)
    }
  })

  it("accepts a frame of exactly maxFrameBytes and refuses one byte more", () => {
    const max = 64
    const exact = Buffer.from("z".repeat(max) + "\n")
    for (const at of [0, 1, 32, 63, 64, 65]) {
      const framer = new LineFramer(max)
      const got = [...pushAllOk(framer, exact.subarray(0, at)), ...pushAllOk(framer, exact.subarray(at))]
      expect(strings(got)).toEqual(["z".repeat(max)])
    }
    const overLf = new LineFramer(max).pushAll(Buffer.from("z".repeat(max + 1) + "\n"))
    expect(overLf).toEqual({ _tag: "FrameTooLarge", size: max + 1 })
    const overTail = new LineFramer(max).pushAll(Buffer.from("z".repeat(max + 1)))
    expect(overTail).toEqual({ _tag: "FrameTooLarge", size: max + 1 })
  })

  it("delivers the frames that precede an oversize frame in the same chunk through push", () => {
    const framer = new LineFramer(64)
    const seen: Array<string> = []
    const r = framer.push(Buffer.from(`{"a":1}\n${"q".repeat(65)}\n{"b":2}\n`), (b, s, e) =>
      seen.push(b.toString("utf8", s, e)))
    expect(r?._tag).toBe("FrameTooLarge")
    expect(seen).toEqual([`{"a":1}`])
  })
})

describe("the limit excludes the line ending", () => {
  it("accepts a frame of exactly maxFrameBytes ended by \\r\\n, however it is split", () => {
    const frame = "x".repeat(64)
    const bytes = Buffer.from(frame + "\r\n")
    for (let cut = 0; cut <= bytes.length; cut++) {
      const framer = new LineFramer(64)
      const a = framer.pushAll(bytes.subarray(0, cut))
      const b = framer.pushAll(bytes.subarray(cut))
      expect(Array.isArray(a) && Array.isArray(b)).toBe(true)
      if (Array.isArray(a) && Array.isArray(b)) expect([...a, ...b].map(String)).toEqual([frame])
    }
    expect(Array.isArray(new LineFramer(64).pushAll(Buffer.from("x".repeat(65) + "\r\n")))).toBe(false)
  })
})
