/**
 * The configuration's integers are decimal: a value JavaScript's `Number` would read another
 * way (`0x10` → 16, `1e3` → 1000, ` 7` → 7) is refused with the variable's name, not bound to.
 */
import { describe, expect, it } from "@effect/vitest"
import { ConfigProvider, Effect } from "effect"
import { describeConfigError, gatewayConfig } from "../../src/config/GatewayConfig.ts"

const read = (env: Record<string, string>) =>
  Effect.runPromise(Effect.result(gatewayConfig).pipe(Effect.provide(ConfigProvider.layer(ConfigProvider.fromEnvRecord(env)))))

describe("GatewayConfig", () => {
  it("reads decimal integers", async () => {
    const r = await read({ GATEWAY_PORT: "16", GATEWAY_MEMORY_BUDGET: "2097152" })
    expect(r._tag).toBe("Success")
    if (r._tag === "Success") {
      expect(r.success.port).toBe(16)
      expect(r.success.memoryBudget).toBe(2_097_152)
    }
  })

  it.each(["0x10", "1e3", " 7", "7 ", "+7", "1.5"])("refuses GATEWAY_PORT=%j with one line naming it", async (value) => {
    const r = await read({ GATEWAY_PORT: value })
    expect(r._tag).toBe("Failure")
    if (r._tag === "Failure") expect(describeConfigError(r.failure)).toMatch(/^invalid configuration: .*GATEWAY_PORT/)
  })

  it("defaults the memory budget from the machine: an eighth of it, between 64 and 512 MiB", async () => {
    const r = await read({})
    expect(r._tag).toBe("Success")
    if (r._tag === "Success") {
      expect(r.success.memoryBudget).toBeGreaterThanOrEqual(64 * 1024 * 1024)
      expect(r.success.memoryBudget).toBeLessThanOrEqual(512 * 1024 * 1024)
    }
  })
})
