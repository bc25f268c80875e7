/**
 * One SQLite store shared by several processes (the workers of a node): a fresh file opened by
 * several at once gets its schema once, and writers committing back to back take turns instead
 * of one starving the other into SQLITE_BUSY.
 */
import { afterEach, describe, expect, it } from "@effect/vitest"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { DatabaseSync } from "node:sqlite"
import { tempDir } from "../../support/gateway.ts"

const STORE = Path.resolve(import.meta.dirname, "../../../src/sinks/sqlite/SqliteStore.ts")
const dirs: Array<string> = []
afterEach(() => {
  for (const d of dirs.splice(0)) Fs.rmSync(d, { recursive: true, force: true })
})

/**
 * A process that opens `path` and commits batches of 500 rows of its own devices (plus, once,
 * the keys `common:0:0..99` that every process writes) for `ms`; prints what it committed.
 */
const writer = (path: string, id: string, ms: number) => `
  import { openDatabase, prepare, writeBatch } from ${JSON.stringify(STORE)}
  const db = openDatabase(${JSON.stringify(path)}, "normal")
  const st = prepare(db)
  const row = (device, seq) => [device, 0, seq, "telemetry", 1, 2, ${JSON.stringify(id)}, null, '{"metrics":{"t":1}}', null]
  writeBatch(db, st, Array.from({ length: 100 }, (_, i) => row("common", i)), Date.now())
  let batches = 0, seq = 0
  const end = Date.now() + ${ms}
  do {
    writeBatch(db, st, Array.from({ length: 500 }, (_, i) => row(${JSON.stringify(id)} + "-" + (i % 10), seq++)), Date.now())
    batches++
  } while (Date.now() < end)
  db.close()
  console.log(JSON.stringify({ batches }))
`

const run = (code: string) =>
  new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
    const child = ChildProcess.spawn(process.execPath, ["--disable-warning=ExperimentalWarning", "--input-type=module", "-e", code], {
      stdio: ["ignore", "pipe", "pipe"]
    })
    let stdout = ""
    let stderr = ""
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()))
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()))
    child.on("exit", (code) => resolve({ code, stdout, stderr }))
  })

describe("a store shared by several processes", () => {
  it("a fresh file opened by four processes at once: schema made once, every row once, no writer starved", async () => {
    const dir = tempDir("gw-shared-")
    dirs.push(dir)
    const path = Path.join(dir, "gateway.db")
    const results = await Promise.all(["p0", "p1", "p2", "p3"].map((id) => run(writer(path, id, 1_000))))
    expect(results.map((r) => ({ code: r.code, stderr: r.stderr }))).toEqual(results.map(() => ({ code: 0, stderr: "" })))
    const batches = results.map((r) => (JSON.parse(r.stdout) as { batches: number }).batches)
    // turns, not starvation: each process committed a fair share (starved: a handful of batches, then SQLITE_BUSY)
    const total = batches.reduce((a, b) => a + b, 0)
    for (const b of batches) expect(b).toBeGreaterThan(total / 4 / 3)

    const db = new DatabaseSync(path, { readOnly: true })
    try {
      const count = (sql: string) => (db.prepare(sql).get() as { n: number }).n
      expect(count("SELECT count(*) AS n FROM messages WHERE device = 'common'")).toBe(100)
      expect(count("SELECT count(*) AS n FROM messages")).toBe(100 + total * 500)
      // lastSeq with SQLite alone is read from messages: batches raise no device_state rows
      expect(count("SELECT max(seq) AS n FROM messages WHERE device = 'common' AND epoch = 0")).toBe(99)
      expect(count("SELECT count(*) AS n FROM device_state")).toBe(0)
    } finally {
      db.close()
    }
  }, 30_000)
})
