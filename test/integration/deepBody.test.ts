/**
 * A body nested 5,000 levels deep (an event's free-form `data`; 30 KB, under the frame limit) as
 * the gateway process gets it: that message alone is nacked `invalid` (retry false), kept as a
 * dead letter in a bounded form that never re-serializes the deep value, and logged in one line;
 * the connection and the rest of the traffic go on.
 *
 * Failed before issue 8 (Hardening): the store's serializer overflowed the stack, the message was
 * nacked, and building its dead letter overflowed again, silently: no dead letter, no log line.
 */
import { afterEach, describe, expect, it } from "@effect/vitest"
import * as Fs from "node:fs"
import { Device, event, telemetry } from "../support/client.ts"
import { tempDir } from "../support/gateway.ts"
import { killChildren, logLines, messageOf, startChild } from "../support/process.ts"
import { deadLetters, rows } from "../support/store.ts"

const dirs: Array<string> = []

afterEach(async () => {
  await killChildren()
  for (const dir of dirs.splice(0)) Fs.rmSync(dir, { recursive: true, force: true })
})

const DEPTH = 5_000

/** An event frame whose `data` nests `depth` objects, as raw text (JSON.stringify would overflow building it). */
const deepEvent = (seq: number, depth: number) =>
  `{"type":"event","seq":${seq},"ts":1700000000000,"body":{"name":"deep","data":${'{"a":'.repeat(depth)}1${"}".repeat(depth)}}}\n`

describe("a body nested too deep to store", () => {
  it("is nacked invalid, dead-lettered in a bounded form and logged once; the rest goes on", async () => {
    const dataDir = tempDir("gw-deep-")
    dirs.push(dataDir)
    const g = await startChild(dataDir)
    const { d } = await Device.open(g.port, "dev-deep")
    d.send(telemetry(1), deepEvent(2, DEPTH), event(3), telemetry(4))
    const answers = await d.take(4)
    expect(answers[0]).toEqual({ type: "ack", seq: 1 })
    expect(answers[1]).toMatchObject({ type: "nack", seq: 2, code: "invalid", retry: false })
    expect(String(answers[1]!["message"])).toMatch(/nested deeper than \d+ levels/)
    expect(answers[2]).toEqual({ type: "ack", seq: 3 })
    expect(answers[3]).toEqual({ type: "ack", seq: 4 })
    expect(rows(dataDir, "dev-deep").map((r) => r.seq)).toEqual([1, 3, 4])

    // the dead letter was stored before the nack was written
    const dead = deadLetters(dataDir)
    expect(dead.map((r) => [r.device, r.seq, r.kind])).toEqual([["dev-deep", 2, "event"]])
    expect(dead[0]!.reason).toMatch(/nested deeper than \d+ levels/)
    expect(dead[0]!.envelope.length).toBeLessThan(8 * 1024)
    const envelope = JSON.parse(dead[0]!.envelope) as Record<string, unknown>
    expect(envelope).toMatchObject({ device: "dev-deep", epoch: 0, seq: 2, kind: "event", deviceTs: 1_700_000_000_000 })
    // the body as JSON text, cut short: what an operator needs to recognise the message
    expect(typeof envelope["body"]).toBe("string")
    expect(String(envelope["body"])).toMatch(/^\{"name":"deep","data":\{"a":\{"a":\{"a":.*…$/)

    // one log line for it, naming the message
    const lines = logLines(g.output()).filter((l) => /nested deeper/.test(messageOf(l)))
    expect(lines).toHaveLength(1)
    expect(lines[0]!.level).toBe("WARN")
    expect(lines[0]!.annotations).toMatchObject({ device: "dev-deep", seq: 2, messages: 1 })
    expect(g.output().length).toBeLessThan(64 * 1024) // the value itself is not logged

    // the same device and connection keep working
    d.send(telemetry(5))
    expect(await d.next()).toEqual({ type: "ack", seq: 5 })
  })
})
