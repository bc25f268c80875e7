/**
 * The batch span processor of the OpenTelemetry specification, for the gateway's own spans:
 * ended spans wait in a bounded queue (`OTEL_BSP_MAX_QUEUE_SIZE`; a span that finds it full is
 * dropped, never waited for) and are exported in batches of at most
 * `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, as soon as a batch is full or `OTEL_BSP_SCHEDULE_DELAY`
 * after the first span waited, one export at a time, each given `OTEL_BSP_EXPORT_TIMEOUT`. Unlike
 * OpenTelemetry JS's, it takes the spans as they are (no per-span context object on the way
 * in) and counts what it drops, so the gateway can say so.
 */
import type { BatchSettings } from "./OtelEnv.ts"

/** What a batch is handed to: calls `done(ok)` once, whatever happened. */
export type ExportBatch<A> = (batch: Array<A>, done: (ok: boolean) => void) => void

/** The processor's counters since the last {@link SpanBatcher.takeCounts}. */
export interface BatcherCounts {
  /** Spans dropped because the queue was full. */
  readonly dropped: number
  /** Spans in exports that failed or timed out. */
  readonly failed: number
}

/** A bounded queue of ended spans, exported in batches. */
export class SpanBatcher<A> {
  private queue: Array<A> = []
  private exporting = false
  private timer: ReturnType<typeof setTimeout> | undefined = undefined
  private closed = false
  private dropped = 0
  private failed = 0
  /** Resolvers waiting for the export in flight to finish (flush, shutdown). */
  private idle: Array<() => void> = []
  private readonly settings: BatchSettings
  private readonly exportBatch: ExportBatch<A>

  constructor(settings: BatchSettings, exportBatch: ExportBatch<A>) {
    this.settings = settings
    this.exportBatch = exportBatch
  }

  /** Queues an ended span (drops it when the queue is full or the processor shut down). */
  add(span: A): void {
    if (this.closed) return
    if (this.queue.length >= this.settings.maxQueueSize) {
      this.dropped++
      return
    }
    this.queue.push(span)
    if (this.exporting) return
    if (this.queue.length >= this.settings.maxExportBatchSize) this.exportNext()
    else this.timer ??= this.startTimer()
  }

  /** Spans waiting. */
  size(): number {
    return this.queue.length
  }

  /** The counters since the last call, reset. */
  takeCounts(): BatcherCounts {
    const counts = { dropped: this.dropped, failed: this.failed }
    this.dropped = 0
    this.failed = 0
    return counts
  }

  /** Exports everything queued now, batch after batch; resolves when the last export finished. */
  async flush(): Promise<void> {
    while (this.exporting || this.queue.length > 0) {
      await new Promise<void>((resolve) => {
        this.idle.push(resolve)
        if (!this.exporting) this.exportNext()
      })
    }
  }

  /** Takes no more spans, and exports what is queued. */
  async shutdown(): Promise<void> {
    this.closed = true
    this.clearTimer()
    await this.flush()
  }

  private startTimer(): ReturnType<typeof setTimeout> {
    const t = setTimeout(() => {
      this.timer = undefined
      if (!this.exporting && this.queue.length > 0) this.exportNext()
    }, this.settings.scheduledDelayMillis)
    t.unref()
    return t
  }

  private clearTimer(): void {
    if (this.timer !== undefined) clearTimeout(this.timer)
    this.timer = undefined
  }

  private exportNext(): void {
    this.clearTimer()
    if (this.queue.length === 0) return this.settle()
    const n = this.settings.maxExportBatchSize
    const batch = this.queue.length <= n ? this.queue : this.queue.splice(0, n)
    if (batch === this.queue) this.queue = []
    this.exporting = true
    let finished = false
    const finish = (ok: boolean) => {
      if (finished) return
      finished = true
      clearTimeout(deadline)
      if (!ok) this.failed += batch.length
      if (this.queue.length >= n) {
        // the next export on a later turn: an exporter that fails at once (its concurrency limit)
        // would otherwise recurse through the whole queue on the answer path
        setImmediate(() => {
          this.exporting = false
          this.exportNext()
        })
        return
      }
      this.exporting = false
      {
        if (this.queue.length > 0 && !this.closed) this.timer ??= this.startTimer()
        this.settle()
      }
    }
    // past its timeout an export is given up (the next may start); a late answer is ignored
    const deadline = setTimeout(() => finish(false), this.settings.exportTimeoutMillis)
    deadline.unref()
    try {
      this.exportBatch(batch, finish)
    } catch {
      finish(false)
    }
  }

  private settle(): void {
    const waiting = this.idle
    this.idle = []
    for (const resolve of waiting) resolve()
  }
}
