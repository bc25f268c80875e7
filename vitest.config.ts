import { defineConfig } from "vitest/config"

/**
 * Tests that load the machine (floods, storms, child processes under load) and measure how the
 * gateway answers meanwhile: they run one file at a time, after the others, so one does not
 * measure another's load. `npm test` runs both projects in turn.
 */
const LOAD = [
  "test/integration/**/*.test.ts",
  "test/cli/simulate.test.ts",
  "test/admission/Storm.test.ts",
  "test/admission/Burst.test.ts",
  "test/admission/OpenFiles.test.ts",
  "test/admission/StartFailures.test.ts",
  "test/admission/AttackRegressions.test.ts",
  "test/sinks/nats/JetStreamChaos.test.ts",
  "test/sinks/nats/JetStreamCluster.test.ts",
  "test/sinks/postgres/PostgresChaos.test.ts",
  "test/sinks/outbox/OutboxChaos.test.ts",
  "test/sinks/sqlite/SqliteWal*.test.ts",
  "test/sinks/contract/nats.contract.test.ts",
  "test/sinks/contract/postgres.contract.test.ts",
  "test/observability/MetricsContract.test.ts",
  "test/observability/Prometheus.test.ts",
  "test/observability/TracingProcess.test.ts",
  "test/observability/TracingSinks.test.ts"
]

export default defineConfig({
  test: {
    setupFiles: ["./test/setup.ts"],
    testTimeout: 30_000,
    hookTimeout: 30_000,
    pool: "forks",
    execArgv: ["--disable-warning=ExperimentalWarning"],
    projects: [
      { extends: true, test: { name: "unit", include: ["test/**/*.test.ts"], exclude: LOAD } },
      { extends: true, test: { name: "load", include: LOAD, fileParallelism: false } }
    ]
  }
})
