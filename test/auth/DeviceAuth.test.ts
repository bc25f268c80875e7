/**
 * DeviceAuth: which check a token gets (registry, JWT, client certificate, open), that the
 * registry path stays synchronous, that JWT keys count as "authentication configured" (no
 * forced loopback), and which credential settings stop the start.
 */
import { afterEach, assert, describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Logger, Result } from "effect"
import * as Crypto from "node:crypto"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { AuthConfigError } from "../../src/auth/AuthConfigError.ts"
import { type DeviceAuthShape, make } from "../../src/auth/DeviceAuth.ts"
import { newEntry } from "../../src/auth/DeviceRegistry.ts"
import { DEFAULT_TIMINGS } from "../../src/auth/JwksSource.ts"
import { GatewayConfig } from "../../src/config/GatewayConfig.ts"
import { tempDir } from "../support/gateway.ts"
import { fleetKey, sign, writeJwks } from "./fleet.ts"

const quiet = Logger.layer([])
const dirs: Array<string> = []
afterEach(() => {
  for (const d of dirs.splice(0)) Fs.rmSync(d, { recursive: true, force: true })
})

const dir = () => {
  const d = tempDir("gw-auth-")
  dirs.push(d)
  return d
}

const configOf = (env: Record<string, string>) => Effect.service(GatewayConfig).pipe(Effect.provide(GatewayConfig.layerWith(env)))

const authOf = (env: Record<string, string>) =>
  Effect.flatMap(configOf(env), (config) => make(config, DEFAULT_TIMINGS))

/** Writes a registry with `dev-reg` (telemetry and events) and returns its file and token. */
const registry = () => {
  const { entry, token } = newEntry("dev-reg", ["telemetry", "event"])
  const file = Path.join(dir(), "devices.json")
  Fs.writeFileSync(file, JSON.stringify({ devices: [entry] }))
  return { file, token }
}

const kinds = (auth: DeviceAuthShape, device: string, token: string) =>
  Effect.map(auth.authenticate(device, token), (g) => [...g.kinds].sort())
const refusal = (auth: DeviceAuthShape, device: string, token: string) =>
  Effect.map(Effect.flip(auth.authenticate(device, token)), (e) => e.message)

