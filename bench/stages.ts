/**
 * Stage costs: nanoseconds per message of the Stage machinery and of each stage, in process,
 * next to a plain loop calling the same function over an array (the floor). Chunks are built
 * once; every run passes the same envelopes through the real runner (verdict scan, selection,
 * per-stage metrics) as the gateway does.
 */
import { Effect, Layer } from "effect"
import type { Envelope } from "../src/domain/Envelope.ts"
import { Dedup, dedup } from "../src/pipeline/Dedup.ts"
import { DedupWindow } from "../src/pipeline/DedupWindow.ts"
import * as Stage from "../src/pipeline/Stage.ts"
import { type RawData, validate } from "../src/pipeline/Validate.ts"
import { DeviceDirectory, deviceMetadata } from "../src/stages/DeviceMetadata.ts"
import { threshold } from "../src/stages/Threshold.ts"
import { unitConversion } from "../src/stages/UnitConversion.ts"

/** One measured case. */
export interface StageRow {
  readonly name: string
  readonly chunk: number
  readonly nsPerMsg: number
}

const DEVICES = 100

const envelopes = (n: number, metrics: (i: number) => Record<string, number>): Array<Envelope> =>
  Array.from({ length: n }, (_, i): Envelope => ({
    device: `dev-${i % DEVICES}`,
    epoch: 0,
    seq: i,
    kind: "telemetry",
    deviceTs: 1_700_000_000_000 + i,
    receivedAt: 1_700_000_000_000 + i,
    gateway: "bench",
    traceparent: null,
    body: { metrics: metrics(i) }
  }))

const raws = (n: number): Array<RawData> =>
  Array.from({ length: n }, (_, i) => ({
    device: `dev-${i % DEVICES}`,
    epoch: 0,
    kind: "telemetry" as const,
    seq: i,
    frame: JSON.parse(`{"type":"telemetry","seq":${i},"ts":${1_700_000_000_000 + i},"body":{"metrics":{"temp_f":${50 + (i % 40)},"rpm":1200,"v":3.3}}}`) as object,
    receivedAt: 1_700_000_000_000,
    gateway: "bench"
  }))

/** Times `total` messages through `once(chunk)` calls, best of `rounds`, in ns per message. */
const time = (chunkSize: number, total: number, once: () => void, rounds = 5): number => {
  const calls = Math.max(1, Math.floor(total / chunkSize))
  for (let i = 0; i < Math.min(calls, 2000); i++) once() // warm-up (JIT)
  let best = Infinity
  for (let r = 0; r < rounds; r++) {
    const started = process.hrtime.bigint()
    for (let i = 0; i < calls; i++) once()
    best = Math.min(best, Number(process.hrtime.bigint() - started) / (calls * chunkSize))
  }
  return best
}

/** Same, for a runner driven from inside one fiber (as the persistence loop does). */
const timeEffect = async <A>(
  chunkSize: number,
  total: number,
  run: (chunk: ReadonlyArray<A>) => Effect.Effect<unknown>,
  chunk: ReadonlyArray<A>,
  rounds = 5
) => {
  const calls = Math.max(1, Math.floor(total / chunkSize))
  const loop = (n: number) =>
    Effect.gen(function*() {
      for (let i = 0; i < n; i++) yield* run(chunk)
    })
  await Effect.runPromise(loop(Math.min(calls, 2000)))
  let best = Infinity
  for (let r = 0; r < rounds; r++) {
    const started = process.hrtime.bigint()
    await Effect.runPromise(loop(calls))
    best = Math.min(best, Number(process.hrtime.bigint() - started) / (calls * chunkSize))
  }
  return best
}

const build = <In, Out, E>(stage: Stage.Stage<In, Out, E, never>) => Effect.runSync(Stage.build(stage))

