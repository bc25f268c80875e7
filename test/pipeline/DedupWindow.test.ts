import { describe, expect, it } from "@effect/vitest"
import { Schema } from "effect"
import * as Arbitrary from "effect/Arbitrary"
import { DedupWindow } from "../../src/pipeline/DedupWindow.ts"

const int = (minimum: number, maximum: number) => Schema.Int.check(Schema.isBetween({ minimum, maximum }))

const DEVICES = ["dev-0", "dev-1", "dev-2"] as const

/**
 * One operation. `epoch` 0..2 is taken literally, 3..4 means "the device's current epoch" (so
 * runs stay in one epoch long enough to fill windows). `seqMode` 0: `n` as is; 1: a little
 * above the current top; 2: a little below it (inside or just outside the window).
 */
const Op = Schema.Struct({
  mark: Schema.Boolean,
  begin: Schema.Boolean,
  device: int(0, 2),
  epoch: int(0, 4),
  seqMode: int(0, 2),
  n: int(0, 300)
})

/** The model: per device, its current epoch and every seq marked in it. */
interface ModelEntry {
  epoch: number
  committed: Set<number>
  top: number
}

const modelMark = (model: Map<string, ModelEntry>, device: string, epoch: number, seq: number) => {
  const m = model.get(device)
  if (m === undefined || epoch > m.epoch) {
    model.set(device, { epoch, committed: new Set([seq]), top: seq })
  } else if (epoch === m.epoch) {
    m.committed.add(seq)
    m.top = Math.max(m.top, seq)
  } // an older epoch is ignored
}

const assertAgrees = (
  w: DedupWindow,
  model: Map<string, ModelEntry>,
  device: string,
  epoch: number,
  seq: number
) => {
  const got = w.isCommitted(device, epoch, seq)
  const m = model.get(device)
  const has = m !== undefined && m.epoch === epoch && m.committed.has(seq)
  // (i) no false positives
  if (got && !has) expect.unreachable(`false positive for ${device}/${epoch}/${seq}`)
  // (ii) complete inside the window of the current epoch
  const inWindow = m !== undefined && m.epoch === epoch && seq <= m.top && seq > m.top - w.size
  if (has && inWindow && !got) expect.unreachable(`missed ${device}/${epoch}/${seq} (top ${m.top}, size ${w.size})`)
}

