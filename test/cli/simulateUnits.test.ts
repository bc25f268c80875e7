/**
 * The fleet simulator's parts, each alone: the latency histogram against exact percentiles, the
 * send schedule (evenly spread phases, boot times, jitter), the frames it writes checked by the
 * gateway's own decoders, the answers it reads built by the gateway's own frame builders, tokens
 * files, the command line, and the open-files warning. The simulator against a real gateway:
 * simulate.test.ts.
 */
import { describe, expect, it } from "@effect/vitest"
import { Result } from "effect"
import * as Crypto from "node:crypto"
import { fileLimitWarning } from "../../src/cli/simulate.ts"
import { CredentialsError, defaultAlg, fileTokens, parseTokens } from "../../src/cli/simulator/Credentials.ts"
import {
  ackSeq,
  dataFrame,
  helloFrame,
  isDupAck,
  isEvent,
  isTraced,
  mix,
  newRunId,
  parseAnswer,
  traceparent
} from "../../src/cli/simulator/FrameText.ts"
import { Histogram } from "../../src/cli/simulator/Histogram.ts"
import { parseCommand, UsageError } from "../../src/cli/simulator/Options.ts"
import { SendSchedule } from "../../src/cli/simulator/Schedule.ts"
import {
  ackFrame,
  decodeDataFrame,
  decodeHello,
  errorFrame,
  goawayFrame,
  isTraceparent,
  nackFrame,
  PONG,
  welcomeFrame
} from "../../src/domain/Frames.ts"

describe("Histogram", () => {
  it("percentiles within 1% of the exact ones, the max exact", () => {
    const h = new Histogram()
    const values: Array<number> = []
    for (let i = 0; i < 10_000; i++) {
      const v = 0.05 + ((i * 7919) % 10_000) / 10 // 0.05 … 1000 ms, shuffled
      values.push(v)
      h.record(v)
    }
    values.sort((a, b) => a - b)
    for (const p of [0.5, 0.95, 0.99]) {
      const exact = values[Math.ceil(values.length * p) - 1]!
      expect(Math.abs(h.percentile(p) - exact) / exact).toBeLessThan(0.011)
    }
    expect(h.max).toBe(values[values.length - 1])
    expect(h.count).toBe(10_000)
    expect(h.percentile(1)).toBe(h.max)
    h.reset()
    expect(h.count).toBe(0)
    expect(h.percentile(0.5)).toBe(0)
  })

  it("sub-microsecond and negative values count in the lowest bucket; a percentile is never above the max", () => {
    const h = new Histogram()
    h.record(0)
    h.record(-3)
    h.record(0.0005)
    expect(h.count).toBe(3)
    expect(h.max).toBe(0.0005)
    expect(h.percentile(0.5)).toBe(0.0005)
    h.record(2)
    expect(h.percentile(0.5)).toBeLessThan(0.0011)
    expect(h.percentile(1)).toBe(2)
  })
})

