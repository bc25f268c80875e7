/**
 * Messages that nest too deep (or in a circle) to serialize, in a running gateway with user
 * stages: refused before the store (`nack invalid`), and dead letters that keep them in a bounded
 * form written without recursion, whichever stage refused them. Plus the bounded JSON writer.
 *
 * The gateway cases failed before issue 8 (Hardening): a dead letter was serialized whole and
 * recursively, which overflowed the stack for a deep message, so it was lost (and the batch's
 * other dead letters with it); a field a stage added 5,000 levels deep was refused by the store,
 * whose own dead letter overflowed the same way; nothing bounded how deep a stored message nests.
 */
import { afterEach, describe, expect, it } from "@effect/vitest"
import { Schema } from "effect"
import type { Envelope } from "../../src/domain/Envelope.ts"
import { ValidationError } from "../../src/domain/Errors.ts"
import { boundedJson } from "../../src/pipeline/Persistence.ts"
import { Pipeline } from "../../src/pipeline/Pipeline.ts"
import * as Stage from "../../src/pipeline/Stage.ts"
import { Device, telemetry } from "../support/client.ts"
import { startGateway, type TestGateway } from "../support/gateway.ts"
import { deadLetters, rows } from "../support/store.ts"

const running: Array<TestGateway> = []

afterEach(async () => {
  for (const g of running.splice(0)) await g.stop()
})

/** 128 levels, counting the body as level 1 (README). */
const MAX_NESTING = 128

/** A value nesting `depth` objects (itself level 1), built without recursion. */
const nested = (depth: number): object => {
  let v: object = { leaf: 1 }
  for (let i = 1; i < depth; i++) v = { a: v }
  return v
}

/** An event frame whose body nests `depth` levels (the body itself is level 1), as raw text. */
const eventNesting = (seq: number, depth: number, name = "deep") =>
  `{"type":"event","seq":${seq},"ts":1700000000000,"body":{"name":"${name}","data":${'{"a":'.repeat(depth - 2)}{"leaf":1}${
    "}".repeat(depth - 2)
  }}}\n`

const gatewayWith = async (stage: Stage.Stage<Envelope, Envelope, ValidationError>) => {
  const g = await startGateway({ GATEWAY_BATCH_LINGER_MS: "20" }, undefined, Pipeline.layer(stage))
  running.push(g)
  return g
}

