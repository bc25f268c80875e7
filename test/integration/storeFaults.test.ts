/**
 * Store faults under a running gateway process (issue 8, "Hardening", defects 2 and 3), on real
 * files, real sockets and real signals:
 * - a store whose `messages_key` index is corrupt stops the start with one `cannot start` line
 *   (exit 1), whether the garbage is on every write's path (the index root) or in one leaf page
 *   no write of the start touches (found by `PRAGMA quick_check`);
 * - a store corrupted under a running gateway (the index pointed at the table's pages, so every
 *   write fails "database disk image is malformed"): `nack unavailable`, `/readyz` 503 that stays
 *   503 (probes do not flip it back), one error line, the fault counted; the restart refuses it;
 * - a full filesystem (a 16 MB tmpfs filled by a file; where `mount` is not permitted, a file-size
 *   limit, RLIMIT_FSIZE, on the gateway process instead): `nack unavailable`, `/readyz` 503 while
 *   full, 200 again without device traffic once space is freed, acks after; a gateway started on
 *   the full disk is not ready from its first answer;
 * - `rm -rf` of the data directory, and `mv gateway.db`, under load: no ack received later than
 *   250 ms after the change (the answers already on their way), every ack after the change is
 *   of a message in the file at the path when reopened after a restart, `/readyz` 503, one
 *   error line, and no new store made at the path by the running gateway; after `mv`, the moved
 *   file holds every message acked (its WAL folded into it at shutdown); and a WAL left without
 *   its database (moved, then the gateway killed) stops the next start instead of being deleted.
 *
 * Each of these failed against 9ac6edc (before readiness followed the store's writes): the
 * corrupt stores started and said "listening", `/readyz` stayed 200 on the corrupt and on the full
 * store (and a gateway started on a full disk said ready), and after `rm -rf` / `mv` thousands of
 * acks went on into the unlinked or renamed file (and the shutdown after `mv` made a new empty
 * `gateway.db` at the path), and a start beside a WAL without its database made a new store
 * (SQLite then deletes that WAL, and the commits in it).
 */
import { afterEach, describe, expect, it } from "@effect/vitest"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import { DatabaseSync } from "node:sqlite"
import { type Answer, Device, telemetry } from "../support/client.ts"
import { cleanupChildren, spawnGateway, tempDir, withTimeout } from "../support/childGateway.ts"
import { metricValue, scrape } from "../support/metrics.ts"
import { logLines, messageOf, NODE, NODE_ARGS, spawnChild, startChild } from "../support/process.ts"
import { rows } from "../support/store.ts"
import { readyz, sleep, until } from "../support/poll.ts"

const mounts: Array<string> = []
afterEach(async () => {
  await cleanupChildren()
  for (const m of mounts.splice(0)) {
    ChildProcess.spawnSync("umount", ["-l", m])
    Fs.rmSync(m, { recursive: true, force: true })
  }
})




const dbPath = (dataDir: string) => Path.join(dataDir, "gateway.db")

/** Sends `n` telemetry frames from `from` on and returns the `n` answers. */
const exchange = async (d: Device, from: number, n: number, metrics: (seq: number) => Record<string, number> = (seq) => ({ t: seq })) => {
  d.send(...Array.from({ length: n }, (_, i) => telemetry(from + i, metrics(from + i))))
  return d.take(n, 20_000)
}

const acks = (answers: ReadonlyArray<Answer>) => answers.filter((a) => a.type === "ack")
const unavailable = (answers: ReadonlyArray<Answer>) =>
  answers.filter((a) => a.type === "nack" && a["code"] === "unavailable" && a["retry"] === true)

/** The log lines of `output` whose message starts with `prefix`. */
const linesStarting = (output: string, prefix: string) => logLines(output).filter((l) => messageOf(l).startsWith(prefix))

