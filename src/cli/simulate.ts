/**
 * The fleet simulator: many realistic devices, each on its own socket, against any gateway
 * address (PROTOCOL.md). What a firmware team runs first.
 *
 *     npm run simulate -- --host 127.0.0.1 --port 7000 --devices 1000 --rate 5 --events 0.05 --duration 60
 *     npm run simulate -- provision --devices 1000 --registry devices.json --tokens-out sim-tokens.txt
 *
 * A progress line every second on stderr, a summary on stdout at the end (`--json`: one JSON
 * object). SIGINT or SIGTERM ends the sending early, awaits the answers (a second one: at once)
 * and prints the summary. Flags: `--help`, or src/cli/simulator/Options.ts. The devices:
 * src/cli/simulator/Device.ts.
 *
 * Exit codes: 0 the run completed (whatever the gateway answered), 1 no device could connect at
 * all (or the provision files could not be written), 2 bad usage or input.
 */
import * as Fs from "node:fs"
import { openFilesLimit } from "../admission/FileLimit.ts"
import { type Credentials, CredentialsError, fileTokens, jwtTokens, parseTokens, sharedToken } from "./simulator/Credentials.ts"
import { type Dial, deviceCertFiles, makeDial, type TlsSettings } from "./simulator/Dial.ts"
import { runFleet } from "./simulator/Fleet.ts"
import { parseCommand, type ProvisionCommand, type RunCommand, USAGE, UsageError } from "./simulator/Options.ts"
import { formatSummary, progressLine, summarize } from "./simulator/Report.ts"

/** Exit code: the run completed. */
export const EX_OK = 0
/** Exit code: nothing could connect (or a file could not be written). */
export const EX_NO_CONNECTION = 1
/** Exit code: bad usage or input. */
export const EX_USAGE = 2

const message = (e: unknown): string => (e instanceof Error ? e.message : String(e))

/** A warning when the open-files limit is below what `devices` sockets need (as bench/proc.ts checkFileLimit). */
export const fileLimitWarning = (devices: number, limit: number | undefined): string | undefined => {
  const needed = devices + 64
  return limit !== undefined && limit < needed
    ? `warning: ulimit -n is ${limit}, below the ${needed} file descriptors ${devices} devices need; raise it (ulimit -n ${devices + 1000})`
    : undefined
}

const readFile = (flag: string, file: string): Buffer => {
  try {
    return Fs.readFileSync(file)
  } catch (e) {
    throw new UsageError(`--${flag}: cannot read ${file}: ${message(e)}`)
  }
}

const tlsSettings = (c: RunCommand, ids: ReadonlyArray<string>): TlsSettings | undefined => {
  const t = c.tls
  if (t === undefined) return undefined
  if (t.certsDir !== undefined) {
    // the first device's pair stands for the rest (each is read at its first connection)
    const files = deviceCertFiles(t.certsDir, ids[0]!)
    readFile("certs", files.cert)
    readFile("certs", files.key)
  }
  return {
    ca: t.ca === undefined ? undefined : readFile("ca", t.ca),
    cert: t.cert === undefined ? undefined : readFile("cert", t.cert),
    key: t.key === undefined ? undefined : readFile("key", t.key),
    certsDir: t.certsDir,
    servername: t.servername
  }
}

const credentialsOf = async (c: RunCommand, ids: ReadonlyArray<string>): Promise<Credentials> => {
  const m = c.credentials
  try {
    switch (m.mode) {
      case "token":
        return sharedToken(m.token)
      case "tokens":
        return fileTokens(parseTokens(readFile("tokens", m.file).toString("utf8"), m.file), ids, m.file)
      case "jwt":
        return await jwtTokens({ ...m, lifetimeS: Math.ceil((c.fleet.durationMs + c.fleet.drainMs) / 1000) + 3600 }, ids)
    }
  } catch (e) {
    if (e instanceof CredentialsError) throw new UsageError(e.message)
    throw e
  }
}