describe("SendSchedule", () => {
  const collect = (s: SendSchedule, until: number) => {
    const out: Array<{ readonly device: number; readonly at: number }> = []
    s.runDue(until, (device, at) => out.push({ device, at }))
    return out
  }

  it("device i's phase is i/devices of the period; frames come out in time order until the end", () => {
    const s = new SendSchedule({ devices: 4, origin: 1_000, periodMs: 100, durationMs: 1_000, jitter: 0, bootMs: () => 0 })
    const out = collect(s, 10_000)
    expect(out.length).toBe(40)
    for (let i = 1; i < out.length; i++) expect(out[i]!.at).toBeGreaterThanOrEqual(out[i - 1]!.at)
    for (let d = 0; d < 4; d++) {
      const times = out.filter((o) => o.device === d).map((o) => o.at)
      expect(times).toEqual(Array.from({ length: 10 }, (_, k) => 1_000 + d * 25 + k * 100))
    }
    expect(s.nextDue()).toBe(Infinity)
    expect(s.remaining).toBe(0)
  })

  it("emits only what is due, and a device's frames start at its boot", () => {
    const s = new SendSchedule({ devices: 2, origin: 0, periodMs: 100, durationMs: 500, jitter: 0, bootMs: (i) => i * 260 })
    expect(collect(s, 49).map((o) => o.at)).toEqual([0])
    expect(s.nextDue()).toBe(100)
    const rest = collect(s, 1_000)
    // device 1: phase 50, boot 260 → first frame at 350
    expect(rest.filter((o) => o.device === 1).map((o) => o.at)).toEqual([350, 450])
    expect(rest.filter((o) => o.device === 0).map((o) => o.at)).toEqual([100, 200, 300, 400])
  })

  it("jitter moves each frame within ±jitter/2 of the period and never swaps a device's frames", () => {
    const s = new SendSchedule({ devices: 10, origin: 0, periodMs: 200, durationMs: 20_000, jitter: 0.5, bootMs: () => 0 })
    const out = collect(s, 1e9)
    expect(out.length).toBe(1_000)
    let moved = 0
    for (let d = 0; d < 10; d++) {
      const times = out.filter((o) => o.device === d).map((o) => o.at)
      times.forEach((t, k) => {
        const base = d * 20 + k * 200
        expect(Math.abs(t - base)).toBeLessThanOrEqual(50)
        if (t !== base) moved++
      })
      for (let k = 1; k < times.length; k++) expect(times[k]!).toBeGreaterThan(times[k - 1]!)
    }
    expect(moved).toBeGreaterThan(900)
  })

  it("clear ends it", () => {
    const s = new SendSchedule({ devices: 3, origin: 0, periodMs: 10, durationMs: 1_000, jitter: 0, bootMs: () => 0 })
    s.clear()
    expect(collect(s, 1e9)).toEqual([])
  })
})

describe("FrameText", () => {
  const decoded = (line: string) => {
    expect(line.endsWith("\n")).toBe(true)
    const json = JSON.parse(line) as { type: "telemetry" | "event" }
    return decodeDataFrame(json.type, json)
  }

  it("frames pass the gateway's own validation, with and without trace, and are the same on every resend", () => {
    const runId = newRunId()
    for (let n = 0; n < 500; n++) {
      const trace = n % 2 === 0 ? traceparent(runId, 17, n) : undefined
      for (const event of [false, true]) {
        const line = dataFrame(event, 1_000 + n, 1_700_000_000_000 + n, 17, n, trace)
        const r = decoded(line)
        expect(Result.isSuccess(r), line).toBe(true)
        if (Result.isSuccess(r)) {
          expect(r.success.type).toBe(event ? "event" : "telemetry")
          expect(r.success.seq).toBe(1_000 + n)
          expect(r.success.trace).toBe(trace)
        }
        expect(dataFrame(event, 1_000 + n, 1_700_000_000_000 + n, 17, n, trace)).toBe(line)
      }
      if (trace !== undefined) expect(isTraceparent(trace), trace).toBe(true)
    }
    expect(traceparent(runId, 1, 2)).not.toBe(traceparent(runId, 1, 3))
    expect(traceparent(runId, 1, 2)).not.toBe(traceparent(runId, 2, 2))
  })

  it("the hello passes the gateway's hello schema, with the resume hint when there is one", () => {
    const plain = decodeHello(JSON.parse(helloFrame("sim-7", "tok", 3, undefined)))
    expect(Result.isSuccess(plain) && plain.success).toEqual({ type: "hello", v: 1, device: "sim-7", token: "tok", epoch: 3 })
    const resumed = decodeHello(JSON.parse(helloFrame("sim-7", "tok", 0, "hint-1")))
    expect(Result.isSuccess(resumed) && resumed.success.resume).toBe("hint-1")
  })

  it("the event and trace draws are stable and hit their fractions", () => {
    let events = 0
    let traced = 0
    for (let n = 0; n < 100_000; n++) {
      if (isEvent(n % 100, n, 0.05)) events++
      if (isTraced(n % 100, n, 0.01)) traced++
    }
    expect(events / 100_000).toBeGreaterThan(0.045)
    expect(events / 100_000).toBeLessThan(0.055)
    expect(traced / 100_000).toBeGreaterThan(0.008)
    expect(traced / 100_000).toBeLessThan(0.012)
    expect(isEvent(3, 9, 0)).toBe(false)
    expect(isEvent(3, 9, 1)).toBe(true)
    expect(mix(3, 9)).toBe(mix(3, 9))
    expect(mix(3, 9)).not.toBe(mix(9, 3))
  })

  it("reads every gateway frame as the gateway writes it", () => {
    expect(ackSeq(ackFrame(123, false).trimEnd())).toBe(123)
    expect(ackSeq(ackFrame(9_007_199_254_740_991, true).trimEnd())).toBe(9_007_199_254_740_991)
    expect(isDupAck(ackFrame(5, true))).toBe(true)
    expect(isDupAck(ackFrame(5, false))).toBe(false)
    expect(ackSeq(nackFrame(5, "shed", "x").trimEnd())).toBe(-1)
    expect(ackSeq(`{"type":"ack","seq":}`)).toBe(-1)
    expect(parseAnswer(welcomeFrame("s", 1_000, 65_536, 41))).toEqual({ type: "welcome", lastSeq: 41, keepaliveMs: 1_000 })
    expect(parseAnswer(welcomeFrame("s", 30_000, 65_536, null))).toEqual({ type: "welcome", lastSeq: null, keepaliveMs: 30_000 })
    expect(parseAnswer(nackFrame(7, "rate_limited", "slow down", 250))).toEqual({
      type: "nack",
      seq: 7,
      code: "rate_limited",
      retry: true,
      retryAfterMs: 250
    })
    expect(parseAnswer(nackFrame(8, "invalid", "bad"))).toEqual({ type: "nack", seq: 8, code: "invalid", retry: false, retryAfterMs: undefined })
    expect(parseAnswer(goawayFrame(1_500, "abc"))).toEqual({ type: "goaway", retryAfterMs: 1_500, resume: "abc" })
    expect(parseAnswer(goawayFrame(1_500))).toEqual({ type: "goaway", retryAfterMs: 1_500, resume: undefined })
    expect(parseAnswer(errorFrame("busy", "full", 1_200))).toEqual({ type: "error", code: "busy", message: "full", retryAfterMs: 1_200 })
    expect(parseAnswer(PONG)).toEqual({ type: "pong" })
    expect(parseAnswer(ackFrame(3, true))).toEqual({ type: "ack", seq: 3, dup: true })
    expect(parseAnswer("not json").type).toBe("unknown")
    expect(parseAnswer(`[1]`).type).toBe("unknown")
    expect(parseAnswer(`{"type":"nack"}`).type).toBe("unknown")
  })
})

