/**
 * The `NATS_*` variables of the gateway's configuration: their defaults, what they become as
 * the sink's settings, and bad values refused at start with one line naming the variable
 * (a `NATS_URL` with another scheme among them).
 */
import { describe, expect, it } from "@effect/vitest"
import { ConfigProvider, Effect } from "effect"
import { describeConfigError, gatewayConfig } from "../../../src/config/GatewayConfig.ts"
import { natsSettings, natsSettingsOf } from "../../../src/sinks/nats/NatsSettings.ts"

const read = (env: Record<string, string>) =>
  Effect.runPromise(Effect.result(gatewayConfig).pipe(Effect.provide(ConfigProvider.layer(ConfigProvider.fromEnvRecord(env)))))

describe("NATS configuration", () => {
  it("defaults: one local server, stream DEVICES not created, file storage, 2 min window, R1, 5 s acks", async () => {
    const r = await read({ GATEWAY_ID: "gw-1" })
    expect(r._tag).toBe("Success")
    if (r._tag !== "Success") return
    expect(natsSettingsOf(r.success)).toEqual(natsSettings({ clientName: "iot-gateway gw-1" }))
  })

  it("reads every variable", async () => {
    const r = await read({
      GATEWAY_ID: "gw-2",
      NATS_URL: "nats://a:4222,tls://b:4443",
      NATS_CREDS: "/etc/gw/nats.creds",
      NATS_TLS_CA: "/etc/gw/ca.pem",
      NATS_TLS_CERT: "/etc/gw/c.pem",
      NATS_TLS_KEY: "/etc/gw/k.pem",
      NATS_STREAM: "FLEET_1",
      NATS_STREAM_CREATE: "true",
      NATS_STORAGE: "memory",
      NATS_DUPLICATE_WINDOW_MS: "600000",
      NATS_REPLICAS: "3",
      NATS_ACK_TIMEOUT_MS: "2500"
    })
    expect(r._tag).toBe("Success")
    if (r._tag !== "Success") return
    expect(natsSettingsOf(r.success)).toEqual({
      url: "nats://a:4222,tls://b:4443",
      credsFile: "/etc/gw/nats.creds",
      tlsCa: "/etc/gw/ca.pem",
      tlsCert: "/etc/gw/c.pem",
      tlsKey: "/etc/gw/k.pem",
      stream: "FLEET_1",
      createStream: true,
      storage: "memory",
      duplicateWindowMs: 600_000,
      replicas: 3,
      ackTimeoutMs: 2_500,
      clientName: "iot-gateway gw-2"
    })
  })

  it.each([
    ["NATS_URL", "http://nats:4222", /unsupported scheme "http:\/\/"/],
    ["NATS_URL", "nats://user:pw@nats:4222", /use NATS_CREDS/],
    ["NATS_STREAM", "devices.all", /NATS_STREAM/],
    ["NATS_STORAGE", "disk", /NATS_STORAGE/],
    ["NATS_REPLICAS", "7", /NATS_REPLICAS/],
    ["NATS_DUPLICATE_WINDOW_MS", "10", /NATS_DUPLICATE_WINDOW_MS/],
    ["NATS_ACK_TIMEOUT_MS", "0x10", /NATS_ACK_TIMEOUT_MS/],
    ["NATS_STREAM_CREATE", "maybe", /NATS_STREAM_CREATE/]
  ])("refuses %s=%j with one line naming it", async (name, value, expected) => {
    const r = await read({ [name]: value })
    expect(r._tag).toBe("Failure")
    if (r._tag !== "Failure") return
    const line = describeConfigError(r.failure)
    expect(line).toMatch(/^invalid configuration: /)
    expect(line).toMatch(expected)
    expect(line).toContain(name)
    expect(line).not.toContain("\n")
  })
})
