/**
 * The WAL-restart hand-shake between the SQLite checkpointer and writer (WalRestart.ts), with the
 * writer's side on a real worker thread that calls `holdIfWanted` between "batches" (every ms)
 * and reports how long its longest hold was:
 * - the checkpointer's work runs while the writer holds, and the writer goes on once it is done;
 * - a hold never outlasts the time the checkpointer allowed, however long its work takes;
 * - a writer that never comes (idle) costs the checkpointer `reachMs`, and its work is skipped.
 */
import { afterEach, describe, expect, it } from "@effect/vitest"
import { Worker } from "node:worker_threads"

import { WalRestart } from "../../../src/sinks/sqlite/WalRestart.ts"

const MODULE = new URL("../../../src/sinks/sqlite/WalRestart.ts", import.meta.url).href

/** A writer thread: holds when asked between 1 ms "batches" until told to stop, then posts its longest hold. */
const WRITER = `
const { workerData, parentPort } = require("node:worker_threads")
import(workerData.module).then(({ WalRestart }) => {
  const restart = new WalRestart(workerData.slots)
  const pause = new Int32Array(new SharedArrayBuffer(4))
  let longest = 0
  let holds = 0
  const loop = () => {
    for (let i = 0; i < 20; i++) {
      const t = performance.now()
      restart.holdIfWanted()
      const d = performance.now() - t
      if (d > 1) holds++
      longest = Math.max(longest, d)
      Atomics.wait(pause, 0, 0, 1)
    }
    if (Atomics.load(workerData.stop, 0) === 1) parentPort.postMessage({ longest, holds })
    else setImmediate(loop)
  }
  parentPort.postMessage("ready")
  loop()
})
`

const workers: Array<Worker> = []
afterEach(async () => {
  for (const w of workers.splice(0)) await w.terminate()
})

const startWriter = async (slots: Int32Array) => {
  const stop = new Int32Array(new SharedArrayBuffer(4))
  const worker = new Worker(WRITER, { eval: true, workerData: { module: MODULE, slots, stop } })
  workers.push(worker)
  await new Promise<void>((resolve, reject) => {
    worker.once("message", () => resolve())
    worker.once("error", reject)
  })
  return {
    /** Stops the writer's loop and resolves with its longest hold (ms) and how many holds it made. */
    finish: () =>
      new Promise<{ longest: number; holds: number }>((resolve, reject) => {
        worker.once("message", resolve)
        worker.once("error", reject)
        Atomics.store(stop, 0, 1)
      })
  }
}

/** Blocks this thread for `ms` (the checkpointer's work, as a stand-in for a checkpoint pass). */
const block = (ms: number) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms)

describe("WAL restart hand-shake", () => {
  it("runs the work while the writer holds, and the writer goes on once it is done", async () => {
    const slots = WalRestart.shared()
    const writer = await startWriter(slots)
    let ran = false
    new WalRestart(slots).whileWriterHolds(1_000, 1_000, () => {
      ran = true
      block(40)
    })
    const { longest, holds } = await writer.finish()
    expect(ran).toBe(true)
    expect(holds).toBe(1)
    expect(longest).toBeGreaterThanOrEqual(35)
    expect(longest).toBeLessThan(500)
  })

  it("a hold never outlasts the time the checkpointer allowed", async () => {
    const slots = WalRestart.shared()
    const writer = await startWriter(slots)
    let ran = false
    new WalRestart(slots).whileWriterHolds(20, 1_000, () => {
      ran = true
      block(400)
    })
    const { longest } = await writer.finish()
    expect(ran).toBe(true)
    expect(longest).toBeGreaterThanOrEqual(15)
    expect(longest).toBeLessThan(200)
  })

  it("a writer that never comes costs the checkpointer its reach time, and the work is skipped", () => {
    const slots = WalRestart.shared()
    let ran = false
    const started = performance.now()
    new WalRestart(slots).whileWriterHolds(1_000, 30, () => {
      ran = true
    })
    const took = performance.now() - started
    expect(ran).toBe(false)
    expect(took).toBeGreaterThanOrEqual(25)
    expect(took).toBeLessThan(500)
    // the request is withdrawn: a writer that comes later does not hold
    const later = performance.now()
    new WalRestart(slots).holdIfWanted()
    expect(performance.now() - later).toBeLessThan(5)
  })
})
