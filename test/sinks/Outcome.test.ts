/**
 * The driver contract's outcome codes are the commit stage's: the SQLite writer thread uses Outcome (free of imports) and the router passes a driver.s
 * outcomes through unchanged, so the numbers must stay the same.
 */
import { describe, expect, it } from "@effect/vitest"
import { MessageOutcome } from "../../src/sinks/Contract.ts"
import { Outcome } from "../../src/sinks/Outcome.ts"

describe("Outcome", () => {
  it("MessageOutcome and Outcome are the same codes", () => {
    expect(MessageOutcome).toEqual(Outcome)
  })
})
