/**
 * JWT credentials with keys behind a JWKS URL, served by a real local `node:http` server:
 * caching (one fetch for many tokens), a new key picked up on its first use but no more than once
 * per cooldown, a removed key dropped by the background refresh, a key-server outage that keeps
 * the last good keys, and refusals (not a crash) before any fetch succeeded.
 */
import { afterEach, assert, describe, expect, it } from "@effect/vitest"
import { Effect, Logger, Result } from "effect"
import { exportJWK, generateKeyPair } from "jose"
import { AuthConfigError } from "../../src/auth/AuthConfigError.ts"
import { fromUrl, type SourceTimings } from "../../src/auth/JwksSource.ts"
import { type JwtPolicy, makeVerifier } from "../../src/auth/JwtCredentials.ts"
import { type Captured, capturedLogs, eventually, fleetKey, type JwksServer, jwksServer, sign } from "./fleet.ts"

const POLICY: JwtPolicy = { issuer: undefined, audience: undefined, clockToleranceS: 30 }
const quiet = Logger.layer([])

const servers: Array<JwksServer> = []
afterEach(async () => {
  for (const s of servers.splice(0)) await s.close()
})

const serverWith = (keys: Parameters<typeof jwksServer>[0]) =>
  Effect.promise(async () => {
    const s = await jwksServer(keys)
    servers.push(s)
    return s
  })

const promise = <A>(f: () => Promise<A>) => Effect.promise(f)

const accepted = (verify: ReturnType<typeof makeVerifier>, token: string) => Effect.map(Effect.result(verify("d", token)), Result.isSuccess)
/** The refusal's message; a refusal for keys the gateway could not have is `unverifiable` (answered busy, not counted against the address). */
const refusal = (verify: ReturnType<typeof makeVerifier>, token: string) =>
  Effect.map(Effect.flip(verify("d", token)), (e) => {
    if (e.message.startsWith("cannot verify the token now")) expect(e.reason).toBe("unverifiable")
    else expect(e.reason).toBe("credential")
    return e.message
  })

