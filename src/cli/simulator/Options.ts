/**
 * The simulator's command line: `simulate [flags]` runs a fleet, `simulate provision [flags]`
 * writes registry entries and a tokens file for one. Parsing only: every value checked, one
 * error message naming the flag, nothing opened or read here.
 */
import { parseArgs, type ParseArgsOptionsConfig } from "node:util"
import type { FleetOptions } from "./Fleet.ts"

/** A bad command line: print the message and exit 2. */
export class UsageError extends Error {}

/** How the devices authenticate. */
export type CredentialMode =
  | { readonly mode: "token"; readonly token: string }
  | { readonly mode: "tokens"; readonly file: string }
  | {
    readonly mode: "jwt"
    readonly keyFile: string
    readonly kid: string | undefined
    readonly alg: string | undefined
    readonly issuer: string | undefined
    readonly audience: string | undefined
    readonly kinds: ReadonlyArray<string>
  }

/** TLS flags, files not read yet. */
export interface TlsFlags {
  readonly ca: string | undefined
  readonly cert: string | undefined
  readonly key: string | undefined
  readonly certsDir: string | undefined
  readonly servername: string | undefined
}

/** A parsed `simulate` run. */
export interface RunCommand {
  readonly command: "run"
  readonly host: string
  readonly port: number
  readonly fleet: FleetOptions
  readonly credentials: CredentialMode
  readonly tls: TlsFlags | undefined
  readonly json: boolean
  readonly quiet: boolean
  readonly perDevice: boolean
}

/** A parsed `simulate provision`. */
export interface ProvisionCommand {
  readonly command: "provision"
  readonly devices: number
  readonly prefix: string
  readonly registry: string
  readonly tokensOut: string
  readonly kinds: ReadonlyArray<"telemetry" | "event">
}

/** `simulate --help`. */
export interface HelpCommand {
  readonly command: "help"
}

/** Usage text (`--help`). */
export const USAGE = `usage: npm run simulate -- [flags]            run a simulated fleet against a gateway
       npm run simulate -- provision [flags]  add the fleet's devices to a registry file, write their tokens

run flags:
  --host H            gateway address (127.0.0.1)          --port P           device port (7000)
  --devices N         devices, one socket each (100)        --prefix P         device ids P0, P1, … (sim-)
  --rate R            frames per device per second (5)      --events F         fraction that are events (0.05)
  --duration S        seconds of sending (10)               --drain S          seconds to await answers after (10)
  --window N          unanswered frames per device (16)     --backlog N        frames a device holds at most (1024)
  --jitter F          schedule jitter, fraction of the period (0)
  --connect-rate N    first connections per second, 0 = all at once (1000)
  --trace-ratio F     fraction of frames with a W3C trace (0)
  --epoch N           the devices' sequence epoch (0)
  --max-backoff S     longest reconnect / nack backoff (5)  --connect-timeout S connect + welcome deadline (10)
  --token T           one token for every device (default "sim": a gateway without registry takes any)
  --tokens FILE       each device's token: lines "<device> <token>" or a JSON object
  --jwt-key FILE      sign a JWT per device with this private key (PEM or JWK)
  --jwt-kid K  --jwt-alg A  --jwt-issuer I  --jwt-audience A  --jwt-kinds telemetry,event
  --tls               TLS to the device port                --ca FILE          CA bundle of the gateway's certificate
  --cert FILE --key FILE  one client certificate for all    --certs DIR        DIR/<device>.crt and .key per device
  --servername NAME   name to verify in the gateway's certificate
  --json              the summary as one JSON object        --per-device       with each device's account (JSON)
  --quiet             no progress lines

provision flags:
  --devices N  --prefix P  --registry FILE (devices.json)  --tokens-out FILE (sim-tokens.txt)  --kinds telemetry,event`

const oneLine = (text: string) => text.replace(/\s*\n\s*/g, " ")

interface Range {
  readonly min: number
  readonly max: number
  readonly integer?: boolean
  /** Whether `min` itself is allowed (default true). */
  readonly minInclusive?: boolean
}

