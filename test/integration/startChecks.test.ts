/**
 * Starts that must fail at once with one JSON line and the documented exit code (README:
 * `invalid configuration: …` exit 78 for configuration, `cannot start: <reason>` exit 1 for the
 * rest), as the gateway process (`node src/main.ts`, ports 0).
 *
 * The stages-file cases failed before issue 8 (Hardening): a FIFO as GATEWAY_STAGES_FILE hung the
 * start (and a SIGTERM did not end it), a file of any size was read, and a `device-metadata`
 * inventory file that is not JSON had its first bytes quoted in the log line. The admin-host and
 * same-ports cases passed already (checked here so they stay so).
 */
import { afterEach, describe, expect, it } from "@effect/vitest"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { echoed } from "../support/echo.ts"
import { tempDir } from "../support/gateway.ts"
import { killChildren, logLines, messageOf, runToExit, startChild } from "../support/process.ts"

const dirs: Array<string> = []
const fifos: Array<string> = []

afterEach(async () => {
  await killChildren()
  for (const path of fifos.splice(0)) {
    try { // a reader left waiting in open() (the old behaviour) gets its end of file
      Fs.closeSync(Fs.openSync(path, Fs.constants.O_WRONLY | Fs.constants.O_NONBLOCK))
    } catch {
      // nobody is reading it
    }
  }
  for (const dir of dirs.splice(0)) Fs.rmSync(dir, { recursive: true, force: true })
})

const dir = () => {
  const d = tempDir("gw-start-checks-")
  dirs.push(d)
  return d
}

/** The output's lines that are not JSON log lines. */
const nonJson = (output: string) =>
  output.split("\n").filter((line) => line.trim() !== "" && logLines(line).length === 0)

/** Runs the gateway to its exit (10 s at most, then SIGKILL); its exit code, error lines and stray output. */
const start = async (env: Record<string, string>) => {
  const startedAt = Date.now()
  const { code, output } = await runToExit(dir(), env, 10_000)
  const errors = logLines(output).filter((l) => l.level === "ERROR").map(messageOf)
  return { code, errors, stray: nonJson(output), ms: Date.now() - startedAt, output }
}

const SECRET = "inventory_token=Zq7xK9wPm2Lv8RtY"

describe("a start that cannot succeed stops at once with one line", () => {
  it("a FIFO as GATEWAY_STAGES_FILE: exit 78, not a hang", async () => {
    const d = dir()
    const fifo = Path.join(d, "stages.fifo")
    ChildProcess.execFileSync("mkfifo", [fifo])
    fifos.push(fifo)
    const r = await start({ GATEWAY_STAGES_FILE: fifo })
    expect({ code: r.code, errors: r.errors, stray: r.stray }).toEqual({
      code: 78,
      errors: [`invalid configuration: GATEWAY_STAGES_FILE: ${fifo} is not a regular file (a FIFO)`],
      stray: []
    })
  })

  it("a stages file above 1 MiB: exit 78", async () => {
    const file = Path.join(dir(), "stages.json")
    Fs.writeFileSync(file, `{"stages":[]}${" ".repeat(1024 * 1024)}`)
    const r = await start({ GATEWAY_STAGES_FILE: file })
    expect({ code: r.code, errors: r.errors, stray: r.stray }).toEqual({
      code: 78,
      errors: [`invalid configuration: GATEWAY_STAGES_FILE: ${file} is larger than 1 MiB (1048589 bytes)`],
      stray: []
    })
  })

  it("a device-metadata inventory file that is not JSON: exit 78, the file named, its contents never quoted", async () => {
    const d = dir()
    const inventory = Path.join(d, "inventory.json")
    Fs.writeFileSync(inventory, `${SECRET}\n`)
    const stages = Path.join(d, "stages.json")
    Fs.writeFileSync(stages, JSON.stringify({ stages: [{ stage: "device-metadata", options: { file: inventory } }] }))
    const r = await start({ GATEWAY_STAGES_FILE: stages })
    expect({ code: r.code, stray: r.stray }).toEqual({ code: 78, stray: [] })
    expect(r.errors).toEqual([
      expect.stringMatching(
        new RegExp(`^invalid configuration: GATEWAY_STAGES_FILE: ${stages}: stages\\[0\\] \\(device-metadata\\): ${inventory} is not JSON`)
      )
    ])
    expect(echoed(r.output.replaceAll(inventory, "").replaceAll(stages, ""), SECRET)).toEqual([])
  })

  it("a GATEWAY_ADMIN_HOST that is not an address of this machine: exit 1, `cannot start: <reason>`", async () => {
    for (const host of ["no-such-host.invalid", "192.0.2.1"]) {
      const r = await start({ GATEWAY_ADMIN_HOST: host })
      expect({ host, code: r.code, stray: r.stray, errors: r.errors.length }).toEqual({ host, code: 1, stray: [], errors: 1 })
      expect(r.errors[0]).toMatch(/^cannot start: \S/)
      expect(r.errors[0]).toContain(host)
    }
  })

  it("a second gateway on the same ports: exit 1, `cannot start: <reason>`; the first keeps serving", async () => {
    const first = await startChild(dir())
    const r = await start({ GATEWAY_PORT: String(first.port), GATEWAY_ADMIN_PORT: String(first.adminPort) })
    expect({ code: r.code, stray: r.stray, errors: r.errors.length }).toEqual({ code: 1, stray: [], errors: 1 })
    expect(r.errors[0]).toMatch(/^cannot start: .*EADDRINUSE/)
    // and with only the admin port taken
    const admin = await start({ GATEWAY_ADMIN_PORT: String(first.adminPort) })
    expect({ code: admin.code, errors: admin.errors }).toEqual({ code: 1, errors: [expect.stringMatching(/^cannot start: .*EADDRINUSE/)] })
    expect((await fetch(`http://127.0.0.1:${first.adminPort}/healthz`)).status).toBe(200)
  })
})
