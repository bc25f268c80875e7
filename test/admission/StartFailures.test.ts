/**
 * How the gateway process fails to start (or keeps running) when what admission needs at start
 * is missing: a corrupted resume key, a device port already in use, too few open files. The
 * contract (README: one line, exit 1 for `cannot start: …`; logs are one JSON object per line):
 * either the gateway starts and stays up, or it stops the start with exactly one JSON error
 * line and exit code 1, never after having said "listening".
 *
 * These failed against ab7fd19: `secretFromDataDir` (ResumeHint.ts) throwing inside the
 * Admission layer and the Listener's `listen` error (`Effect.orDie`) escaped Run.ts's
 * `Effect.catch(startFailure)` as defects (a multi-line, non-JSON stack trace), and the SQLite
 * checkpointer thread had no 'error' listener, so at some open-files limits the process died
 * from an unhandled 'error' event after it had logged "listening".
 */
import { afterEach, describe, expect, it } from "@effect/vitest"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Path from "node:path"
import { tempDir } from "../support/gateway.ts"
import { killChildren, logLines, messageOf, NODE, NODE_ARGS, spawnChild } from "../support/process.ts"

const dirs: Array<string> = []
const servers: Array<Net.Server> = []

afterEach(async () => {
  await killChildren()
  for (const s of servers.splice(0)) s.close()
  for (const dir of dirs.splice(0)) Fs.rmSync(dir, { recursive: true, force: true })
})

const dir = () => {
  const d = tempDir("gw-start-")
  dirs.push(d)
  return d
}

/** What one start did: exit code (undefined: still running), whether it listened, its output. */
interface StartOutcome {
  readonly code: number | null | undefined
  readonly listened: boolean
  readonly output: string
}

/**
 * Starts the gateway and watches it: until it exits, or until `aliveMs` after its "listening"
 * line (then it is killed and reported as running), or 15 s.
 */
const watchStart = async (
  env: Record<string, string>,
  command?: readonly [string, ReadonlyArray<string>],
  aliveMs = 2_000
): Promise<StartOutcome> => {
  const g = spawnChild(dir(), env, command)
  let code: number | null | undefined
  void g.exited.then((c) => (code = c))
  const deadline = Date.now() + 15_000
  let listenedAt: number | undefined
  while (Date.now() < deadline && code === undefined) {
    if (listenedAt === undefined && logLines(g.output()).some((l) => messageOf(l) === "listening")) listenedAt = Date.now()
    if (listenedAt !== undefined && Date.now() - listenedAt >= aliveMs) break
    await new Promise((resolve) => setTimeout(resolve, 25))
  }
  const running = code === undefined
  if (running) {
    g.child.kill("SIGKILL")
    await g.exited
  }
  return { code: running ? undefined : code, listened: listenedAt !== undefined, output: g.output() }
}

/** The output's lines that are not JSON log lines. */
const nonJson = (output: string) =>
  output.split("\n").filter((line) => {
    if (line.trim() === "") return false
    try {
      const json = JSON.parse(line) as unknown
      return typeof json !== "object" || json === null || !("message" in json)
    } catch {
      return true
    }
  })

/** Asserts the contract for a start that failed: exit 1, one JSON error line `cannot start: …`, nothing else. */
const expectCleanFailure = (o: StartOutcome, mentions: RegExp) => {
  expect({ code: o.code, listened: o.listened }).toEqual({ code: 1, listened: false })
  expect(nonJson(o.output)).toEqual([])
  const errors = logLines(o.output).filter((l) => l.level === "ERROR").map(messageOf)
  expect(errors).toEqual([expect.stringMatching(/^cannot start: /)])
  expect(errors[0]).toMatch(mentions)
}

describe("start failures", () => {
  it("a corrupted <dataDir>/resume.key: exit 1 with one JSON line `cannot start: …`", async () => {
    const dataDir = dir()
    Fs.writeFileSync(Path.join(dataDir, "resume.key"), "not a key\n")
    expectCleanFailure(await watchStart({ GATEWAY_DATA_DIR: dataDir }), /resume\.key/)
  })

  it("the device port already in use: exit 1 with one JSON line `cannot start: …`", async () => {
    const taken = Net.createServer()
    servers.push(taken)
    const port = await new Promise<number>((resolve) =>
      taken.listen(0, "127.0.0.1", () => resolve((taken.address() as Net.AddressInfo).port))
    )
    expectCleanFailure(await watchStart({ GATEWAY_PORT: String(port) }), /EADDRINUSE|in use/)
  })

  it("whatever the open-files limit: starts and stays up, or stops the start with one JSON line (never dies after listening)", async () => {
    // around the descriptors a start needs (about 39 here), where each resource in turn fails to
    // open, and one far above it
    const limits = [...Array.from({ length: 12 }, (_, i) => 29 + i), 64]
    const outcomes: Array<{ limit: number; outcome: StartOutcome }> = []
    for (let i = 0; i < limits.length; i += 3) {
      const batch = limits.slice(i, i + 3)
      outcomes.push(...await Promise.all(batch.map(async (limit) => ({
        limit,
        outcome: await watchStart({}, ["bash", ["-c", `ulimit -n ${limit} && exec "$0" "$@"`, NODE, ...NODE_ARGS, "src/main.ts"]], 1_000)
      }))))
    }
    const summary = outcomes.map(({ limit, outcome: o }) => {
      const errors = logLines(o.output).filter((l) => l.level === "ERROR").map(messageOf)
      const what = o.code === undefined
        ? "running"
        : o.listened
        ? `died after listening (exit ${o.code})`
        : nonJson(o.output).length > 0
        ? `exit ${o.code}, not JSON: ${nonJson(o.output).slice(0, 2).join(" | ").slice(0, 120)}`
        : errors.length === 1 && errors[0]!.startsWith("cannot start: ") && o.code === 1
        ? "clean failure"
        : `exit ${o.code}, errors ${JSON.stringify(errors).slice(0, 120)}`
      return `ulimit -n ${limit}: ${what}`
    })
    console.log(summary.join("\n"))
    expect(summary.filter((s) => !s.endsWith(": running") && !s.endsWith(": clean failure"))).toEqual([])
    // and with enough descriptors it runs
    expect(summary[summary.length - 1]).toBe("ulimit -n 64: running")
  }, 30_000)
})