describe("messages too deep to serialize, in a running gateway", () => {
  it("a stage's refusal of a 5,000-deep message is kept as a bounded dead letter (with the batch's others)", async () => {
    const strict = Stage.map("strict", (e: Envelope): Stage.Verdict<Envelope, ValidationError> =>
      e.kind === "event" || e.seq === 3 ? Stage.reject(new ValidationError({ message: "not for us" })) : e)
    const g = await gatewayWith(strict)
    const { d } = await Device.open(g.port, "dev-strict")
    d.send(telemetry(1), eventNesting(2, 5_000), telemetry(3))
    const answers = await d.take(3)
    expect(answers.map((a) => [a.type, a["seq"], a["code"]])).toEqual([["ack", 1, undefined], ["nack", 2, "invalid"], [
      "nack",
      3,
      "invalid"
    ]])
    const dead = deadLetters(g.dataDir)
    expect(dead.map((r) => [r.seq, r.reason])).toEqual([[2, "stage strict: not for us"], [3, "stage strict: not for us"]])
    const deep = JSON.parse(dead[0]!.envelope) as Record<string, unknown>
    expect(deep).toMatchObject({ device: "dev-strict", seq: 2, kind: "event" })
    expect(String(deep["body"])).toMatch(/^\{"name":"deep","data":\{"a":\{"a":.*…$/)
    expect(dead[0]!.envelope.length).toBeLessThan(8 * 1024)
    // a message that nests little is kept whole, as before
    expect(JSON.parse(dead[1]!.envelope)).toMatchObject({ seq: 3, body: { metrics: { t: 3 } } })
  })

  it("a field a stage added 5,000 levels deep: nacked invalid before the store, dead-lettered as it entered", async () => {
    const deepener = Stage.map("deepener", (e: Envelope) => (e.seq === 2 ? { ...e, extra: nested(5_000) } : e))
    const g = await gatewayWith(deepener)
    const { d } = await Device.open(g.port, "dev-deepener")
    d.send(telemetry(1), telemetry(2), telemetry(3))
    const answers = await d.take(3)
    expect(answers[0]).toEqual({ type: "ack", seq: 1 })
    expect(answers[1]).toMatchObject({ type: "nack", seq: 2, code: "invalid", retry: false })
    expect(String(answers[1]!["message"])).toContain(`nested deeper than ${MAX_NESTING} levels`)
    expect(answers[2]).toEqual({ type: "ack", seq: 3 })
    expect(rows(g.dataDir, "dev-deepener").map((r) => r.seq)).toEqual([1, 3])
    const dead = deadLetters(g.dataDir)
    expect(dead.map((r) => [r.seq, r.reason])).toEqual([[2, `nested deeper than ${MAX_NESTING} levels: cannot be stored as JSON`]])
    // kept as it entered the stages (README), so without the field that could not be stored
    const kept = JSON.parse(dead[0]!.envelope) as Record<string, unknown>
    expect(kept).toMatchObject({ seq: 2, body: { metrics: { t: 2 } } })
    expect(kept["extra"]).toBeUndefined()
  })

  it("a circular field a stage added: nacked invalid as circular, kept as it entered the stages", async () => {
    const circular = Stage.map("circular", (e: Envelope) => {
      if (e.seq !== 2) return e
      const loop: Record<string, unknown> = { name: "loop" }
      loop["self"] = loop
      return { ...e, loop }
    })
    const g = await gatewayWith(circular)
    const { d } = await Device.open(g.port, "dev-circular")
    d.send(telemetry(1), telemetry(2))
    const answers = await d.take(2)
    expect(answers[1]).toMatchObject({ type: "nack", seq: 2, code: "invalid" })
    expect(String(answers[1]!["message"])).toContain("circular: cannot be stored as JSON")
    const dead = deadLetters(g.dataDir)
    expect(dead.map((r) => r.seq)).toEqual([2])
    expect(dead[0]!.reason).toBe("circular: cannot be stored as JSON")
    expect(JSON.parse(dead[0]!.envelope)).toMatchObject({ seq: 2, body: { metrics: { t: 2 } } })
  })

  it(`a body nesting ${MAX_NESTING} levels is stored; ${MAX_NESTING + 1} levels is refused`, async () => {
    const g = await gatewayWith(Stage.identity<Envelope>())
    const { d } = await Device.open(g.port, "dev-edge")
    d.send(eventNesting(1, MAX_NESTING, "edge"), eventNesting(2, MAX_NESTING + 1, "over"))
    const answers = await d.take(2)
    expect(answers[0]).toEqual({ type: "ack", seq: 1 })
    expect(answers[1]).toMatchObject({ type: "nack", seq: 2, code: "invalid" })
    expect(rows(g.dataDir, "dev-edge").map((r) => r.seq)).toEqual([1])
    expect(deadLetters(g.dataDir).map((r) => r.seq)).toEqual([2])
  })
})

describe("boundedJson", () => {
  it.prop("writes what JSON.stringify writes when the text fits", { value: Schema.Json }, ({ value }) => {
    expect(boundedJson(value, 1_000_000)).toBe(JSON.stringify(value))
  })

  it("writes toJSON results, leaves out undefined and functions, and writes null for them in arrays", () => {
    const value = { at: new Date(0), skip: undefined, f: () => 1, list: [undefined, () => 1, 1, Number.NaN], n: -0 }
    expect(boundedJson(value, 1_000)).toBe(JSON.stringify(value))
  })

  it("cuts the text after maxChars, marked with …, at any depth and without recursion", () => {
    const text = boundedJson(nested(200_000), 100)
    expect(text).toHaveLength(101)
    expect(text.endsWith("…")).toBe(true)
    expect(boundedJson(["x".repeat(10_000)], 50)).toBe(`["${"x".repeat(48)}…`)
  })

  it("writes a cycle as \"[cycle]\", a BigInt as \"<n>n\", and never throws", () => {
    const loop: Record<string, unknown> = { a: [1] }
    loop["self"] = loop
    expect(boundedJson({ loop, big: 10n }, 1_000)).toBe(`{"loop":{"a":[1],"self":"[cycle]"},"big":"10n"}`)
    const shared = { x: 1 }
    expect(boundedJson([shared, shared], 100)).toBe(`[{"x":1},{"x":1}]`) // the same object twice is no cycle
    const throwing = { ok: 1, get bad(): number { throw new Error("getter") } }
    expect(boundedJson(throwing, 100)).toBe(`{"ok":1…`)
  })
})