/** How a start ended: exit code (undefined: still running after "listening" + 1 s), and its output. */
const watchStart = async (dataDir: string) => {
  const g = spawnChild(dataDir, {})
  let code: number | null | undefined
  void g.exited.then((c) => (code = c))
  const deadline = Date.now() + 15_000
  let listenedAt: number | undefined
  while (Date.now() < deadline && code === undefined) {
    if (listenedAt === undefined && linesStarting(g.output(), "listening").length > 0) listenedAt = Date.now()
    if (listenedAt !== undefined && Date.now() - listenedAt > 1_000) break
    await sleep(25)
  }
  if (code === undefined) {
    g.child.kill("SIGKILL")
    await g.exited
  }
  return { code, listened: listenedAt !== undefined, output: g.output() }
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

/** A store with 3 devices × 400 messages, made by the gateway itself and closed cleanly (WAL folded in). */
const storeWithMessages = async (prefix: string) => {
  const dataDir = tempDir(prefix)
  const gw = await spawnGateway(dataDir)
  for (const device of ["dev-a", "dev-b", "dev-c"]) {
    const { d } = await Device.open(gw.port, device)
    expect(acks(await exchange(d, 0, 400))).toHaveLength(400)
    d.end()
  }
  gw.child.kill("SIGTERM")
  expect(await withTimeout(gw.exited, 10_000, "gateway did not stop")).toBe(0)
  expect(Fs.existsSync(dbPath(dataDir) + "-wal")).toBe(false)
  return dataDir
}

/** Pages of the index `messages_key`: its root, and its leaf pages (dbstat). */
const indexPages = (path: string) => {
  const db = new DatabaseSync(path, { readOnly: true })
  try {
    const pageSize = (db.prepare("PRAGMA page_size").get() as { page_size: number }).page_size
    const root = (db.prepare("SELECT rootpage FROM sqlite_schema WHERE name = 'messages_key'").get() as { rootpage: number }).rootpage
    const leaves = (db.prepare("SELECT pageno FROM dbstat WHERE name = 'messages_key' AND pagetype = 'leaf' ORDER BY pageno").all() as Array<
      { pageno: number }
    >).map((r) => r.pageno)
    return { pageSize, root, leaves }
  } finally {
    db.close()
  }
}

/** Overwrites page `page` (1-based) of the file with bytes no b-tree page has. */
const garbleDbPage = (path: string, page: number, pageSize: number) => {
  const fd = Fs.openSync(path, "r+")
  try {
    const garbage = Buffer.alloc(pageSize)
    for (let i = 0; i < pageSize; i++) garbage[i] = (i * 131 + 17) & 0xff
    Fs.writeSync(fd, garbage, 0, pageSize, (page - 1) * pageSize)
  } finally {
    Fs.closeSync(fd)
  }
}

/** The store's unique index pointed at the table's own pages: every insert fails "database disk image is malformed". */
const corruptIndexUnderGateway = (path: string) => {
  const db = new DatabaseSync(path, { timeout: 5_000 })
  try {
    const root = (name: string) => (db.prepare("SELECT rootpage FROM sqlite_schema WHERE name = ?").get(name) as { rootpage: number }).rootpage
    const version = (db.prepare("PRAGMA schema_version").get() as { schema_version: number }).schema_version
    db.exec(`PRAGMA writable_schema = ON;
      UPDATE sqlite_schema SET rootpage = ${root("messages")} WHERE name = 'messages_key';
      PRAGMA schema_version = ${version + 1};
      PRAGMA writable_schema = OFF;`)
  } finally {
    db.close()
  }
}

describe("a corrupt store", () => {
  it("stops the start with one `cannot start` line and exit 1 (garbage in the index root, or in one index leaf)", async () => {
    for (const where of ["root", "leaf"] as const) {
      const dataDir = await storeWithMessages(`gw-corrupt-${where}-`)
      const { pageSize, root, leaves } = indexPages(dbPath(dataDir))
      // the leaf variant: the last leaf, away from every key a start writes (quick_check finds it, a probe would not)
      expect(leaves.length).toBeGreaterThan(2)
      garbleDbPage(dbPath(dataDir), where === "root" ? root : leaves[leaves.length - 1]!, pageSize)

      const started = await watchStart(dataDir)
      expect({ where, code: started.code, listened: started.listened }).toEqual({ where, code: 1, listened: false })
      const errors = linesStarting(started.output, "cannot start")
      expect({ where, errors: errors.length, output: started.output }).toEqual({ where, errors: 1, output: started.output })
      // garbage in the root is on the start's probe write's path too; in a far leaf only the check finds it
      expect(messageOf(errors[0]!)).toMatch(
        where === "leaf"
          ? /gateway\.db is corrupt \(PRAGMA quick_check: .+\); restore it/
          : /gateway\.db is corrupt \((PRAGMA quick_check|write probe): .+\); restore it/
      )
      expect(nonJson(started.output)).toEqual([])
    }
  }, 90_000)

  it("corrupted under a running gateway: nack unavailable, /readyz 503 that stays 503, one error line; the restart refuses it", async () => {
    const dataDir = tempDir("gw-corrupt-live-")
    const gw = await spawnGateway(dataDir)
    const { d } = await Device.open(gw.port, "dev-1")
    expect(acks(await exchange(d, 0, 50))).toHaveLength(50)
    expect(await readyz(gw.adminPort)).toEqual({ status: 200, body: "ready\n" })

    corruptIndexUnderGateway(dbPath(dataDir))
    const answers = await exchange(d, 50, 40)
    expect(unavailable(answers)).toHaveLength(40)
    expect(String(answers[0]!["message"])).toContain("database disk image is malformed")
    const ready = await readyz(gw.adminPort)
    expect(ready.status).toBe(503)
    expect(ready.body).toContain("sink sqlite unavailable: store is corrupt")
    // idle for several probe periods: still not ready (a corrupt store does not heal)
    for (let i = 0; i < 15; i++) {
      expect((await readyz(gw.adminPort)).status).toBe(503)
      await sleep(200)
    }
    expect(unavailable(await exchange(d, 90, 10))).toHaveLength(10)
    const metrics = await scrape(gw.adminPort)
    expect(metricValue(metrics, "gateway_sink_healthy", { sink: "sqlite" })).toBe(0)
    expect(metricValue(metrics, "gateway_sink_store_faults_total", { sink: "sqlite", fault: "corrupt" })).toBeGreaterThanOrEqual(1)
    expect(linesStarting(gw.output(), "sqlite store unavailable until restart: store is corrupt")).toHaveLength(1)
    d.end()

    gw.child.kill("SIGTERM")
    await withTimeout(gw.exited, 15_000, "gateway did not stop")
    const again = await watchStart(dataDir)
    expect({ code: again.code, listened: again.listened }).toEqual({ code: 1, listened: false })
    expect(linesStarting(again.output, "cannot start")).toHaveLength(1)
  }, 60_000)
})

// ---- a full filesystem ----

/** A small filesystem to fill: a 16 MB tmpfs when `mount` is permitted, else undefined. */
const smallFilesystem = (): string | undefined => {
  if (process.env["STORE_FAULTS_FULL_DISK"] === "fsize") return undefined // to run the fallback where mount works
  const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "gw-tmpfs-"))
  const r = ChildProcess.spawnSync("mount", ["-t", "tmpfs", "-o", "size=16m", "tmpfs", dir], { encoding: "utf8" })
  if (r.status !== 0) {
    Fs.rmdirSync(dir)
    return undefined
  }
  mounts.push(dir)
  return dir
}

