/**
 * The dedup stage's state as a service: one {@link DedupWindow} shared by the connections
 * (which ask "already committed?") and the persistence stage (which marks commits).
 */
import { Context, Effect, Layer } from "effect"
import { GatewayConfig } from "../config/GatewayConfig.ts"
import { DedupWindow } from "./DedupWindow.ts"

/** The gateway's dedup windows (GATEWAY_DEDUP_WINDOW seqs for each of GATEWAY_DEDUP_DEVICES devices). */
export class Dedup extends Context.Service<Dedup, DedupWindow>()("gateway/Dedup") {
  /** Windows sized from the configuration. */
  static readonly layer = Layer.effect(
    Dedup,
    Effect.map(GatewayConfig, (c) => new DedupWindow(c.dedupWindow, c.dedupDevices))
  )
}
