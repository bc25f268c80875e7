/**
 * Where the fleet's public keys come from: a JWKS file (GATEWAY_JWKS_FILE) or a JWKS URL
 * (GATEWAY_JWKS_URL). Either way the result is a {@link KeySource}, a key resolver for jose
 * that always answers from the current key set; rotation needs no restart.
 *
 * File: read and checked at start (a bad file stops the start: {@link AuthConfigError}, exit 78);
 * then its metadata is polled every second (a `stat`, off the hello path) and the file is
 * re-read when it changed (another inode after an atomic rename, size, mtime or ctime), or at
 * once on SIGHUP (as the TLS certificates are). A new version that cannot be read or fails the
 * checks is logged once and ignored: the previous keys stay in force until a good version
 * arrives. The checks: JSON `{"keys":[…]}`, at most {@link MAX_KEYS} keys, each a public EC
 * (P-256/384/521), OKP (Ed25519) or RSA (≥ 2048 bits) signing key with a unique `kid`, no
 * private part, no symmetric (`oct`) key, and each importable for its `alg` (or the usual one
 * for its curve / type).
 *
 * URL: jose's `createRemoteJWKSet` fetches and caches the set; a token whose `kid` is not in it
 * makes it fetch again, at most once per cooldown (30 s), so a new key is picked up on its first
 * use. Besides, the set is refreshed in the background every 5 minutes and at once on SIGHUP,
 * so that a removed key stops working within that time (or at the signal). A failed fetch keeps
 * the last good set (an outage of the key server does not lock the fleet out); only before the
 * first good fetch are tokens refused ("fleet keys unavailable"). The start does not wait for
 * the server.
 */
import { Effect, FiberSet, Result, Schedule, type Scope } from "effect"
import {
  createLocalJWKSet,
  createRemoteJWKSet,
  customFetch,
  type CryptoKey,
  type FlattenedJWSInput,
  importJWK,
  type JSONWebKeySet,
  type JWK,
  type JWSHeaderParameters
} from "jose"
import * as Fs from "node:fs/promises"
import { readJsonFile } from "../config/JsonFile.ts"
import { AuthConfigError } from "./AuthConfigError.ts"
import { SIGNING_ALGORITHMS } from "./JwtCredentials.ts"

/** The fleet's current public keys, as jose's `jwtVerify` asks for them. */
export interface KeySource {
  /** The key for a token's header (by `kid` and `alg`); rejects with a jose error when there is none. */
  readonly getKey: (header: JWSHeaderParameters, token: FlattenedJWSInput) => Promise<CryptoKey>
  /** Where the keys come from (for logs): the file or the URL. */
  readonly origin: string
}

/** Most keys a JWKS file may hold. */
export const MAX_KEYS = 100
/** Largest JWKS file read (bytes). */
export const MAX_FILE_BYTES = 1024 * 1024

/** Timings of the sources (the defaults are the production ones; tests shorten them). */
export interface SourceTimings {
  /** How often the JWKS file's metadata is checked for a change. */
  readonly pollMs: number
  /** How often the JWKS URL is fetched in the background. */
  readonly refreshMs: number
  /** Least time between two fetches caused by tokens with an unknown `kid`. */
  readonly cooldownMs: number
  /** How long one fetch of the JWKS URL may take. */
  readonly timeoutMs: number
}

/** The production timings. */
export const DEFAULT_TIMINGS: SourceTimings = { pollMs: 1_000, refreshMs: 300_000, cooldownMs: 30_000, timeoutMs: 5_000 }

const messageOf = (e: unknown) => (e instanceof Error ? e.message : String(e)).replace(/\s*\n\s*/g, " ")

// ---- checking a key set ----

/** The algorithm a key is used with when it names none. */
const usualAlgorithm = (jwk: JWK): string | undefined => {
  if (jwk.kty === "EC") return jwk.crv === "P-256" ? "ES256" : jwk.crv === "P-384" ? "ES384" : jwk.crv === "P-521" ? "ES512" : undefined
  if (jwk.kty === "OKP") return jwk.crv === "Ed25519" ? "EdDSA" : undefined
  if (jwk.kty === "RSA") return "RS256"
  return undefined
}

const isRecord = (u: unknown): u is Record<string, unknown> => typeof u === "object" && u !== null && !Array.isArray(u)

/**
 * Checks a parsed JWKS document (see the module comment); throws an `Error` that says which key
 * is wrong and how.
 */
