/**
 * `device-metadata` with `file` (DeviceDirectory.file): what cannot be read as an inventory is
 * refused with a message that names the file and the problem and never quotes the contents
 * (the error becomes the start's log line); a FIFO is refused at once instead of blocking the
 * start; an inventory over 64 MiB is refused without being read.
 *
 * These failed before issue 8 (Hardening): the error carried V8's JSON parse message, which
 * quotes the file's first bytes, and a FIFO blocked the read forever. The same held for an HTTP
 * inventory answering something that is not JSON (an error page, a proxy's login form).
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Http from "node:http"
import type { AddressInfo } from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import * as Stage from "../../src/pipeline/Stage.ts"
import { DeviceDirectory, deviceMetadata } from "../../src/stages/DeviceMetadata.ts"
import { echoed } from "../support/echo.ts"

const SECRET = "api_token: sk-live-4f9a8b7c6d5e"

const tempDir = Effect.acquireRelease(
  Effect.sync(() => Fs.mkdtempSync(Path.join(Os.tmpdir(), "gw-inventory-file-"))),
  (dir) => Effect.sync(() => Fs.rmSync(dir, { recursive: true, force: true }))
)

/** Building the stage on `path`: the error message, or "no answer" after 3 s. */
const refusal = (path: string) =>
  Stage.build(deviceMetadata()).pipe(
    Effect.provide(DeviceDirectory.file(path)),
    Effect.flip,
    Effect.map((e) => `${e._tag}: ${e.message}`),
    Effect.timeoutOption("3 seconds"),
    Effect.map((o) => (o._tag === "Some" ? o.value : "no answer within 3 s"))
  )

describe("DeviceDirectory.file refusals", () => {
  it.effect("a file that is not JSON: names the file, never quotes it", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      for (const [i, text] of [`${SECRET}\n`, `{"dev-a": {"token": ${SECRET}}}`, `{"dev-a": {}} ${SECRET}`].entries()) {
        const path = Path.join(dir, `inventory-${i}.json`)
        Fs.writeFileSync(path, text)
        const message = yield* refusal(path)
        expect(message, text).toMatch(new RegExp(`^TransientUpstreamError: ${path} is not JSON`))
        expect(echoed(message.slice(`TransientUpstreamError: ${path}`.length), text), text).toEqual([])
      }
    }))

  it.effect("a JSON file that is not an object of records names the file", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const path = Path.join(dir, "list.json")
      Fs.writeFileSync(path, JSON.stringify([SECRET]))
      const message = yield* refusal(path)
      expect(message).toBe(`TransientUpstreamError: ${path}: not a JSON object of device records`)
    }))

  it.effect("a FIFO is refused at once, not waited on", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const path = Path.join(dir, "inventory.fifo")
      ChildProcess.execFileSync("mkfifo", [path])
      yield* Effect.addFinalizer(() =>
        Effect.sync(() => {
          try { // unblock a reader still waiting in open(), so no thread is left hanging
            Fs.closeSync(Fs.openSync(path, Fs.constants.O_WRONLY | Fs.constants.O_NONBLOCK))
          } catch {
            // nobody is waiting to read it
          }
        })
      )
      expect(yield* refusal(path)).toBe(`TransientUpstreamError: ${path} is not a regular file (a FIFO)`)
    }))

  it.effect("a file above 64 MiB is refused without being read", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const path = Path.join(dir, "huge.json")
      Fs.writeFileSync(path, "{}")
      Fs.truncateSync(path, 64 * 1024 * 1024 + 1) // sparse: the size is what counts
      expect(yield* refusal(path)).toBe(`TransientUpstreamError: ${path} is larger than 64 MiB (67108865 bytes)`)
    }))
})

describe("DeviceDirectory.http refusals", () => {
  it.effect("an answer that is not JSON: the lookup's error says so without quoting it", () =>
    Effect.gen(function*() {
      const page = `<html>session=${SECRET}</html>`
      const server = yield* Effect.acquireRelease(
        Effect.promise(() =>
          new Promise<Http.Server>((resolve) => {
            const s = Http.createServer((_req, res) => res.end(page))
            s.listen(0, "127.0.0.1", () => resolve(s))
          })
        ),
        (s) => Effect.promise(() => new Promise<void>((resolve) => s.close(() => resolve())))
      )
      const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/devices`
      const error = yield* Effect.gen(function*() {
        const directory = yield* DeviceDirectory
        return yield* directory.lookup(["dev-a"])
      }).pipe(Effect.provide(DeviceDirectory.http({ url })), Effect.flip)
      expect(error.message).toMatch(/^answer is not JSON/)
      expect(echoed(error.message, page)).toEqual([])
    }))
})
