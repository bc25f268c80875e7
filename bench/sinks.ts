/**
 * Each sink end to end, in the same run: the raw `node:net` baseline and the gateway writing to
 * SQLite, to NATS JetStream (a private `nats-server -js`, file store), to PostgreSQL (a fresh
 * database on the machine's server, `BENCH_DATABASE_URL`, default
 * `postgres://postgres@127.0.0.1:5432/postgres`; left out when it cannot be reached), and to
 * SQLite and NATS both, under the load given (the throughput or the latency shape of
 * bench/run.ts). Part of `npm run bench` as the `sinks` scenario.
 */
import * as ChildProcess from "node:child_process"
import type { LoadOptions } from "./load.ts"
import { measure, type Row } from "./measure.ts"
import { fmt, gatewayArgv, gatewayEnv, type NodeFlags, removeDir, startServer, tempDir } from "./proc.ts"
import { startNatsServer } from "../test/support/natsServer.ts"

const ADMIN_URL = process.env["BENCH_DATABASE_URL"] ?? "postgres://postgres@127.0.0.1:5432/postgres"

/** A fresh database on the PostgreSQL server of `adminUrl` (psql), or undefined when it cannot be made. */
const freshDatabase = (adminUrl: string): { url: string; drop: () => void } | undefined => {
  const name = `gw_bench_${process.pid}_${Date.now()}`
  const psql = (sql: string) => ChildProcess.spawnSync("psql", [adminUrl, "-v", "ON_ERROR_STOP=1", "-qc", sql], { encoding: "utf8" })
  const made = psql(`CREATE DATABASE ${name}`)
  if (made.status !== 0) return undefined
  const url = new URL(adminUrl)
  url.pathname = `/${name}`
  return { url: url.toString(), drop: () => void psql(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`) }
}

/** The rows of the sinks table for `load`. */
export const runSinksBench = async (load: Omit<LoadOptions, "port">, flags: NodeFlags): Promise<Array<Row>> => {
  const rows: Array<Row> = []
  // the load generator is one address standing in for a fleet: its 1,000 connections at once
  // must not meet the per-address cap on connections not yet welcomed
  const gateway = (dataDir: string, env: NodeJS.ProcessEnv) => () =>
    startServer(gatewayArgv(flags), gatewayEnv(dataDir, { GATEWAY_UNAUTHENTICATED_PER_SOURCE: "100000", ...env }))
  rows.push(await measure("raw node:net", () => startServer(["bench/baseline.ts", "0"], {}), load))
  const dirs: Array<string> = []
  const dir = () => {
    const d = tempDir()
    dirs.push(d)
    return d
  }
  // a fresh server (and stream) for each NATS row: the rows send the same keys
  const withNats = async (name: string, sinks: string) => {
    const nats = await startNatsServer()
    try {
      rows.push(await measure(name, gateway(dir(), { NATS_URL: nats.url, NATS_STREAM_CREATE: "true", GATEWAY_SINK: sinks }), load))
    } finally {
      await nats.stop()
    }
  }
  const pg = freshDatabase(ADMIN_URL)
  try {
    rows.push(await measure("gateway → sqlite", gateway(dir(), {}), load))
    await withNats("gateway → nats", "nats")
    if (pg !== undefined) rows.push(await measure("gateway → postgres", gateway(dir(), { GATEWAY_SINK: "postgres", DATABASE_URL: pg.url }), load))
    await withNats("gateway → sqlite + nats", "sqlite,nats")
  } finally {
    pg?.drop()
    dirs.forEach(removeDir)
  }
  return rows
}

/** The sinks table. */
export const sinksTable = (title: string, rows: ReadonlyArray<Row>): Array<string> => [
  `\n### sinks, ${title}`,
  "| server | acked msgs/s | p50 ms | p99 ms | max ms | peak RSS MB | nacks |",
  "|---|---:|---:|---:|---:|---:|---:|",
  ...rows.map((r) => `| ${r.server} | ${fmt(r.msgsPerSec)} | ${fmt(r.p50Ms, 2)} | ${fmt(r.p99Ms, 2)} | ${fmt(r.maxMs, 1)} | ${fmt(r.rssMb)} | ${r.nacked} |`)
]