/** Writes a file until the filesystem is full (ENOSPC); returns its path. */
const fill = (dir: string) => {
  const file = Path.join(dir, "filler")
  const fd = Fs.openSync(file, "a")
  try {
    for (const size of [65_536, 4_096, 512, 1]) {
      const chunk = Buffer.alloc(size, 7)
      try {
        for (;;) Fs.writeSync(fd, chunk)
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== "ENOSPC") throw error
      }
    }
  } finally {
    Fs.closeSync(fd)
  }
  return file
}

/**
 * The "disk" of a gateway: a real full filesystem where `mount` works; otherwise the gateway
 * runs under a file-size limit (RLIMIT_FSIZE, set and raised with `prlimit`: writes past it fail
 * with EFBIG, SQLite's "disk I/O error") at the database's size, so that neither it nor the WAL
 * can grow.
 */
interface Disk {
  readonly kind: "tmpfs" | "fsize"
  readonly dataDir: string
  /** Starts the gateway; `full`: on the full disk. */
  readonly start: (full: boolean) => ReturnType<typeof spawnGateway>
  readonly makeFull: (pid: number) => void
  readonly free: (pid: number) => void
  readonly fullError: RegExp
}

const ENV = { GATEWAY_STORE_RETRIES: "1" }

const disk = (): Disk => {
  const mount = smallFilesystem()
  if (mount !== undefined) {
    const dataDir = Path.join(mount, "data")
    let filler: string | undefined
    return {
      kind: "tmpfs",
      dataDir,
      start: () => spawnGateway(dataDir, ENV),
      makeFull: () => void (filler = fill(mount)),
      free: () => filler !== undefined && Fs.rmSync(filler),
      fullError: /database or disk is full/
    }
  }
  const dataDir = tempDir("gw-fsize-")
  const limit = () => String(Fs.statSync(dbPath(dataDir)).size)
  const prlimit = (pid: number, value: string) => {
    const r = ChildProcess.spawnSync("prlimit", ["--pid", String(pid), `--fsize=${value}:`], { encoding: "utf8" })
    if (r.status !== 0) throw new Error(`prlimit failed: ${r.stderr}`)
  }
  return {
    kind: "fsize",
    dataDir,
    start: (full) =>
      full ? startChild(dataDir, ENV, ["prlimit", [`--fsize=${limit()}:`, NODE, ...NODE_ARGS, "src/main.ts"]]) : spawnGateway(dataDir, ENV),
    makeFull: (pid) => prlimit(pid, limit()),
    free: (pid) => prlimit(pid, "unlimited"),
    fullError: /disk I\/O error|database or disk is full/
  }
}

