/**
 * The dedup stage and its state: one {@link DedupWindow} shared by the ingress pipeline (which
 * settles in-window resends as `ack dup:true` without a write) and the persistence loop (which
 * marks commits).
 */
import { Context, Effect, Layer } from "effect"
import { GatewayConfig } from "../config/GatewayConfig.ts"
import type { EnvelopeHeader } from "../domain/Envelope.ts"
import { DedupWindow } from "./DedupWindow.ts"
import * as Stage from "./Stage.ts"

/** The gateway's dedup windows (GATEWAY_DEDUP_WINDOW seqs for each of GATEWAY_DEDUP_DEVICES devices). */
export class Dedup extends Context.Service<Dedup, DedupWindow>()("gateway/Dedup") {
  /** Windows sized from the configuration. */
  static readonly layer = Layer.effect(
    Dedup,
    Effect.map(GatewayConfig, (c) => new DedupWindow(c.dedupWindow, c.dedupDevices))
  )
}

/** Settles a message already committed (within the window) as a duplicate; passes the rest on. */
export const dedup = <A extends EnvelopeHeader>(): Stage.Stage<A, A, never, Dedup> =>
  Stage.unwrap(
    Effect.map(Dedup, (window) =>
      Stage.map("dedup", (e: A) => (window.isCommitted(e.device, e.epoch, e.seq) ? Stage.duplicate : e)))
  )
