/**
 * The PostgreSQL sink's throughput and per-batch latency next to the physical limit, in one run,
 * into a fresh table (`messages`, made by the sink's migration) of a fresh database
 * (`gw_bench_<random>`, dropped afterwards) on the machine's shared server (`--url`, default
 * postgres://postgres@127.0.0.1:5432/postgres; the bare loop needs trust authentication):
 * - `driver`: the sink (src/sinks/postgres/PostgresSink.ts) given batches of `batch` envelopes as
 *   the commit stage sends them: rows made from the envelopes (JSON body, annotations, BigInt
 *   keys), one INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING RETURNING per batch on a
 *   pooled connection under a deadline, outcomes per message, one Effect per batch;
 * - `bare`: a bare loop on a raw socket, no Effect runtime: the same statement parsed once, then
 *   per batch one Bind (the same ten binary arrays, made before the clock starts) + Execute +
 *   Sync written with `@effect/sql-pg`'s protocol encoders, and the reply read to ReadyForQuery,
 *   the returned rows counted: what the server and the wire allow.
 * Within a round the two take turns batch by batch (bare first on even batches, the driver first
 * on odd ones), so that both meet the same machine: on a shared 2-core VM whose load comes and
 * goes, rounds run one after the other measured the load more than the writers. A writer's
 * msgs/s is its messages over the sum of its batches' times; latency is per batch (write to
 * answer); the client's CPU per batch (this process's user + system time) shows what the driver
 * itself costs, whatever the machine's load. The table is truncated before each round; the round
 * with the median ratio is reported. Wired into `npm run bench` by bench/run.ts
 * (`runPostgresBench`, `postgresTable`); alone: `node bench/postgres.ts [--messages N] [--batch N]`.
 */
import * as PgConnection from "@effect/sql-pg/PgConnection"
import * as PgProtocol from "@effect/sql-pg/PgProtocol"
import * as PgTypes from "@effect/sql-pg/PgTypes"
import { Effect, Logger, Redacted, Result } from "effect"
import * as Crypto from "node:crypto"
import * as Net from "node:net"
import { parseArgs } from "node:util"
import type { Envelope } from "../src/domain/Envelope.ts"
import { MessageOutcome } from "../src/sinks/Contract.ts"
import { makePostgresSink } from "../src/sinks/postgres/PostgresSink.ts"
import { paramsOf, prepareRows } from "../src/sinks/postgres/PostgresRows.ts"
import { insertSql } from "../src/sinks/postgres/PostgresSchema.ts"
import { postgresSettings } from "../src/sinks/postgres/PostgresSettings.ts"

/** Options of the PostgreSQL benchmark. */
export interface PostgresBenchOptions {
  /** The server's maintenance database (default postgres://postgres@127.0.0.1:5432/postgres). */
  readonly url?: string
  /** Messages per round and writer (default 100,000). */
  readonly messages?: number
  /** Envelopes per batch (default 1,000). */
  readonly batch?: number
  /** Rounds (default 5; the median is reported). */
  readonly rounds?: number
}

/** One writer's figures (its median round). */
export interface PostgresBenchRow {
  readonly name: string
  readonly messages: number
  readonly msgsPerSec: number
  readonly batchP50Ms: number
  readonly batchP99Ms: number
  readonly batchMaxMs: number
  /** This process's CPU time per batch (user + system), median: the client's own cost. */
  readonly cpuP50Ms: number
}

/** The benchmark's result. */
export interface PostgresBenchResult {
  readonly rows: ReadonlyArray<PostgresBenchRow>
  /** driver msgs/s ÷ bare msgs/s, the median of the rounds' (goal ≥ 0.8). */
  readonly ratio: number
  readonly serverVersion: string
  readonly batch: number
  /** Every round, in order, as `driver/bare` msgs/s. */
  readonly rounds: ReadonlyArray<string>
}