/** Runs every case; `total` messages per measurement. */
export const runStageBench = async (total = 2_000_000): Promise<Array<StageRow>> => {
  const rows: Array<StageRow> = []
  const plain = envelopes(4096, (i) => ({ temp_f: 50 + (i % 40), rpm: 1200, v: 3.3 }))
  const id = (e: Envelope) => e

  for (const size of [1, 64, 1024, 4096]) {
    const chunk = plain.slice(0, size)
    rows.push({
      name: "plain loop, identity function (floor)",
      chunk: size,
      nsPerMsg: time(size, total, () => {
        const out = new Array(chunk.length)
        for (let i = 0; i < chunk.length; i++) out[i] = id(chunk[i]!)
        return out
      })
    })
    const empty = build(Stage.map("bench-empty", id))
    rows.push({ name: "empty stage, runSync (ingress)", chunk: size, nsPerMsg: time(size, total, () => empty.runSync(chunk)) })
    rows.push({ name: "empty stage, run (persistence loop)", chunk: size, nsPerMsg: await timeEffect(size, total, empty.run, chunk) })
  }

  // in the gateway the pipeline always ends in an asynchronous stage (commit): the increment
  // of one more synchronous stage in such a pipeline is what a user stage costs there
  const asyncNoop = Stage.chunk("bench-async", (c: ReadonlyArray<Envelope>) => Effect.succeed(c), { timeoutMs: Infinity })
  const timedNoop = Stage.chunk("bench-async-timed", (c: ReadonlyArray<Envelope>) => Effect.succeed(c))
  for (const size of [64, 1024]) {
    const chunk = plain.slice(0, size)
    const alone = await timeEffect(size, total, build(asyncNoop).run, chunk)
    const withEmpty = await timeEffect(size, total, build(Stage.andThen(Stage.map("bench-empty", id), asyncNoop)).run, chunk)
    rows.push({ name: "async no-op stage, no timeout (stands for commit)", chunk: size, nsPerMsg: alone })
    rows.push({ name: "empty stage + that async stage", chunk: size, nsPerMsg: withEmpty })
    rows.push({ name: "→ empty stage, increment in a gateway pipeline", chunk: size, nsPerMsg: withEmpty - alone })
    rows.push({ name: "async no-op stage with the default 10 s timeout", chunk: size, nsPerMsg: await timeEffect(size, total, build(timedNoop).run, chunk) })
  }

  const size = 1024
  const chunk = plain.slice(0, size)
  const none = build(Stage.identity<Envelope>())
  rows.push({ name: "no stage at all (runner only)", chunk: size, nsPerMsg: await timeEffect(size, total, none.run, chunk) })

  const ingress = raws(64)
  rows.push({ name: "validate (gateway's own)", chunk: 64, nsPerMsg: time(64, total / 4, () => build1.validate.runSync(ingress)) })
  rows.push({ name: "dedup (gateway's own)", chunk: size, nsPerMsg: time(size, total, () => build1.dedup.runSync(chunk)) })

  const convert = build(unitConversion({ conversions: [{ from: "temp_f", to: "temp_c", preset: "fahrenheit_to_celsius" }] }))
  rows.push({ name: "unit-conversion (1 of 3 metrics)", chunk: size, nsPerMsg: await timeEffect(size, total / 4, convert.run, chunk) })
  const quiet = build(threshold({ limits: [{ metric: "temp_f", above: 1000 }, { metric: "rpm", below: 10 }] }))
  rows.push({ name: "threshold (2 limits, none crossed)", chunk: size, nsPerMsg: await timeEffect(size, total, quiet.run, chunk) })
  const loud = build(threshold({ limits: [{ metric: "temp_f", above: 0 }] }))
  rows.push({ name: "threshold (every message crosses)", chunk: size, nsPerMsg: await timeEffect(size, total / 4, loud.run, chunk) })
  const known = new Map<string, Record<string, string>>(Array.from({ length: DEVICES }, (_, i) => [`dev-${i}`, { site: "a" }]))
  const enrich = await Effect.runPromise(
    Stage.build(deviceMetadata()).pipe(
      Effect.provide(Layer.succeed(DeviceDirectory, DeviceDirectory.of({ lookup: (ids) => Effect.succeed(new Map(ids.flatMap((id) => {
        const info = known.get(id)
        return info === undefined ? [] : [[id, info] as const]
      }))) })))
    )
  )
  rows.push({ name: "device-metadata (cache hits, 100 devices)", chunk: size, nsPerMsg: await timeEffect(size, total / 4, enrich.run, chunk) })
  return rows
}

const build1 = {
  validate: build(validate),
  dedup: Effect.runSync(
    Stage.build(dedup<Envelope>()).pipe(Effect.provide(Layer.succeed(Dedup, new DedupWindow(1024, 100_000))))
  )
}

/** The rows as a Markdown table. */
export const stageTable = (rows: ReadonlyArray<StageRow>): string =>
  ["| case | chunk | ns/msg |", "|---|---:|---:|", ...rows.map((r) => `| ${r.name} | ${r.chunk} | ${r.nsPerMsg.toFixed(1)} |`)]
    .join("\n")
