/**
 * The `tls` scenario: the throughput load of bench/load.ts against the raw baseline over
 * `node:net` and over `node:tls`, and against the gateway over plain TCP, TLS (server
 * certificate only) and mutual TLS (each connection presents its own device certificate, issued
 * by `openssl` before the run), all in one run; reports each one's msgs/s, ack latency, peak RSS
 * and CPU, and the TLS/plain ratios (goal: gateway over TLS ≥ 0.7× plain TCP). With `rounds`
 * > 1 the five run again, each round in a rotated order, and the ratios are given per round and
 * as medians (on a shared or noisy machine one round's ratio says little).
 *
 *   npm run bench -- --only tls --seconds 10 --rounds 3
 */
import { mutualTlsDial, tlsDial } from "./dial.ts"
import type { LoadOptions } from "./load.ts"
import { measure, type Row } from "./measure.ts"
import { issueDeviceCerts, makeBenchPki, onePerDevice } from "./pki.ts"
import { fmt, gatewayArgv, gatewayEnv, type NodeFlags, removeDir, type Server, startServer, tempDir } from "./proc.ts"

/** What to run: the load (as the `throughput` scenario's) and the gateway's Node flags. */
export interface TlsOptions {
  readonly load: Omit<LoadOptions, "port" | "dial">
  readonly flags: NodeFlags
  /** How many times the five servers are measured, in turn. */
  readonly rounds: number
}

/** A measured load, with its transport and round (1-based). */
export type TlsRow = Row & { readonly transport: string; readonly round: number }

/** The measured rows and what issuing the device certificates cost. */
export interface TlsResult {
  readonly rows: ReadonlyArray<TlsRow>
  readonly certificates: number
  readonly issueMs: number
}

/** Runs the five servers one after the other under the same load, `rounds` times. */
export const runTls = async (o: TlsOptions): Promise<TlsResult> => {
  const pkiDir = tempDir()
  const pki = makeBenchPki(pkiDir)
  const caFile = pki.ca.cert
  const ids = (prefix: string) => Array.from({ length: o.load.connections }, (_, i) => `${prefix}-${i}`)
  const mtlsPrefix = `${o.load.devicePrefix}-mtls`
  // the warm-up's devices too (measure() runs them under `<prefix>-warm`): one certificate each
  const issued = await issueDeviceCerts(pki.ca, onePerDevice([...ids(mtlsPrefix), ...ids(`${mtlsPrefix}-warm`)]))

  const tlsEnv = { GATEWAY_TLS_CERT: pki.server.cert, GATEWAY_TLS_KEY: pki.server.key }
  const dataDirs: Array<string> = [] // removed after each measurement (measure() stops the server)
  const gateway = (env: NodeJS.ProcessEnv) => (): Promise<Server> => {
    const dataDir = tempDir()
    dataDirs.push(dataDir)
    return startServer(gatewayArgv(o.flags), gatewayEnv(dataDir, env))
  }
  const baselineEnv = { BASELINE_TLS_CERT: pki.server.cert, BASELINE_TLS_KEY: pki.server.key }
  const runs: Array<[string, string, () => Promise<Server>, Omit<LoadOptions, "port">]> = [
    ["raw baseline", "node:net", () => startServer(["bench/baseline.ts", "0"], {}), { ...o.load, devicePrefix: `${o.load.devicePrefix}-raw` }],
    ["raw baseline", "node:tls", () => startServer(["bench/baseline.ts", "0"], baselineEnv), {
      ...o.load,
      devicePrefix: `${o.load.devicePrefix}-rawtls`,
      dial: tlsDial(caFile)
    }],
    ["gateway (sqlite)", "plain TCP", gateway({}), { ...o.load, devicePrefix: `${o.load.devicePrefix}-plain` }],
    ["gateway (sqlite)", "TLS", gateway(tlsEnv), { ...o.load, devicePrefix: `${o.load.devicePrefix}-tls`, dial: tlsDial(caFile) }],
    ["gateway (sqlite)", "mutual TLS", gateway({ ...tlsEnv, GATEWAY_TLS_CA: caFile }), {
      ...o.load,
      devicePrefix: mtlsPrefix,
      dial: mutualTlsDial(caFile, issued.byDevice)
    }]
  ]
  // each round starts the baselines and the gateways at another one of them: no transport always runs last
  const turn = (xs: typeof runs, k: number) => [...xs.slice(k % xs.length), ...xs.slice(0, k % xs.length)]
  const rows: Array<TlsRow> = []
  for (let round = 1; round <= o.rounds; round++) {
    for (const [name, transport, server, load] of [...turn(runs.slice(0, 2), round - 1), ...turn(runs.slice(2), round - 1)]) {
      rows.push({ ...(await measure(name, server, load)), transport, round })
      for (const dir of dataDirs.splice(0)) removeDir(dir)
    }
  }
  removeDir(pkiDir)
  return { rows, certificates: issued.certificates, issueMs: issued.wallMs }
}