const run = async (c: RunCommand): Promise<number> => {
  const warning = fileLimitWarning(c.fleet.devices, openFilesLimit())
  if (warning !== undefined) process.stderr.write(warning + "\n")
  const ids = Array.from({ length: c.fleet.devices }, (_, i) => `${c.fleet.prefix}${i}`)
  const credentials = await credentialsOf(c, ids)
  const dial: Dial = makeDial(c.host, c.port, tlsSettings(c, ids))
  const target = `${c.host}:${c.port}`
  const tty = process.stderr.isTTY === true
  let lastAcked = 0
  let liveLine = false
  const fleet = runFleet(c.fleet, dial, credentials, {
    onSecond: (stats, elapsedS, secondS) => {
      const perSec = (stats.acked - lastAcked) / Math.max(0.001, secondS)
      lastAcked = stats.acked
      if (!c.quiet) {
        const line = progressLine(stats, c.fleet.devices, elapsedS, perSec)
        process.stderr.write(tty ? `\r\x1b[K${line}` : `${line}\n`)
        liveLine = tty
      }
      stats.second.reset()
    },
    warn: (text) => {
      process.stderr.write(`${liveLine ? "\r\x1b[K" : ""}simulate: ${text}\n`)
      liveLine = false
    }
  })
  let signals = 0
  const onSignal = () => {
    signals++
    if (!c.quiet) {
      process.stderr.write(
        `${liveLine ? "\n" : ""}simulate: ${signals === 1 ? "stopping: awaiting the answers (again to skip)" : "stopping now"}\n`
      )
      liveLine = false
    }
    fleet.stop()
  }
  process.on("SIGINT", onSignal)
  process.on("SIGTERM", onSignal)
  const outcome = await fleet.outcome
  process.off("SIGINT", onSignal)
  process.off("SIGTERM", onSignal)
  if (liveLine) process.stderr.write("\n")
  const summary = summarize(target, c.fleet, outcome, c.perDevice)
  process.stdout.write(c.json ? JSON.stringify(summary) + "\n" : formatSummary(summary))
  if (outcome.stats.sessions === 0) {
    process.stderr.write(`simulate: could not connect to ${target}${outcome.aborted === undefined ? "" : `: ${outcome.aborted}`}\n`)
    return EX_NO_CONNECTION
  }
  return EX_OK
}

const runProvision = async (c: ProvisionCommand): Promise<number> => {
  // loaded here: the registry code (and Effect's Schema) is not on a run's start-up path
  const { provision } = await import("./simulator/Provision.ts")
  const { added, replaced } = provision(c)
  process.stderr.write(
    `${added} devices added and ${replaced} replaced in ${c.registry} (kinds: ${c.kinds.join(",")}); their tokens are in ${c.tokensOut}\n` +
      `next: GATEWAY_DEVICES=${c.registry} npm start, then npm run simulate -- --devices ${c.devices} --prefix ${c.prefix} --tokens ${c.tokensOut}\n`
  )
  return EX_OK
}

/** Runs the command line; resolves with the exit code. */
export const main = async (argv: ReadonlyArray<string>): Promise<number> => {
  try {
    const command = parseCommand(argv)
    switch (command.command) {
      case "help":
        process.stdout.write(USAGE + "\n")
        return EX_OK
      case "provision":
        return await runProvision(command)
      case "run":
        return await run(command)
    }
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`simulate: ${e.message}\n(see npm run simulate -- --help)\n`)
      return EX_USAGE
    }
    process.stderr.write(`simulate: ${message(e)}\n`)
    // the registry's own errors (devices.ts CliError) carry their exit code
    const code = typeof e === "object" && e !== null && "exitCode" in e && typeof e.exitCode === "number" ? e.exitCode : undefined
    return code ?? EX_NO_CONNECTION
  }
}

if (import.meta.main) {
  const code = await main(process.argv.slice(2))
  process.exitCode = code
  // whatever still holds the event loop (a socket the gateway keeps half-open) does not hold the exit
  setTimeout(() => process.exit(code), 1_000).unref()
}