const bulky = (seq: number) => Object.fromEntries(Array.from({ length: 40 }, (_, k) => [`m${k}`, seq * 100 + k]))

/** Sends rounds of 200 until one gets `nack unavailable` (a WAL can have room left for a few); the answers of that round. */
const sendUntilRefused = async (d: Device, from: number) => {
  let answers: Array<Answer> = []
  let seq = from
  for (let round = 0; round < 40 && unavailable(answers).length === 0; round++, seq += 200) answers = await exchange(d, seq, 200, bulky)
  return { answers, next: seq }
}

/** /readyz stays 503 for `ms` (polled every 200 ms). */
const staysUnready = async (adminPort: number, ms: number) => {
  const seen: Array<number> = []
  for (const end = Date.now() + ms; Date.now() < end;) {
    seen.push((await readyz(adminPort)).status)
    await sleep(200)
  }
  return seen.filter((s) => s !== 503)
}

describe("a full filesystem", () => {
  it("nack unavailable and /readyz 503 while full (no flapping), ready again without traffic once space is freed; restarted full: not ready", async () => {
    const fs = disk()
    let gw = await fs.start(false)
    let { d } = await Device.open(gw.port, "dev-1")
    // a store larger than the fsize fallback's limit, so that its files cannot grow under it
    expect(acks(await exchange(d, 0, 300, bulky))).toHaveLength(300)
    expect(await readyz(gw.adminPort)).toEqual({ status: 200, body: "ready\n" })

    fs.makeFull(gw.child.pid!)
    let sent = await sendUntilRefused(d, 300)
    expect(unavailable(sent.answers).length).toBeGreaterThan(0)
    expect(String(unavailable(sent.answers)[0]!["message"])).toMatch(fs.fullError)
    const notReady = await readyz(gw.adminPort)
    expect(notReady.status).toBe(503)
    expect(notReady.body).toMatch(fs.fullError)
    // idle while full: probe writes fail too, /readyz stays 503
    expect(await staysUnready(gw.adminPort, 3_000)).toEqual([])
    const metrics = await scrape(gw.adminPort)
    expect(metricValue(metrics, "gateway_sink_healthy", { sink: "sqlite" })).toBe(0)
    expect(metricValue(metrics, "gateway_sink_store_faults_total", { sink: "sqlite" })).toBeGreaterThan(0)

    // space again: ready without a single device message, then acks
    fs.free(gw.child.pid!)
    await until("ready after space was freed", 15_000, async () => (await readyz(gw.adminPort)).status === 200)
    expect(acks(await exchange(d, sent.next, 50))).toHaveLength(50)
    expect(rows(fs.dataDir, "dev-1").some((r) => r.seq === sent.next + 49)).toBe(true)
    expect(linesStarting(gw.output(), "sqlite store cannot take writes")).toHaveLength(1)
    expect(linesStarting(gw.output(), "sqlite store takes writes again")).toHaveLength(1)

    // full again, and stopped so (its WAL cannot be folded in: it stays), then started on the full disk
    fs.makeFull(gw.child.pid!)
    sent = await sendUntilRefused(d, sent.next + 50)
    expect(unavailable(sent.answers).length).toBeGreaterThan(0)
    d.end()
    gw.child.kill("SIGTERM")
    await withTimeout(gw.exited, 15_000, "gateway did not stop")
    gw = await fs.start(true)
    const first = await readyz(gw.adminPort)
    expect(first.status).toBe(503)
    expect(first.body).toMatch(fs.fullError)
    expect(linesStarting(gw.output(), "sqlite store cannot take writes")).toHaveLength(1)
    // (what still fits in the room the WAL has is stored and acked: a write that succeeds is durable)
    ;({ d } = await Device.open(gw.port, "dev-1"))
    sent = await sendUntilRefused(d, sent.next)
    expect(unavailable(sent.answers).length).toBeGreaterThan(0)
    expect(await staysUnready(gw.adminPort, 1_500)).toEqual([])
    fs.free(gw.child.pid!)
    await until("ready after space was freed", 15_000, async () => (await readyz(gw.adminPort)).status === 200)
    expect(acks(await exchange(d, sent.next, 20))).toHaveLength(20)
    d.end()
    gw.child.kill("SIGTERM")
    await withTimeout(gw.exited, 15_000, "gateway did not stop")

    if (fs.kind === "tmpfs") {
      // stopped with room (WAL folded in, shared-memory file removed), started on a full disk:
      // SQLite cannot even make its shared-memory file, so the start stops with one line
      expect(Fs.existsSync(dbPath(fs.dataDir) + "-shm")).toBe(false)
      fs.makeFull(0)
      const started = await watchStart(fs.dataDir)
      expect({ code: started.code, listened: started.listened }).toEqual({ code: 1, listened: false })
      const errors = linesStarting(started.output, "cannot start")
      expect(errors).toHaveLength(1)
      expect(messageOf(errors[0]!)).toMatch(/cannot open .*gateway\.db: .* \(its filesystem has \d+ bytes free\)/)
    }
  }, 120_000)
})