describe("JWKS URL", () => {
  it.live("caches: one fetch serves many tokens; a new kid is fetched on first use, at most once per cooldown", () =>
    Effect.gen(function*() {
      const [a, b, c] = yield* promise(() => Promise.all([fleetKey(), fleetKey(), fleetKey("RS256")]))
      const server = yield* serverWith([a!.jwk])
      const timings: SourceTimings = { pollMs: 1_000, refreshMs: 60_000, cooldownMs: 1_000, timeoutMs: 2_000 }
      const verify = makeVerifier(yield* fromUrl(server.url, timings), POLICY)
      const tokenA = yield* promise(() => sign(a!, { sub: "d" }))
      for (let i = 0; i < 50; i++) expect(yield* accepted(verify, tokenA)).toBe(true)
      expect(server.requests()).toBe(1)
      // rotation: the server now publishes b too; a token naming b arrives within the cooldown
      server.serve([a!.jwk, b!.jwk])
      const tokenB = yield* promise(() => sign(b!, { sub: "d" }))
      expect(yield* refusal(verify, tokenB)).toBe("token not signed by a fleet key")
      expect(server.requests()).toBe(1) // the cooldown held the fetch back
      yield* Effect.sleep("1050 millis")
      expect(yield* accepted(verify, tokenB)).toBe(true) // first use after the cooldown: fetched
      expect(server.requests()).toBe(2)
      for (let i = 0; i < 20; i++) expect(yield* accepted(verify, tokenB)).toBe(true)
      expect(yield* accepted(verify, tokenA)).toBe(true)
      expect(server.requests()).toBe(2)
      // a storm of tokens with a kid nobody publishes: at most one fetch per cooldown
      const tokenC = yield* promise(() => sign(c!, { sub: "d" }))
      yield* Effect.sleep("1050 millis")
      const storm = yield* Effect.all(Array.from({ length: 100 }, () => refusal(verify, tokenC)), { concurrency: "unbounded" })
      expect(new Set(storm)).toEqual(new Set(["token not signed by a fleet key"]))
      expect(server.requests()).toBe(3)
    }).pipe(Effect.provide(quiet)))

  it.live("a removed key stops verifying at the background refresh; an outage keeps the last good keys", () => {
    const logs: Array<Captured> = []
    return Effect.gen(function*() {
      const [a, b] = yield* promise(() => Promise.all([fleetKey(), fleetKey("EdDSA")]))
      const server = yield* serverWith([a!.jwk, b!.jwk])
      const timings: SourceTimings = { pollMs: 1_000, refreshMs: 150, cooldownMs: 60_000, timeoutMs: 2_000 }
      const verify = makeVerifier(yield* fromUrl(server.url, timings), POLICY)
      const tokenA = yield* promise(() => sign(a!, { sub: "d" }))
      const tokenB = yield* promise(() => sign(b!, { sub: "d" }))
      expect(yield* accepted(verify, tokenA)).toBe(true)
      expect(yield* accepted(verify, tokenB)).toBe(true)
      server.serve([b!.jwk])
      expect(yield* eventually(accepted(verify, tokenA), (ok) => !ok)).toBe(false)
      expect(yield* refusal(verify, tokenA)).toBe("token not signed by a fleet key")
      expect(yield* accepted(verify, tokenB)).toBe(true)
      // the key server goes down: refreshes fail, the keys last fetched stay in force
      server.setDown(true)
      const before = server.requests()
      yield* eventually(Effect.sync(() => server.requests()), (n) => n >= before + 3)
      expect(yield* accepted(verify, tokenB)).toBe(true)
      expect(logs.filter((l) => l.level === "Warn").map((l) => l.message)).toEqual([
        "JWKS refresh failed: the last fetched keys stay in force" // once, not once per refresh
      ])
      server.setDown(false)
      yield* eventually(Effect.sync(() => logs.length), (n) => n >= 3)
      expect(logs.map((l) => l.message)).toEqual([
        "JWKS fetched",
        "JWKS refresh failed: the last fetched keys stay in force",
        "JWKS fetched"
      ])
    }).pipe(Effect.provide(capturedLogs(logs)))
  })

  it.live("an answer that is not a good key set (empty, too large, a private key) is a failed refresh: the last good keys stay", () =>
    Effect.gen(function*() {
      const [a] = yield* promise(() => Promise.all([fleetKey()]))
      const server = yield* serverWith([a!.jwk])
      const timings: SourceTimings = { pollMs: 1_000, refreshMs: 100, cooldownMs: 60_000, timeoutMs: 2_000 }
      const verify = makeVerifier(yield* fromUrl(server.url, timings), POLICY)
      const token = yield* promise(() => sign(a!, { sub: "d" }))
      expect(yield* accepted(verify, token)).toBe(true)
      const pair = yield* promise(() => generateKeyPair("ES256", { extractable: true }))
      const privateJwk = { ...(yield* promise(() => exportJWK(pair.privateKey))), kid: "leaked" }
      // before: an empty set replaced the keys, and a 200 MB answer was read whole
      for (const body of [JSON.stringify({ keys: [] }), JSON.stringify({ keys: [a!.jwk], pad: "x".repeat(2 * 1024 * 1024) }), JSON.stringify({ keys: [privateJwk] })]) {
        server.serveRaw(body)
        const before = server.requests()
        yield* eventually(Effect.sync(() => server.requests()), (n) => n >= before + 2)
        expect(yield* accepted(verify, token)).toBe(true)
      }
    }).pipe(Effect.provide(quiet)))

  it.live("before the first good fetch tokens are refused as unverifiable (no crash); once the server answers they pass", () =>
    Effect.gen(function*() {
      const a = yield* promise(() => fleetKey())
      const server = yield* serverWith([a.jwk])
      server.setDown(true)
      const timings: SourceTimings = { pollMs: 1_000, refreshMs: 60_000, cooldownMs: 60_000, timeoutMs: 2_000 }
      const verify = makeVerifier(yield* fromUrl(server.url, timings), POLICY)
      const token = yield* promise(() => sign(a, { sub: "d" }))
      expect(yield* refusal(verify, token)).toBe("cannot verify the token now: fleet keys unavailable")
      server.setDown(false)
      expect(yield* accepted(verify, token)).toBe(true) // no keys yet: the next token fetches, cooldown or not
      // a server that is not there at all
      const gone = yield* serverWith([a.jwk])
      yield* promise(() => gone.close())
      const orphan = makeVerifier(yield* fromUrl(gone.url, timings), POLICY)
      expect(yield* refusal(orphan, token)).toBe("cannot verify the token now: fleet keys unavailable")
    }).pipe(Effect.provide(quiet)))

  it.effect("a URL that is not http(s) fails the start", () =>
    Effect.gen(function*() {
      for (const url of ["fleet.example/jwks.json", "file:///etc/jwks.json", "ftp://fleet.example/jwks"]) {
        const e = yield* Effect.flip(fromUrl(url))
        assert.instanceOf(e, AuthConfigError)
        expect(e.message).toBe(`GATEWAY_JWKS_URL: expected an http(s) URL, got ${JSON.stringify(url)}`)
      }
    }).pipe(Effect.provide(quiet)))
})