export const checkJwks = async (json: unknown): Promise<JSONWebKeySet> => {
  if (!isRecord(json) || !Array.isArray(json["keys"])) throw new Error(`expected a JWKS object {"keys":[...]}`)
  const keys: ReadonlyArray<unknown> = json["keys"]
  if (keys.length > MAX_KEYS) throw new Error(`${keys.length} keys, more than ${MAX_KEYS}`)
  const kids = new Set<string>()
  const checked: Array<JWK> = []
  for (const [i, key] of keys.entries()) {
    const where = `key ${i}`
    if (!isRecord(key)) throw new Error(`${where} is not an object`)
    const jwk: JWK = key
    if (jwk.kty === "oct") throw new Error(`${where} is a symmetric (oct) key: device tokens must be signed with an asymmetric key`)
    if (jwk.kty !== "EC" && jwk.kty !== "OKP" && jwk.kty !== "RSA") throw new Error(`${where}: kty ${JSON.stringify(jwk.kty)} is not EC, OKP or RSA`)
    if ("d" in key) throw new Error(`${where} holds a private key ("d"): publish the public keys only`)
    if (typeof jwk.kid !== "string" || jwk.kid === "") throw new Error(`${where} has no "kid" (every key needs one, so that tokens name their key)`)
    if (kids.has(jwk.kid)) throw new Error(`${where}: kid ${JSON.stringify(jwk.kid)} appears twice`)
    kids.add(jwk.kid)
    if (jwk.use !== undefined && jwk.use !== "sig") throw new Error(`${where} (${jwk.kid}): "use" is ${JSON.stringify(jwk.use)}, not "sig"`)
    if (jwk.alg !== undefined && !SIGNING_ALGORITHMS.includes(jwk.alg)) {
      throw new Error(`${where} (${jwk.kid}): alg ${JSON.stringify(jwk.alg)} is not one of ${SIGNING_ALGORITHMS.join(", ")}`)
    }
    const alg = jwk.alg ?? usualAlgorithm(jwk)
    if (alg === undefined) throw new Error(`${where} (${jwk.kid}): curve ${JSON.stringify(jwk.crv)} is not a signing curve (P-256, P-384, P-521, Ed25519)`)
    if (jwk.kty === "RSA" && typeof jwk.n === "string" && Buffer.from(jwk.n, "base64url").length * 8 < 2048) {
      throw new Error(`${where} (${jwk.kid}): RSA key shorter than 2048 bits`)
    }
    try {
      await importJWK(jwk, alg)
    } catch (e) {
      throw new Error(`${where} (${jwk.kid}) is not a valid ${alg} public key: ${messageOf(e)}`)
    }
    checked.push(jwk)
  }
  return { keys: checked }
}

// ---- file ----

interface Loaded {
  /** The file's identity and version when it was read. */
  readonly stamp: string
  readonly keys: number
  readonly resolve: KeySource["getKey"]
}

const stampOf = async (path: string) => {
  const s = await Fs.stat(path)
  return { stamp: `${s.ino}:${s.size}:${s.mtimeMs}:${s.ctimeMs}`, size: s.size }
}

const loadFile = (path: string): Effect.Effect<Loaded, AuthConfigError> => {
  const fail = (message: string) => new AuthConfigError({ message: `GATEWAY_JWKS_FILE: ${path}: ${message}` })
  return Effect.gen(function*() {
    // the stamp before reading: a change while reading is seen at the next poll
    const { stamp } = yield* Effect.tryPromise({ try: () => stampOf(path), catch: (e) => fail(messageOf(e)) })
    // a regular file of bounded size only (a FIFO would hold the start for ever)
    const json = yield* readJsonFile(path, MAX_FILE_BYTES).pipe(
      Effect.mapError((message) => fail(message.startsWith(`${path} `) ? message.slice(path.length + 1) : message))
    )
    const jwks = yield* Effect.tryPromise({ try: () => checkJwks(json), catch: (e) => fail(messageOf(e)) })
    return { stamp, keys: jwks.keys.length, resolve: createLocalJWKSet(jwks) }
  })
}

/**
 * Fetches a key set for jose with the checks of a JWKS file: the body read up to MAX_FILE_BYTES
 * (a larger answer is cut off, not parsed), the set checked like a file's, and an empty set
 * refused. A refused answer is a failed refresh: the last good keys stay in force.
 */
const checkedFetch = async (url: string, options: { readonly headers: Headers; readonly method: "GET"; readonly redirect: "manual"; readonly signal: AbortSignal }): Promise<Response> => {
  const response = await fetch(url, options)
  if (response.status !== 200 || response.body === null) return response
  const reader = response.body.getReader()
  const chunks: Array<Uint8Array> = []
  let total = 0
  while (true) {
    const { done, value } = await reader.read()
    if (done) break
    total += value.length
    if (total > MAX_FILE_BYTES) {
      await reader.cancel()
      throw new Error(`the key set is larger than ${MAX_FILE_BYTES} bytes`)
    }
    chunks.push(value)
  }
  const jwks = await checkJwks(JSON.parse(Buffer.concat(chunks).toString("utf8")) as unknown)
  if (jwks.keys.length === 0) throw new Error("the key set holds no keys")
  return new Response(JSON.stringify(jwks), { status: 200, headers: { "content-type": "application/json" } })
}

