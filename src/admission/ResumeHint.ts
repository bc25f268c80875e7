/**
 * The resume hint of `goaway`: an HMAC over the device id and an expiry, so a device that
 * reconnects after a drain (to this node or another node sharing `GATEWAY_RESUME_SECRET`) and
 * shows the hint in its hello is admitted ahead of new connections (past the accept-rate limit
 * and the saturation rule; never past the connection cap or the memory budget). The secret is
 * `GATEWAY_RESUME_SECRET` or, by default, a random key kept in `<dataDir>/resume.key` (mode
 * 0600), so the node's next process recognizes the hints its last one gave out.
 */
import * as Crypto from "node:crypto"
import * as Fs from "node:fs"
import * as Path from "node:path"

/** How long a hint stays valid after the goaway that carried it. */
export const RESUME_VALID_MS = 120_000

/** Hints remembered as used, at most (a used hint is refused again by this process). */
const USED_MAX = 65_536

/** Issues and checks resume hints with one secret. */
export class ResumeHints {
  private readonly secret: Buffer
  /** Hints already honoured, with their expiry, oldest first (bounded: oldest forgotten first). */
  private readonly used = new Map<string, number>()

  constructor(secret: Buffer) {
    this.secret = secret
  }

  /** A hint for `device`, valid until `nowMs + RESUME_VALID_MS`. */
  issue(device: string, nowMs: number): string {
    const expiry = Math.floor(nowMs + RESUME_VALID_MS).toString(36)
    return `${expiry}.${this.mac(device, expiry)}`
  }

  /**
   * True when `hint` was issued for `device` by a holder of the secret, has not expired, and was
   * not used before on this process (a hint admits once).
   */
  verify(device: string, hint: unknown, nowMs: number): boolean {
    if (!this.valid(device, hint, nowMs)) return false
    const key = hint as string
    if (this.used.has(key)) return false
    if (this.used.size >= USED_MAX) {
      for (const [k, expiry] of this.used) {
        if (this.used.size < USED_MAX && expiry >= nowMs) break
        this.used.delete(k)
      }
    }
    this.used.set(key, nowMs + RESUME_VALID_MS)
    return true
  }

  private valid(device: string, hint: unknown, nowMs: number): boolean {
    if (typeof hint !== "string" || hint.length > 64) return false
    const dot = hint.indexOf(".")
    if (dot <= 0) return false
    const expiry = hint.slice(0, dot)
    const expiresAt = parseInt(expiry, 36)
    if (!Number.isFinite(expiresAt) || expiresAt < nowMs) return false
    const given = Buffer.from(hint.slice(dot + 1))
    const wanted = Buffer.from(this.mac(device, expiry))
    return given.length === wanted.length && Crypto.timingSafeEqual(given, wanted)
  }

  private mac(device: string, expiry: string): string {
    return Crypto.createHmac("sha256", this.secret).update(`${device}\n${expiry}`).digest("base64url").slice(0, 22)
  }
}

/** The secret kept in `<dataDir>/resume.key`, created on first use (concurrent starts agree on one). */
export const secretFromDataDir = (dataDir: string): Buffer => {
  const file = Path.join(dataDir, "resume.key")
  Fs.mkdirSync(dataDir, { recursive: true })
  try {
    Fs.writeFileSync(file, Crypto.randomBytes(32).toString("hex"), { flag: "wx", mode: 0o600 })
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error
  }
  // a regular file only: opening a FIFO would wait for a writer, holding the start
  if (!Fs.statSync(file).isFile()) throw new Error(`${file} is not a regular file`)
  const text = Fs.readFileSync(file, "utf8").trim()
  if (!/^[0-9a-f]{64}$/.test(text)) throw new Error(`${file} is not a resume key (64 hex digits)`)
  return Buffer.from(text, "hex")
}