describe("DedupWindow", () => {
  it.prop(
    "agrees with a map-of-sets model: no false positives, complete inside the window",
    {
      size: Schema.Literals([32, 64]),
      ops: Arbitrary.array(Arbitrary.schema(Op), { maxLength: 250 })
    },
    ({ ops, size }) => {
      const w = new DedupWindow(size, DEVICES.length)
      expect(w.size).toBe(size)
      const model = new Map<string, ModelEntry>()
      let maxSeq = 0
      for (const op of ops) {
        const device = DEVICES[op.device]!
        const current = model.get(device)
        const epoch = op.epoch <= 2 ? op.epoch : current?.epoch ?? 0
        const top = current !== undefined && current.epoch === epoch ? current.top : 0
        const seq = op.seqMode === 0 ? op.n : op.seqMode === 1 ? top + (op.n % 40) : Math.max(0, top - (op.n % 80))
        maxSeq = Math.max(maxSeq, seq)
        if (op.mark) {
          if (op.begin) w.beginBatch()
          w.markCommitted(device, epoch, seq)
          modelMark(model, device, epoch, seq)
          assertAgrees(w, model, device, epoch, seq)
        } else {
          assertAgrees(w, model, device, epoch, seq)
        }
      }
      // final sweep over everything
      for (const device of DEVICES) {
        for (let epoch = 0; epoch <= 2; epoch++) {
          for (let seq = 0; seq <= maxSeq + 1; seq++) assertAgrees(w, model, device, epoch, seq)
        }
      }
      expect(w.deviceCount).toBe(model.size)
    },
    { arbitrary: { runs: 200, size: 250 } }
  )

  it("rounds the window size up to a multiple of 32", () => {
    expect(new DedupWindow(1, 4).size).toBe(32)
    expect(new DedupWindow(32, 4).size).toBe(32)
    expect(new DedupWindow(33, 4).size).toBe(64)
    expect(new DedupWindow(64, 4).size).toBe(64)
    expect(new DedupWindow(100, 4).size).toBe(128)
    expect(new DedupWindow(1024, 4).size).toBe(1024)
  })

  it("uses the rounded size as the window: a requested 33 remembers 64 seqs", () => {
    const w = new DedupWindow(33, 4)
    for (let s = 0; s <= 100; s++) w.markCommitted("d", 0, s)
    expect(w.isCommitted("d", 0, 37)).toBe(true) // 100 - 64 < 37
    expect(w.isCommitted("d", 0, 36)).toBe(false) // slid out
    expect(w.isCommitted("d", 0, 100)).toBe(true)
    expect(w.isCommitted("d", 0, 101)).toBe(false)
  })

  it("keeps at most maxDevices devices, evicting the least recently marked first", () => {
    const w = new DedupWindow(32, 2)
    w.beginBatch()
    w.markCommitted("a", 0, 1)
    w.markCommitted("b", 0, 1)
    w.beginBatch()
    w.markCommitted("c", 0, 1)
    expect(w.deviceCount).toBe(2)
    expect(w.isCommitted("a", 0, 1)).toBe(false) // evicted
    expect(w.isCommitted("b", 0, 1)).toBe(true)
    expect(w.isCommitted("c", 0, 1)).toBe(true)
  })

  it("a device re-marked in a later batch survives eviction", () => {
    const w = new DedupWindow(32, 2)
    w.beginBatch()
    w.markCommitted("a", 0, 1)
    w.markCommitted("b", 0, 1)
    w.beginBatch()
    w.markCommitted("a", 0, 2) // refreshes a: b is now the least recently marked
    w.beginBatch()
    w.markCommitted("c", 0, 1)
    expect(w.deviceCount).toBe(2)
    expect(w.isCommitted("a", 0, 1)).toBe(true)
    expect(w.isCommitted("a", 0, 2)).toBe(true)
    expect(w.isCommitted("b", 0, 1)).toBe(false) // evicted
    expect(w.isCommitted("c", 0, 1)).toBe(true)
  })

  it("refreshes the LRU position once per batch (a re-mark in the same batch does not move it)", () => {
    const w = new DedupWindow(32, 2)
    w.beginBatch()
    w.markCommitted("a", 0, 1)
    w.markCommitted("b", 0, 1)
    w.markCommitted("a", 0, 2) // same batch: position unchanged
    w.beginBatch()
    w.markCommitted("c", 0, 1)
    expect(w.isCommitted("a", 0, 1)).toBe(false)
    expect(w.isCommitted("b", 0, 1)).toBe(true)

    // same for a device that already existed: only its first mark of the batch moves it
    const v = new DedupWindow(32, 2)
    v.beginBatch()
    v.markCommitted("a", 0, 1)
    v.markCommitted("b", 0, 1)
    v.beginBatch()
    v.markCommitted("a", 0, 2) // moves a behind b
    v.markCommitted("b", 0, 2) // moves b behind a
    v.markCommitted("a", 0, 3) // same batch again: no move, a stays the oldest
    v.beginBatch()
    v.markCommitted("c", 0, 1)
    expect(v.isCommitted("a", 0, 3)).toBe(false)
    expect(v.isCommitted("b", 0, 2)).toBe(true)
    expect(v.isCommitted("c", 0, 1)).toBe(true)
  })

  it("stays bounded under many devices", () => {
    const w = new DedupWindow(64, 100)
    for (let i = 0; i < 1000; i++) {
      if (i % 10 === 0) w.beginBatch()
      w.markCommitted(`d${i}`, 0, i)
      expect(w.deviceCount).toBeLessThanOrEqual(100)
    }
    expect(w.deviceCount).toBe(100)
    // the 100 most recent survive, the rest were evicted
    expect(w.isCommitted("d999", 0, 999)).toBe(true)
    expect(w.isCommitted("d900", 0, 900)).toBe(true)
    expect(w.isCommitted("d899", 0, 899)).toBe(false)
  })

  it("devices committed in every batch survive a stream of one-off devices (second chance)", () => {
    const w = new DedupWindow(32, 50)
    for (let batch = 0; batch < 200; batch++) {
      w.beginBatch()
      for (let h = 0; h < 10; h++) w.markCommitted(`hot${h}`, 0, batch)
      for (let c = 0; c < 7; c++) w.markCommitted(`cold${batch}-${c}`, 0, 1)
      expect(w.deviceCount).toBeLessThanOrEqual(50)
    }
    for (let h = 0; h < 10; h++) expect(w.isCommitted(`hot${h}`, 0, 199)).toBe(true)
    // the most recent one-off devices are still there, the old ones were evicted
    expect(w.isCommitted("cold199-6", 0, 1)).toBe(true)
    expect(w.isCommitted("cold0-0", 0, 1)).toBe(false)
    expect(w.deviceCount).toBe(50)
  })

  it("ignores older epochs and resets on a newer one", () => {
    const w = new DedupWindow(32, 4)
    w.markCommitted("d", 1, 10)
    w.markCommitted("d", 0, 11) // older epoch: ignored
    expect(w.isCommitted("d", 0, 11)).toBe(false)
    expect(w.isCommitted("d", 1, 10)).toBe(true)
    w.markCommitted("d", 2, 3) // newer epoch: reset
    expect(w.isCommitted("d", 1, 10)).toBe(false)
    expect(w.isCommitted("d", 2, 3)).toBe(true)
    expect(w.isCommitted("d", 2, 10)).toBe(false)
  })

  it("a jump of a full window or more forgets the old window", () => {
    const w = new DedupWindow(32, 4)
    for (let s = 0; s < 32; s++) w.markCommitted("d", 0, s)
    w.markCommitted("d", 0, 63) // 63 - 31 = 32 >= size
    for (let s = 32; s < 63; s++) expect(w.isCommitted("d", 0, s)).toBe(false)
    expect(w.isCommitted("d", 0, 63)).toBe(true)
    w.markCommitted("d", 0, 65) // slides by 2: 32, 33 leave, 64 stays unmarked
    expect(w.isCommitted("d", 0, 64)).toBe(false)
    expect(w.isCommitted("d", 0, 63)).toBe(true)
    expect(w.isCommitted("d", 0, 65)).toBe(true)
  })
})