describe("DeviceAuth", () => {
  it.live("registry and JWT side by side: registry tokens for registry devices, JWTs for any device of the fleet", () =>
    Effect.gen(function*() {
      const key = yield* Effect.promise(() => fleetKey())
      const jwks = Path.join(dir(), "fleet.jwks")
      writeJwks(jwks, [key.jwk])
      const reg = registry()
      const auth = yield* authOf({ GATEWAY_DEVICES: reg.file, GATEWAY_JWKS_FILE: jwks })
      expect(yield* kinds(auth, "dev-reg", reg.token)).toEqual(["event", "telemetry"])
      expect(yield* refusal(auth, "dev-reg", reg.token.slice(1) + "A")).toBe("unknown device or bad token")
      // a device with no registry entry, by JWT
      expect(yield* kinds(auth, "sensor-99", yield* Effect.promise(() => sign(key, { sub: "sensor-99" })))).toEqual(["telemetry"])
      // a registry device may use a JWT too (its grant is then the token's)
      expect(yield* kinds(auth, "dev-reg", yield* Effect.promise(() => sign(key, { sub: "dev-reg", kinds: ["event"] })))).toEqual(["event"])
      // a JWT-shaped token is judged as a JWT only: its refusal says so, the registry is not asked
      expect(yield* refusal(auth, "dev-reg", "a.b.c")).toBe("malformed token")
      expect(yield* refusal(auth, "sensor-99", reg.token)).toBe("unknown device or bad token")
    }).pipe(Effect.provide(quiet)))

  it.live("the registry path completes synchronously; a JWT's check is asynchronous", () =>
    Effect.gen(function*() {
      const key = yield* Effect.promise(() => fleetKey())
      const jwks = Path.join(dir(), "fleet.jwks")
      writeJwks(jwks, [key.jwk])
      const reg = registry()
      const auth = yield* authOf({ GATEWAY_DEVICES: reg.file, GATEWAY_JWKS_FILE: jwks })
      const sync = Effect.runSyncExit(auth.authenticate("dev-reg", reg.token))
      assert.isTrue(Exit.isSuccess(sync))
      const syncRefusal = Effect.runSyncExit(auth.authenticate("nobody", reg.token))
      assert.isTrue(Exit.isFailure(syncRefusal))
      expect(JSON.stringify(syncRefusal)).toContain("unknown device or bad token")
      const jwt = yield* Effect.promise(() => sign(key, { sub: "d" }))
      const async = Effect.runSyncExit(auth.authenticate("d", jwt))
      assert.isTrue(Exit.isFailure(async)) // runSync cannot wait for the signature check
      expect(JSON.stringify(async)).not.toContain("AuthError")
      // the registry check itself costs microseconds: 20k checks well under a second
      const started = performance.now()
      for (let i = 0; i < 20_000; i++) Effect.runSyncExit(auth.authenticate("dev-reg", reg.token))
      expect(performance.now() - started).toBeLessThan(1_000)
    }).pipe(Effect.provide(quiet)))

  it.live("JWT without a registry: a token that is not a JWT is refused, unless client certificates are required", () =>
    Effect.gen(function*() {
      const key = yield* Effect.promise(() => fleetKey())
      const jwks = Path.join(dir(), "fleet.jwks")
      writeJwks(jwks, [key.jwk])
      const opaque = Crypto.randomBytes(24).toString("base64url")
      const jwtOnly = yield* authOf({ GATEWAY_JWKS_FILE: jwks })
      expect(yield* refusal(jwtOnly, "d", opaque)).toBe("expected a JWT signed by a fleet key")
      expect(yield* refusal(jwtOnly, "d", "")).toBe("expected a JWT signed by a fleet key")
      expect(yield* kinds(jwtOnly, "d", yield* Effect.promise(() => sign(key, { sub: "d" })))).toEqual(["telemetry"])
      // mutual TLS: the certificate (checked by the connection) authenticates on its own ...
      const withCertificates = yield* authOf({ GATEWAY_JWKS_FILE: jwks, GATEWAY_TLS_CA: "/unused/by/auth/ca.pem" })
      expect(yield* kinds(withCertificates, "d", opaque)).toEqual(["event", "telemetry"])
      // ... but a JWT that is presented must be good
      expect(yield* refusal(withCertificates, "d", yield* Effect.promise(() => sign(key, { sub: "e" })))).toBe("token is for another device")
      // nothing configured: open (on loopback)
      const open = yield* authOf({})
      expect(yield* kinds(open, "d", "anything")).toEqual(["event", "telemetry"])
    }).pipe(Effect.provide(quiet)))

  it.effect("JWT keys count as authentication: the listener is not forced to loopback", () =>
    Effect.gen(function*() {
      const jwt = yield* configOf({ GATEWAY_HOST: "0.0.0.0", GATEWAY_JWKS_URL: "https://fleet.example/jwks.json" })
      expect([jwt.openAccess, jwt.host]).toEqual([false, "0.0.0.0"])
      const file = yield* configOf({ GATEWAY_HOST: "0.0.0.0", GATEWAY_JWKS_FILE: "/etc/fleet.jwks" })
      expect([file.openAccess, file.host]).toEqual([false, "0.0.0.0"])
      const none = yield* configOf({ GATEWAY_HOST: "0.0.0.0" })
      expect([none.openAccess, none.host]).toEqual([true, "127.0.0.1"])
      expect(jwt.jwtClockToleranceS).toBe(30)
      const bad = yield* Effect.flip(configOf({ GATEWAY_JWT_CLOCK_TOLERANCE_S: "301" }))
      expect(bad.message).toContain("GATEWAY_JWT_CLOCK_TOLERANCE_S")
    }))

  it.live("settings that contradict each other, or a bad file, fail with AuthConfigError", () =>
    Effect.gen(function*() {
      const key = yield* Effect.promise(() => fleetKey())
      const jwks = Path.join(dir(), "fleet.jwks")
      writeJwks(jwks, [key.jwk])
      const cases: ReadonlyArray<readonly [Record<string, string>, RegExp]> = [
        [{ GATEWAY_JWKS_FILE: jwks, GATEWAY_JWKS_URL: "https://fleet.example/jwks.json" }, /^GATEWAY_JWKS_FILE and GATEWAY_JWKS_URL: set one/],
        [{ GATEWAY_JWT_ISSUER: "https://fleet.example" }, /^GATEWAY_JWT_ISSUER is set but neither GATEWAY_JWKS_FILE nor GATEWAY_JWKS_URL/],
        [{ GATEWAY_JWT_AUDIENCE: "gw" }, /^GATEWAY_JWT_AUDIENCE is set but neither/],
        [{ GATEWAY_JWKS_FILE: Path.join(dir(), "absent.jwks") }, /^GATEWAY_JWKS_FILE: .*absent\.jwks: ENOENT/],
        [{ GATEWAY_JWKS_URL: "not a url" }, /^GATEWAY_JWKS_URL: expected an http\(s\) URL/],
        [{ GATEWAY_DEVICES: Path.join(dir(), "absent.json") }, /^GATEWAY_DEVICES: cannot read /]
      ]
      for (const [env, expected] of cases) {
        const e = yield* Effect.flip(authOf(env))
        assert.instanceOf(e, AuthConfigError)
        expect(e.message).toMatch(expected)
      }
      const ok = yield* Effect.result(authOf({ GATEWAY_JWKS_FILE: jwks, GATEWAY_JWT_ISSUER: "i", GATEWAY_JWT_AUDIENCE: "a" }))
      assert.isTrue(Result.isSuccess(ok))
    }).pipe(Effect.provide(quiet)))
})
