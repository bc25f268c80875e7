/**
 * `gateway_sqlite_wal_bytes`: the size of the store's WAL file as Prometheus reads it (real sink,
 * real threads, a store in a temporary directory). It follows the file while the sink is open
 * (a scrape after writes sees what `stat` sees), and the series goes away with the sink.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Logger, Scope } from "effect"
import { PrometheusMetrics } from "effect/observability"
import * as Fs from "node:fs"
import * as Path from "node:path"

import * as SqliteSink from "../../../src/sinks/sqlite/SqliteSink.ts"
import { telemetryEnvelope } from "../../support/envelopes.ts"
import { tempDir } from "../../support/gateway.ts"

/** The gauge's value in Prometheus text, undefined when the series is not there. */
const walBytes = (text: string): number | undefined => {
  const line = text.split("\n").find((l) => l.startsWith("gateway_sqlite_wal_bytes "))
  return line === undefined ? undefined : Number(line.split(" ")[1])
}

describe("gateway_sqlite_wal_bytes", () => {
  it.live("is the WAL file's size at each scrape, for as long as the sink is open", () =>
    Effect.gen(function*() {
      const dir = tempDir("gw-walmetric-")
      const wal = Path.join(dir, "gateway.db-wal")
      const scope = yield* Scope.make()
      // no restart threshold in reach: the WAL only grows during the test
      const sink = yield* SqliteSink.make({ dataDir: dir, synchronous: "normal", walRestartFrames: 1_000_000 }).pipe(
        Scope.provide(scope)
      )
      const sizes: Array<readonly [scraped: number | undefined, file: number]> = []
      for (let round = 0; round < 3; round++) {
        for (let b = 0; b < 10; b++) {
          const batch = Array.from({ length: 50 }, (_, d) => telemetryEnvelope(`walmetric-${round}-${d}`, b))
          yield* sink.write(batch)
        }
        const text = yield* PrometheusMetrics.format()
        sizes.push([walBytes(text), Fs.statSync(wal).size])
      }
      for (const [scraped, file] of sizes) expect(scraped).toBe(file)
      // it follows the file: three rounds of writes, three larger sizes
      expect(sizes[0]![1]).toBeGreaterThan(0)
      expect(sizes[2]![1]).toBeGreaterThan(sizes[0]![1])

      yield* Scope.close(scope, Exit.void)
      expect(walBytes(yield* PrometheusMetrics.format())).toBeUndefined()
      Fs.rmSync(dir, { recursive: true, force: true })
    }).pipe(Effect.provide(Logger.layer([]))), 30_000)
})