describe("tokens files", () => {
  it("reads lines with any separator, comments and blank lines, or a JSON object", () => {
    const text = "# fleet\n\nsim-0 tok0\nsim-1\ttok1\nsim-2=tok.2\nsim-3,tok_3\n  sim:4   tok-4  \r\n"
    expect([...parseTokens(text)]).toEqual([["sim-0", "tok0"], ["sim-1", "tok1"], ["sim-2", "tok.2"], ["sim-3", "tok_3"], ["sim:4", "tok-4"]])
    expect([...parseTokens(`{"a":"x","b":"y"}`)]).toEqual([["a", "x"], ["b", "y"]])
  })

  it("names the bad line, or the devices without a token", () => {
    expect(() => parseTokens("sim-0 tok\nsim-1\n", "t.txt")).toThrow(new CredentialsError(`t.txt:2: expected "<device> <token>"`))
    expect(() => parseTokens(`{"a":1}`, "t.json")).toThrow(CredentialsError)
    expect(() => parseTokens(`{"a":`, "t.json")).toThrow(/t.json is not JSON/)
    const tokens = parseTokens("sim-0 a\nsim-2 c\n")
    expect(() => fileTokens(tokens, ["sim-0", "sim-1", "sim-2", "sim-3"], "t.txt")).toThrow(
      "t.txt has no token for 2 of the 4 devices (sim-1, sim-3)"
    )
    expect(fileTokens(tokens, ["sim-0", "sim-2"], "t.txt")(1, "sim-2")).toBe("c")
  })

  it("picks the JWT algorithm from the key", () => {
    expect(defaultAlg(Crypto.generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey)).toBe("ES256")
    expect(defaultAlg(Crypto.generateKeyPairSync("ec", { namedCurve: "P-384" }).privateKey)).toBe("ES384")
    expect(defaultAlg(Crypto.generateKeyPairSync("ed25519").privateKey)).toBe("EdDSA")
    expect(defaultAlg(Crypto.generateKeyPairSync("ec", { namedCurve: "secp256k1" }).privateKey)).toBe(undefined)
  })
})

