/** What each worker is told: the node's port, its own loopback admin port and id, its share of node-wide limits. */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { workerEnv, workerId } from "../../src/cluster/WorkerEnv.ts"
import { GatewayConfig } from "../../src/config/GatewayConfig.ts"

const config = (env: Record<string, string>) =>
  Effect.runPromise(Effect.service(GatewayConfig).pipe(Effect.provide(GatewayConfig.layerWith(env))))

describe("WorkerEnv", () => {
  it("fixes the port, gives each worker a loopback admin port, an id and its share of node-wide limits", async () => {
    const c = await config({
      GATEWAY_WORKERS: "3",
      GATEWAY_ID: "edge-7",
      GATEWAY_MAX_CONNECTIONS: "10000",
      GATEWAY_MEMORY_BUDGET: String(300 * 1024 * 1024),
      GATEWAY_ACCEPT_RATE: "2000",
      GATEWAY_ACCEPT_BURST: "1",
      GATEWAY_CRITICAL_QUEUE: "100"
    })
    const env = workerEnv({ PATH: "/bin", GATEWAY_CRITICAL_QUEUE: "100" }, c, 7100, 2)
    expect(env).toEqual({
      PATH: "/bin",
      GATEWAY_CRITICAL_QUEUE: "100",
      GATEWAY_WORKERS: "1",
      GATEWAY_REUSE_PORT: "true",
      GATEWAY_PORT: "7100",
      GATEWAY_ADMIN_HOST: "127.0.0.1",
      GATEWAY_ADMIN_PORT: "0",
      GATEWAY_ID: "edge-7-w2",
      GATEWAY_MAX_CONNECTIONS: "3334",
      GATEWAY_MEMORY_BUDGET: String(100 * 1024 * 1024),
      GATEWAY_ACCEPT_RATE: "667",
      GATEWAY_ACCEPT_BURST: "1",
      GATEWAY_WORKER_INDEX: "2"
    })
    // what a worker is told is valid configuration
    expect((await config(env as Record<string, string>)).gatewayId).toBe("edge-7-w2")
  })

  it("keeps worker ids within GATEWAY_ID's 128 characters", () => {
    expect(workerId("x".repeat(128), 17)).toBe("x".repeat(124) + "-w17")
  })
})
