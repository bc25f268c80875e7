/**
 * A device registry or JWKS file the gateway cannot use is bad configuration like a bad
 * variable: the real process (`node src/main.ts`) logs one line `invalid configuration: …` that
 * names the variable, never says "listening", and exits 78 (it used to exit 1 for registry files).
 */
import { afterEach, describe, expect, it } from "@effect/vitest"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { newEntry } from "../../src/auth/DeviceRegistry.ts"
import { tempDir } from "../support/gateway.ts"
import { killChildren, logLines, messageOf, runToExit } from "../support/process.ts"
import { fleetKey, writeJwks } from "./fleet.ts"
import { exportJWK, generateKeyPair } from "jose"

const dirs: Array<string> = []
afterEach(async () => {
  await killChildren()
  for (const d of dirs.splice(0)) Fs.rmSync(d, { recursive: true, force: true })
})

const dir = () => {
  const d = tempDir("gw-auth-start-")
  dirs.push(d)
  return d
}

/** Runs the gateway with `env` until it exits; its code and its ERROR lines. */
const start = async (env: Record<string, string>) => {
  const { code, output } = await runToExit(dir(), { GATEWAY_HOST: "127.0.0.1", ...env }, 45_000)
  return {
    code,
    errors: logLines(output).filter((l) => l.level === "ERROR").map(messageOf),
    listened: output.includes('"message":"listening"')
  }
}

/** Runs `f` over `items`, `n` at a time (each start is a Node process: a few seconds of CPU). */
const inTurns = async <A, B>(items: ReadonlyArray<A>, n: number, f: (a: A) => Promise<B>): Promise<Array<B>> => {
  const out: Array<B> = []
  for (let i = 0; i < items.length; i += n) out.push(...await Promise.all(items.slice(i, i + n).map(f)))
  return out
}

const file = (name: string, text: string) => {
  const path = Path.join(dir(), name)
  Fs.writeFileSync(path, text)
  return path
}

/** A FIFO at `name` (reading it would wait for a writer for ever). */
const fifo = (name: string) => {
  const path = Path.join(dir(), name)
  ChildProcess.execFileSync("mkfifo", [path])
  return path
}

describe("credential files at start", () => {
  it("a bad registry file: exit 78 with one line naming GATEWAY_DEVICES", async () => {
    const entry = newEntry("dev-1", ["telemetry"]).entry
    const cases: ReadonlyArray<readonly [string, RegExp]> = [
      [Path.join(dir(), "absent.json"), /^invalid configuration: GATEWAY_DEVICES: cannot read .*absent\.json: ENOENT/],
      // the parse error names the problem and where, never the file's bytes (a registry holds hashes)
      [file("devices.json", "{ devices: secret-looking-bytes"), /^invalid configuration: GATEWAY_DEVICES: .*devices\.json is not JSON \((?!.*secret-looking)[^)]*line 1 column \d+\)$/],
      [fifo("devices.fifo"), /^invalid configuration: GATEWAY_DEVICES: .*devices\.fifo is not a regular file \(a FIFO\)/],
      [file("devices.json", JSON.stringify({ devices: [{ id: "dev-1" }] })), /^invalid configuration: GATEWAY_DEVICES: .*devices\.json is not a device registry: /],
      [file("devices.json", JSON.stringify({ devices: [{ ...entry, class: "fast" }] })), /^invalid configuration: GATEWAY_DEVICES: .*device dev-1 names class "fast"/]
    ]
    const outcomes = await inTurns(cases, 2, ([path]) => start({ GATEWAY_DEVICES: path }))
    for (const [i, outcome] of outcomes.entries()) {
      expect({ code: outcome.code, listened: outcome.listened, errors: outcome.errors.length }).toEqual({ code: 78, listened: false, errors: 1 })
      expect(outcome.errors[0]).toMatch(cases[i]![1])
    }
  }, 180_000)

  it("a bad JWKS file or contradicting JWT settings: exit 78 with one line naming the variable", async () => {
    const key = await fleetKey()
    const pair = await generateKeyPair("ES256", { extractable: true })
    const privateJwk = { ...(await exportJWK(pair.privateKey)), kid: "leaked" }
    const good = Path.join(dir(), "fleet.jwks")
    writeJwks(good, [key.jwk])
    const cases: ReadonlyArray<readonly [Record<string, string>, RegExp]> = [
      [{ GATEWAY_JWKS_FILE: file("a.jwks", "not json") }, /^invalid configuration: GATEWAY_JWKS_FILE: .*a\.jwks: is not JSON \(/],
      [{ GATEWAY_JWKS_FILE: file("b.jwks", JSON.stringify({ keys: [privateJwk] })) }, /^invalid configuration: GATEWAY_JWKS_FILE: .*b\.jwks: key 0 holds a private key/],
      [{ GATEWAY_JWKS_FILE: file("c.jwks", JSON.stringify({ keys: [{ kty: "oct", k: "c2VjcmV0", kid: "s" }] })) }, /^invalid configuration: GATEWAY_JWKS_FILE: .*key 0 is a symmetric \(oct\) key/],
      [{ GATEWAY_JWKS_FILE: good, GATEWAY_JWKS_URL: "https://fleet.example/jwks.json" }, /^invalid configuration: GATEWAY_JWKS_FILE and GATEWAY_JWKS_URL: set one of them, not both$/],
      [{ GATEWAY_JWT_AUDIENCE: "gw" }, /^invalid configuration: GATEWAY_JWT_AUDIENCE is set but neither GATEWAY_JWKS_FILE nor GATEWAY_JWKS_URL/],
      [{ GATEWAY_JWKS_URL: "fleet.example/jwks.json" }, /^invalid configuration: GATEWAY_JWKS_URL: expected an http\(s\) URL/]
    ]
    const outcomes = await inTurns(cases, 2, ([env]) => start(env))
    for (const [i, outcome] of outcomes.entries()) {
      expect({ code: outcome.code, listened: outcome.listened, errors: outcome.errors.length }).toEqual({ code: 78, listened: false, errors: 1 })
      expect(outcome.errors[0]).toMatch(cases[i]![1])
    }
  }, 180_000)
})
