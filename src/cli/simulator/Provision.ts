/**
 * `simulate provision`: registers a simulated fleet in one go, what `npm run device:add` does
 * for one device: adds (or replaces) the entries `<prefix>0 … <prefix>N-1` of the registry file
 * the gateway reads from `GATEWAY_DEVICES` (rewritten atomically, mode 0600, other entries kept)
 * and writes their fresh tokens, `<device> <token>` per line, to a tokens file (mode 0600) that
 * `simulate --tokens` reads. Only the tokens' salted hashes go to the registry.
 */
import * as Fs from "node:fs"
import * as Path from "node:path"
import { newEntry } from "../../auth/DeviceRegistry.ts"
import { readRegistry, writeRegistry } from "../devices.ts"

/** What to provision. */
export interface ProvisionPlan {
  readonly devices: number
  readonly prefix: string
  readonly registry: string
  readonly tokensOut: string
  readonly kinds: ReadonlyArray<"telemetry" | "event">
}

/** Writes the registry entries and the tokens file; returns how many entries were added and replaced. */
export const provision = (plan: ProvisionPlan): { readonly added: number; readonly replaced: number } => {
  const existing = readRegistry(plan.registry)
  const fresh = new Map<string, ReturnType<typeof newEntry>>()
  for (let i = 0; i < plan.devices; i++) {
    const id = `${plan.prefix}${i}`
    fresh.set(id, newEntry(id, plan.kinds))
  }
  const kept = existing.filter((e) => !fresh.has(e.id))
  const replaced = existing.length - kept.length
  let tokens = `# simulated fleet ${plan.prefix}0 … ${plan.prefix}${plan.devices - 1}: "<device> <token>" per line, for simulate --tokens\n`
  for (const [id, { token }] of fresh) tokens += `${id} ${token}\n`
  // the tokens are made durable first and put in place once the registry is: a failure leaves
  // neither a registry without its tokens nor a tokens file that no registry knows
  const tmp = writeTemporary(plan.tokensOut, tokens)
  try {
    writeRegistry(plan.registry, [...kept, ...[...fresh.values()].map((f) => f.entry)])
    Fs.renameSync(tmp, plan.tokensOut)
  } catch (e) {
    Fs.rmSync(tmp, { force: true })
    throw e
  }
  return { added: plan.devices - replaced, replaced }
}

/** Writes `text` to a temporary file beside `file` (fsynced, mode 0600) and returns its path. */
const writeTemporary = (file: string, text: string): string => {
  const tmp = Path.join(Path.dirname(file), `.${Path.basename(file)}.${process.pid}.${Date.now()}.tmp`)
  try {
    const fd = Fs.openSync(tmp, "wx", 0o600)
    try {
      Fs.writeFileSync(fd, text)
      Fs.fsyncSync(fd)
    } finally {
      Fs.closeSync(fd)
    }
    return tmp
  } catch (e) {
    Fs.rmSync(tmp, { force: true })
    throw new Error(`cannot write ${file}: ${e instanceof Error ? e.message : String(e)}`)
  }
}
