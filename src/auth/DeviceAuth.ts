/**
 * Device authentication: decides, for each hello, which credential check applies and what the
 * device may then do. It composes the device registry (DeviceRegistry.ts, GATEWAY_DEVICES) and
 * JWT credentials (JwtCredentials.ts, keys from GATEWAY_JWKS_FILE or GATEWAY_JWKS_URL):
 *
 * - a token with the shape of a JWT (three base64url parts), when JWT is configured, is verified
 *   as a JWT, and only as one (a JWT that fails is refused, never tried against the registry);
 * - any other token goes to the registry when there is one (synchronous, ~2 µs);
 * - with JWT but no registry, a token that is not a JWT is refused, unless client certificates
 *   are required (GATEWAY_TLS_CA): a verified certificate then authenticates on its own, as
 *   PROTOCOL.md says for a gateway without a registry;
 * - with no credential configured at all every device is accepted, and GatewayConfig has forced
 *   the listener to loopback (`openAccess`).
 */
import { Context, Effect, Layer, Option, Result, type Scope } from "effect"
import { GatewayConfig, type GatewayConfigShape } from "../config/GatewayConfig.ts"
import { AuthError } from "../domain/Errors.ts"
import type { Kind } from "../domain/Frames.ts"
import { AuthConfigError } from "./AuthConfigError.ts"
import { checkToken, loadRegistry, type RateLimits, type Registry } from "./DeviceRegistry.ts"
import { DEFAULT_TIMINGS, fromFile, fromUrl, type KeySource, type SourceTimings } from "./JwksSource.ts"
import { type JwtVerifier, looksLikeJwt, makeVerifier } from "./JwtCredentials.ts"

/** What an authenticated device may do: the kinds it may send, and its class's rate limits (else the configured default). */
export interface Grant {
  readonly kinds: ReadonlySet<Kind>
  readonly limits: RateLimits | undefined
}

/** What the connections ask: may this device connect, and which kinds may it send? */
export interface DeviceAuthShape {
  /**
   * Checks a hello's credential; the success is what the device may do. A registry token is
   * answered synchronously (an already completed effect); a JWT waits for its signature check.
   */
  readonly authenticate: (device: string, token: string) => Effect.Effect<Grant, AuthError>
}

/** The grant of every device when no credential is configured (or a client certificate suffices). */
export const OPEN_GRANT: Grant = { kinds: new Set(["telemetry", "event"]), limits: undefined }

const OPEN = Effect.succeed(OPEN_GRANT)
const NOT_A_JWT = Effect.fail(new AuthError({ reason: "credential", message: "expected a JWT signed by a fleet key" }))

/** The authentication service. */
export class DeviceAuth extends Context.Service<DeviceAuth, DeviceAuthShape>()("gateway/DeviceAuth") {
  /** Registry and/or JWT credentials as configured, or open access when neither is. */
  static readonly layer = Layer.effect(
    DeviceAuth,
    Effect.gen(function*() {
      return DeviceAuth.of(yield* make(yield* GatewayConfig))
    })
  )
}

/**
 * Builds the authentication of `config` (the layer's work; tests pass shorter `timings`).
 * Fails with {@link AuthConfigError} when a credential file is bad or the settings conflict.
 */
export const make = (
  config: GatewayConfigShape,
  timings: SourceTimings = DEFAULT_TIMINGS
): Effect.Effect<DeviceAuthShape, AuthConfigError, Scope.Scope> =>
  Effect.gen(function*() {
    const registry = Option.isSome(config.devicesFile) ? yield* loadRegistry(config.devicesFile.value) : undefined
    if (registry !== undefined) yield* Effect.logInfo("device registry loaded").pipe(Effect.annotateLogs({ devices: registry.size }))
    const jwt = yield* jwtOf(config, timings)
    const certificates = Option.isSome(config.tlsCa)
    if (registry === undefined && jwt === undefined) {
      if (certificates) yield* Effect.logInfo("no device registry and no JWT keys: a verified client certificate authenticates a device")
      else {
        yield* Effect.logWarning(
          "no device credentials (GATEWAY_DEVICES, GATEWAY_JWKS_FILE, GATEWAY_JWKS_URL): accepting every device, listening on loopback only"
        ).pipe(Effect.annotateLogs({ host: config.host }))
      }
    }
    return { authenticate: compose(registry, jwt, certificates) }
  })

/** Chooses the check of each token (see the module comment). */
const compose = (registry: Registry | undefined, jwt: JwtVerifier | undefined, certificates: boolean): DeviceAuthShape["authenticate"] =>
  (device, token) => {
    if (jwt !== undefined && looksLikeJwt(token)) return jwt(device, token)
    if (registry !== undefined) {
      const checked = checkToken(registry, device, token)
      return Result.isSuccess(checked) ? Effect.succeed(checked.success) : Effect.fail(checked.failure)
    }
    return jwt !== undefined && !certificates ? NOT_A_JWT : OPEN
  }

/** The JWT verifier of GATEWAY_JWKS_FILE / GATEWAY_JWKS_URL, or none when neither is set. */
const jwtOf = (config: GatewayConfigShape, timings: SourceTimings): Effect.Effect<JwtVerifier | undefined, AuthConfigError, Scope.Scope> =>
  Effect.gen(function*() {
    const { jwksFile, jwksUrl, jwtIssuer, jwtAudience } = config
    if (Option.isSome(jwksFile) && Option.isSome(jwksUrl)) {
      return yield* Effect.fail(new AuthConfigError({ message: "GATEWAY_JWKS_FILE and GATEWAY_JWKS_URL: set one of them, not both" }))
    }
    const source: Effect.Effect<KeySource, AuthConfigError, Scope.Scope> | undefined = Option.isSome(jwksFile)
      ? fromFile(jwksFile.value, timings)
      : Option.isSome(jwksUrl)
      ? fromUrl(jwksUrl.value, timings)
      : undefined
    if (source === undefined) {
      const orphan = Option.isSome(jwtIssuer) ? "GATEWAY_JWT_ISSUER" : Option.isSome(jwtAudience) ? "GATEWAY_JWT_AUDIENCE" : undefined
      if (orphan !== undefined) {
        return yield* Effect.fail(new AuthConfigError({ message: `${orphan} is set but neither GATEWAY_JWKS_FILE nor GATEWAY_JWKS_URL: no JWT would be checked` }))
      }
      return undefined
    }
    const keys = yield* source
    const policy = {
      issuer: Option.getOrUndefined(jwtIssuer),
      audience: Option.getOrUndefined(jwtAudience),
      clockToleranceS: config.jwtClockToleranceS
    }
    yield* Effect.logInfo("device JWTs accepted").pipe(Effect.annotateLogs({ keys: keys.origin, ...policy }))
    return makeVerifier(keys, policy)
  })
