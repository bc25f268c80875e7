/**
 * How a stopped message is answered: one nack code per taxonomy class (DESIGN.md), acks for
 * settlements, and the protocol's rules (events are never shed; retry hints where PROTOCOL.md
 * asks for them).
 */
import { describe, expect, it } from "@effect/vitest"
import {
  AuthError,
  OverloadError,
  PermanentPersistenceError,
  TransientUpstreamError,
  ValidationError
} from "../../src/domain/Errors.ts"
import { answerOf } from "../../src/pipeline/Answer.ts"
import * as Stage from "../../src/pipeline/Stage.ts"

const frame = (stop: Parameters<typeof answerOf>[1], kind: "telemetry" | "event" = "telemetry") => {
  const answer = answerOf(7, stop, kind)
  return { outcome: answer.outcome, frame: JSON.parse(answer.frame) as Record<string, unknown> }
}

describe("answerOf", () => {
  it("acks settlements", () => {
    expect(frame(Stage.committed)).toEqual({ outcome: "committed", frame: { type: "ack", seq: 7 } })
    expect(frame(Stage.duplicate)).toEqual({ outcome: "duplicate", frame: { type: "ack", seq: 7, dup: true } })
    expect(frame(Stage.dropped)).toEqual({ outcome: "dropped", frame: { type: "ack", seq: 7 } })
  })

  it("nacks each taxonomy class with its code", () => {
    const cases = [
      [new ValidationError({ message: "bad" }), "invalid", false, "invalid"],
      [new AuthError({ reason: "forbidden", message: "no" }), "forbidden", false, "forbidden"],
      [new TransientUpstreamError({ sink: "inventory", message: "down" }), "unavailable", true, "unavailable"],
      [new PermanentPersistenceError({ sink: "sqlite", message: "too big" }), "invalid", false, "rejected"],
      [new OverloadError({ reason: "rate_limited", retryAfterMs: 250 }), "rate_limited", true, "rate_limited"],
      [new OverloadError({ reason: "shed" }), "shed", false, "shed"]
    ] as const
    for (const [error, code, retry, outcome] of cases) {
      const { frame: f, outcome: o } = frame(Stage.reject(error))
      expect({ tag: error._tag, code: f["code"], retry: f["retry"], outcome: o }).toEqual({ tag: error._tag, code, retry, outcome })
    }
    expect(frame(Stage.reject(new OverloadError({ reason: "rate_limited", retryAfterMs: 250 }))).frame["retryAfterMs"]).toBe(250)
    expect(frame(Stage.reject(new TransientUpstreamError({ sink: "x", message: "y" }))).frame["retryAfterMs"]).toBe(1000)
  })

  it("never sheds an event, and gives rate limits a retry hint", () => {
    expect(frame(Stage.reject(new OverloadError({ reason: "shed" })), "event").frame).toMatchObject({
      code: "unavailable",
      retry: true,
      retryAfterMs: 1000
    })
    expect(frame(Stage.reject(new OverloadError({ reason: "busy" }))).frame).toMatchObject({
      code: "rate_limited",
      retry: true,
      retryAfterMs: 1000
    })
  })

  it("answers an error outside the taxonomy (past the types) like a bug, never not at all", () => {
    const alien = { _tag: "SomethingElse", message: "?" } as unknown as ValidationError
    expect(frame(Stage.reject(alien)).frame).toMatchObject({ type: "nack", seq: 7, code: "unavailable", retry: true })
  })

  it("nacks a stage's bug unavailable with a longer retry hint", () => {
    const bug = new Stage.StageDefect({ stage: "s", message: "stage s failed: boom", cause: new Error("boom") })
    expect(frame(new Stage.Rejected(bug)).frame).toMatchObject({ code: "unavailable", retry: true, retryAfterMs: 5000 })
  })
})
