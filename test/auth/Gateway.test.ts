/**
 * JWT device credentials end to end: an in-process gateway (real sockets, real SQLite store)
 * with GATEWAY_JWKS_FILE or GATEWAY_JWKS_URL, devices speaking the line protocol. A good JWT is
 * welcomed and its `kinds` enforced (`nack forbidden`); every bad one is `error auth` and a
 * closed connection; the gateway keeps serving throughout; the registry works alongside.
 */
import { afterEach, describe, expect, it } from "@effect/vitest"
import { UnsecuredJWT } from "jose"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { newEntry } from "../../src/auth/DeviceRegistry.ts"
import { Device, event, telemetry } from "../support/client.ts"
import { startGateway, tempDir, type TestGateway } from "../support/gateway.ts"
import { b64, type FleetKey, fleetKey, type JwksServer, jwksServer, now, sign, writeJwks } from "./fleet.ts"

const running: Array<TestGateway> = []
const devices: Array<Device> = []
const servers: Array<JwksServer> = []
const dirs: Array<string> = []

afterEach(async () => {
  for (const d of devices.splice(0)) d.end()
  for (const g of running.splice(0)) await g.stop()
  for (const s of servers.splice(0)) await s.close()
  for (const d of dirs.splice(0)) Fs.rmSync(d, { recursive: true, force: true })
})

const dir = () => {
  const d = tempDir("gw-jwt-e2e-")
  dirs.push(d)
  return d
}

/** Failed hellos from one address are many here by design: lift the per-address limit on them. */
const LENIENT = { GATEWAY_AUTH_FAIL_LIMIT: "10000" }

const gateway = async (env: Record<string, string>) => {
  const g = await startGateway({ ...LENIENT, ...env })
  running.push(g)
  return g
}

/** Sends a hello with `token`; the first answer. */
const hello = async (g: TestGateway, device: string, token: string) => {
  const d = await Device.connect(g.port)
  devices.push(d)
  d.send({ type: "hello", v: 1, device, token })
  return { d, answer: await d.next() }
}

/** A gateway whose fleet keys are in a JWKS file. */
const withFile = async (keys: ReadonlyArray<FleetKey>, env: Record<string, string> = {}) => {
  const file = Path.join(dir(), "fleet.jwks.json")
  writeJwks(file, keys.map((k) => k.jwk))
  return { file, g: await gateway({ GATEWAY_JWKS_FILE: file, ...env }) }
}

