/**
 * Test support for JWT credentials: fleet keys made with jose, JWKS files written the way an
 * operator should (atomically: temporary file, then rename) or in place, tokens signed with them,
 * a JWKS served by a real local `node:http` server, and a logger that keeps what it is given.
 */
import { Effect, Layer, Logger } from "effect"
import { type CryptoKey, exportJWK, generateKeyPair, type JWK, type JWTPayload, SignJWT } from "jose"
import * as Crypto from "node:crypto"
import * as Fs from "node:fs"
import * as Http from "node:http"
import type { AddressInfo } from "node:net"
import * as Path from "node:path"

/** A fleet signing key: its public JWK (with `kid`, `alg`, `use`) and the private key that signs tokens. */
export interface FleetKey {
  readonly kid: string
  readonly alg: string
  readonly jwk: JWK
  readonly privateKey: CryptoKey
}

/** A new key pair for `alg` (ES256, EdDSA, RS256, ...). */
export const fleetKey = async (alg = "ES256", kid = `k-${Crypto.randomUUID()}`): Promise<FleetKey> => {
  const { publicKey, privateKey } = await generateKeyPair(alg, { extractable: true })
  return { kid, alg, jwk: { ...(await exportJWK(publicKey)), kid, alg, use: "sig" }, privateKey }
}

/** Claims of a test token: `sub` and `exp` (seconds from now; default one hour) unless left out with `undefined`. */
export interface Claims {
  readonly sub?: string | undefined
  readonly expIn?: number | undefined
  readonly [claim: string]: unknown
}

/** A JWT signed by `key` (header `alg` and `kid` from the key unless `header` overrides them). */
export const sign = (key: FleetKey, claims: Claims, header: Record<string, unknown> = {}): Promise<string> => {
  const { sub, expIn, ...rest } = claims
  const payload: JWTPayload = { ...rest }
  if ("sub" in claims && sub !== undefined) payload.sub = sub
  if (!("expIn" in claims)) payload.exp = now() + 3600
  else if (expIn !== undefined) payload.exp = now() + expIn
  return new SignJWT(payload).setProtectedHeader({ alg: key.alg, kid: key.kid, ...header }).sign(key.privateKey)
}

/** Seconds since the epoch. */
export const now = () => Math.floor(Date.now() / 1000)

/** Writes a JWKS of `keys` to `path` atomically (temporary file, then rename: the file's inode changes). */
export const writeJwks = (path: string, keys: ReadonlyArray<JWK>): void => {
  const tmp = Path.join(Path.dirname(path), `.${Path.basename(path)}.${process.pid}.tmp`)
  Fs.writeFileSync(tmp, JSON.stringify({ keys }))
  Fs.renameSync(tmp, path)
}

/** Rewrites `path` in place (same inode), as an editor or `cat > file` would. */
export const overwrite = (path: string, text: string): void => Fs.writeFileSync(path, text)

/** Base64url of a JSON value or a string (for hand-made tokens). */
export const b64 = (value: unknown): string =>
  Buffer.from(typeof value === "string" ? value : JSON.stringify(value)).toString("base64url")

/** A JWKS served over HTTP by a real local server, with what it was asked. */
export interface JwksServer {
  readonly url: string
  /** GET requests received so far. */
  readonly requests: () => number
  /** Serves these keys from now on. */
  readonly serve: (keys: ReadonlyArray<JWK>) => void
  /** Serves this body (any text) from now on. */
  readonly serveRaw: (body: string) => void
  /** While down, answers 503. */
  readonly setDown: (down: boolean) => void
  readonly close: () => Promise<void>
}

/** Starts a JWKS server on 127.0.0.1 (a free port) serving `keys`. */
export const jwksServer = async (keys: ReadonlyArray<JWK>): Promise<JwksServer> => {
  let body = JSON.stringify({ keys })
  let down = false
  let requests = 0
  const server = Http.createServer((req, res) => {
    requests++
    if (down || req.method !== "GET") {
      res.writeHead(503).end()
      return
    }
    res.writeHead(200, { "content-type": "application/jwk-set+json" }).end(body)
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const { port } = server.address() as AddressInfo
  return {
    url: `http://127.0.0.1:${port}/.well-known/jwks.json`,
    requests: () => requests,
    serve: (next) => (body = JSON.stringify({ keys: next })),
    serveRaw: (text) => (body = text),
    setDown: (d) => (down = d),
    close: () => new Promise<void>((resolve) => server.close(() => resolve()))
  }
}

/** One log line kept by {@link capturedLogs}: level, message and annotations. */
export interface Captured {
  readonly level: string
  readonly message: string
}

/** A logger layer that keeps every line in `into` (instead of printing it). */
export const capturedLogs = (into: Array<Captured>): Layer.Layer<never> =>
  Logger.layer([
    Logger.make((o) => {
      const m = o.message
      into.push({ level: o.logLevel, message: Array.isArray(m) ? m.map(String).join(" ") : String(m) })
    })
  ])

/** Polls `check` every 20 ms (real time) until it holds or `ms` pass; the last value of the check. */
export const eventually = <A>(check: Effect.Effect<A, unknown>, ok: (a: A) => boolean, ms = 5_000): Effect.Effect<A, unknown> =>
  Effect.gen(function*() {
    const deadline = Date.now() + ms
    while (true) {
      const a = yield* check
      if (ok(a) || Date.now() > deadline) return a
      yield* Effect.sleep("20 millis")
    }
  })
