/**
 * The README's "Write your own stage" examples, kept honest: the smallest stage, its test, and
 * its catalog line, exactly as documented.
 */
import { expect, it } from "@effect/vitest"
import { Effect, Schema } from "effect"
import type { Envelope } from "../../src/domain/Envelope.ts"
import * as Stage from "../../src/pipeline/Stage.ts"

/** Tags every message with the site it came from. */
const siteTag = (site: string) => Stage.map("site-tag", (e: Envelope) => ({ ...e, site }))

const envelope = (seq: number): Envelope => ({
  device: "dev-1",
  epoch: 0,
  seq,
  kind: "telemetry",
  deviceTs: seq,
  receivedAt: seq,
  gateway: "gw",
  traceparent: null,
  body: { metrics: { v: seq } }
})

it.effect("tags every message", () =>
  Effect.gen(function*() {
    const runner = yield* Stage.build(siteTag("plant-1"))
    const outcome = yield* runner.run([envelope(1), envelope(2)])
    expect(outcome.passed.map((e) => e.site)).toEqual(["plant-1", "plant-1"])
  }))

it("its catalog entry's options decode as documented", () => {
  const options = Schema.decodeUnknownSync(Schema.Struct({ site: Schema.String }))({ site: "plant-1" })
  const stage: Stage.Stage<Envelope, Envelope> = siteTag(options.site)
  expect(Effect.runSync(Stage.build(stage)).names).toEqual(["site-tag"])
})
