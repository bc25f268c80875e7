/**
 * The real gateway (src/Run.ts) with one user stage composed in code that holds every batch
 * long enough that the pipeline passes on at most BENCH_SINK_RATE messages per second (default
 * 2000): a deliberately slow sink, for the `burst` scenario (bench/burst.ts). Everything else
 * (configuration, listener, lanes, SQLite, admin port, the `listening` line) is the gateway's.
 *
 *   BENCH_SINK_RATE=2000 GATEWAY_PORT=0 node bench/slowGateway.ts
 *
 * The persistence loop keeps two batches in the pipeline at once, so sleeping
 * `chunk.length / rate` per chunk would let ~2 × rate through. Instead the chunks share one
 * virtual clock: each reserves the next `chunk.length / rate` seconds after the previous
 * reservation and sleeps until its slot ends, which caps the total at `rate` however many
 * chunks are in flight.
 */
import { Effect } from "effect"
import type { Envelope } from "../src/domain/Envelope.ts"
import { Pipeline } from "../src/pipeline/Pipeline.ts"
import * as Stage from "../src/pipeline/Stage.ts"
import { run } from "../src/Run.ts"

const rate = Number(process.env["BENCH_SINK_RATE"] ?? 2000)
if (!(rate > 0)) throw new Error(`BENCH_SINK_RATE must be a positive number, got ${process.env["BENCH_SINK_RATE"]}`)

/** When the last reserved slot ends (performance.now() ms). */
let nextFree = 0

/** Passes each chunk on unchanged once its slot of `chunk.length / rate` seconds has passed. */
const slowSink: Stage.Stage<Envelope, Envelope, Stage.StageError> = Stage.chunk<Envelope, Envelope>(
  "slow-sink",
  (chunk) =>
    Effect.suspend(() => {
      const now = performance.now()
      nextFree = Math.max(now, nextFree) + (chunk.length * 1000) / rate
      return Effect.as(Effect.sleep(nextFree - now), chunk)
    }),
  { timeoutMs: Infinity } // the stage is slow on purpose: no timeout nacks
)

run(Pipeline.layer(slowSink))