const quantile = (sorted: ReadonlyArray<number>, q: number): number =>
  sorted.length === 0 ? 0 : (sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? 0)

const rowOf = (name: string, messages: number, batchMs: ReadonlyArray<number>, cpuMs: ReadonlyArray<number>): PostgresBenchRow => {
  const sorted = [...batchMs].sort((a, b) => a - b)
  const elapsedMs = batchMs.reduce((a, x) => a + x, 0)
  return {
    name,
    messages,
    msgsPerSec: Math.round(messages / (elapsedMs / 1000)),
    batchP50Ms: quantile(sorted, 0.5),
    batchP99Ms: quantile(sorted, 0.99),
    batchMaxMs: sorted[sorted.length - 1] ?? 0,
    cpuP50Ms: quantile([...cpuMs].sort((a, b) => a - b), 0.5)
  }
}

/** The envelopes of batch `seq`: message `seq` of each of `n` devices, telemetry as devices send it, a third traced. */
const envelopesFor = (tag: string, seq: number, n: number): Array<Envelope> =>
  Array.from({ length: n }, (_, i): Envelope => ({
    device: `dev-${tag}-${i}`,
    epoch: 1,
    seq,
    kind: "telemetry",
    deviceTs: 1_700_000_000_000 + seq * n + i,
    receivedAt: 1_700_000_000_050 + seq * n + i,
    gateway: "bench-gw",
    traceparent: i % 3 === 0 ? `00-4bf92f3577b34da6a3ce929d0e0e4736-${(seq * n + i).toString(16).padStart(16, "0")}-01` : null,
    body: { metrics: { temp: 20 + (i % 10), rpm: 1200, v: 3.3 }, tags: { site: "plant-7" } }
  }))

/** A bare extended-protocol session on a raw socket (trust authentication only). */
const bareSession = async (host: string, port: number, user: string, database: string) => {
  const socket = Net.connect({ host, port, noDelay: true })
  await new Promise<void>((resolve, reject) => {
    socket.once("connect", resolve)
    socket.once("error", reject)
  })
  const parser = PgProtocol.makeParser()
  let waiting: ((m: PgProtocol.BackendMessage) => void) | undefined
  const backlog: Array<PgProtocol.BackendMessage> = []
  socket.on("data", (chunk: Buffer) => {
    for (const m of parser.push(chunk)) {
      if (waiting !== undefined) waiting(m)
      else backlog.push(m)
    }
  })
  /** Feeds every message to `onMessage` until ReadyForQuery; the first ErrorResponse is thrown. */
  const untilReady = (onMessage: (m: PgProtocol.BackendMessage) => void = () => undefined) =>
    new Promise<void>((resolve, reject) => {
      let error: Error | undefined
      const handle = (m: PgProtocol.BackendMessage) => {
        if (m._tag === "ErrorResponse") error ??= new Error(`${m.fields.message ?? "error"} (${m.fields.code ?? "?"})`)
        else if (m._tag === "AuthenticationCleartextPassword" || m._tag === "AuthenticationMD5Password" || m._tag === "AuthenticationSASL") {
          error ??= new Error("the bare loop needs trust authentication")
        } else onMessage(m)
        if (m._tag === "ReadyForQuery") {
          waiting = undefined
          if (error === undefined) resolve()
          else reject(error)
        }
      }
      waiting = handle
      for (const m of backlog.splice(0)) if (waiting === handle) handle(m)
    })
  socket.write(PgProtocol.encodeStartupMessage({ user, database, application_name: "bench-bare" }))
  await untilReady()
  return { socket, untilReady, close: () => socket.end(PgProtocol.encodeTerminate()) }
}