describe("JWT device credentials over the line protocol", () => {
  it("welcomes a device by JWT alone (no registry entry) and enforces the token's kinds", async () => {
    const key = await fleetKey()
    const { g } = await withFile([key])
    const limited = await hello(g, "meter-7", await sign(key, { sub: "meter-7" }))
    expect(limited.answer).toMatchObject({ type: "welcome", v: 1 })
    limited.d.send(telemetry(1), event(2), telemetry(3))
    expect(await limited.d.take(3)).toEqual([
      { type: "ack", seq: 1 },
      expect.objectContaining({ type: "nack", seq: 2, code: "forbidden", retry: false }),
      { type: "ack", seq: 3 }
    ])
    const full = await hello(g, "meter-8", await sign(key, { sub: "meter-8", kinds: ["telemetry", "event"] }))
    expect(full.answer).toMatchObject({ type: "welcome" })
    full.d.send(event(1), telemetry(2))
    expect(await full.d.take(2)).toEqual([{ type: "ack", seq: 1 }, { type: "ack", seq: 2 }])
  })

  it("answers every bad token with error auth and closes; the gateway goes on serving", async () => {
    const [key, foreign] = await Promise.all([fleetKey(), fleetKey()])
    const { g } = await withFile([key], { GATEWAY_JWT_ISSUER: "fleet", GATEWAY_JWT_AUDIENCE: "gw" })
    const claims = { iss: "fleet", aud: "gw" }
    const exp = now() + 3600
    const bad: ReadonlyArray<readonly [string, string, string]> = [
      ["expired", await sign(key, { sub: "d", ...claims, expIn: -120 }), "token expired"],
      ["foreign key", await sign(foreign!, { sub: "d", ...claims }), "token not signed by a fleet key"],
      ["foreign key, fleet kid", await sign(foreign!, { sub: "d", ...claims }, { kid: key!.kid }), "token not signed by a fleet key"],
      ["wrong sub", await sign(key!, { sub: "other", ...claims }), "token is for another device"],
      ["no exp", await sign(key!, { sub: "d", ...claims, expIn: undefined }), 'token lacks the "exp" claim'],
      ["wrong iss", await sign(key!, { sub: "d", iss: "evil", aud: "gw" }), 'token claim "iss" not accepted'],
      ["wrong aud", await sign(key!, { sub: "d", iss: "fleet", aud: "other-gw" }), 'token claim "aud" not accepted'],
      ["alg none", new UnsecuredJWT({ sub: "d", ...claims }).setExpirationTime("1h").encode(), "token algorithm not allowed (asymmetric signatures only)"],
      ["malformed", `${b64("{")}.${b64({ sub: "d", exp })}.c2ln`, "malformed token"],
      ["oversized", `${b64({ alg: "ES256", kid: key!.kid })}.${"A".repeat(3_000)}.c2ln`, "token longer than 2048 characters"],
      ["not a JWT", "opaque-registry-style-token", "expected a JWT signed by a fleet key"]
    ]
    for (const [what, token, message] of bad) {
      const { d, answer } = await hello(g, "d", token)
      expect({ what, answer }).toEqual({ what, answer: { type: "error", code: "auth", message } })
      await d.closed
    }
    // a token over the hello's 4096 characters is not a hello at all
    const { d: huge, answer: protocol } = await hello(g, "d", "A".repeat(2_500) + "." + "B".repeat(2_000) + ".c")
    expect(protocol).toMatchObject({ type: "error", code: "protocol" })
    await huge.closed
    const good = await hello(g, "d", await sign(key!, { sub: "d", ...claims }))
    expect(good.answer).toMatchObject({ type: "welcome" })
    good.d.send({ type: "ping" })
    expect(await good.d.next()).toEqual({ type: "pong" })
  })

  it("registry and JWT side by side; a new fleet key in the file is accepted without a restart, a removed one refused", async () => {
    const [a, b] = await Promise.all([fleetKey(), fleetKey("EdDSA")])
    const reg = newEntry("dev-reg", ["telemetry"])
    const devicesFile = Path.join(dir(), "devices.json")
    Fs.writeFileSync(devicesFile, JSON.stringify({ devices: [reg.entry] }))
    const { file, g } = await withFile([a!], { GATEWAY_DEVICES: devicesFile })
    expect((await hello(g, "dev-reg", reg.token)).answer).toMatchObject({ type: "welcome" })
    expect((await hello(g, "dev-jwt", await sign(a!, { sub: "dev-jwt" }))).answer).toMatchObject({ type: "welcome" })
    expect((await hello(g, "dev-reg", "not-the-token")).answer).toMatchObject({ type: "error", code: "auth" })
    // rotate: b joins, then a leaves (the file is polled every second)
    writeJwks(file, [a!.jwk, b!.jwk])
    // each attempt is another device (welcomes of one device in a row would count as flapping)
    const attempt = async (key: FleetKey, i: number) => (await hello(g, `dev-${i}`, await sign(key, { sub: `dev-${i}` }))).answer
    const until = async (key: FleetKey, done: (type: string) => boolean) => {
      const deadline = Date.now() + 5_000
      let i = 0
      let answer = await attempt(key, i++)
      while (!done(answer.type) && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 250))
        answer = await attempt(key, i++)
      }
      return answer
    }
    expect(await until(b!, (type) => type === "welcome")).toMatchObject({ type: "welcome" })
    writeJwks(file, [b!.jwk])
    expect(await until(a!, (type) => type !== "welcome")).toEqual({ type: "error", code: "auth", message: "token not signed by a fleet key" })
    expect(await attempt(b!, 1_000)).toMatchObject({ type: "welcome" })
    expect((await hello(g, "dev-reg", reg.token)).answer).toMatchObject({ type: "welcome" })
  })

  it("takes its fleet keys from GATEWAY_JWKS_URL", async () => {
    const [a, foreign] = await Promise.all([fleetKey("RS256"), fleetKey("RS256")])
    const server = await jwksServer([a!.jwk])
    servers.push(server)
    const g = await gateway({ GATEWAY_JWKS_URL: server.url })
    const ok = await hello(g, "dev-url", await sign(a!, { sub: "dev-url", kinds: ["event"] }))
    expect(ok.answer).toMatchObject({ type: "welcome" })
    ok.d.send(event(1), telemetry(2))
    expect(await ok.d.take(2)).toEqual([{ type: "ack", seq: 1 }, expect.objectContaining({ type: "nack", seq: 2, code: "forbidden" })])
    expect((await hello(g, "dev-url", await sign(foreign!, { sub: "dev-url" }))).answer).toEqual({
      type: "error",
      code: "auth",
      message: "token not signed by a fleet key"
    })
    expect(server.requests()).toBeLessThanOrEqual(2) // the start's fetch, and at most one for the unknown kid
  })
})
