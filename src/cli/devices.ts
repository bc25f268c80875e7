/**
 * The device registry command:
 *
 *     node src/cli/devices.ts add <device-id> [--kinds telemetry,event] [--file <path>]
 *
 * Adds (or replaces) one entry of the JSON registry file that the gateway reads from
 * `GATEWAY_DEVICES` (format: `{"devices":[...]}`, see `RegistryFile` in
 * src/auth/DeviceRegistry.ts). The file is `--file`, else `$GATEWAY_DEVICES`, else
 * `./devices.json`; it is created when missing and always rewritten atomically (temporary file,
 * then rename) with mode 0600. The fresh token goes to stdout, alone on one line, so that
 * scripts can capture it; a short hint for humans goes to stderr. The token is not stored (only
 * its salted hash): it is shown this once.
 *
 * Exit codes: 0 done, 1 the registry file could not be read or written, 2 bad usage or input.
 */
import { Result, Schema } from "effect"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { parseArgs } from "node:util"
import { type DeviceEntry, newEntry, RegistryFile } from "../auth/DeviceRegistry.ts"
import { DeviceId, type Kind } from "../domain/Frames.ts"

/** Exit code for bad usage or input. */
export const EX_USAGE = 2
/** Exit code when the registry file cannot be read or written. */
export const EX_FILE = 1

const USAGE = "usage: devices add <device-id> [--kinds telemetry,event] [--file <path>]"
const KINDS: ReadonlyArray<Kind> = ["telemetry", "event"]

/** A failure carrying the exit code it should end the command with. */
export class CliError extends Error {
  readonly exitCode: number
  constructor(message: string, exitCode: number) {
    super(message)
    this.exitCode = exitCode
  }
}

/** A parsed `add` command. */
export interface AddCommand {
  readonly device: string
  readonly kinds: ReadonlyArray<Kind>
  readonly file: string
}

const oneLine = (text: string) => text.replace(/\s*\n\s*/g, " ")

/** Parses the command line (without the node and script arguments); throws {@link CliError}. */
export const parseCommand = (argv: ReadonlyArray<string>, env: NodeJS.ProcessEnv = process.env): AddCommand => {
  let parsed
  try {
    parsed = parseArgs({
      args: [...argv],
      allowPositionals: true,
      strict: true,
      options: { kinds: { type: "string" }, file: { type: "string" } }
    })
  } catch (e) {
    throw new CliError(`${oneLine(e instanceof Error ? e.message : String(e))}; ${USAGE}`, EX_USAGE)
  }
  const [command, device, ...rest] = parsed.positionals
  if (command !== "add") {
    throw new CliError(command === undefined ? USAGE : `unknown command ${JSON.stringify(command)}; ${USAGE}`, EX_USAGE)
  }
  if (device === undefined) throw new CliError(`missing <device-id>; ${USAGE}`, EX_USAGE)
  if (rest.length > 0) throw new CliError(`unexpected arguments ${rest.join(" ")}; ${USAGE}`, EX_USAGE)
  const id = Schema.decodeUnknownResult(DeviceId)(device)
  if (Result.isFailure(id)) {
    throw new CliError(`invalid device id ${JSON.stringify(device)}: ${oneLine(id.failure.message)}`, EX_USAGE)
  }
  return { device: id.success, kinds: parseKinds(parsed.values.kinds), file: parsed.values.file ?? env["GATEWAY_DEVICES"] ?? "devices.json" }
}

/** Parses `--kinds` (comma-separated `telemetry`/`event`); all kinds when absent. */
export const parseKinds = (text: string | undefined): ReadonlyArray<Kind> => {
  if (text === undefined) return KINDS
  const kinds: Array<Kind> = []
  for (const raw of text.split(",")) {
    const kind = KINDS.find((k) => k === raw.trim())
    if (kind === undefined) {
      throw new CliError(`invalid kind ${JSON.stringify(raw.trim())} in --kinds: expected telemetry or event`, EX_USAGE)
    }
    if (!kinds.includes(kind)) kinds.push(kind)
  }
  return kinds
}

/** Reads the registry file; an absent file is an empty registry. Throws {@link CliError}. */
export const readRegistry = (file: string): ReadonlyArray<DeviceEntry> => {
  let text: string
  try {
    text = Fs.readFileSync(file, "utf8")
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return []
    throw new CliError(`cannot read ${file}: ${e instanceof Error ? e.message : String(e)}`, EX_FILE)
  }
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch (e) {
    throw new CliError(`${file} is not JSON: ${oneLine(e instanceof Error ? e.message : String(e))}`, EX_FILE)
  }
  const registry = Schema.decodeUnknownResult(RegistryFile)(json)
  if (Result.isFailure(registry)) {
    throw new CliError(`${file} is not a device registry: ${oneLine(registry.failure.message)}`, EX_FILE)
  }
  return registry.success.devices
}

/** Writes the registry atomically (temporary file in the same directory, fsync, rename), mode 0600. */
export const writeRegistry = (file: string, devices: ReadonlyArray<DeviceEntry>): void => {
  const tmp = Path.join(Path.dirname(file), `.${Path.basename(file)}.${process.pid}.${Date.now()}.tmp`)
  try {
    const fd = Fs.openSync(tmp, "wx", 0o600)
    try {
      Fs.writeFileSync(fd, JSON.stringify({ devices }, null, 2) + "\n")
      Fs.fchmodSync(fd, 0o600)
      Fs.fsyncSync(fd)
    } finally {
      Fs.closeSync(fd)
    }
    Fs.renameSync(tmp, file)
  } catch (e) {
    Fs.rmSync(tmp, { force: true })
    throw new CliError(`cannot write ${file}: ${e instanceof Error ? e.message : String(e)}`, EX_FILE)
  }
}

/** Runs `add`: replaces or appends the device's entry and returns its fresh token. */
export const add = (command: AddCommand): { readonly token: string; readonly replaced: boolean } => {
  const devices = readRegistry(command.file)
  const { entry, token } = newEntry(command.device, command.kinds)
  const replaced = devices.some((d) => d.id === command.device)
  writeRegistry(command.file, replaced ? devices.map((d) => (d.id === command.device ? entry : d)) : [...devices, entry])
  return { token, replaced }
}

const main = (): number => {
  try {
    const command = parseCommand(process.argv.slice(2))
    const { replaced, token } = add(command)
    process.stdout.write(token + "\n")
    process.stderr.write(
      `${replaced ? "replaced" : "added"} device ${command.device} (kinds: ${command.kinds.join(",")}) in ` +
        `${Path.resolve(command.file)}; the token above is shown once: give it to the device\n`
    )
    return 0
  } catch (e) {
    if (e instanceof CliError) {
      process.stderr.write(`devices: ${e.message}\n`)
      return e.exitCode
    }
    process.stderr.write(`devices: ${oneLine(e instanceof Error ? e.message : String(e))}\n`)
    return EX_FILE
  }
}

if (import.meta.main) process.exitCode = main()