// ---- the store removed or renamed under load ----

/** A device under load: keeps `window` frames unanswered, records when each ack arrived. */
class LoadDevice {
  /** [seq, Date.now() when its ack arrived] */
  readonly acked: Array<readonly [number, number]> = []
  readonly nacks: Array<Answer> = []
  private readonly pending: Array<number> = []
  private sent = 0
  private stopped = false
  private welcomed = false
  private buffer = ""
  readonly welcome: Promise<void>
  readonly closed: Promise<void>
  private readonly socket: Net.Socket

  readonly id: string
  private readonly window: number

  constructor(id: string, port: number, window: number) {
    this.id = id
    this.window = window
    const socket = Net.connect({ port, host: "127.0.0.1", noDelay: true })
    this.socket = socket
    let onWelcome: () => void = () => undefined
    this.welcome = new Promise((resolve) => (onWelcome = resolve))
    socket.setEncoding("utf8")
    socket.on("connect", () => socket.write(JSON.stringify({ type: "hello", v: 1, device: id, token: "t" }) + "\n"))
    socket.on("error", () => undefined)
    socket.on("data", (chunk: string) => {
      const now = Date.now()
      this.buffer += chunk
      let nl = this.buffer.indexOf("\n")
      while (nl !== -1) {
        const frame = JSON.parse(this.buffer.slice(0, nl)) as Answer
        this.buffer = this.buffer.slice(nl + 1)
        nl = this.buffer.indexOf("\n")
        if (!this.welcomed) {
          this.welcomed = frame.type === "welcome"
          onWelcome()
        } else if (frame.type === "ack") {
          this.pending.shift()
          this.acked.push([frame["seq"] as number, now])
        } else if (frame.type === "nack") {
          this.pending.shift()
          this.nacks.push(frame)
        }
      }
      this.fill()
    })
    this.closed = new Promise((resolve) => socket.on("close", () => resolve()))
  }