/** One batch of the bare loop: Bind + Execute + Sync of pre-built arrays on the parsed statement; its time in ms. */
const bareBatch = async (session: Awaited<ReturnType<typeof bareSession>>, params: ReadonlyArray<PgTypes.Parameter>, expected: number) => {
  const t0 = performance.now()
  const bind = encodeBind({ portal: "", statement: "bench_insert", parameters: params })
  if (Result.isFailure(bind)) throw bind.failure
  session.socket.write(Buffer.concat([bind.success, EXECUTE_SYNC]))
  let returned = 0
  await session.untilReady((m) => {
    if (m._tag === "DataRow") returned++
  })
  if (returned !== expected) throw new Error(`bare loop: ${returned} rows inserted, expected ${expected}`)
  return performance.now() - t0
}

const encodeBind = PgProtocol.makeBindEncoder(PgTypes.writeParameter, PgTypes.isTextFormat)
const EXECUTE_SYNC = Buffer.concat([PgProtocol.encodeExecute({ portal: "", maxRows: 0 }), PgProtocol.encodeSync()])

/** Runs the benchmark in a database it creates and drops. */
export const runPostgresBench = async (options: PostgresBenchOptions = {}): Promise<PostgresBenchResult> => {
  const base = options.url ?? "postgres://postgres@127.0.0.1:5432/postgres"
  const messages = options.messages ?? 100_000
  const batch = options.batch ?? 1_000
  const rounds = options.rounds ?? 5
  const name = `gw_bench_${Crypto.randomBytes(4).toString("hex")}`
  const admin = (sql: string) =>
    Effect.runPromise(Effect.scoped(Effect.gen(function*() {
      const conn = yield* PgConnection.make({ url: Redacted.make(base), prepare: false })
      return (yield* conn.queryValues(sql)).map((r) => String(r[0]))
    })))
  const serverVersion = (await admin("SHOW server_version"))[0] ?? "?"
  await admin(`CREATE DATABASE ${name}`)
  const url = new URL(base)
  url.pathname = `/${name}`
  const rows: Array<{ readonly bare: PostgresBenchRow; readonly driver: PostgresBenchRow }> = []
  const log: Array<string> = []
  try {
    await Effect.runPromise(Effect.scoped(Effect.gen(function*() {
      const sink = yield* makePostgresSink(postgresSettings({ databaseUrl: url.toString(), statementTimeoutMs: 30_000, applicationName: "bench-driver" }))
      const session = yield* Effect.promise(() => bareSession(url.hostname, Number(url.port || 5432), decodeURIComponent(url.username) || "postgres", name))
      yield* Effect.addFinalizer(() => Effect.sync(session.close))
      const parse = PgProtocol.encodeParse({ name: "bench_insert", query: insertSql(`"messages"`), parameterTypes: [] })
      if (Result.isFailure(parse)) return yield* Effect.die(parse.failure)
      session.socket.write(Buffer.concat([parse.success, PgProtocol.encodeSync()]))
      yield* Effect.promise(() => session.untilReady())
      const truncate = Effect.scoped(Effect.gen(function*() {
        const conn = yield* PgConnection.make({ url: Redacted.make(url.toString()) })
        yield* conn.query("TRUNCATE messages")
      })).pipe(Effect.orDie)

      /**
       * A round: the two writers take turns, batch by batch; each one's batch times. The envelopes
       * are made a batch at a time (a heap holding a whole round's would make every major GC
       * pause land on whichever writer allocates next: the driver).
       */
      const round = (tag: string, n: number) =>
        Effect.gen(function*() {
          const bareMs: Array<number> = []
          const driverMs: Array<number> = []
          const bareCpu: Array<number> = []
          const driverCpu: Array<number> = []
          const cpuSince = (start: NodeJS.CpuUsage) => {
            const d = process.cpuUsage(start)
            return (d.user + d.system) / 1000
          }
          const bareOne = (b: number) =>
            Effect.suspend(() => {
              // the bare loop's arrays are made before its clock starts: it only writes and reads
              const r = prepareRows(envelopesFor(`${tag}b`, b, batch)).rows
              const params = paramsOf(r)
              const cpu = process.cpuUsage()
              return Effect.promise(() => bareBatch(session, params, r.positions.length)).pipe(Effect.map((ms) => {
                bareCpu.push(cpuSince(cpu))
                bareMs.push(ms)
              }))
            })
          const driverOne = (b: number) =>
            Effect.gen(function*() {
              const envelopes = envelopesFor(`${tag}d`, b, batch)
              const cpu = process.cpuUsage()
              const t0 = performance.now()
              const r = yield* sink.write(envelopes)
              driverMs.push(performance.now() - t0)
              driverCpu.push(cpuSince(cpu))
              for (const o of r.outcomes) if (o !== MessageOutcome.Committed) return yield* Effect.die(new Error(`driver: outcome ${o}`))
            })
          const batches = Math.ceil(n / batch)
          for (let b = 0; b < batches; b++) {
            if (b % 2 === 0) yield* Effect.andThen(bareOne(b), driverOne(b))
            else yield* Effect.andThen(driverOne(b), bareOne(b))
          }
          return {
            bare: rowOf("bare INSERT loop (raw socket)", batches * batch, bareMs, bareCpu),
            driver: rowOf("PostgresSink (driver)", batches * batch, driverMs, driverCpu)
          }
        })
      // warm-up (JIT, the server's caches) for both
      yield* round("warm", Math.min(20_000, messages))
      for (let r = 0; r < rounds; r++) {
        yield* truncate
        const row = yield* round(`r${r}`, messages)
        rows.push(row)
        log.push(`${row.driver.msgsPerSec}/${row.bare.msgsPerSec}`)
      }
    })).pipe(Effect.provide(Logger.layer([]))))
  } finally {
    await admin(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
  }
  // the median round (by its ratio): both writers' figures from the same round
  const byRatio = [...rows].sort((a, b) => a.driver.msgsPerSec / a.bare.msgsPerSec - b.driver.msgsPerSec / b.bare.msgsPerSec)
  const mid = byRatio[Math.floor(byRatio.length / 2)]
  if (mid === undefined) throw new Error("no round ran")
  return { rows: [mid.bare, mid.driver], ratio: mid.driver.msgsPerSec / mid.bare.msgsPerSec, serverVersion, batch, rounds: log }
}

/** The result as a markdown table. */
export const postgresTable = (r: PostgresBenchResult): string =>
  [
    `\n### postgres: PostgreSQL sink vs a bare batched INSERT loop (PostgreSQL ${r.serverVersion}, batches of ${r.batch}, one INSERT ... unnest ... ON CONFLICT DO NOTHING RETURNING per batch)`,
    "| writer (median round) | messages | msgs/s | batch p50 ms | batch p99 ms | max ms | client CPU ms/batch (p50) |",
    "|---|---:|---:|---:|---:|---:|---:|",
    ...r.rows.map((row) =>
      `| ${row.name} | ${row.messages} | ${row.msgsPerSec} | ${row.batchP50Ms.toFixed(1)} | ${row.batchP99Ms.toFixed(1)} | ${row.batchMaxMs.toFixed(1)} | ${row.cpuP50Ms.toFixed(2)} |`
    ),
    `driver / bare: ${r.ratio.toFixed(2)} (goal ≥ 0.80); every round, driver/bare msgs/s: ${r.rounds.join(", ")}`
  ].join("\n")

if (import.meta.filename === process.argv[1]) {
  const { values } = parseArgs({
    options: {
      url: { type: "string" },
      messages: { type: "string", default: "100000" },
      batch: { type: "string", default: "1000" },
      rounds: { type: "string", default: "5" }
    }
  })
  const result = await runPostgresBench({
    ...(values.url === undefined ? {} : { url: values.url }),
    messages: Number(values.messages),
    batch: Number(values.batch),
    rounds: Number(values.rounds)
  })
  console.log(postgresTable(result))
}
