/**
 * JWT device credentials against a real JWKS file (JwksSource.fromFile + JwtCredentials):
 * what is accepted, every way a token is refused (always `AuthError`, never a defect), the
 * checks a JWKS file must pass at start, and rotation by rewriting the file.
 */
import { afterEach, assert, describe, expect, it } from "@effect/vitest"
import { Effect, Logger, Result } from "effect"
import { exportJWK, generateKeyPair, SignJWT, UnsecuredJWT } from "jose"
import * as Crypto from "node:crypto"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { AuthConfigError } from "../../src/auth/AuthConfigError.ts"
import { fromFile, type SourceTimings } from "../../src/auth/JwksSource.ts"
import { JWT_MAX_CHARS, type JwtPolicy, looksLikeJwt, makeVerifier } from "../../src/auth/JwtCredentials.ts"
import { tempDir } from "../support/gateway.ts"
import { b64, type Captured, capturedLogs, eventually, type FleetKey, fleetKey, now, overwrite, sign, writeJwks } from "./fleet.ts"

const FAST: SourceTimings = { pollMs: 25, refreshMs: 60_000, cooldownMs: 30_000, timeoutMs: 2_000 }
const POLICY: JwtPolicy = { issuer: undefined, audience: undefined, clockToleranceS: 30 }
const quiet = Logger.layer([])

const dirs: Array<string> = []
afterEach(() => {
  for (const d of dirs.splice(0)) Fs.rmSync(d, { recursive: true, force: true })
})

const jwksPath = () => {
  const dir = tempDir("gw-jwt-")
  dirs.push(dir)
  return Path.join(dir, "fleet.jwks.json")
}

/** A verifier over a fresh JWKS file holding `keys`. */
const verifierOf = (keys: ReadonlyArray<FleetKey>, policy: JwtPolicy = POLICY) =>
  Effect.gen(function*() {
    const file = jwksPath()
    writeJwks(file, keys.map((k) => k.jwk))
    const source = yield* fromFile(file, FAST)
    return { file, verify: makeVerifier(source, policy) }
  })

/** The refusal's message (fails the test when the token is accepted; a defect fails it too). */
const refusal = (verify: ReturnType<typeof makeVerifier>, device: string, token: string) =>
  Effect.map(Effect.flip(verify(device, token)), (e) => {
    assert.strictEqual(e._tag, "AuthError")
    assert.strictEqual(e.reason, "credential")
    return e.message
  })

const kindsOf = (verify: ReturnType<typeof makeVerifier>, device: string, token: string) =>
  Effect.map(verify(device, token), (grant) => [...grant.kinds].sort())

const promise = <A>(f: () => Promise<A>) => Effect.promise(f)

