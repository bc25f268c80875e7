/**
 * The batch span processor's rules (OTEL_BSP_*): a full batch goes at once, a partial one after
 * the schedule delay, one export at a time, a full queue drops (and counts) instead of waiting,
 * an export past its timeout is given up so the next can go, and a flush exports what is queued.
 */
import { describe, expect, it } from "@effect/vitest"
import { type ExportBatch, SpanBatcher } from "../../src/observability/SpanBatcher.ts"

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

/** An export that records its batches and answers when told (`auto`: at once). */
const recorder = (auto: boolean) => {
  const batches: Array<Array<number>> = []
  const pending: Array<(ok: boolean) => void> = []
  const exportBatch: ExportBatch<number> = (batch, done) => {
    batches.push([...batch])
    if (auto) done(true)
    else pending.push(done)
  }
  return { batches, pending, exportBatch }
}

const settings = { scheduledDelayMillis: 50, maxQueueSize: 10, maxExportBatchSize: 4, exportTimeoutMillis: 10_000 }

/** Resolves after the current turn of the event loop. */
const nextTurn = () => new Promise<void>((resolve) => setImmediate(resolve))

describe("SpanBatcher", () => {
  it("exports a full batch at once and a partial one after the schedule delay", async () => {
    const r = recorder(true)
    const b = new SpanBatcher(settings, r.exportBatch)
    for (let i = 1; i <= 5; i++) b.add(i)
    expect(r.batches).toEqual([[1, 2, 3, 4]])
    await sleep(20)
    expect(r.batches).toHaveLength(1)
    await sleep(80)
    expect(r.batches).toEqual([[1, 2, 3, 4], [5]])
    expect(b.takeCounts()).toEqual({ dropped: 0, failed: 0 })
  })

  it("an exporter that fails at once (its concurrency limit) does not recurse through the queue", async () => {
    let calls = 0
    let first: ((ok: boolean) => void) | undefined
    // the first export hangs; every later one fails inside the call, as OTel's does at its limit
    const exportBatch: ExportBatch<number> = (_batch, done) => {
      calls++
      if (first === undefined) first = done
      else done(false)
    }
    const b = new SpanBatcher({ ...settings, maxQueueSize: 100_000, maxExportBatchSize: 1 }, exportBatch)
    for (let i = 0; i < 100_000; i++) b.add(i)
    expect(calls).toBe(1)
    first!(false) // before: 99,999 exports failing into each other in this one call (a stack overflow)
    expect(calls).toBe(1)
    await nextTurn()
    expect(calls).toBe(2)
    await nextTurn()
    expect(calls).toBe(3)
  })

  it("exports one batch at a time, drops what a full queue cannot hold, and counts it", async () => {
    const r = recorder(false)
    const b = new SpanBatcher(settings, r.exportBatch)
    for (let i = 1; i <= 20; i++) b.add(i)
    // the first batch left; 10 more fit the queue, 6 were dropped
    expect(r.batches).toEqual([[1, 2, 3, 4]])
    expect(b.size()).toBe(10)
    expect(b.takeCounts()).toEqual({ dropped: 6, failed: 0 })
    r.pending.shift()!(true)
    await nextTurn() // the next export starts on a later turn, never inside the last one's answer
    expect(r.batches).toEqual([[1, 2, 3, 4], [5, 6, 7, 8]])
    r.pending.shift()!(false)
    await nextTurn()
    expect(r.batches[2]).toEqual([9, 10, 11, 12])
    r.pending.shift()!(true)
    // two left: a partial batch, after the delay
    expect(r.batches).toHaveLength(3)
    await sleep(80)
    expect(r.batches[3]).toEqual([13, 14])
    r.pending.shift()!(true)
    expect(b.takeCounts()).toEqual({ dropped: 0, failed: 4 })
  })

  it("gives up an export past its timeout, so the next can go", async () => {
    const r = recorder(false)
    const b = new SpanBatcher({ ...settings, exportTimeoutMillis: 30 }, r.exportBatch)
    for (let i = 1; i <= 8; i++) b.add(i)
    expect(r.batches).toHaveLength(1)
    await sleep(60)
    expect(r.batches).toEqual([[1, 2, 3, 4], [5, 6, 7, 8]])
    r.pending[0]!(true) // a late answer changes nothing
    expect(b.takeCounts().failed).toBeGreaterThanOrEqual(4)
  })

  it("flushes what is queued at shutdown, batch after batch, and takes nothing after", async () => {
    const r = recorder(true)
    const b = new SpanBatcher({ ...settings, scheduledDelayMillis: 60_000 }, r.exportBatch)
    for (let i = 1; i <= 3; i++) b.add(i)
    expect(r.batches).toEqual([])
    await b.shutdown()
    expect(r.batches).toEqual([[1, 2, 3]])
    b.add(4)
    await b.flush()
    expect(r.batches).toEqual([[1, 2, 3]])
  })
})
