/**
 * The device registry: a JSON file (`GATEWAY_DEVICES`) of device ids, salted SHA-256 token
 * hashes and the kinds each device may send. Tokens are 192-bit random secrets, so a fast salted
 * hash is enough (a slow KDF would turn a reconnection storm into a CPU storm); comparison is
 * constant-time, and unknown devices are compared against a dummy entry so that timing does not
 * tell which ids exist. The check is synchronous (~2 µs): it runs for every hello of a storm.
 * {@link ./DeviceAuth.ts} decides when the registry is asked.
 */
import { Effect, Result, Schema } from "effect"
import * as Crypto from "node:crypto"
import { AuthError } from "../domain/Errors.ts"
import { DeviceId, type Kind } from "../domain/Frames.ts"
import { readJsonFile } from "../config/JsonFile.ts"
import { AuthConfigError } from "./AuthConfigError.ts"
import type { Grant } from "./DeviceAuth.ts"

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

/** Hash of a token with a salt (hex), as stored in the registry. */
export const hashToken = (salt: string, token: string): string =>
  Crypto.createHash("sha256").update(Buffer.from(salt, "hex")).update(token, "utf8").digest("hex")

/** Makes a registry entry and its fresh token (the token is shown once and never stored). */
export const newEntry = (id: string, kinds: ReadonlyArray<Kind>): { readonly entry: DeviceEntry; readonly token: string } => {
  const token = Crypto.randomBytes(24).toString("base64url")
  const salt = Crypto.randomBytes(16).toString("hex")
  return { entry: { id, salt, hash: hashToken(salt, token), kinds: [...kinds] }, token }
}

interface Compiled {
  readonly salt: string
  readonly hash: Buffer
  readonly grant: Grant
}

/** A loaded registry, ready for {@link checkToken}. */
export type Registry = ReadonlyMap<string, Compiled>

const DUMMY: Compiled = { salt: "00".repeat(16), hash: Buffer.alloc(32), grant: { kinds: new Set(), limits: undefined } }

const REFUSED = Result.fail(new AuthError({ reason: "credential", message: "unknown device or bad token" }))

/** Checks a registry token (synchronous, constant-time): the device's grant, or `AuthError`. */
export const checkToken = (registry: Registry, device: string, token: string): Result.Result<Grant, AuthError> => {
  const entry = registry.get(device)
  const candidate = Buffer.from(hashToken((entry ?? DUMMY).salt, token), "hex")
  const match = Crypto.timingSafeEqual(candidate, (entry ?? DUMMY).hash)
  return entry !== undefined && match ? Result.succeed(entry.grant) : REFUSED
}

/** The largest registry read (a million devices at ~200 bytes each). */
const MAX_REGISTRY_BYTES = 256 * 1024 * 1024

/** Reads and validates the registry file; a bad file fails the start with one line (exit 78). */
export const loadRegistry = (path: string): Effect.Effect<Registry, AuthConfigError> =>
  readJsonFile(path, MAX_REGISTRY_BYTES).pipe(
    Effect.mapError((message) => new AuthConfigError({ message: `GATEWAY_DEVICES: ${message}` })),
    Effect.flatMap((json) =>
      Effect.mapError(
        Schema.decodeUnknownEffect(RegistryFile)(json),
        (e) => new AuthConfigError({ message: `GATEWAY_DEVICES: ${path} is not a device registry: ${e.message.replace(/\s*\n\s*/g, " ")}` })
      )
    ),
    Effect.flatMap((file) => {
      const classes = file.classes ?? {}
      const unknown = file.devices.find((d) => d.class !== undefined && !Object.hasOwn(classes, d.class))
      if (unknown !== undefined) {
        return Effect.fail(new AuthConfigError({
          message: `GATEWAY_DEVICES: ${path}: device ${unknown.id} names class ${JSON.stringify(unknown.class)}, which "classes" does not define`
        }))
      }
      return Effect.succeed<Registry>(
        new Map(file.devices.map((d) => [d.id, {
          salt: d.salt,
          hash: Buffer.from(d.hash, "hex"),
          grant: { kinds: new Set(d.kinds), limits: d.class === undefined ? undefined : classes[d.class] }
        }]))
      )
    })
  )
