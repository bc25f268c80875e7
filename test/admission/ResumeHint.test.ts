/**
 * The resume hint of `goaway`: verifies its own hint until it expires, and refuses another
 * device's, an expired one, a tampered one, one from another secret, and garbage. The default
 * secret lives in `<dataDir>/resume.key` and is shared by every process on that directory.
 */
import { describe, expect, it } from "@effect/vitest"
import { Schema } from "effect"
import * as Arbitrary from "effect/Arbitrary"
import * as Crypto from "node:crypto"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { RESUME_VALID_MS, ResumeHints, secretFromDataDir } from "../../src/admission/ResumeHint.ts"
import { tempDir } from "../support/gateway.ts"

const int = (minimum: number, maximum: number) => Schema.Int.check(Schema.isBetween({ minimum, maximum }))
const DeviceId = Schema.String.check(Schema.isPattern(/^[A-Za-z0-9_:-]{1,128}$/))
const NOW = 1_750_000_000_000

const secret = () => Crypto.randomBytes(32)
/** Characters a hint is made of (base36 expiry, '.', base64url MAC) and a few others. */
const ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_.=+/ "

describe("ResumeHints", () => {
  it.prop(
    "verifies its own hint for the same device until it expires, and never after",
    { device: DeviceId, at: int(0, 4_000_000_000_000), age: int(0, RESUME_VALID_MS) },
    ({ age, at, device }) => {
      const key = secret()
      const hints = new ResumeHints(key)
      const hint = hints.issue(device, at)
      expect(hint.length).toBeLessThanOrEqual(64) // fits the hello's `resume` field
      // base36 expiry, then a MAC of 22 base64url characters (132 bits: not guessable)
      expect(hint).toMatch(/^[0-9a-z]+\.[A-Za-z0-9_-]{22}$/)
      expect(hints.verify(device, hint, at + age)).toBe(true)
      expect(hints.verify(device, hint, at + RESUME_VALID_MS + 1)).toBe(false)
      // another holder of the same secret (another node, the next process) agrees
      expect(new ResumeHints(Buffer.from(key)).verify(device, hint, at + age)).toBe(true)
    },
    { arbitrary: { runs: 300 } }
  )

  it.prop(
    "refuses a hint issued for another device",
    { a: DeviceId, b: DeviceId },
    ({ a, b }) => {
      if (a === b) return
      const hints = new ResumeHints(secret())
      expect(hints.verify(b, hints.issue(a, NOW), NOW)).toBe(false)
      expect(hints.verify(a, hints.issue(b, NOW), NOW)).toBe(false)
    },
    { arbitrary: { runs: 300 } }
  )

  it.prop(
    "refuses any tampered hint (one character changed, removed or added, anywhere)",
    { device: DeviceId, position: int(0, 1_000), char: int(0, ALPHABET.length - 1), edit: int(0, 2) },
    ({ char, device, edit, position }) => {
      const hints = new ResumeHints(secret())
      const hint = hints.issue(device, NOW)
      const i = position % (hint.length + (edit === 2 ? 1 : 0))
      const c = ALPHABET[char]!
      const tampered = edit === 0
        ? hint.slice(0, i) + c + hint.slice(i + 1)
        : edit === 1
        ? hint.slice(0, i) + hint.slice(i + 1)
        : hint.slice(0, i) + c + hint.slice(i)
      if (tampered === hint) return
      expect({ tampered, ok: hints.verify(device, tampered, NOW) }).toEqual({ tampered, ok: false })
    },
    { arbitrary: { runs: 1_000 } }
  )

  it("a hint admits once per process; a refused attempt does not use it up", () => {
    const key = secret()
    const hints = new ResumeHints(key)
    const hint = hints.issue("dev-1", NOW)
    // another device showing it, or showing it too late, is refused and does not spend it
    expect(hints.verify("dev-2", hint, NOW)).toBe(false)
    expect(hints.verify("dev-1", hint, NOW + RESUME_VALID_MS + 1)).toBe(false)
    expect(hints.verify("dev-1", hint, NOW + 1)).toBe(true)
    // the second showing on the same process is refused
    expect(hints.verify("dev-1", hint, NOW + 2)).toBe(false)
    // a fresh hint for the same device is a new one
    const next = hints.issue("dev-1", NOW + 1_000)
    expect(next).not.toBe(hint)
    expect(hints.verify("dev-1", next, NOW + 1_001)).toBe(true)
    // another process with the same secret has not seen it (the memory of used hints is local)
    expect(new ResumeHints(Buffer.from(key)).verify("dev-1", hint, NOW + 3)).toBe(true)
  })

  it("refuses a later expiry written into a valid hint (the MAC covers it)", () => {
    const hints = new ResumeHints(secret())
    const hint = hints.issue("dev-1", NOW)
    const [, mac] = hint.split(".")
    const extended = `${Math.floor(NOW + 10 * RESUME_VALID_MS).toString(36)}.${mac}`
    expect(hints.verify("dev-1", extended, NOW + 2 * RESUME_VALID_MS)).toBe(false)
    expect(hints.verify("dev-1", hint, NOW + 2 * RESUME_VALID_MS)).toBe(false)
  })

  it.prop(
    "refuses a hint from another secret",
    { device: DeviceId },
    ({ device }) => {
      const hint = new ResumeHints(secret()).issue(device, NOW)
      expect(new ResumeHints(secret()).verify(device, hint, NOW)).toBe(false)
    },
    { arbitrary: { runs: 200 } }
  )

  it.prop(
    "refuses garbage: random strings, and never throws",
    { device: DeviceId, s: Schema.String, parts: Arbitrary.array(Arbitrary.schema(int(0, ALPHABET.length - 1)), { maxLength: 80 }) },
    ({ device, parts, s }) => {
      const hints = new ResumeHints(secret())
      const random = parts.map((p) => ALPHABET[p]!).join("")
      expect(hints.verify(device, s, NOW)).toBe(false)
      expect(hints.verify(device, random, NOW)).toBe(false)
    },
    { arbitrary: { runs: 500 } }
  )

  it("refuses non-strings, empty, over-long and malformed hints", () => {
    const hints = new ResumeHints(secret())
    const hint = hints.issue("dev-1", NOW)
    expect(hints.verify("dev-1", hint, NOW)).toBe(true)
    const garbage: Array<unknown> = [
      undefined,
      null,
      42,
      true,
      { hint },
      [hint],
      Buffer.from(hint),
      "",
      ".",
      hint.replace(".", ""), // no dot
      "." + hint, // dot first
      hint + "x".repeat(65 - hint.length), // over 64 characters
      hint + " ", // trailing space
      "zzzzzzzzzzzzzzzz." + hint.split(".")[1], // far-future expiry, wrong MAC
      "-1." + hint.split(".")[1],
      "NaN." + hint.split(".")[1]
    ]
    for (const g of garbage) expect({ g, ok: hints.verify("dev-1", g, NOW) }).toEqual({ g, ok: false })
    // a valid hint padded to exactly 64 characters is still refused (it is not the hint)
    expect(hints.verify("dev-1", hint.padEnd(64, "A"), NOW)).toBe(false)
  })

  it("the default secret is kept in <dataDir>/resume.key (0600) and shared by every reader of that directory", () => {
    const root = tempDir("gw-resume-key-")
    const other = tempDir("gw-resume-key-")
    const dir = Path.join(root, "nested", "data")
    const first = secretFromDataDir(dir) // creates the directory and the key
    const file = Path.join(dir, "resume.key")
    expect(Fs.statSync(file).mode & 0o777).toBe(0o600)
    expect(Fs.readFileSync(file, "utf8")).toMatch(/^[0-9a-f]{64}$/)
    const second = secretFromDataDir(dir)
    expect(second.equals(first)).toBe(true)
    // a hint issued with one process's secret is honoured by the next one on the same directory
    const hint = new ResumeHints(first).issue("dev-1", NOW)
    expect(new ResumeHints(second).verify("dev-1", hint, NOW + 1_000)).toBe(true)
    // another directory has another key
    expect(new ResumeHints(secretFromDataDir(other)).verify("dev-1", hint, NOW)).toBe(false)
    // a corrupted key file stops the start instead of silently making a new secret
    Fs.writeFileSync(file, "not a key")
    expect(() => secretFromDataDir(dir)).toThrow(/resume key/)
    for (const d of [root, other]) Fs.rmSync(d, { recursive: true, force: true })
  })
})
