/**
 * Device authentication, first cut: a JSON registry file (`GATEWAY_DEVICES`) of device ids,
 * salted SHA-256 token hashes and the kinds each device may send. Tokens are 192-bit random
 * secrets, so a fast salted hash is enough (a slow KDF would turn a reconnection storm into a CPU
 * storm); comparison is constant-time, and unknown devices are compared against a dummy entry so
 * that timing does not tell which ids exist. Without a registry every device is accepted (the
 * listener is then forced to loopback: see GatewayConfig).
 */
import { Context, Effect, Layer, Option, Result, Schema } from "effect"
import * as Crypto from "node:crypto"
import * as Fs from "node:fs"
import { GatewayConfig } from "../config/GatewayConfig.ts"
import { AuthError } from "../domain/Errors.ts"
import { DeviceId, type Kind } from "../domain/Frames.ts"

/** One registry entry as stored in the file; `class` names its rate limits in `classes`. */
export const DeviceEntry = Schema.Struct({
  id: DeviceId,
  salt: Schema.String.check(Schema.isPattern(/^[0-9a-f]{32}$/)),
  hash: Schema.String.check(Schema.isPattern(/^[0-9a-f]{64}$/)),
  kinds: Schema.Array(Schema.Literals(["telemetry", "event"])),
  class: Schema.optionalKey(Schema.String)
})
export type DeviceEntry = typeof DeviceEntry.Type

const PerSecond = Schema.Int.check(Schema.isGreaterThanOrEqualTo(0))

/** Rate limits of a device class (0 = unlimited). */
export const RateLimits = Schema.Struct({ msgsPerSec: PerSecond, bytesPerSec: PerSecond })
export type RateLimits = typeof RateLimits.Type

/** The registry file: `{ "devices": [ ... ], "classes": { "<name>": { msgsPerSec, bytesPerSec } } }`. */
export const RegistryFile = Schema.Struct({
  devices: Schema.Array(DeviceEntry),
  classes: Schema.optionalKey(Schema.Record(Schema.String, RateLimits))
})

/** What an authenticated device may do: the kinds it may send, and its class's rate limits (else the configured default). */
export interface Grant {
  readonly kinds: ReadonlySet<Kind>
  readonly limits: RateLimits | undefined
}

const OPEN: Grant = { kinds: new Set(["telemetry", "event"]), limits: undefined }

/** Hash of a token with a salt (hex), as stored in the registry. */
export const hashToken = (salt: string, token: string): string =>
  Crypto.createHash("sha256").update(Buffer.from(salt, "hex")).update(token, "utf8").digest("hex")

/** Makes a registry entry and its fresh token (the token is shown once and never stored). */
export const newEntry = (id: string, kinds: ReadonlyArray<Kind>): { readonly entry: DeviceEntry; readonly token: string } => {
  const token = Crypto.randomBytes(24).toString("base64url")
  const salt = Crypto.randomBytes(16).toString("hex")
  return { entry: { id, salt, hash: hashToken(salt, token), kinds: [...kinds] }, token }
}

/** What the connections ask: may this device connect, and which kinds may it send? */
export interface DeviceAuthShape {
  /** Checks a hello's credential; the success is what the device may do. */
  readonly authenticate: (device: string, token: string) => Result.Result<Grant, AuthError>
}

/** The authentication service. */
export class DeviceAuth extends Context.Service<DeviceAuth, DeviceAuthShape>()("gateway/DeviceAuth") {
  /** Registry from `GATEWAY_DEVICES`, or open access when it is unset. */
  static readonly layer = Layer.effect(
    DeviceAuth,
    Effect.gen(function*() {
      const config = yield* GatewayConfig
      if (Option.isNone(config.devicesFile)) {
        yield* Effect.logWarning(
          "no device registry (GATEWAY_DEVICES): accepting every device, listening on loopback only"
        ).pipe(Effect.annotateLogs({ host: config.host }))
        return DeviceAuth.of({ authenticate: () => Result.succeed(OPEN) })
      }
      const entries = yield* loadRegistry(config.devicesFile.value)
      yield* Effect.logInfo("device registry loaded").pipe(Effect.annotateLogs({ devices: entries.size }))
      return DeviceAuth.of({ authenticate: (device, token) => check(entries, device, token) })
    })
  )
}

interface Compiled {
  readonly salt: string
  readonly hash: Buffer
  readonly grant: Grant
}

const DUMMY: Compiled = { salt: "00".repeat(16), hash: Buffer.alloc(32), grant: { kinds: new Set(), limits: undefined } }

const check = (entries: ReadonlyMap<string, Compiled>, device: string, token: string) => {
  const entry = entries.get(device)
  const candidate = Buffer.from(hashToken((entry ?? DUMMY).salt, token), "hex")
  const match = Crypto.timingSafeEqual(candidate, (entry ?? DUMMY).hash)
  return entry !== undefined && match
    ? Result.succeed(entry.grant)
    : Result.fail(new AuthError({ reason: "credential", message: "unknown device or bad token" }))
}

/** Reads and validates the registry file; a bad file fails start with one line. */
export const loadRegistry = (path: string) =>
  Effect.try({
    try: () => JSON.parse(Fs.readFileSync(path, "utf8")) as unknown,
    catch: (e) => new Error(`GATEWAY_DEVICES: cannot read ${path}: ${e instanceof Error ? e.message : String(e)}`)
  }).pipe(
    Effect.flatMap((json) =>
      Effect.mapError(
        Schema.decodeUnknownEffect(RegistryFile)(json),
        (e) => new Error(`GATEWAY_DEVICES: ${path} is not a device registry: ${e.message.replace(/\s*\n\s*/g, " ")}`)
      )
    ),
    Effect.flatMap((file) => {
      const classes = file.classes ?? {}
      const unknown = file.devices.find((d) => d.class !== undefined && !Object.hasOwn(classes, d.class))
      if (unknown !== undefined) {
        return Effect.fail(new Error(`GATEWAY_DEVICES: ${path}: device ${unknown.id} names class ${JSON.stringify(unknown.class)}, which "classes" does not define`))
      }
      return Effect.succeed(
        new Map(file.devices.map((d) => [d.id, {
          salt: d.salt,
          hash: Buffer.from(d.hash, "hex"),
          grant: { kinds: new Set(d.kinds), limits: d.class === undefined ? undefined : classes[d.class] }
        }]))
      )
    })
  )
