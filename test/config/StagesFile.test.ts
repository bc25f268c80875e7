/**
 * Reading GATEWAY_STAGES_FILE at start: what is not a small regular file is refused at once
 * with one line naming the file and the problem, and the line never quotes the file's contents.
 *
 * These failed before issue 8 (Hardening): a FIFO blocked the read forever (the start hung and
 * a SIGTERM could not stop it), a file of any size was read whole, and a file that is not JSON
 * was reported with V8's parse error, which quotes the file's first bytes (secrets into logs).
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { read } from "../../src/config/StagesFile.ts"
import { echoed } from "../support/echo.ts"

const SECRET = "db_password=Zq7xK9wPm2Lv8RtY"

const tempDir = Effect.acquireRelease(
  Effect.sync(() => Fs.mkdtempSync(Path.join(Os.tmpdir(), "gw-stages-file-"))),
  (dir) => Effect.sync(() => Fs.rmSync(dir, { recursive: true, force: true }))
)

/** A FIFO at `path`; its release unblocks a reader still waiting in open() (so no thread is left hanging). */
const fifo = (path: string) =>
  Effect.acquireRelease(
    Effect.sync(() => ChildProcess.execFileSync("mkfifo", [path])),
    () =>
      Effect.sync(() => {
        try {
          Fs.closeSync(Fs.openSync(path, Fs.constants.O_WRONLY | Fs.constants.O_NONBLOCK))
        } catch {
          // nobody is waiting to read it
        }
      })
  )

/** The error message of reading `path`, or "no answer" when it takes longer than 3 s. */
const refusal = (path: string) =>
  read(path).pipe(
    Effect.flip,
    Effect.map((e) => e.message),
    Effect.timeoutOption("3 seconds"),
    Effect.map((o) => (o._tag === "Some" ? o.value : "no answer within 3 s"))
  )

describe("GATEWAY_STAGES_FILE", () => {
  it.effect("a FIFO is refused at once, not waited on", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const path = Path.join(dir, "stages.fifo")
      yield* fifo(path)
      expect(yield* refusal(path)).toBe(`GATEWAY_STAGES_FILE: ${path} is not a regular file (a FIFO)`)
    }))

  it.effect("a directory is refused as not a regular file", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      expect(yield* refusal(dir)).toBe(`GATEWAY_STAGES_FILE: ${dir} is not a regular file (a directory)`)
    }))

  it.effect("a file above 1 MiB is refused without being read", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const path = Path.join(dir, "huge.json")
      Fs.writeFileSync(path, `{"stages":[]}`)
      Fs.truncateSync(path, 1024 * 1024 + 1) // sparse: the size is what counts
      expect(yield* refusal(path)).toBe(`GATEWAY_STAGES_FILE: ${path} is larger than 1 MiB (1048577 bytes)`)
    }))

  it.effect("a file that is not JSON is named with the problem, never with its contents", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const cases = [
        `${SECRET}\n`,
        `{"stages": [{"stage": ${SECRET}}]}`,
        `{ "stages": [] } ${SECRET}`,
        `{"stages": "${SECRET}`,
        ""
      ]
      for (const [i, text] of cases.entries()) {
        const path = Path.join(dir, `bad-${i}.json`)
        Fs.writeFileSync(path, text)
        const message = yield* refusal(path)
        expect(message, text).toMatch(new RegExp(`^GATEWAY_STAGES_FILE: ${path} is not JSON`))
        expect(echoed(message.slice(`GATEWAY_STAGES_FILE: ${path}`.length), text), text).toEqual([])
      }
    }))

  it.effect("a missing file names the file", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const path = Path.join(dir, "nope.json")
      expect(yield* refusal(path)).toMatch(new RegExp(`^GATEWAY_STAGES_FILE: cannot read ${path}: .*ENOENT`))
    }))

  it.effect("a small regular file (also through a symlink) is read", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const path = Path.join(dir, "stages.json")
      Fs.writeFileSync(path, JSON.stringify({ stages: [{ stage: "threshold", options: { limits: [] } }] }))
      Fs.symlinkSync(path, Path.join(dir, "link.json"))
      expect(yield* read(Path.join(dir, "link.json"))).toEqual([{ stage: "threshold", options: { limits: [] } }])
    }))
})
