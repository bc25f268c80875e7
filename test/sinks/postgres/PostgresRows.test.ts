/**
 * Envelopes as the INSERT's column arrays (PostgresRows.ts): the columns as SQLite's store writes
 * them (JSON body, annotations, traceparent), a message that cannot be a row refused alone, and
 * the keys the INSERT returned matched back to the rows: in order (one pass), with a key twice
 * in the rows, and in another order (matched as a set).
 */
import { describe, expect, it } from "@effect/vitest"
import type { Envelope } from "../../../src/domain/Envelope.ts"
import { insertedRows, prepareRows, sliceRows } from "../../../src/sinks/postgres/PostgresRows.ts"
import { eventEnvelope, telemetryEnvelope } from "../../support/envelopes.ts"

describe("prepareRows", () => {
  it("makes one array per column; body and annotations as JSON text; integers as bigint", () => {
    const batch: Array<Envelope> = [
      { ...telemetryEnvelope("d1", 1, { temp: 2.5 }, { site: "x" }), traceparent: "00-aa-bb-01" },
      { ...eventEnvelope("d2", 9, "boot"), alerts: [{ level: "high" }] } as Envelope
    ]
    const { rows, refused } = prepareRows(batch)
    expect(refused.size).toBe(0)
    expect(rows).toEqual({
      positions: [0, 1],
      device: ["d1", "d2"],
      epoch: [1n, 1n],
      seq: [1n, 9n],
      kind: ["telemetry", "event"],
      deviceTs: [1_700_000_000_001n, 1_700_000_000_009n],
      receivedAt: [1_700_000_000_501n, 1_700_000_000_509n],
      gateway: ["gw-test", "gw-test"],
      traceparent: ["00-aa-bb-01", null],
      body: [`{"metrics":{"temp":2.5},"tags":{"site":"x"}}`, `{"name":"boot"}`],
      annotations: [null, `{"alerts":[{"level":"high"}]}`]
    })
  })

  it("refuses a message whose integers are not integers, or whose added fields JSON cannot hold, alone", () => {
    const batch: Array<Envelope> = [
      telemetryEnvelope("d", 1),
      { ...telemetryEnvelope("d", 2), deviceTs: 1.5 },
      { ...telemetryEnvelope("d", 3), big: 10n } as Envelope,
      telemetryEnvelope("d", 2 ** 53),
      telemetryEnvelope("d", 5)
    ]
    const { rows, refused } = prepareRows(batch)
    expect(rows.positions).toEqual([0, 4])
    expect(rows.seq).toEqual([1n, 5n])
    expect(rows.body).toHaveLength(2)
    expect([...refused.keys()]).toEqual([1, 2, 3])
    expect(refused.get(1)).toMatch(/deviceTs 1.5 is not an integer/)
    expect(refused.get(2)).toMatch(/BigInt/)
    expect(refused.get(3)).toMatch(/seq 9007199254740992 is not an integer/)
  })

  it("slices rows", () => {
    const { rows } = prepareRows([telemetryEnvelope("a", 1), telemetryEnvelope("b", 2), telemetryEnvelope("c", 3)])
    const part = sliceRows(rows, 1, 3)
    expect(part.positions).toEqual([1, 2])
    expect(part.device).toEqual(["b", "c"])
    expect(part.annotations).toEqual([null, null])
  })
})

describe("insertedRows", () => {
  const { rows } = prepareRows([
    telemetryEnvelope("a", 1),
    telemetryEnvelope("b", 1),
    telemetryEnvelope("a", 1),
    telemetryEnvelope("c", 1),
    telemetryEnvelope("b", 2)
  ])

  it("matches the returned keys in the rows' order; a later row of a key inserted earlier is not inserted", () => {
    expect([...insertedRows(rows, [["a", 1n, 1n], ["b", 1n, 1n], ["b", 1n, 2n]])]).toEqual([1, 1, 0, 0, 1])
    expect([...insertedRows(rows, [])]).toEqual([0, 0, 0, 0, 0])
    // an integer epoch column comes back as a number
    expect([...insertedRows(rows, [["c", 1, 1n]])]).toEqual([0, 0, 0, 1, 0])
  })

  it("matches keys returned in another order as a set (the first row of each key)", () => {
    expect([...insertedRows(rows, [["b", 1n, 2n], ["c", 1n, 1n], ["a", 1n, 1n]])]).toEqual([1, 0, 0, 1, 1])
  })
})
