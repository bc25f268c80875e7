/**
 * JWT device credentials: the hello's token is a JWT (JWS compact serialization) signed by a
 * fleet key, so a large fleet needs no registry entry per device. This module is the
 * verification policy; the keys come from a {@link KeySource} (JwksSource.ts).
 *
 * A token is accepted when all of this holds, else it is refused with `AuthError` (`error auth`
 * on the wire), whatever is wrong with it (never a crash):
 * - it is at most {@link JWT_MAX_CHARS} characters (checked before anything is decoded);
 * - its `alg` is one of {@link SIGNING_ALGORITHMS}: asymmetric only, so neither `none` nor an
 *   HMAC "signed" with a public key as its secret is ever verified;
 * - its signature verifies with a key of the fleet key set (by `kid`);
 * - `sub` equals the hello's `device`; `exp` is present and not past; `nbf`, when present, is
 *   past (both with the configured clock tolerance, at most 300 s);
 * - `iss` / `aud` match GATEWAY_JWT_ISSUER / GATEWAY_JWT_AUDIENCE when those are set;
 * - `kinds`, when present, is an array of `"telemetry"` / `"event"`; when absent the device may
 *   send telemetry only (events are never shed and can stop a connection's reads: a privilege
 *   that the issuer grants explicitly).
 *
 * Cost (measured, jose 6 on WebCrypto, Node 24, shared 2-core VM): an ES256 verify takes ~125 µs
 * alone and ~50–60 µs each when many run at once (15–20k/s), of which ~35–60 µs on the event loop
 * (the signature math runs on libuv's thread pool); RS256 ~65 µs alone, ~30 µs each at once;
 * EdDSA about as ES256; 2–3× that while the VM was loaded by other work. A registry token costs
 * ~2–4 µs.
 */
import { Effect, Result, Schema } from "effect"
import { errors, jwtVerify, type JWTPayload, type JWTVerifyOptions } from "jose"
import { AuthError } from "../domain/Errors.ts"
import type { Kind } from "../domain/Frames.ts"
import type { Grant } from "./DeviceAuth.ts"
import type { KeySource } from "./JwksSource.ts"

/** Longest JWT verified; longer tokens are refused before any decoding (the hello allows 4096). */
export const JWT_MAX_CHARS = 2048

/** The algorithms a device token may be signed with: asymmetric signatures only. */
export const SIGNING_ALGORITHMS: ReadonlyArray<string> = [
  "ES256", "ES384", "ES512", "EdDSA", "Ed25519", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"
]

/** Largest clock tolerance accepted (seconds). */
export const MAX_CLOCK_TOLERANCE_S = 300

const JWT_SHAPE = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/

/**
 * Whether a token has the shape of a JWS compact JWT: three base64url parts (the last may be
 * empty, as in an unsigned `alg: none` token, so that such a token is refused as a JWT). A
 * registry token (base64url, no dot) never has it.
 */
export const looksLikeJwt = (token: string): boolean => JWT_SHAPE.test(token)

/** What a token must say beyond its signature. */
export interface JwtPolicy {
  /** Required `iss`, or undefined for any. */
  readonly issuer: string | undefined
  /** Required `aud` (the token's `aud` must be or contain it), or undefined for any. */
  readonly audience: string | undefined
  /** Seconds of clock skew tolerated on `exp` and `nbf` (0..{@link MAX_CLOCK_TOLERANCE_S}). */
  readonly clockToleranceS: number
}

/** Verifies a hello's JWT for `device`: the device's grant, or `AuthError`. */
export type JwtVerifier = (device: string, token: string) => Effect.Effect<Grant, AuthError>

/** The grant of a token without a `kinds` claim. */
const DEFAULT_KINDS: ReadonlyArray<Kind> = ["telemetry"]

const Kinds = Schema.Array(Schema.Literals(["telemetry", "event"]))
const decodeKinds = Schema.decodeUnknownResult(Kinds)

const refusal = (message: string) => new AuthError({ reason: "credential", message })

/** The keys could not be had: the gateway's fault, not the token's (answered `busy`, never counted against the address). */
const UNVERIFIABLE = new AuthError({ reason: "unverifiable", message: "cannot verify the token now: fleet keys unavailable" })

const TOO_LARGE = Effect.fail(refusal(`token longer than ${JWT_MAX_CHARS} characters`))

/** Makes the verifier of tokens signed by `keys` under `policy`. */
export const makeVerifier = (keys: KeySource, policy: JwtPolicy): JwtVerifier => {
  const tolerance = Math.min(Math.max(0, policy.clockToleranceS), MAX_CLOCK_TOLERANCE_S)
  const base: JWTVerifyOptions = {
    algorithms: [...SIGNING_ALGORITHMS],
    requiredClaims: ["exp", "sub"],
    clockTolerance: tolerance,
    ...(policy.issuer === undefined ? {} : { issuer: policy.issuer }),
    ...(policy.audience === undefined ? {} : { audience: policy.audience })
  }
  return (device, token) =>
    token.length > JWT_MAX_CHARS
      ? TOO_LARGE
      : Effect.tryPromise({
        try: () => jwtVerify(token, keys.getKey, { ...base, subject: device }),
        catch: refusalOf
      }).pipe(Effect.flatMap((verified) => grantOf(verified.payload)))
}

/** The grant a verified token's claims give. */
const grantOf = (payload: JWTPayload): Effect.Effect<Grant, AuthError> => {
  const claim = payload["kinds"]
  if (claim === undefined) return Effect.succeed({ kinds: new Set(DEFAULT_KINDS), limits: undefined })
  const kinds = decodeKinds(claim)
  return Result.isSuccess(kinds)
    ? Effect.succeed({ kinds: new Set(kinds.success), limits: undefined })
    : Effect.fail(refusal(`token claim "kinds" must be an array of "telemetry" / "event"`))
}

/**
 * The `AuthError` for whatever verification threw. The message tells the device what to fix
 * (expired: get a new token) without saying more than the token itself does.
 */
const refusalOf = (e: unknown): AuthError => {
  if (!(e instanceof errors.JOSEError)) return UNVERIFIABLE
  switch (e.code) {
    case errors.JWTExpired.code:
      return refusal("token expired")
    case errors.JWTClaimValidationFailed.code: {
      const failed = e instanceof errors.JWTClaimValidationFailed ? e : undefined
      if (failed?.reason === "missing") return refusal(`token lacks the "${failed.claim}" claim`)
      if (failed?.claim === "sub") return refusal("token is for another device")
      if (failed?.claim === "nbf") return refusal("token not valid yet")
      return refusal(`token claim "${failed?.claim ?? "?"}" not accepted`)
    }
    case errors.JOSEAlgNotAllowed.code:
      return refusal("token algorithm not allowed (asymmetric signatures only)")
    case errors.JWKSNoMatchingKey.code:
    case errors.JWKSMultipleMatchingKeys.code:
    case errors.JWSSignatureVerificationFailed.code:
      return refusal("token not signed by a fleet key")
    case errors.JWSInvalid.code:
    case errors.JWTInvalid.code:
    case errors.JOSENotSupported.code:
      return refusal("malformed token")
    default: // a key set that could not be fetched (timeout, HTTP status, bad body)
      return UNVERIFIABLE
  }
}
