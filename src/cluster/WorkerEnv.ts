/**
 * What the primary tells each worker: the operator's environment, with the device port fixed
 * to the node's (shared through SO_REUSEPORT), an admin port of its own on loopback (the
 * primary serves the node's), an id of its own (`<GATEWAY_ID>-w<index>`, written into every
 * envelope it stores), and its share of the limits that DESIGN.md sets node-wide: connections,
 * the memory budget and the accept rate are divided evenly (SO_REUSEPORT spreads connections
 * evenly over the workers). Queue capacities and the other settings apply per worker as given.
 */
import type { GatewayConfigShape } from "../config/GatewayConfig.ts"
import { WORKER_INDEX } from "./WorkerLink.ts"

/** The environment of worker `index` of `workers`, given the primary's environment and resolved configuration. */
export const workerEnv = (
  base: NodeJS.ProcessEnv,
  config: GatewayConfigShape,
  port: number,
  index: number
): NodeJS.ProcessEnv => {
  const n = config.workers
  return {
    ...base,
    GATEWAY_WORKERS: "1",
    GATEWAY_REUSE_PORT: "true",
    GATEWAY_PORT: String(port),
    GATEWAY_ADMIN_HOST: "127.0.0.1",
    GATEWAY_ADMIN_PORT: "0",
    GATEWAY_ID: workerId(config.gatewayId, index),
    GATEWAY_MAX_CONNECTIONS: String(share(config.maxConnections, n, 1)),
    GATEWAY_MEMORY_BUDGET: String(share(config.memoryBudget, n, 1 << 20)),
    GATEWAY_ACCEPT_RATE: String(share(config.acceptRate, n, 1)),
    GATEWAY_ACCEPT_BURST: String(share(config.acceptBurst, n, 1)),
    [WORKER_INDEX]: String(index)
  }
}

/** `<id>-w<index>`, the id shortened if needed to stay within GATEWAY_ID's 128 characters. */
export const workerId = (id: string, index: number): string => {
  const suffix = `-w${index}`
  return id.slice(0, 128 - suffix.length) + suffix
}

/** One worker's share of a node-wide limit: rounded up, never below the variable's minimum. */
const share = (total: number, workers: number, min: number) => Math.max(min, Math.ceil(total / workers))