describe("command line", () => {
  it("defaults", () => {
    const c = parseCommand([])
    expect(c.command).toBe("run")
    if (c.command !== "run") return
    expect(c.host).toBe("127.0.0.1")
    expect(c.port).toBe(7000)
    expect(c.credentials).toEqual({ mode: "token", token: "sim" })
    expect(c.tls).toBe(undefined)
    expect(c.fleet).toEqual({
      devices: 100,
      prefix: "sim-",
      epoch: 0,
      rate: 5,
      events: 0.05,
      durationMs: 10_000,
      drainMs: 10_000,
      window: 16,
      backlog: 1024,
      jitter: 0,
      connectRate: 1000,
      traceRatio: 0,
      maxBackoffMs: 5_000,
      connectTimeoutMs: 10_000
    })
  })

  it("the brief's example", () => {
    const c = parseCommand(["--host", "10.0.0.5", "--port", "7001", "--devices", "1000", "--rate", "0.5", "--events", "0.05", "--duration", "60",
      "--trace-ratio", "0.01", "--tokens", "t.txt", "--tls", "--ca", "ca.crt", "--json"])
    expect(c.command === "run" && [c.host, c.port, c.fleet.devices, c.fleet.rate, c.fleet.durationMs, c.fleet.traceRatio, c.json]).toEqual(
      ["10.0.0.5", 7001, 1000, 0.5, 60_000, 0.01, true]
    )
    expect(c.command === "run" && c.credentials).toEqual({ mode: "tokens", file: "t.txt" })
    expect(c.command === "run" && c.tls?.ca).toBe("ca.crt")
  })

  it("refuses what it cannot mean, naming the flag", () => {
    const refused = (args: ReadonlyArray<string>, message: RegExp) => expect(() => parseCommand(args)).toThrow(message)
    refused(["--events", "1.5"], /--events: expected a number from 0 to 1/)
    refused(["--rate", "0"], /--rate: expected a number above 0/)
    refused(["--port", "0x10"], /--port: expected an integer/)
    refused(["--devices", "2.5"], /--devices: expected an integer/)
    refused(["--devices", ""], /--devices/)
    refused(["--window", "32", "--backlog", "16"], /--backlog: expected an integer from 32/)
    refused(["--token", "a", "--tokens", "f"], /one of --token, --tokens, --jwt-key/)
    refused(["--jwt-kid", "k"], /--jwt-kid needs --jwt-key/)
    refused(["--ca", "ca.crt"], /--ca needs --tls/)
    refused(["--tls", "--cert", "c"], /--cert and --key go together/)
    refused(["--prefix", "a.b"], /--prefix/)
    refused(["--bogus"], /Unknown option '--bogus'/)
    refused(["extra"], /unexpected argument "extra"/)
    expect(() => parseCommand(["--rate", "x"])).toThrow(UsageError)
  })

  it("provision", () => {
    expect(parseCommand(["provision", "--devices", "20", "--prefix", "f-", "--kinds", "telemetry"])).toEqual({
      command: "provision",
      devices: 20,
      prefix: "f-",
      registry: "devices.json",
      tokensOut: "sim-tokens.txt",
      kinds: ["telemetry"]
    })
    expect(() => parseCommand(["provision", "--kinds", "metrics"])).toThrow(/--kinds/)
    expect(parseCommand(["--help"])).toEqual({ command: "help" })
  })

  it("warns when the open-files limit is below the devices' sockets", () => {
    expect(fileLimitWarning(10_000, 1024)).toBe(
      "warning: ulimit -n is 1024, below the 10064 file descriptors 10000 devices need; raise it (ulimit -n 11000)"
    )
    expect(fileLimitWarning(10_000, 65_536)).toBe(undefined)
    expect(fileLimitWarning(10_000, undefined)).toBe(undefined)
  })
})
