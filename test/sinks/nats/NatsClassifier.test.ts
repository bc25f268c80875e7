/**
 * The NATS error classifier on the errors a real `nats-server -js` makes the client throw
 * (a private server per file): too large for the stream (10054) or the connection
 * (max_payload), no responders for a subject no stream takes or one the stream takes, another
 * stream's subject (10060), a missing stream (10059), a stopped (SIGSTOP) server's timeout, a
 * closed connection, a refused one, a wrong password, a publish permission violation,
 * JetStream switched off; and API codes by number for those a test server cannot be made to
 * produce on demand (10077 store failed, 10158 id in process, 10039, ...).
 */
import { JetStreamApiError, jetstream, jetstreamManager } from "@nats-io/jetstream"
import { connect, type NatsConnection } from "@nats-io/transport-node"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { classifyApiError, classifyNatsError, type NatsErrorClass, stopsStart } from "../../../src/sinks/nats/NatsClassifier.ts"
import { freePort, hasNatsServer, type NatsServer, requireNatsServer, startNatsServer, stopAllNatsServers } from "../../support/natsServer.ts"

requireNatsServer("The NATS classifier tests")

let server: NatsServer
let plain: NatsServer
let guarded: NatsServer
let nc: NatsConnection

beforeAll(async () => {
  if (!hasNatsServer) return
  server = await startNatsServer({ extraConfig: "max_payload: 65536" })
  plain = await startNatsServer({ jetstream: false })
  guarded = await startNatsServer({
    extraConfig: `authorization { users = [ { user: gw, password: right, permissions: { publish: { deny: ["devices.event.>"] } } } ] }`
  })
  nc = await connect({ servers: server.url, noAsyncTraces: true })
  const jsm = await jetstreamManager(nc)
  await jsm.streams.add({ name: "DEVICES", subjects: ["devices.telemetry.>"], max_msg_size: 1_024 })
  await jsm.streams.add({ name: "OTHER", subjects: ["other.>"] })
}, 60_000)

afterAll(async () => {
  if (nc !== undefined) await nc.close()
  await stopAllNatsServers()
})

/** The error `p` rejects with (fails the test when it resolves). */
const errorOf = async (p: Promise<unknown>): Promise<unknown> => {
  try {
    await p
  } catch (e) {
    return e
  }
  throw new Error("expected a failure")
}

const unavailable = (failure: string, connection: boolean) => ({ outcome: "unavailable", failure, connection })

