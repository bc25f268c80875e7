/**
 * The open-files limit against the connection cap. Every connection is a descriptor; past the
 * process's limit `accept` fails (EMFILE), the kernel resets the devices, and the admin port
 * cannot accept either. So the listener admits at most the limit less a reserve (the admin
 * port, the store's files and threads, logs, and the sockets being refused with `busy`), and
 * says so at start when that lowers `GATEWAY_MAX_CONNECTIONS`.
 */
import * as Fs from "node:fs"

/**
 * Descriptors kept back from device connections: a quarter of the limit, at least 128. The
 * reserve also absorbs a storm's refusals: each refused socket holds its descriptor until the
 * event loop's turn ends, and past the limit libuv closes accepted sockets without a word.
 */
export const reservedDescriptors = (limit: number): number => Math.max(128, Math.floor(limit / 4))

/** The soft open-files limit of this process (Linux `/proc/self/limits`), or undefined when unknown or unlimited. */
export const openFilesLimit = (): number | undefined => {
  try {
    const text = Fs.readFileSync("/proc/self/limits", "utf8")
    const match = /^Max open files\s+(\d+|unlimited)\s+/m.exec(text)
    return match === null || match[1] === "unlimited" ? undefined : Number(match[1])
  } catch {
    return undefined
  }
}

/** How many device connections fit under `limit`: the cap, or the limit less the reserve (at least 1). */
export const connectionCap = (maxConnections: number, limit: number | undefined): number =>
  limit === undefined ? maxConnections : Math.max(1, Math.min(maxConnections, limit - reservedDescriptors(limit)))
