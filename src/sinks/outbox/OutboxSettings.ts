/**
 * What the store-and-forward outbox needs from the configuration, as plain values: the file
 * (one per sink per worker process: the lead names it, e.g. `<GATEWAY_DATA_DIR>/outbox-nats.db`),
 * its bounds (`GATEWAY_OUTBOX_MAX_BYTES`, `GATEWAY_OUTBOX_MAX_MESSAGES`) and how much the
 * forwarder sends per write (`GATEWAY_OUTBOX_DRAIN_BATCH`). {@link outboxSettings} fills in the
 * defaults; {@link checkSettings} says what is wrong with a set, in one line.
 */

/** The outbox's settings. */
export interface OutboxSettings {
  /** The SQLite file (created with its directory when missing). */
  readonly file: string
  /** `GATEWAY_OUTBOX_MAX_BYTES`: bytes of stored envelopes (their JSON text) at most. */
  readonly maxBytes: number
  /** `GATEWAY_OUTBOX_MAX_MESSAGES`: messages stored at most. */
  readonly maxMessages: number
  /** `GATEWAY_OUTBOX_DRAIN_BATCH`: messages per forwarded write. */
  readonly drainBatch: number
  /**
   * `GATEWAY_OUTBOX_SYNC`: `normal` (default, as the main store): a commit survives the process
   * being killed, not a power loss of the machine (the WAL is fsynced at checkpoints); `full`
   * fsyncs every commit.
   */
  readonly synchronous?: "normal" | "full"
  /**
   * `GATEWAY_OUTBOX_MEMORY_BYTES`: of what this process appends, how much (as JSON) is also kept in
   * memory, so the forwarder need not read it back (default {@link DEFAULT_MEMORY_BYTES}; 0: none).
   */
  readonly memoryBytes?: number
  /** First wait after a forwarded write was not taken (default {@link DEFAULT_RETRY_BASE_MS}). */
  readonly retryBaseMs?: number
  /** Longest wait between forwarding tries (default {@link DEFAULT_RETRY_MAX_MS}). */
  readonly retryMaxMs?: number
  /**
   * How the forwarder is built: `stream` (default, an Effect Stream with read-ahead) or `loop`
   * (the same steps in a plain loop with forked fibers): kept for bench/outbox.ts's comparison.
   */
  readonly forwarder?: "stream" | "loop"
}

/** 512 MiB of stored envelopes. */
export const DEFAULT_MAX_BYTES = 512 * 1024 * 1024

/** Five million messages. */
export const DEFAULT_MAX_MESSAGES = 5_000_000

/** Messages per forwarded write. */
export const DEFAULT_DRAIN_BATCH = 2_000

/**
 * 32 MiB of envelopes (measured as their JSON; their objects take ~1.35× that in the heap, ~45 MB,
 * measured with the bench's telemetry) kept in memory for the forwarder: not counted against
 * GATEWAY_MEMORY_BUDGET, so it is kept small.
 */
export const DEFAULT_MEMORY_BYTES = 32 * 1024 * 1024

/** The forwarder's first wait after a write that was not taken, milliseconds. */
export const DEFAULT_RETRY_BASE_MS = 100

/** The forwarder's longest wait between tries, milliseconds. */
export const DEFAULT_RETRY_MAX_MS = 5_000

/** The defaults for `file`, overridden by `overrides`. */
export const outboxSettings = (file: string, overrides: Partial<Omit<OutboxSettings, "file">> = {}): OutboxSettings => ({
  file,
  maxBytes: DEFAULT_MAX_BYTES,
  maxMessages: DEFAULT_MAX_MESSAGES,
  drainBatch: DEFAULT_DRAIN_BATCH,
  ...overrides
})

/** What is wrong with `s` (one line naming the variable), or undefined when nothing is. */
export const checkSettings = (s: OutboxSettings): string | undefined => {
  const positive = (n: number | undefined) => n === undefined || (Number.isSafeInteger(n) && n > 0)
  if (s.file.trim() === "") return "the outbox file name is empty"
  if (!positive(s.maxBytes)) return `GATEWAY_OUTBOX_MAX_BYTES: expected a positive integer, got ${s.maxBytes}`
  if (!positive(s.maxMessages)) return `GATEWAY_OUTBOX_MAX_MESSAGES: expected a positive integer, got ${s.maxMessages}`
  if (!positive(s.drainBatch)) return `GATEWAY_OUTBOX_DRAIN_BATCH: expected a positive integer, got ${s.drainBatch}`
  if (!positive(s.retryBaseMs) || !positive(s.retryMaxMs)) return "outbox retry delays must be positive integers"
  if (s.memoryBytes !== undefined && !(Number.isSafeInteger(s.memoryBytes) && s.memoryBytes >= 0)) {
    return `GATEWAY_OUTBOX_MEMORY_BYTES: expected an integer ≥ 0, got ${s.memoryBytes}`
  }
  return undefined
}
