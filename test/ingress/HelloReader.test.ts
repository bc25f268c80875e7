/**
 * The pre-authentication line reader: the same hello line and the same rest bytes whatever the
 * TCP chunking; a first line over HELLO_MAX_BYTES refused whatever the chunking, holding at most
 * HELLO_MAX_BYTES + 1 bytes meanwhile; `\r\n` handled. Then over real sockets: a long line
 * before hello is `error protocol`, blank lines do not extend the hello deadline, and a hello
 * pipelined with data frames in one write works.
 */
import { afterEach, describe, expect, it } from "@effect/vitest"
import { Schema } from "effect"
import * as Arbitrary from "effect/Arbitrary"
import * as Fs from "node:fs"
import { HELLO_MAX_BYTES, type HelloRead, HelloReader } from "../../src/ingress/HelloReader.ts"
import { Device, event, telemetry } from "../support/client.ts"
import { startGateway, type TestGateway } from "../support/gateway.ts"
import { cutInto } from "../support/chunks.ts"

const int = (minimum: number, maximum: number) => Schema.Int.check(Schema.isBetween({ minimum, maximum }))

// ---- generators ----

/** Content of a blank line: spaces, tabs and carriage returns. */
const BlankContent = Schema.String.check(Schema.isPattern(/^[ \t\r]{0,6}$/))
/** The start of a hello-ish line: JSON-ish text with 2- and 3-byte characters, no '\r' or '\n'. */
const Prefix = Schema.String.check(Schema.isPattern(/^[a-z0-9{}":, é€\t]{0,40}$/))
/** Line lengths around the limit, where chunking matters most. */
const NEAR_LIMIT = [HELLO_MAX_BYTES - 2, HELLO_MAX_BYTES - 1, HELLO_MAX_BYTES, HELLO_MAX_BYTES + 1, HELLO_MAX_BYTES + 2, HELLO_MAX_BYTES + 3]
/** Raw cut positions, reduced modulo the stream length + 1 (repeats give empty chunks). */
const Cuts = Arbitrary.array(Arbitrary.schema(int(0, 10_000_000)), { maxLength: 40 })

// ---- helpers ----

type Outcome =
  | { readonly _tag: "Line"; readonly line: string; readonly rest: string }
  | { readonly _tag: "TooLarge" }
  | { readonly _tag: "Pending" }

/**
 * Feeds the chunks until the reader decides. The rest is what it handed back plus the chunks it
 * was never given (as the connection does). Checks the bound after every undecided push.
 */
const feed = (chunks: ReadonlyArray<Buffer>): Outcome => {
  const reader = new HelloReader()
  for (const [i, chunk] of chunks.entries()) {
    const r: HelloRead = reader.push(chunk)
    if (r._tag === "Pending") {
      if (reader.bufferedBytes > HELLO_MAX_BYTES + 1) expect.unreachable(`holds ${reader.bufferedBytes} bytes`)
      continue
    }
    if (r._tag === "TooLarge") return { _tag: "TooLarge" }
    const rest = Buffer.concat([r.rest ?? Buffer.alloc(0), ...chunks.slice(i + 1)])
    return { _tag: "Line", line: r.line.toString("latin1"), rest: rest.toString("latin1") }
  }
  return { _tag: "Pending" }
}

/** A non-blank line of exactly `bytes` bytes (when `bytes` is at least the prefix's length + 1). */
const lineOf = (prefix: string, bytes: number) => {
  const head = "{" + prefix
  return head + "a".repeat(Math.max(0, bytes - Buffer.byteLength(head, "utf8")))
}

// ---- properties ----

describe("HelloReader", () => {
  it.prop(
    "any chunking of <blank lines>hello\\n<rest> gives the same line and the same rest; too long is TooLarge",
    {
      blanks: Arbitrary.array(Arbitrary.schema(BlankContent), { maxLength: 6 }),
      prefix: Prefix,
      lengthMode: int(0, 2),
      nearLimit: int(0, NEAR_LIMIT.length - 1),
      randomLength: int(1, 12_000),
      crlf: Schema.Boolean,
      terminated: Schema.Boolean,
      rest: Arbitrary.array(Arbitrary.schema(int(0, 255)), { maxLength: 300 }),
      cuts: Cuts,
      chunkSize: int(0, 3_000)
    },
    ({ blanks, chunkSize, crlf, cuts, lengthMode, nearLimit, prefix, randomLength, rest, terminated }) => {
      const content = lengthMode === 0
        ? lineOf(prefix, 0)
        : lineOf(prefix, lengthMode === 1 ? NEAR_LIMIT[nearLimit]! : randomLength)
      const contentBytes = Buffer.from(content, "utf8")
      const restBytes = Buffer.from(rest)
      const stream = Buffer.concat([
        Buffer.from(blanks.map((b) => b + "\n").join(""), "utf8"),
        contentBytes,
        terminated ? Buffer.from(crlf ? "\r\n" : "\n") : Buffer.alloc(0),
        terminated ? restBytes : Buffer.alloc(0)
      ])
      const whole = feed([stream])
      const chunked = feed(cutInto(stream, cuts, chunkSize))
      expect(chunked).toEqual(whole)

      const tooLong = contentBytes.length > HELLO_MAX_BYTES
      if (terminated) {
        expect(whole).toEqual(
          tooLong
            ? { _tag: "TooLarge" }
            : { _tag: "Line", line: contentBytes.toString("latin1"), rest: restBytes.toString("latin1") }
        )
      } else {
        // no newline yet: undecided while it could still be a hello (+1 for a '\r' of a split '\r\n')
        expect(whole).toEqual(contentBytes.length > HELLO_MAX_BYTES + 1 ? { _tag: "TooLarge" } : { _tag: "Pending" })
      }
    },
    { arbitrary: { runs: 400 } }
  )

  it.prop(
    "a first line over HELLO_MAX_BYTES is refused by the first read that proves it, never held whole",
    { extra: int(1, 100_000), chunkSize: int(1, 20_000), blank: Schema.Boolean },
    ({ blank, chunkSize, extra }) => {
      const reader = new HelloReader()
      const bytes = Buffer.alloc(HELLO_MAX_BYTES + 1 + extra, blank ? 0x20 : 0x61) // even a "blank" line that long
      let verdict: HelloRead["_tag"] = "Pending"
      let fed = 0
      for (let i = 0; i < bytes.length && verdict === "Pending"; i += chunkSize) {
        const chunk = bytes.subarray(i, i + chunkSize)
        fed += chunk.length
        verdict = reader.push(chunk)._tag
        if (verdict === "Pending") expect(reader.bufferedBytes).toBeLessThanOrEqual(HELLO_MAX_BYTES + 1)
      }
      expect(verdict).toBe("TooLarge")
      // decided as soon as more than HELLO_MAX_BYTES + 1 bytes had arrived
      expect(fed - chunkSize).toBeLessThanOrEqual(HELLO_MAX_BYTES + 1)
    },
    { arbitrary: { runs: 200 } }
  )

  it("handles \\r\\n split across reads, and only a trailing \\r", () => {
    const r = new HelloReader()
    expect(r.push(Buffer.from("\r"))._tag).toBe("Pending")
    expect(r.push(Buffer.from("\n \t\r\n{\"a\":1}\r"))._tag).toBe("Pending")
    const read = r.push(Buffer.from("\nnext\r\n"))
    expect(read).toEqual({ _tag: "Line", line: Buffer.from("{\"a\":1}"), rest: Buffer.from("next\r\n") })
    // a '\r' inside the line is content
    const inner = new HelloReader().push(Buffer.from("a\rb\n"))
    expect(inner).toEqual({ _tag: "Line", line: Buffer.from("a\rb"), rest: undefined })
    // exactly HELLO_MAX_BYTES with \r\n is accepted, one more byte is not
    const max = "x".repeat(HELLO_MAX_BYTES)
    expect(new HelloReader().push(Buffer.from(max + "\r\n"))._tag).toBe("Line")
    const split = new HelloReader()
    expect(split.push(Buffer.from(max + "\r"))._tag).toBe("Pending")
    expect(split.push(Buffer.from("\n"))._tag).toBe("Line")
    expect(new HelloReader().push(Buffer.from(max + "y\r\n"))._tag).toBe("TooLarge")
  })
})

// ---- over real sockets ----

const running: Array<TestGateway> = []
const devices: Array<Device> = []
const gateway = async (env: Record<string, string> = {}) => {
  const g = await startGateway(env)
  running.push(g)
  return g
}
const connect = async (g: TestGateway) => {
  const d = await Device.connect(g.port)
  devices.push(d)
  return d
}
const hello = (device: string) => JSON.stringify({ type: "hello", v: 1, device, token: "t" })
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

afterEach(async () => {
  for (const d of devices.splice(0)) d.end()
  for (const g of running.splice(0)) {
    await g.stop()
    Fs.rmSync(g.dataDir, { recursive: true, force: true })
  }
})

describe("hello over a socket", () => {
  it("60 KB without a newline before hello: error protocol, then closed", async () => {
    const g = await gateway()
    const d = await connect(g)
    d.socket.write(Buffer.alloc(60 * 1024, 0x61))
    const answer = await d.next()
    expect(answer).toMatchObject({ type: "error", code: "protocol" })
    expect(String(answer["message"])).toContain(String(HELLO_MAX_BYTES))
    await d.closed
    expect(await d.silentFor(50)).toBe(true) // nothing after the error
  })

  it("a first line of exactly HELLO_MAX_BYTES is a hello; one byte more is error protocol", async () => {
    const g = await gateway()
    const exact = await connect(g)
    const padded = hello("dev-max").padEnd(HELLO_MAX_BYTES, " ")
    exact.send(padded + "\r\n" + JSON.stringify(telemetry(1)) + "\n")
    expect((await exact.next()).type).toBe("welcome")
    expect(await exact.next()).toEqual({ type: "ack", seq: 1 })

    const over = await connect(g)
    over.send(padded + " \n")
    expect(await over.next()).toMatchObject({ type: "error", code: "protocol" })
    await over.closed
  })

  it("blank lines every 100 ms do not extend the hello deadline: error timeout at ~600 ms", async () => {
    const g = await gateway({ GATEWAY_HELLO_TIMEOUT_MS: "600" })
    const d = await connect(g)
    const started = Date.now()
    const timer = setInterval(() => {
      if (!d.socket.destroyed && d.socket.writable) d.socket.write("\r\n")
    }, 100)
    try {
      const answer = await d.next(3_000)
      const elapsed = Date.now() - started
      expect(answer).toMatchObject({ type: "error", code: "timeout" })
      expect(elapsed).toBeGreaterThanOrEqual(550)
      expect(elapsed).toBeLessThan(1_000)
      await d.closed
    } finally {
      clearInterval(timer)
    }
  })

  it("a hello pipelined with data frames in one write: welcome, then an ack per frame in order", async () => {
    const g = await gateway()
    const d = await connect(g)
    d.send(
      "\n \r\n" + hello("dev-pipelined") + "\r\n" +
        [telemetry(1), event(2), { type: "ping" }, telemetry(3)].map((f) => JSON.stringify(f)).join("\n") + "\n"
    )
    expect((await d.next()).type).toBe("welcome")
    // the ping is answered inline; the data frames in order
    const answers = await d.take(4)
    expect(answers.filter((a) => a.type === "pong")).toHaveLength(1)
    expect(answers.filter((a) => a.type !== "pong")).toEqual([
      { type: "ack", seq: 1 },
      { type: "ack", seq: 2 },
      { type: "ack", seq: 3 }
    ])
    expect(await d.silentFor(100)).toBe(true)
  })

  it("a hello split over several writes, with a frame begun in the same write as its end", async () => {
    const g = await gateway()
    const d = await connect(g)
    const text = hello("dev-split") + "\n" + JSON.stringify(telemetry(7)) + "\n"
    const cut1 = 5
    const cut2 = text.indexOf("\n") + 10 // inside the telemetry frame
    d.send(text.slice(0, cut1))
    await sleep(30)
    d.send(text.slice(cut1, cut2))
    await sleep(30)
    d.send(text.slice(cut2))
    expect((await d.next()).type).toBe("welcome")
    expect(await d.next()).toEqual({ type: "ack", seq: 7 })
  })
})
