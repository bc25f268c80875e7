/**
 * The primary's own metric handles, added to the node's merged metrics: how many workers are
 * serving, how often one had to be restarted, and the primary's share of the node's memory.
 */
import { Metric } from "effect"

/** Workers currently listening. */
export const workers = Metric.gauge("gateway_workers", { description: "worker processes currently listening" })

/** Workers restarted after they died (not counting the drain at shutdown). */
export const workerRestarts = Metric.counter("gateway_worker_restarts_total", {
  description: "worker processes restarted after they died"
})

/** The primary's own resident memory: merged with the workers', the node's total. */
export const residentMemory = Metric.gauge("process_resident_memory_bytes", { description: "resident memory size in bytes" })
