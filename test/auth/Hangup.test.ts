/**
 * SIGHUP re-fetches the fleet keys at once, in the real process (`node src/main.ts`): a key
 * published since the last fetch is accepted (no waiting for the 30 s cooldown or the 5 min
 * refresh), a withdrawn one refused, and the signal does not end the gateway.
 */
import { afterEach, describe, expect, it } from "@effect/vitest"
import * as Fs from "node:fs"
import { Device } from "../support/client.ts"
import { tempDir } from "../support/gateway.ts"
import { killChildren, logLines, messageOf, startChild } from "../support/process.ts"
import { fleetKey, type JwksServer, jwksServer, sign } from "./fleet.ts"

const dirs: Array<string> = []
const servers: Array<JwksServer> = []
const devices: Array<Device> = []
afterEach(async () => {
  for (const d of devices.splice(0)) d.end()
  await killChildren()
  for (const s of servers.splice(0)) await s.close()
  for (const d of dirs.splice(0)) Fs.rmSync(d, { recursive: true, force: true })
})

describe("SIGHUP", () => {
  it("re-fetches GATEWAY_JWKS_URL at once; the gateway keeps running", async () => {
    const [a, b] = await Promise.all([fleetKey(), fleetKey()])
    const server = await jwksServer([a!.jwk])
    servers.push(server)
    const dir = tempDir("gw-hup-")
    dirs.push(dir)
    const g = await startChild(dir, { GATEWAY_JWKS_URL: server.url, GATEWAY_HOST: "127.0.0.1", GATEWAY_AUTH_FAIL_LIMIT: "10000" }, undefined, 45_000)
    const hello = async (device: string, token: string) => {
      const d = await Device.connect(g.port)
      devices.push(d)
      d.send({ type: "hello", v: 1, device, token })
      return d.next()
    }
    expect(await hello("dev-a", await sign(a!, { sub: "dev-a" }))).toMatchObject({ type: "welcome" })
    server.serve([b!.jwk])
    const tokenB = await sign(b!, { sub: "dev-b" })
    // within the cooldown an unknown kid does not make the gateway fetch
    expect(await hello("dev-b", tokenB)).toEqual({ type: "error", code: "auth", message: "token not signed by a fleet key" })
    const fetched = server.requests()
    g.child.kill("SIGHUP")
    const deadline = Date.now() + 10_000
    while (server.requests() === fetched && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20))
    expect(server.requests()).toBe(fetched + 1)
    // the fetched set is in force once its response is read: try (as new devices) until then
    let answer = await hello("dev-b1", await sign(b!, { sub: "dev-b1" }))
    for (let i = 2; answer.type !== "welcome" && Date.now() < deadline; i++) {
      await new Promise((resolve) => setTimeout(resolve, 50))
      answer = await hello(`dev-b${i}`, await sign(b!, { sub: `dev-b${i}` }))
    }
    expect(answer).toMatchObject({ type: "welcome" })
    expect(await hello("dev-a2", await sign(a!, { sub: "dev-a2" }))).toEqual({
      type: "error",
      code: "auth",
      message: "token not signed by a fleet key"
    })
    expect(g.child.exitCode).toBeNull()
    expect(logLines(g.output()).map(messageOf).filter((m) => m === "JWKS fetched")).toHaveLength(2)
  }, 90_000)
})