/** Reads a numeric flag: decimal, within the range; throws {@link UsageError}. */
export const numberFlag = (name: string, text: string | undefined, fallback: number, range: Range): number => {
  if (text === undefined) return fallback
  const value = /^[+]?(\d+\.?\d*|\.\d+)$/.test(text.trim()) ? Number(text) : NaN
  const tooLow = range.minInclusive === false ? value <= range.min : value < range.min
  if (!Number.isFinite(value) || tooLow || value > range.max || (range.integer === true && !Number.isInteger(value))) {
    const kind = range.integer === true ? "an integer" : "a number"
    const low = range.minInclusive === false ? `above ${range.min}` : `from ${range.min}`
    throw new UsageError(`--${name}: expected ${kind} ${low} to ${range.max}, got ${JSON.stringify(text)}`)
  }
  return value
}

const DEVICE_CHARS = /^[A-Za-z0-9_:-]*$/

/** Checks a device-id prefix (ids are prefix + index: PROTOCOL.md allows `[A-Za-z0-9_:-]`, 1..128). */
export const checkPrefix = (prefix: string): string => {
  if (!DEVICE_CHARS.test(prefix) || prefix.length > 120) {
    throw new UsageError(`--prefix: expected at most 120 characters of [A-Za-z0-9_:-], got ${JSON.stringify(prefix)}`)
  }
  return prefix
}

const KINDS = ["telemetry", "event"] as const

const parseKinds = (text: string | undefined): Array<"telemetry" | "event"> => {
  if (text === undefined) return [...KINDS]
  const kinds: Array<"telemetry" | "event"> = []
  for (const raw of text.split(",")) {
    const kind = KINDS.find((k) => k === raw.trim())
    if (kind === undefined) throw new UsageError(`--kinds: expected telemetry and/or event, got ${JSON.stringify(raw.trim())}`)
    if (!kinds.includes(kind)) kinds.push(kind)
  }
  return kinds
}

const RUN_OPTIONS = {
  host: { type: "string" },
  port: { type: "string" },
  devices: { type: "string" },
  prefix: { type: "string" },
  rate: { type: "string" },
  events: { type: "string" },
  duration: { type: "string" },
  drain: { type: "string" },
  window: { type: "string" },
  backlog: { type: "string" },
  jitter: { type: "string" },
  "connect-rate": { type: "string" },
  "trace-ratio": { type: "string" },
  epoch: { type: "string" },
  "max-backoff": { type: "string" },
  "connect-timeout": { type: "string" },
  token: { type: "string" },
  tokens: { type: "string" },
  "jwt-key": { type: "string" },
  "jwt-kid": { type: "string" },
  "jwt-alg": { type: "string" },
  "jwt-issuer": { type: "string" },
  "jwt-audience": { type: "string" },
  "jwt-kinds": { type: "string" },
  tls: { type: "boolean" },
  ca: { type: "string" },
  cert: { type: "string" },
  key: { type: "string" },
  certs: { type: "string" },
  servername: { type: "string" },
  json: { type: "boolean" },
  quiet: { type: "boolean" },
  "per-device": { type: "boolean" },
  help: { type: "boolean", short: "h" }
} as const

const PROVISION_OPTIONS = {
  devices: { type: "string" },
  prefix: { type: "string" },
  registry: { type: "string" },
  "tokens-out": { type: "string" },
  kinds: { type: "string" }
} as const

const parse = <O extends ParseArgsOptionsConfig>(args: ReadonlyArray<string>, options: O) => {
  try {
    return parseArgs({ args: [...args], options, strict: true, allowPositionals: true })
  } catch (e) {
    throw new UsageError(oneLine(e instanceof Error ? e.message : String(e)))
  }
}

