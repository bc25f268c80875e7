/**
 * The NATS sink's pure parts: subjects (valid device ids unchanged, anything else encoded into
 * a legal token, reversibly), the JSON payload, `NATS_URL` parsing (schemes, lists, ports,
 * credentials refused), and subject matching with wildcards.
 */
import { describe, expect, it } from "@effect/vitest"
import { Schema } from "effect"
import type { Envelope } from "../../../src/domain/Envelope.ts"
import { decodeSubjectToken, encodeSubjectToken, payloadOf, subjectOf } from "../../../src/sinks/nats/NatsMessage.ts"
import { subjectMatches } from "../../../src/sinks/nats/NatsStream.ts"
import { parseNatsUrl } from "../../../src/sinks/nats/NatsUrl.ts"
import { eventEnvelope, telemetryEnvelope } from "../../support/envelopes.ts"

/** What NATS refuses inside a subject token. */
const ILLEGAL_IN_TOKEN = /[.*>\s]/

describe("subjects", () => {
  it("a valid device id (with ':', '_' and '-') is its own token", () => {
    expect(subjectOf({ kind: "telemetry", device: "site:7_a-B9" })).toBe("devices.telemetry.site:7_a-B9")
    expect(subjectOf({ kind: "event", device: "d" })).toBe("devices.event.d")
  })

  it("dots, wildcards, spaces, '%' and non-ASCII are escaped as %XX (UTF-8 bytes)", () => {
    expect(encodeSubjectToken("a.b")).toBe("a%2Eb")
    expect(encodeSubjectToken("*")).toBe("%2A")
    expect(encodeSubjectToken(">")).toBe("%3E")
    expect(encodeSubjectToken("a b\tc")).toBe("a%20b%09c")
    expect(encodeSubjectToken("50%")).toBe("50%25")
    expect(encodeSubjectToken("é")).toBe("%C3%A9")
    expect(encodeSubjectToken("")).toBe("%")
  })

  // (as UTF-8 text: a lone surrogate, which is not Unicode text, comes back as U+FFFD)
  it.prop("any id becomes one legal token that decodes back to it", { id: Schema.String }, ({ id }) => {
    const token = encodeSubjectToken(id)
    expect(token.length).toBeGreaterThan(0)
    expect(ILLEGAL_IN_TOKEN.test(token)).toBe(false)
    expect(decodeSubjectToken(token)).toBe(Buffer.from(id, "utf8").toString("utf8"))
  })
})

describe("payload", () => {
  it("is the envelope's normalized fields, plus the stages' annotations when there are some", () => {
    const e = telemetryEnvelope("dev-1", 3, { t: 1.5 })
    expect(JSON.parse(payloadOf(e))).toEqual({ ...e })
    const annotated = { ...eventEnvelope("dev-1", 4), zone: "north", score: 3 } as Envelope
    expect(JSON.parse(payloadOf(annotated))).toEqual({ ...eventEnvelope("dev-1", 4), annotations: { zone: "north", score: 3 } })
  })

  it("a field JSON cannot hold makes it throw (that message is rejected)", () => {
    expect(() => payloadOf({ ...telemetryEnvelope("dev-1", 1), n: 1n } as Envelope)).toThrow(/BigInt/)
  })
})

describe("NATS_URL", () => {
  it("one server or several, with nats://, tls:// or no scheme; port 4222 by default", () => {
    expect(parseNatsUrl("nats://127.0.0.1:4222")).toEqual({ servers: ["nats://127.0.0.1:4222"], tlsRequired: false })
    expect(parseNatsUrl("a.example:1, nats://b:2 ,c")).toEqual({ servers: ["nats://a.example:1", "nats://b:2", "nats://c:4222"], tlsRequired: false })
    expect(parseNatsUrl("tls://[::1]:4443")).toEqual({ servers: ["nats://[::1]:4443"], tlsRequired: true })
  })

  it("other schemes, credentials, bad ports and empty entries are refused with what is wrong", () => {
    expect(parseNatsUrl("http://h:4222")).toBe(`unsupported scheme "http://" in "http://h:4222": expected nats://host:port or tls://host:port`)
    expect(parseNatsUrl("ws://h")).toMatch(/unsupported scheme "ws:\/\/"/)
    expect(parseNatsUrl("nats://u:p@h:1")).toMatch(/credentials in the URL/)
    expect(parseNatsUrl("nats://h:0")).toMatch(/port 0 .* is not from 1 to 65535/)
    expect(parseNatsUrl("nats://h:70000")).toMatch(/is not from 1 to 65535/)
    expect(parseNatsUrl("a,,b")).toMatch(/empty server/)
    expect(parseNatsUrl("")).toMatch(/expected one or more/)
    expect(parseNatsUrl("nats://h:1/path")).toMatch(/is not host:port/)
  })
})

describe("subject matching", () => {
  it("follows NATS wildcards", () => {
    expect(subjectMatches("devices.>", "devices.telemetry.d")).toBe(true)
    expect(subjectMatches("devices.>", "devices")).toBe(false)
    expect(subjectMatches("devices.*.d", "devices.event.d")).toBe(true)
    expect(subjectMatches("devices.*", "devices.event.d")).toBe(false)
    expect(subjectMatches("devices.telemetry.>", "devices.event.d")).toBe(false)
    expect(subjectMatches("devices.event.d", "devices.event.d")).toBe(true)
  })
})