/**
 * The keys of a JWKS file, re-read when it changes (see the module comment) until the scope
 * closes. Fails with {@link AuthConfigError} when the file is bad at start.
 */
export const fromFile = (path: string, timings: SourceTimings = DEFAULT_TIMINGS): Effect.Effect<KeySource, AuthConfigError, Scope.Scope> =>
  Effect.gen(function*() {
    let current = yield* loadFile(path)
    if (current.keys === 0) yield* Effect.logWarning("the JWKS file holds no keys: every JWT is refused").pipe(Effect.annotateLogs({ file: path }))
    let problem: string | undefined
    const poll = (forced: boolean) => Effect.gen(function*() {
      const stamp = yield* Effect.result(Effect.tryPromise(() => stampOf(path)))
      if (!forced && Result.isSuccess(stamp) && stamp.success.stamp === current.stamp) return
      const next = yield* Effect.result(loadFile(path))
      if (Result.isFailure(next)) {
        if (forced || next.failure.message !== problem) {
          problem = next.failure.message
          yield* Effect.logWarning("JWKS file not reloaded: the previous keys stay in force").pipe(
            Effect.annotateLogs({ reason: next.failure.message })
          )
        }
        return
      }
      problem = undefined
      current = next.success
      yield* Effect.logInfo("JWKS file reloaded").pipe(Effect.annotateLogs({ file: path, keys: current.keys }))
    })
    yield* onHangup(poll(true))
    yield* Effect.forkScoped(Effect.repeat(poll(false), Schedule.spaced(timings.pollMs)))
    return { getKey: (header, token) => current.resolve(header, token), origin: path }
  })

// ---- URL ----

/**
 * The keys behind a JWKS URL (see the module comment), refreshed in the background until the
 * scope closes. Fails with {@link AuthConfigError} when the URL is not an http(s) URL.
 */
export const fromUrl = (url: string, timings: SourceTimings = DEFAULT_TIMINGS): Effect.Effect<KeySource, AuthConfigError, Scope.Scope> =>
  Effect.gen(function*() {
    const parsed = URL.parse(url)
    if (parsed === null || (parsed.protocol !== "https:" && parsed.protocol !== "http:")) {
      return yield* Effect.fail(new AuthConfigError({ message: `GATEWAY_JWKS_URL: expected an http(s) URL, got ${JSON.stringify(url)}` }))
    }
    if (parsed.protocol === "http:" && !isLoopback(parsed.hostname)) {
      yield* Effect.logWarning("GATEWAY_JWKS_URL is plain http: whoever can alter the traffic can add keys").pipe(
        Effect.annotateLogs({ url: parsed.href })
      )
    }
    // cacheMaxAge Infinity: a hello never waits for a refresh (the background fiber does them),
    // and a failed refresh keeps the last good set
    const remote = createRemoteJWKSet(parsed, {
      cacheMaxAge: Infinity,
      cooldownDuration: timings.cooldownMs,
      timeoutDuration: timings.timeoutMs,
      [customFetch]: checkedFetch
    })
    let healthy: boolean | undefined
    let problem: string | undefined
    const refresh = (forced: boolean) => Effect.gen(function*() {
      const done = yield* Effect.result(Effect.tryPromise(() => remote.reload()))
      if (Result.isSuccess(done)) {
        if (forced || healthy !== true) {
          yield* Effect.logInfo("JWKS fetched").pipe(Effect.annotateLogs({ url: parsed.href, keys: remote.jwks()?.keys.length ?? 0 }))
        }
        healthy = true
        problem = undefined
        return
      }
      const reason = messageOf(done.failure.cause ?? done.failure)
      if (forced || healthy !== false || reason !== problem) {
        yield* Effect.logWarning(
          remote.jwks() === undefined ? "JWKS fetch failed: JWTs are refused until it succeeds" : "JWKS refresh failed: the last fetched keys stay in force"
        ).pipe(Effect.annotateLogs({ url: parsed.href, reason }))
      }
      healthy = false
      problem = reason
    })
    yield* onHangup(refresh(true))
    yield* Effect.forkScoped(Effect.repeat(refresh(false), Schedule.spaced(timings.refreshMs)))
    return { getKey: (header, token) => remote(header, token), origin: parsed.href }
  })

/** Runs `effect` on every SIGHUP until the scope closes (while it listens, SIGHUP does not end the process). */
const onHangup = (effect: Effect.Effect<void>): Effect.Effect<void, never, Scope.Scope> =>
  Effect.gen(function*() {
    const run = yield* FiberSet.makeRuntime<never, void, never>()
    const hup = () => {
      run(effect)
    }
    yield* Effect.acquireRelease(
      Effect.sync(() => process.on("SIGHUP", hup)),
      () => Effect.sync(() => process.off("SIGHUP", hup))
    )
  })

const isLoopback = (host: string) => /^(127\.\d+\.\d+\.\d+|\[::1\]|localhost)$/.test(host)