/** Parses the arguments after the script's name; throws {@link UsageError}. */
export const parseCommand = (argv: ReadonlyArray<string>): RunCommand | ProvisionCommand | HelpCommand => {
  if (argv[0] === "provision") return parseProvision(argv.slice(1))
  const { positionals, values: v } = parse(argv, RUN_OPTIONS)
  if (v.help === true) return { command: "help" }
  if (positionals.length > 0) throw new UsageError(`unexpected argument ${JSON.stringify(positionals[0])}`)

  const port = numberFlag("port", v.port, 7000, { min: 1, max: 65535, integer: true })
  const devices = numberFlag("devices", v.devices, 100, { min: 1, max: 1_000_000, integer: true })
  const window = numberFlag("window", v.window, 16, { min: 1, max: 65536, integer: true })
  const fleet: FleetOptions = {
    devices,
    prefix: checkPrefix(v.prefix ?? "sim-"),
    epoch: numberFlag("epoch", v.epoch, 0, { min: 0, max: Number.MAX_SAFE_INTEGER, integer: true }),
    rate: numberFlag("rate", v.rate, 5, { min: 0, max: 100_000, minInclusive: false }),
    events: numberFlag("events", v.events, 0.05, { min: 0, max: 1 }),
    durationMs: numberFlag("duration", v.duration, 10, { min: 0, max: 30 * 86400, minInclusive: false }) * 1000,
    drainMs: numberFlag("drain", v.drain, 10, { min: 0, max: 3600 }) * 1000,
    window,
    backlog: numberFlag("backlog", v.backlog, Math.max(1024, window), { min: window, max: 1 << 20, integer: true }),
    jitter: numberFlag("jitter", v.jitter, 0, { min: 0, max: 1 }),
    connectRate: numberFlag("connect-rate", v["connect-rate"], 1000, { min: 0, max: 1_000_000 }),
    traceRatio: numberFlag("trace-ratio", v["trace-ratio"], 0, { min: 0, max: 1 }),
    maxBackoffMs: numberFlag("max-backoff", v["max-backoff"], 5, { min: 0.1, max: 3600 }) * 1000,
    connectTimeoutMs: numberFlag("connect-timeout", v["connect-timeout"], 10, { min: 0.1, max: 3600 }) * 1000
  }
  const lastId = `${fleet.prefix}${devices - 1}`
  if (lastId.length > 128) throw new UsageError(`--prefix: device ids would exceed 128 characters (${lastId.length})`)

  const modes = [v.token !== undefined, v.tokens !== undefined, v["jwt-key"] !== undefined].filter(Boolean).length
  if (modes > 1) throw new UsageError("give one of --token, --tokens, --jwt-key")
  const jwtOnly = ["jwt-kid", "jwt-alg", "jwt-issuer", "jwt-audience", "jwt-kinds"] as const
  const stray = jwtOnly.find((k) => v[k] !== undefined)
  if (stray !== undefined && v["jwt-key"] === undefined) throw new UsageError(`--${stray} needs --jwt-key`)
  const credentials: CredentialMode = v.tokens !== undefined
    ? { mode: "tokens", file: v.tokens }
    : v["jwt-key"] !== undefined
    ? {
      mode: "jwt",
      keyFile: v["jwt-key"],
      kid: v["jwt-kid"],
      alg: v["jwt-alg"],
      issuer: v["jwt-issuer"],
      audience: v["jwt-audience"],
      kinds: parseKinds(v["jwt-kinds"])
    }
    : { mode: "token", token: v.token ?? "sim" }

  const tlsOnly = ["ca", "cert", "key", "certs", "servername"] as const
  const strayTls = tlsOnly.find((k) => v[k] !== undefined)
  if (strayTls !== undefined && v.tls !== true) throw new UsageError(`--${strayTls} needs --tls`)
  if ((v.cert === undefined) !== (v.key === undefined)) throw new UsageError("--cert and --key go together")
  if (v.certs !== undefined && v.cert !== undefined) throw new UsageError("give --certs or --cert/--key, not both")
  const tls: TlsFlags | undefined = v.tls === true
    ? { ca: v.ca, cert: v.cert, key: v.key, certsDir: v.certs, servername: v.servername }
    : undefined

  return {
    command: "run",
    host: v.host ?? "127.0.0.1",
    port,
    fleet,
    credentials,
    tls,
    json: v.json === true,
    quiet: v.quiet === true,
    perDevice: v["per-device"] === true
  }
}

const parseProvision = (argv: ReadonlyArray<string>): ProvisionCommand => {
  const { positionals, values: v } = parse(argv, PROVISION_OPTIONS)
  if (positionals.length > 0) throw new UsageError(`unexpected argument ${JSON.stringify(positionals[0])}`)
  const devices = numberFlag("devices", v.devices, 100, { min: 1, max: 1_000_000, integer: true })
  const prefix = checkPrefix(v.prefix ?? "sim-")
  if (`${prefix}${devices - 1}`.length > 128) throw new UsageError("--prefix: device ids would exceed 128 characters")
  return {
    command: "provision",
    devices,
    prefix,
    registry: v.registry ?? "devices.json",
    tokensOut: v["tokens-out"] ?? "sim-tokens.txt",
    kinds: parseKinds(v.kinds)
  }
}