describe("JWT credentials", () => {
  it("looksLikeJwt: three base64url parts (the last may be empty); registry tokens never", () => {
    expect(looksLikeJwt("eyJh.eyJz.c2ln")).toBe(true)
    expect(looksLikeJwt("eyJh.eyJz.")).toBe(true)
    expect(looksLikeJwt(Crypto.randomBytes(24).toString("base64url"))).toBe(false)
    for (const t of ["a.b", "a.b.c.d", ".b.c", "a..c", "a.b.c ", "a+b.c.d", "a.b/c.d", ""]) expect(looksLikeJwt(t)).toBe(false)
  })

  it.live("accepts a token signed by any fleet key (ES256, EdDSA, RS256) for its device; kinds from the claim, telemetry only without it", () =>
    Effect.gen(function*() {
      const [es, ed, rs] = yield* promise(() => Promise.all([fleetKey("ES256"), fleetKey("EdDSA"), fleetKey("RS256")]))
      const { verify } = yield* verifierOf([es!, ed!, rs!])
      expect(yield* kindsOf(verify, "dev-1", yield* promise(() => sign(es!, { sub: "dev-1", kinds: ["telemetry", "event"] })))).toEqual(["event", "telemetry"])
      expect(yield* kindsOf(verify, "dev-2", yield* promise(() => sign(ed!, { sub: "dev-2", kinds: ["event"] })))).toEqual(["event"])
      expect(yield* kindsOf(verify, "dev-3", yield* promise(() => sign(rs!, { sub: "dev-3" })))).toEqual(["telemetry"])
      expect(yield* kindsOf(verify, "dev-4", yield* promise(() => sign(es!, { sub: "dev-4", kinds: [] })))).toEqual([])
      const grant = yield* verify("dev-1", yield* promise(() => sign(es!, { sub: "dev-1" })))
      expect(grant.limits).toBeUndefined()
    }).pipe(Effect.provide(quiet)))

  it.live("exp: required, refused when past beyond the clock tolerance; nbf in the future refused", () =>
    Effect.gen(function*() {
      const key = yield* promise(() => fleetKey())
      const { verify } = yield* verifierOf([key])
      expect(yield* refusal(verify, "d", yield* promise(() => sign(key, { sub: "d", expIn: -60 })))).toBe("token expired")
      expect(yield* kindsOf(verify, "d", yield* promise(() => sign(key, { sub: "d", expIn: -10 })))).toEqual(["telemetry"]) // within 30 s
      expect(yield* refusal(verify, "d", yield* promise(() => sign(key, { sub: "d", expIn: undefined })))).toBe('token lacks the "exp" claim')
      expect(yield* refusal(verify, "d", yield* promise(() => sign(key, { sub: "d", nbf: now() + 120 })))).toBe("token not valid yet")
      expect(yield* refusal(verify, "d", yield* promise(() => sign(key, { sub: "d", exp: "tomorrow", expIn: undefined }))))
        .toBe('token claim "exp" not accepted')
      // no tolerance: two seconds late is late
      const strict = (yield* verifierOf([key], { ...POLICY, clockToleranceS: 0 })).verify
      expect(yield* refusal(strict, "d", yield* promise(() => sign(key, { sub: "d", expIn: -2 })))).toBe("token expired")
      // the tolerance is bounded: 1 hour asked, 300 s applied
      const lax = (yield* verifierOf([key], { ...POLICY, clockToleranceS: 3600 })).verify
      expect(yield* kindsOf(lax, "d", yield* promise(() => sign(key, { sub: "d", expIn: -200 })))).toEqual(["telemetry"])
      expect(yield* refusal(lax, "d", yield* promise(() => sign(key, { sub: "d", expIn: -400 })))).toBe("token expired")
    }).pipe(Effect.provide(quiet)))

  it.live("sub: must be the hello's device; a token without sub, or with its payload altered, is refused", () =>
    Effect.gen(function*() {
      const key = yield* promise(() => fleetKey())
      const { verify } = yield* verifierOf([key])
      const token = yield* promise(() => sign(key, { sub: "dev-a", kinds: ["telemetry", "event"] }))
      expect(yield* refusal(verify, "dev-b", token)).toBe("token is for another device")
      expect(yield* refusal(verify, "dev-a", yield* promise(() => sign(key, { sub: undefined })))).toBe('token lacks the "sub" claim')
      // the signature covers the payload: swapping in another device's claims breaks it
      const [header, payload, signature] = token.split(".")
      const claims = JSON.parse(Buffer.from(payload!, "base64url").toString()) as Record<string, unknown>
      const forged = `${header}.${b64({ ...claims, sub: "dev-b" })}.${signature}`
      expect(yield* refusal(verify, "dev-b", forged)).toBe("token not signed by a fleet key")
    }).pipe(Effect.provide(quiet)))

  it.live("a foreign key is refused, whether its kid is unknown or copies a fleet key's kid", () =>
    Effect.gen(function*() {
      const [fleet, foreign] = yield* promise(() => Promise.all([fleetKey(), fleetKey()]))
      const { verify } = yield* verifierOf([fleet!])
      expect(yield* refusal(verify, "d", yield* promise(() => sign(foreign!, { sub: "d" })))).toBe("token not signed by a fleet key")
      expect(yield* refusal(verify, "d", yield* promise(() => sign(foreign!, { sub: "d" }, { kid: fleet!.kid })))).toBe("token not signed by a fleet key")
      // a token with no kid is matched by type: still the fleet key's signature that counts
      expect(yield* refusal(verify, "d", yield* promise(() => sign(foreign!, { sub: "d" }, { kid: undefined })))).toBe("token not signed by a fleet key")
      expect(yield* kindsOf(verify, "d", yield* promise(() => sign(fleet!, { sub: "d" }, { kid: undefined })))).toEqual(["telemetry"])
    }).pipe(Effect.provide(quiet)))

  it.live("alg none and HMAC are refused, also an HS256 token keyed with the fleet's own public key", () =>
    Effect.gen(function*() {
      const key = yield* promise(() => fleetKey())
      const { verify } = yield* verifierOf([key])
      const unsigned = new UnsecuredJWT({ sub: "d", kinds: ["event"] }).setExpirationTime("1h").encode()
      expect(looksLikeJwt(unsigned)).toBe(true)
      expect(yield* refusal(verify, "d", unsigned)).toBe("token algorithm not allowed (asymmetric signatures only)")
      const exp = now() + 3600
      // key confusion: the public key (as JWK text, as raw x||y, as SPKI) used as an HMAC secret
      const spki = Crypto.createPublicKey({ key: key.jwk as Crypto.JsonWebKey, format: "jwk" }).export({ type: "spki", format: "pem" })
      const secrets = [
        Buffer.from(JSON.stringify(key.jwk)),
        Buffer.concat([Buffer.from(String(key.jwk.x), "base64url"), Buffer.from(String(key.jwk.y), "base64url")]),
        Buffer.from(spki)
      ]
      for (const secret of secrets) {
        for (const alg of ["HS256", "HS512"]) {
          const hmac = yield* promise(() => new SignJWT({ sub: "d", exp }).setProtectedHeader({ alg, kid: key.kid }).sign(secret))
          expect(yield* refusal(verify, "d", hmac)).toBe("token algorithm not allowed (asymmetric signatures only)")
        }
      }
    }).pipe(Effect.provide(quiet)))

  it.live("iss and aud are checked when configured", () =>
    Effect.gen(function*() {
      const key = yield* promise(() => fleetKey())
      const { verify } = yield* verifierOf([key], { issuer: "https://fleet.example", audience: "gw-eu", clockToleranceS: 30 })
      const ok = yield* promise(() => sign(key, { sub: "d", iss: "https://fleet.example", aud: ["other", "gw-eu"] }))
      expect(yield* kindsOf(verify, "d", ok)).toEqual(["telemetry"])
      expect(yield* refusal(verify, "d", yield* promise(() => sign(key, { sub: "d", iss: "https://evil.example", aud: "gw-eu" }))))
        .toBe('token claim "iss" not accepted')
      expect(yield* refusal(verify, "d", yield* promise(() => sign(key, { sub: "d", iss: "https://fleet.example", aud: "gw-us" }))))
        .toBe('token claim "aud" not accepted')
      expect(yield* refusal(verify, "d", yield* promise(() => sign(key, { sub: "d", aud: "gw-eu" })))).toBe('token lacks the "iss" claim')
      expect(yield* refusal(verify, "d", yield* promise(() => sign(key, { sub: "d", iss: "https://fleet.example" })))).toBe('token lacks the "aud" claim')
    }).pipe(Effect.provide(quiet)))

  it.live("a kinds claim that is not an array of telemetry/event is refused, not ignored", () =>
    Effect.gen(function*() {
      const key = yield* promise(() => fleetKey())
      const { verify } = yield* verifierOf([key])
      for (const kinds of ["event", ["alarm"], ["telemetry", 7], { event: true }, null]) {
        expect(yield* refusal(verify, "d", yield* promise(() => sign(key, { sub: "d", kinds })))).toBe(
          'token claim "kinds" must be an array of "telemetry" / "event"'
        )
      }
    }).pipe(Effect.provide(quiet)))

  it.live("an oversized token is refused before it is decoded, even when its signature is good", () =>
    Effect.gen(function*() {
      const key = yield* promise(() => fleetKey())
      const { verify } = yield* verifierOf([key])
      const big = yield* promise(() => sign(key, { sub: "d", pad: "x".repeat(2_000) }))
      expect(big.length).toBeGreaterThan(JWT_MAX_CHARS)
      expect(yield* refusal(verify, "d", big)).toBe(`token longer than ${JWT_MAX_CHARS} characters`)
      const fits = yield* promise(() => sign(key, { sub: "d", pad: "x".repeat(1_000) }))
      expect(fits.length).toBeLessThanOrEqual(JWT_MAX_CHARS)
      expect(yield* kindsOf(verify, "d", fits)).toEqual(["telemetry"])
    }).pipe(Effect.provide(quiet)))

  it.live("garbage is refused as a malformed token, never a crash", () =>
    Effect.gen(function*() {
      const key = yield* promise(() => fleetKey())
      const { verify } = yield* verifierOf([key])
      const exp = now() + 3600
      const handMade = [
        "a.b.c",
        `${b64("{")}.${b64({ sub: "d", exp })}.c2ln`,
        `${b64([1, 2])}.${b64({ sub: "d", exp })}.c2ln`,
        `${b64({ alg: 7, kid: key.kid })}.${b64({ sub: "d", exp })}.c2ln`,
        `${b64({ alg: "ES256", kid: key.kid })}.${b64("not json")}.c2ln`,
        `${b64({ alg: "ES256", kid: key.kid })}.${b64({ sub: "d", exp })}.`,
        `${b64({ alg: "ES256", kid: key.kid, crit: ["zip"] })}.${b64({ sub: "d", exp })}.c2ln`,
        `${b64({ alg: "ES256", kid: key.kid, b64: false, crit: ["b64"] })}.${b64({ sub: "d", exp })}.c2ln`,
        `${b64({ alg: "ES256", kid: { $ne: 1 } })}.${b64({ sub: "d", exp })}.c2ln`
      ]
      for (const token of handMade) {
        const message = yield* refusal(verify, "d", token)
        expect(["malformed token", "token not signed by a fleet key"]).toContain(message)
      }
      // random three-part tokens and random bytes: each one refused
      for (let i = 0; i < 300; i++) {
        const part = () => Crypto.randomBytes(Crypto.randomInt(1, 200)).toString("base64url")
        const token = i % 3 === 0 ? `${b64({ alg: "ES256", kid: key.kid })}.${part()}.${part()}` : `${part()}.${part()}.${part()}`
        const outcome = yield* Effect.result(verify("d", token))
        assert.isTrue(Result.isFailure(outcome), token)
        if (Result.isFailure(outcome)) assert.strictEqual(outcome.failure._tag, "AuthError")
      }
    }).pipe(Effect.provide(quiet)))

  describe("JWKS file at start", () => {
    const startWith = (text: string) =>
      Effect.gen(function*() {
        const file = jwksPath()
        Fs.writeFileSync(file, text)
        const e = yield* Effect.flip(fromFile(file, FAST))
        assert.instanceOf(e, AuthConfigError)
        expect(e.message.startsWith(`GATEWAY_JWKS_FILE: ${file}: `)).toBe(true)
        return e.message.slice(`GATEWAY_JWKS_FILE: ${file}: `.length)
      })

    it.live("refuses what is not a public signing key set, naming the key and the fault", () =>
      Effect.gen(function*() {
        const key = yield* promise(() => fleetKey())
        const pair = yield* promise(() => generateKeyPair("ES256", { extractable: true }))
        const privateJwk = { ...(yield* promise(() => exportJWK(pair.privateKey))), kid: "p" }
        const weak = Crypto.generateKeyPairSync("rsa", { modulusLength: 1024 }) // jose itself refuses to make one
        const weakJwk = { ...weak.publicKey.export({ format: "jwk" }), kid: "weak" }
        const x25519 = yield* promise(() => generateKeyPair("ECDH-ES", { extractable: true, crv: "X25519" }))
        const x25519Jwk = { ...(yield* promise(() => exportJWK(x25519.publicKey))), kid: "x" }
        const cases: ReadonlyArray<readonly [string, RegExp]> = [
          ["{ not json", /^is not JSON \(/],
          ["[]", /^expected a JWKS object/],
          [`{"keys":{}}`, /^expected a JWKS object/],
          [JSON.stringify({ keys: [7] }), /^key 0 is not an object$/],
          [JSON.stringify({ keys: [key.jwk, privateJwk] }), /^key 1 holds a private key/],
          [JSON.stringify({ keys: [{ kty: "oct", k: b64("secret"), kid: "s" }] }), /^key 0 is a symmetric \(oct\) key/],
          [JSON.stringify({ keys: [{ ...key.jwk, kid: undefined }] }), /^key 0 has no "kid"/],
          [JSON.stringify({ keys: [key.jwk, key.jwk] }), /^key 1: kid ".*" appears twice$/],
          [JSON.stringify({ keys: [{ ...key.jwk, alg: "HS256" }] }), /^key 0 \(.*\): alg "HS256" is not one of ES256/],
          [JSON.stringify({ keys: [{ ...key.jwk, alg: "RS256" }] }), /^key 0 \(.*\) is not a valid RS256 public key/],
          [JSON.stringify({ keys: [{ ...key.jwk, use: "enc" }] }), /^key 0 \(.*\): "use" is "enc"/],
          [JSON.stringify({ keys: [{ ...key.jwk, x: "AAAA" }] }), /^key 0 \(.*\) is not a valid ES256 public key/],
          [JSON.stringify({ keys: [weakJwk] }), /^key 0 \(weak\): RSA key shorter than 2048 bits$/],
          [JSON.stringify({ keys: [x25519Jwk] }), /^key 0 \(x\): curve "X25519" is not a signing curve/],
          [JSON.stringify({ keys: Array.from({ length: 101 }, (_, i) => ({ ...key.jwk, kid: `k${i}` })) }), /^101 keys, more than 100$/]
        ]
        for (const [text, expected] of cases) expect(yield* startWith(text)).toMatch(expected)
        const missing = Path.join(Path.dirname(jwksPath()), "absent.json")
        const e = yield* Effect.flip(fromFile(missing, FAST))
        expect(e.message).toMatch(/^GATEWAY_JWKS_FILE: .*absent\.json: ENOENT/)
      }).pipe(Effect.provide(quiet)))
  })

  describe("rotation by rewriting the file", () => {
    it.live("a new key is accepted and a removed one refused once the file changed (atomic rename, then in place)", () =>
      Effect.gen(function*() {
        const [a, b, c] = yield* promise(() => Promise.all([fleetKey(), fleetKey("EdDSA"), fleetKey()]))
        const { file, verify } = yield* verifierOf([a!])
        const tokenA = yield* promise(() => sign(a!, { sub: "d" }))
        const tokenB = yield* promise(() => sign(b!, { sub: "d" }))
        const tokenC = yield* promise(() => sign(c!, { sub: "d" }))
        expect(yield* kindsOf(verify, "d", tokenA)).toEqual(["telemetry"])
        expect(yield* refusal(verify, "d", tokenB)).toBe("token not signed by a fleet key")
        // overlap: a and b, then b alone
        writeJwks(file, [a!.jwk, b!.jwk])
        const accepted = yield* eventually(Effect.result(verify("d", tokenB)), Result.isSuccess)
        assert.isTrue(Result.isSuccess(accepted), "the added key was not picked up")
        expect(yield* kindsOf(verify, "d", tokenA)).toEqual(["telemetry"])
        writeJwks(file, [b!.jwk])
        const removed = yield* eventually(Effect.result(verify("d", tokenA)), Result.isFailure)
        assert.isTrue(Result.isFailure(removed), "the removed key still verifies")
        expect(yield* kindsOf(verify, "d", tokenB)).toEqual(["telemetry"])
        // rewritten in place (same inode)
        overwrite(file, JSON.stringify({ keys: [c!.jwk] }))
        const inPlace = yield* eventually(Effect.result(verify("d", tokenC)), Result.isSuccess)
        assert.isTrue(Result.isSuccess(inPlace), "an in-place rewrite was not picked up")
        expect(yield* refusal(verify, "d", tokenB)).toBe("token not signed by a fleet key")
      }).pipe(Effect.provide(quiet)))

    it.live("a bad new version is logged once and ignored: the previous keys stay until a good one arrives", () => {
      const logs: Array<Captured> = []
      return Effect.gen(function*() {
        const [a, b] = yield* promise(() => Promise.all([fleetKey(), fleetKey()]))
        const { file, verify } = yield* verifierOf([a!])
        const tokenA = yield* promise(() => sign(a!, { sub: "d" }))
        const tokenB = yield* promise(() => sign(b!, { sub: "d" }))
        overwrite(file, `{"keys":[`) // an editor's half-written save
        yield* eventually(Effect.sync(() => logs.length), (n) => n > 0)
        yield* Effect.sleep("200 millis") // several polls
        expect(logs).toEqual([{ level: "Warn", message: "JWKS file not reloaded: the previous keys stay in force" }])
        expect(yield* kindsOf(verify, "d", tokenA)).toEqual(["telemetry"])
        Fs.rmSync(file) // gone: same, another warning (another reason)
        yield* eventually(Effect.sync(() => logs.length), (n) => n > 1)
        expect(yield* kindsOf(verify, "d", tokenA)).toEqual(["telemetry"])
        writeJwks(file, [b!.jwk])
        const accepted = yield* eventually(Effect.result(verify("d", tokenB)), Result.isSuccess)
        assert.isTrue(Result.isSuccess(accepted))
        expect(yield* refusal(verify, "d", tokenA)).toBe("token not signed by a fleet key")
        expect(logs.map((l) => l.message)).toEqual([
          "JWKS file not reloaded: the previous keys stay in force",
          "JWKS file not reloaded: the previous keys stay in force",
          "JWKS file reloaded"
        ])
      }).pipe(Effect.provide(capturedLogs(logs)))
    })
  })
})