describe.runIf(hasNatsServer)("classifyNatsError on real errors", () => {
  it("a message over the stream's max_msg_size (10054) is Rejected", async () => {
    const e = await errorOf(jetstream(nc).publish("devices.telemetry.a", "x".repeat(2_000)))
    expect(e).toBeInstanceOf(JetStreamApiError)
    const c = classifyNatsError(e)
    expect(c).toEqual({ outcome: "rejected", message: "message size exceeds maximum allowed (10054)" })
  })

  it("a message over the server's max_payload is Rejected before it is sent", async () => {
    const e = await errorOf(jetstream(nc).publish("devices.telemetry.a", "x".repeat(70_000)))
    expect(classifyNatsError(e)).toMatchObject({ outcome: "rejected", message: expect.stringMatching(/max_payload/) })
  })

  it("no responders: Rejected for a subject outside the stream, Unavailable for one it takes (leader away)", async () => {
    const e = await errorOf(jetstream(nc).publish("devices.event.a", "x"))
    expect(classifyNatsError(e, { subject: "devices.event.a", subjectInStream: false }))
      .toEqual({ outcome: "rejected", message: "no stream takes subject devices.event.a (no responders)" })
    expect(classifyNatsError(e, { subject: "devices.event.a", subjectInStream: true })).toMatchObject(unavailable("unavailable", false))
    // not knowing the stream's subjects, it is not taken for permanent
    expect(classifyNatsError(e)).toMatchObject(unavailable("unavailable", false))
  })

  it("a subject another stream takes, published with Nats-Expected-Stream (10060), is Rejected", async () => {
    const e = await errorOf(jetstream(nc).publish("other.a", "x", { expect: { streamName: "DEVICES" } }))
    expect(classifyNatsError(e)).toEqual({ outcome: "rejected", message: "expected stream does not match (10060)" })
  })

  it("a missing stream (10059) is misconfigured", async () => {
    const jsm = await jetstreamManager(nc)
    const e = await errorOf(jsm.streams.info("NOPE"))
    const c = classifyNatsError(e)
    expect(c).toMatchObject(unavailable("misconfigured", false))
    expect(stopsStart(c)).toBe(true)
  })

  it("a stopped server: the PubAck times out (timeout, about the connection)", async () => {
    const own = await startNatsServer()
    const conn = await connect({ servers: own.url })
    try {
      await (await jetstreamManager(conn)).streams.add({ name: "T", subjects: ["t.>"] })
      await own.pause()
      const e = await errorOf(jetstream(conn).publish("t.a", "x", { timeout: 300 }))
      own.resume()
      const c = classifyNatsError(e)
      expect(c).toEqual({ outcome: "unavailable", failure: "timeout", connection: true, message: "no PubAck in time (timeout)" })
      expect(stopsStart(c)).toBe(false)
    } finally {
      await conn.close()
      await own.stop()
    }
  })

  it("a connection closed under a publish, or before it, is unreachable", async () => {
    const conn = await connect({ servers: server.url })
    const during = jetstream(conn).publish("devices.telemetry.a", "y")
    await conn.close()
    expect(classifyNatsError(await errorOf(during))).toMatchObject(unavailable("unreachable", true))
    expect(classifyNatsError(await errorOf(jetstream(conn).publish("devices.telemetry.a", "z")))).toMatchObject(unavailable("unreachable", true))
  })

  it("a refused connection is unreachable (a retry may help; not a start failure)", async () => {
    const e = await errorOf(connect({ servers: `127.0.0.1:${await freePort()}`, reconnect: false }))
    const c = classifyNatsError(e)
    expect(c).toMatchObject(unavailable("unreachable", true))
    expect(stopsStart(c)).toBe(false)
  })

  it("a wrong password is misconfigured (stops a start)", async () => {
    const e = await errorOf(connect({ servers: guarded.url, user: "gw", pass: "wrong", reconnect: false }))
    const c = classifyNatsError(e)
    expect(c).toEqual({ outcome: "unavailable", failure: "misconfigured", connection: true, message: "authentication failed: Authorization Violation" })
    expect(stopsStart(c)).toBe(true)
  })

  it("a publish the user may not make is misconfigured for that message", async () => {
    const conn = await connect({ servers: guarded.url, user: "gw", pass: "right" })
    try {
      const e = await errorOf(jetstream(conn, { timeout: 1_000 }).publish("devices.event.a", "x"))
      expect(classifyNatsError(e)).toMatchObject({
        ...unavailable("misconfigured", false),
        message: expect.stringMatching(/permission denied: Permissions Violation for Publish to "devices\.event\.a"/)
      })
    } finally {
      await conn.close()
    }
  })

  it("JetStream switched off: no responders to its API (unavailable, the start checks again later)", async () => {
    const conn = await connect({ servers: plain.url })
    try {
      const e = await errorOf(jetstreamManager(conn))
      const c: NatsErrorClass = classifyNatsError(e)
      expect(c).toMatchObject(unavailable("unavailable", false))
      expect(c.message).toMatch(/no responders for \$JS\.API\.INFO/)
    } finally {
      await conn.close()
    }
  })
})

describe("classifyApiError by code", () => {
  const api = (status: number, code: number, description: string) =>
    classifyNatsError(new JetStreamApiError({ code: status, err_code: code, description }))

  it("permanent codes are Rejected", () => {
    expect(api(400, 10054, "message size exceeds maximum allowed").outcome).toBe("rejected")
    expect(api(400, 10097, "header size exceeds maximum allowed of 64k").outcome).toBe("rejected")
    expect(api(400, 10060, "expected stream does not match").outcome).toBe("rejected")
    expect(api(400, 10109, "invalid operation on sealed stream").outcome).toBe("rejected")
  })

  it("store, cluster and in-process errors are transient", () => {
    expect(api(503, 10077, "maximum messages per subject exceeded")).toMatchObject(unavailable("unavailable", false))
    expect(api(500, 10047, "insufficient storage resources available")).toMatchObject(unavailable("unavailable", false))
    expect(api(409, 10158, "duplicate message id is in process")).toMatchObject(unavailable("unavailable", false))
    expect(api(503, 10008, "JetStream system temporarily unavailable")).toMatchObject(unavailable("unavailable", false))
    expect(api(429, 10167, "too many requests")).toMatchObject(unavailable("unavailable", false))
    // a code the classifier does not know is not taken for permanent
    expect(api(400, 19999, "something new")).toMatchObject(unavailable("unavailable", false))
  })

  it("JetStream off for the account and a missing stream are misconfigured", () => {
    expect(api(503, 10039, "JetStream not enabled for account")).toMatchObject(unavailable("misconfigured", false))
    expect(api(503, 10076, "JetStream not enabled")).toMatchObject(unavailable("misconfigured", false))
    expect(classifyApiError(10059, 404, "stream not found")).toMatchObject(unavailable("misconfigured", false))
  })
})
