/**
 * What each simulated device says in its hello's `token` (PROTOCOL.md, Session): one shared
 * token, a device's own from a tokens file (as `simulate provision` or a loop over
 * `npm run device:add` writes it), or a JWT signed here with a fleet private key (README, JWT
 * device credentials: an asymmetric key named by `kid`, `sub` = the device).
 */
import * as Crypto from "node:crypto"
import * as Fs from "node:fs"

/** The token of device `id` (its index in the fleet given too). */
export type Credentials = (index: number, id: string) => string

/** A bad tokens file or key: the message says what and where. */
export class CredentialsError extends Error {}

/**
 * Reads a tokens file: either a JSON object `{"<device>":"<token>",…}`, or text with one
 * `<device> <token>` per line (separated by spaces, a tab, `=` or `,`); blank lines and lines
 * starting with `#` are skipped. Throws {@link CredentialsError} naming the first bad line.
 */
export const parseTokens = (text: string, file = "tokens file"): Map<string, string> => {
  const tokens = new Map<string, string>()
  if (text.trimStart().startsWith("{")) {
    let json: unknown
    try {
      json = JSON.parse(text)
    } catch (e) {
      throw new CredentialsError(`${file} is not JSON: ${e instanceof Error ? e.message : String(e)}`)
    }
    if (typeof json !== "object" || json === null || Array.isArray(json)) throw new CredentialsError(`${file}: expected an object of device → token`)
    for (const [id, token] of Object.entries(json)) {
      if (typeof token !== "string") throw new CredentialsError(`${file}: the token of ${JSON.stringify(id)} is not a string`)
      tokens.set(id, token)
    }
    return tokens
  }
  const lines = text.split("\n")
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.trim()
    if (line === "" || line.startsWith("#")) continue
    const m = /^([A-Za-z0-9_:-]+)\s*[\s=,]\s*(\S+)$/.exec(line)
    if (m === null) throw new CredentialsError(`${file}:${i + 1}: expected "<device> <token>"`)
    tokens.set(m[1]!, m[2]!)
  }
  return tokens
}

/** One token for every device. */
export const sharedToken = (token: string): Credentials => () => token

/**
 * Each device's own token from `tokens`; throws {@link CredentialsError} when one of `ids` has
 * none (naming the first few missing).
 */
export const fileTokens = (tokens: ReadonlyMap<string, string>, ids: ReadonlyArray<string>, file: string): Credentials => {
  const missing = ids.filter((id) => !tokens.has(id))
  if (missing.length > 0) {
    const shown = missing.slice(0, 3).join(", ")
    throw new CredentialsError(
      `${file} has no token for ${missing.length} of the ${ids.length} devices (${shown}${missing.length > 3 ? ", …" : ""})`
    )
  }
  return (_, id) => tokens.get(id)!
}

/** How to sign device JWTs. */
export interface JwtSettings {
  /** A private key file: PEM (PKCS#8, SEC1 or PKCS#1) or a private JWK (JSON). */
  readonly keyFile: string
  /** The `kid` the gateway's JWKS names the public key by (default: the JWK's own `kid`). */
  readonly kid: string | undefined
  /** Signature algorithm (default: from the key: ES256/384/512, EdDSA, RS256). */
  readonly alg: string | undefined
  readonly issuer: string | undefined
  readonly audience: string | undefined
  /** The `kinds` claim (the gateway lets a token without it send telemetry only). */
  readonly kinds: ReadonlyArray<string>
  /** Token lifetime in seconds. */
  readonly lifetimeS: number
}

/** The default algorithm for a private key, or undefined when there is no obvious one. */
export const defaultAlg = (key: Crypto.KeyObject): string | undefined => {
  switch (key.asymmetricKeyType) {
    case "ec":
      return { "prime256v1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512" }[key.asymmetricKeyDetails?.namedCurve ?? ""]
    case "ed25519":
      return "EdDSA"
    case "rsa":
      return "RS256"
    case "rsa-pss":
      return "PS256"
    default:
      return undefined
  }
}

const readKey = (file: string): { readonly key: Crypto.KeyObject; readonly kid: string | undefined } => {
  let text: string
  try {
    text = Fs.readFileSync(file, "utf8")
  } catch (e) {
    throw new CredentialsError(`cannot read the JWT key ${file}: ${e instanceof Error ? e.message : String(e)}`)
  }
  try {
    if (text.trimStart().startsWith("{")) {
      const jwk = JSON.parse(text) as Crypto.JsonWebKey & { readonly kid?: unknown }
      return { key: Crypto.createPrivateKey({ key: jwk, format: "jwk" }), kid: typeof jwk.kid === "string" ? jwk.kid : undefined }
    }
    return { key: Crypto.createPrivateKey(text), kid: undefined }
  } catch (e) {
    throw new CredentialsError(`${file} is not a private key (PEM or JWK): ${e instanceof Error ? e.message : String(e)}`)
  }
}

/**
 * Signs one JWT per device (`sub` = its id, `kinds`, `exp` = now + lifetime, `iss`/`aud` when
 * given) with the fleet's private key, before the run starts, a few hundred at a time.
 */
export const jwtTokens = async (settings: JwtSettings, ids: ReadonlyArray<string>): Promise<Credentials> => {
  const { key, kid: jwkKid } = readKey(settings.keyFile)
  const kid = settings.kid ?? jwkKid
  if (kid === undefined) throw new CredentialsError(`--jwt-kid is needed: the gateway finds the key by the token's kid`)
  const alg = settings.alg ?? defaultAlg(key)
  if (alg === undefined) throw new CredentialsError(`--jwt-alg is needed for a ${key.asymmetricKeyType ?? "symmetric"} key`)
  const exp = Math.floor(Date.now() / 1000) + settings.lifetimeS
  // loaded here: a run without JWTs does not pay for jose
  const { SignJWT } = await import("jose")
  const sign = (sub: string) => {
    let jwt = new SignJWT({ kinds: [...settings.kinds] }).setProtectedHeader({ alg, kid }).setSubject(sub).setIssuedAt()
      .setExpirationTime(exp)
    if (settings.issuer !== undefined) jwt = jwt.setIssuer(settings.issuer)
    if (settings.audience !== undefined) jwt = jwt.setAudience(settings.audience)
    return jwt.sign(key)
  }
  const tokens: Array<string> = []
  try {
    for (let i = 0; i < ids.length; i += 256) tokens.push(...await Promise.all(ids.slice(i, i + 256).map(sign)))
  } catch (e) {
    throw new CredentialsError(`cannot sign with ${settings.keyFile} as ${alg}: ${e instanceof Error ? e.message : String(e)}`)
  }
  return (index) => tokens[index]!
}