  fill(): void {
    if (this.stopped || !this.welcomed) return
    let out = ""
    while (this.pending.length < this.window) {
      const seq = this.sent++
      out += JSON.stringify(telemetry(seq, { t: seq % 40, n: seq })) + "\n"
      this.pending.push(seq)
    }
    if (out !== "") this.socket.write(out)
  }

  stop(): void {
    this.stopped = true
  }

  destroy(): void {
    this.socket.destroy()
  }
}

/** "device:seq" of every message in the store file `path` (without any WAL of another name). */
const keysIn = (path: string) => {
  const db = new DatabaseSync(path, { readOnly: true })
  try {
    return new Set((db.prepare("SELECT device, seq FROM messages").all() as Array<{ device: string; seq: number }>).map((r) => `${r.device}:${r.seq}`))
  } finally {
    db.close()
  }
}

/** What a test does to the store under load, and what it says about it afterwards. */
interface Change {
  readonly name: string
  readonly apply: (dataDir: string) => void
}

/** Answers received this long after the change may have been decided before it (on their way). */
const IN_FLIGHT_MS = 250
/** GATEWAY_BATCH_MAX of the gateway under load. */
const BATCH_MAX = 500

const underLoad = async (change: Change) => {
  const dataDir = tempDir(`gw-${change.name}-`)
  const gw = await spawnGateway(dataDir, { GATEWAY_BATCH_MAX: String(BATCH_MAX) })
  const devices = Array.from({ length: 16 }, (_, i) => new LoadDevice(`${change.name}-${i}`, gw.port, 64))
  await withTimeout(Promise.all(devices.map((d) => d.welcome)), 10_000, "devices not welcomed")
  for (const d of devices) d.fill()
  await until("1,000 acks under load", 15_000, async () => devices.reduce((n, d) => n + d.acked.length, 0) >= 1_000)

  change.apply(dataDir)
  const changedAt = Date.now()
  await sleep(1_500)
  const ready = await readyz(gw.adminPort)
  const metrics = await scrape(gw.adminPort)
  for (const d of devices) d.stop()
  await sleep(300)
  for (const d of devices) d.destroy()

  const afterChange = devices.flatMap((d) => d.acked.filter(([, at]) => at > changedAt).map(([seq, at]) => ({ device: d.id, seq, at })))
  const nackedAfter = devices.reduce((n, d) => n + unavailable(d.nacks).length, 0)

  gw.child.kill("SIGTERM")
  await withTimeout(gw.exited, 15_000, "gateway did not stop")
  // the running gateway made no new store at the path (neither at work nor at its shutdown)
  const madeAtPath = Fs.existsSync(dbPath(dataDir))
  const output = gw.output()
  // every ack, before the change or on its way at it, of a message not in the file moved away (mv only)
  const moved = Path.join(dataDir, "moved.db")
  const inMoved = Fs.existsSync(moved) ? keysIn(moved) : undefined
  const ackedNotInMoved = inMoved === undefined
    ? undefined
    : devices.flatMap((d) => d.acked.filter(([seq]) => !inMoved.has(`${d.id}:${seq}`)).map(([seq]) => `${d.id}:${seq}`))

  // restarted on the same path: what is in the file there now
  const again = await spawnGateway(dataDir)
  const stored = new Set(rows(dataDir).map((r) => `${r.device}:${r.seq}`))
  again.child.kill("SIGTERM")
  await withTimeout(again.exited, 15_000, "restarted gateway did not stop")
  // acks received after the change (later than the answers already on their way) of messages not in the file at the path
  const late = afterChange.filter((a) => a.at > changedAt + IN_FLIGHT_MS && !stored.has(`${a.device}:${a.seq}`))
    .map((a) => `${a.device}:${a.seq} +${a.at - changedAt} ms`)

  return { late, afterChange, nackedAfter, ready, metrics, output, madeAtPath, ackedNotInMoved }
}