const median = (xs: ReadonlyArray<number>): number => {
  const sorted = [...xs].sort((a, b) => a - b)
  const mid = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2
}

/** The result as a markdown table with the TLS/plain ratios (per round, and their median). */
export const tlsTable = (r: TlsResult, o: TlsOptions): string => {
  const pct = (cores: number) => `${fmt(cores * 100)}%`
  // CPU per message: what a transport costs the server, less sensitive than msgs/s to other load on the machine
  const cpuPerMsg = (x: TlsRow) => (x.serverCpu / x.msgsPerSec) * 1e6
  const row = (transport: string, round: number) => r.rows.find((x) => x.transport === transport && x.round === round)
  const cpu = (transport: string, round: number) => {
    const x = row(transport, round)
    return x === undefined ? NaN : cpuPerMsg(x)
  }
  const rate = (transport: string, round: number) => row(transport, round)?.msgsPerSec ?? NaN
  const ratio = (a: string, b: string, of = rate) => {
    const per = Array.from({ length: o.rounds }, (_, k) => of(a, k + 1) / of(b, k + 1))
    return o.rounds === 1 ? `**${fmt(per[0]!, 3)}**` : `**${fmt(median(per), 3)}** (rounds: ${per.map((x) => fmt(x, 3)).join(", ")})`
  }
  const { load } = o
  return [
    `\n### tls: ${load.connections} connections × window ${load.window}, unpaced, telemetry, ${fmt(load.durationMs / 1000)} s each, plain TCP vs TLS${
      o.rounds > 1 ? `, ${o.rounds} rounds` : ""
    }`,
    `TLS 1.3 (Node's defaults on both sides); mutual TLS: ${fmt(r.certificates)} device certificates (one per device id, warm-up included) issued by \`openssl\` in ${
      fmt(r.issueMs)
    } ms before the run. CPU in % of one core over the measured interval.`,
    "| round | server | transport | acked msgs/s | p50 ms | p99 ms | max ms | peak RSS MB | server CPU | server CPU µs/msg | load generator CPU | nacks |",
    "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ...r.rows.map((x) =>
      `| ${x.round} | ${x.server} | ${x.transport} | ${fmt(x.msgsPerSec)} | ${fmt(x.p50Ms, 2)} | ${fmt(x.p99Ms, 2)} | ${fmt(x.maxMs, 1)} | ${fmt(x.rssMb)} | ${
        pct(x.serverCpu)
      } | ${fmt(cpuPerMsg(x), 2)} | ${pct(x.loadCpu)} | ${x.nacked} |`
    ),
    `gateway throughput TLS/plain: ${ratio("TLS", "plain TCP")}; mutual TLS/plain: ${ratio("mutual TLS", "plain TCP")} (goal ≥ 0.7)`,
    `gateway CPU per message TLS/plain: ${ratio("TLS", "plain TCP", cpu)}; mutual TLS/plain: ${ratio("mutual TLS", "plain TCP", cpu)}`,
    `raw node:tls/node:net: ${ratio("node:tls", "node:net")}; gateway plain/raw net: ${ratio("plain TCP", "node:net")}; gateway TLS/raw tls: ${ratio("TLS", "node:tls")}`
  ].join("\n")
}
