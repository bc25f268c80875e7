/**
 * Configuration files of JSON (the stages file, a device inventory, the device registry) read
 * safely: only a regular file of bounded size, and errors that name the file and the problem
 * without quoting its contents (they may hold secrets, and the error goes to the log).
 */
import { Effect } from "effect"
import { constants as FsConstants } from "node:fs"
import * as Fs from "node:fs/promises"

/**
 * Reads a configuration file of JSON (the stages file, a device inventory) that must be a
 * regular file of at most `maxBytes`. Fails with one line that names the file and the problem,
 * and never quotes the file: it may hold secrets, and the line goes to the log.
 *
 * A FIFO, a device or a directory is refused at once: the file is opened non-blocking (opening a
 * FIFO for reading otherwise waits for a writer, holding the start, and a SIGTERM with it) and
 * checked with `fstat` on the open descriptor, so what is checked is what is read. The size is
 * checked before reading and again while reading (a file that grows meanwhile).
 */
export const readJsonFile = (path: string, maxBytes: number): Effect.Effect<unknown, string> =>
  Effect.tryPromise({
    try: () => readSmallFile(path, maxBytes),
    catch: (cause) => cause instanceof FileRefused ? cause.message : `cannot read ${path}: ${describe(cause)}`
  }).pipe(Effect.flatMap((text) => {
    try {
      return Effect.succeed(JSON.parse(text) as unknown)
    } catch (error) {
      return Effect.fail(`${path} is not JSON (${jsonProblem(error)})`)
    }
  }))

/** A file refused before it was read (its message is the line to log). */
class FileRefused extends Error {}

const readSmallFile = async (path: string, maxBytes: number): Promise<string> => {
  const handle = await Fs.open(path, FsConstants.O_RDONLY | (FsConstants.O_NONBLOCK ?? 0))
  try {
    const stat = await handle.stat()
    if (!stat.isFile()) throw new FileRefused(`${path} is not a regular file (${fileKind(stat)})`)
    const tooLarge = (size: number) => new FileRefused(`${path} is larger than ${bytesText(maxBytes)} (${size} bytes)`)
    if (stat.size > maxBytes) throw tooLarge(stat.size)
    const chunks: Array<Buffer> = []
    let total = 0
    while (true) {
      const buffer = Buffer.allocUnsafe(Math.min(maxBytes + 1 - total, Math.max(stat.size - total, 0) + 1, 1024 * 1024))
      const { bytesRead } = await handle.read(buffer, 0, buffer.length, null)
      if (bytesRead === 0) break
      chunks.push(buffer.subarray(0, bytesRead))
      total += bytesRead
      if (total > maxBytes) throw tooLarge(total)
    }
    return Buffer.concat(chunks, total).toString("utf8")
  } finally {
    await handle.close()
  }
}

const fileKind = (stat: { isDirectory(): boolean; isFIFO(): boolean; isSocket(): boolean; isCharacterDevice(): boolean; isBlockDevice(): boolean }) =>
  stat.isDirectory()
    ? "a directory"
    : stat.isFIFO()
    ? "a FIFO"
    : stat.isSocket()
    ? "a socket"
    : stat.isCharacterDevice() || stat.isBlockDevice()
    ? "a device"
    : "not a file"

const bytesText = (n: number) =>
  n % (1024 * 1024) === 0 ? `${n / (1024 * 1024)} MiB` : n % 1024 === 0 ? `${n / 1024} KiB` : `${n} bytes`

/**
 * What is wrong with JSON text, from V8's parse error, without the excerpt of the text V8 quotes:
 * the kind of error and its line and column when V8 gives them.
 */
export const jsonProblem = (error: unknown): string => {
  const message = error instanceof Error ? error.message : ""
  const located = /^([^"]*?) (?:in JSON )?at position \d+ \(line (\d+) column (\d+)\)/.exec(message)
  if (located !== null) return `${located[1]} at line ${located[2]} column ${located[3]}`
  if (message.startsWith("Unexpected end of JSON input")) return "it ends before the JSON value does"
  return "a character that cannot start or continue a JSON value"
}

/** The message of an unknown thrown value (an fs error names the path and the errno, not the contents). */
const describe = (e: unknown): string => (e instanceof Error ? e.message : String(e))