describe("the store removed or renamed under a running gateway", () => {
  for (
    const change of [
      { name: "rm-rf", apply: (dataDir: string) => Fs.rmSync(dataDir, { recursive: true, force: true }) },
      { name: "mv-db", apply: (dataDir: string) => Fs.renameSync(dbPath(dataDir), Path.join(dataDir, "moved.db")) }
    ] satisfies ReadonlyArray<Change>
  ) {
    it(`${change.name}: no ack after the change for a message not in the file at the path; /readyz 503, one error line`, async () => {
      const r = await underLoad(change)
      expect(r.late.slice(0, 5)).toEqual([])
      // the acks on their way at the change are at most the batches in the pipeline (2 × GATEWAY_BATCH_MAX)
      expect(r.afterChange.length).toBeLessThanOrEqual(2 * BATCH_MAX)
      expect(r.nackedAfter).toBeGreaterThan(100)
      expect(r.ready.status).toBe(503)
      expect(r.ready.body).toMatch(/sink sqlite unavailable: store lost: .*gateway\.db.* was removed or renamed under the running gateway/)
      expect(metricValue(r.metrics, "gateway_sink_healthy", { sink: "sqlite" })).toBe(0)
      expect(metricValue(r.metrics, "gateway_sink_store_faults_total", { sink: "sqlite", fault: "lost" })).toBeGreaterThanOrEqual(1)
      expect(linesStarting(r.output, "sqlite store unavailable until restart: store lost")).toHaveLength(1)
      expect(r.madeAtPath).toBe(false)
      // the file moved away holds every message acked (its WAL folded into it at the clean shutdown)
      if (change.name === "mv-db") expect(r.ackedNotInMoved?.slice(0, 5)).toEqual([])
      expect(nonJson(r.output)).toEqual([])
    }, 60_000)
  }

  it("moved under a gateway that was then killed: the start refuses the WAL left without its database", async () => {
    const dataDir = tempDir("gw-orphan-wal-")
    const gw = await spawnGateway(dataDir)
    const { d } = await Device.open(gw.port, "dev-1")
    expect(acks(await exchange(d, 0, 200))).toHaveLength(200)
    d.end()
    gw.child.kill("SIGKILL")
    await withTimeout(gw.exited, 5_000, "gateway did not die")
    const wal = Fs.statSync(dbPath(dataDir) + "-wal").size
    expect(wal).toBeGreaterThan(0)
    Fs.renameSync(dbPath(dataDir), Path.join(dataDir, "moved.db"))

    const started = await watchStart(dataDir)
    expect({ code: started.code, listened: started.listened }).toEqual({ code: 1, listened: false })
    const errors = linesStarting(started.output, "cannot start")
    expect(errors).toHaveLength(1)
    expect(messageOf(errors[0]!)).toContain(`gateway.db-wal holds ${wal} bytes of commits but`)
    // the WAL is still there, with what it holds: put back beside it, the store has every message
    expect(Fs.statSync(dbPath(dataDir) + "-wal").size).toBe(wal)
    Fs.renameSync(Path.join(dataDir, "moved.db"), dbPath(dataDir))
    expect(rows(dataDir, "dev-1")).toHaveLength(200)
  }, 60_000)
})
