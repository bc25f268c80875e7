/**
 * A real Prometheus (the `prometheus` binary, private: a free port, a temporary TSDB) scrapes a
 * real gateway process every second, with otel/alerts.yml loaded. Known traffic over real
 * sockets must come out of Prometheus's HTTP API as counted: messages by kind and outcome,
 * connections by result, errors by class; the ingest-to-commit p99 from `histogram_quantile` is
 * a sane number of seconds; every alerting rule evaluates without error on the real series and
 * none fires; every query of the Grafana dashboard is valid PromQL and, where the gateway
 * exports what it reads, returns series.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { cleanupChildren, type GatewayProcess, spawnGateway, tempDir } from "../support/childGateway.ts"
import { Device, event, telemetry } from "../support/client.ts"
import { scrape } from "../support/metrics.ts"
import { freePort } from "../support/natsServer.ts"
import { until } from "../support/poll.ts"
import {
  alertRules,
  dashboardQueries,
  metricNames,
  otelPath,
  parseExposition,
  prometheusBinary,
  requireBinary,
  sampleNames,
  SYNTHETIC
} from "./support.ts"

const hasPrometheus = requireBinary(prometheusBinary, "prometheus", "the tests against a real Prometheus")

/** One series of an instant query's result. */
interface Series {
  readonly metric: Record<string, string>
  readonly value: readonly [number, string]
}

/** A private Prometheus server. */
interface Prometheus {
  readonly port: number
  readonly output: () => string
  readonly stop: () => Promise<void>
}

const processes = new Set<ChildProcess.ChildProcess>()
process.once("exit", () => {
  for (const p of processes) p.kill("SIGKILL")
})

/** Starts Prometheus on a free loopback port with `config`; resolves once `/-/ready` answers 200. */
const startPrometheus = async (dir: string, config: string): Promise<Prometheus> => {
  if (prometheusBinary === null) throw new Error("prometheus is not installed")
  const port = await freePort()
  const configFile = Path.join(dir, "prometheus.yml")
  Fs.writeFileSync(configFile, config)
  const child = ChildProcess.spawn(prometheusBinary, [
    `--config.file=${configFile}`,
    `--storage.tsdb.path=${Path.join(dir, "tsdb")}`,
    `--web.listen-address=127.0.0.1:${port}`,
    "--storage.tsdb.retention.time=1h"
  ], { stdio: ["ignore", "pipe", "pipe"] })
  processes.add(child)
  let output = ""
  child.stdout.setEncoding("utf8").on("data", (d: string) => (output += d))
  child.stderr.setEncoding("utf8").on("data", (d: string) => (output += d))
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()))
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGTERM")
      const killer = setTimeout(() => child.kill("SIGKILL"), 5_000)
      await exited
      clearTimeout(killer)
    }
    processes.delete(child)
  }
  try {
    await until("prometheus ready", 20_000, async () => {
      if (child.exitCode !== null) throw new Error(`prometheus exited with ${child.exitCode}:\n${output}`)
      try {
        return (await fetch(`http://127.0.0.1:${port}/-/ready`)).status === 200
      } catch {
        return false
      }
    })
  } catch (e) {
    await stop()
    throw e
  }
  return { port, output: () => output, stop }
}

/** An instant query through Prometheus's HTTP API: its series, or a failure with Prometheus's error. */
const query = async (prometheus: Prometheus, promql: string): Promise<Array<Series>> => {
  const response = await fetch(`http://127.0.0.1:${prometheus.port}/api/v1/query?query=${encodeURIComponent(promql)}`)
  const body = await response.json() as { status: string; error?: string; data?: { resultType: string; result: Array<Series> } }
  if (body.status !== "success" || body.data === undefined) throw new Error(`${promql}: ${body.error ?? response.status}`)
  if (body.data.resultType !== "vector") throw new Error(`${promql}: a ${body.data.resultType}, not a vector`)
  return body.data.result
}

/** `sum by (label) (...)` results as label value → number. */
const byLabel = (series: ReadonlyArray<Series>, label: string) =>
  new Map(series.map((s) => [s.metric[label] ?? "", Number(s.value[1])]))

/** A device: hello, `frames`, all their answers, close. */
const send = async (port: number, device: string, frames: ReadonlyArray<object>) => {
  const { d } = await Device.open(port, device)
  d.send(...frames)
  const answers = await d.take(frames.length)
  d.end()
  await d.closed
  return answers
}

interface Rule {
  readonly name: string
  readonly type: string
  readonly health: string
  readonly state?: string
  readonly lastError?: string
  readonly lastEvaluation: string
}

describe.runIf(hasPrometheus)("a real Prometheus scraping a real gateway", () => {
  let gateway: GatewayProcess
  let prometheus: Prometheus
  let exported: Set<string>
  let trafficDone: number

  beforeAll(async () => {
    const dir = tempDir("gw-prometheus-")
    gateway = await spawnGateway(Path.join(dir, "gateway"))
    prometheus = await startPrometheus(dir, [
      "global:",
      "  scrape_interval: 1s",
      "  scrape_timeout: 1s",
      "  evaluation_interval: 1s",
      "rule_files:",
      `  - ${JSON.stringify(otelPath("alerts.yml"))}`,
      "scrape_configs:",
      "  - job_name: iot-gateway", // the job the rules select
      "    static_configs:",
      `      - targets: ["127.0.0.1:${gateway.adminPort}"]`,
      ""
    ].join("\n"))
    // the traffic comes after a first scrape (its counters at 0), so that rates over it are not 0
    await until("a first scrape", 40_000, async () => (await query(prometheus, 'up{job="iot-gateway"} == 1')).length === 1)
      .catch(async (e: unknown) => {
        const targets = await (await fetch(`http://127.0.0.1:${prometheus.port}/api/v1/targets`)).text()
        throw new Error(`${String(e)}; targets: ${targets}; prometheus:\n${prometheus.output()}`)
      })
    // known traffic: 3 devices × (20 telemetry, 5 events, 1 invalid telemetry)
    const all = await Promise.all([1, 2, 3].map((i) =>
      send(gateway.port, `prom-dev-${i}`, [
        ...Array.from({ length: 20 }, (_, k) => telemetry(k + 1)),
        ...Array.from({ length: 5 }, (_, k) => event(21 + k)),
        telemetry(26, { temp: "warm" })
      ])
    ))
    for (const answers of all) {
      expect(answers.filter((a) => a.type === "ack")).toHaveLength(25)
      expect(answers.filter((a) => a.type === "nack" && a["code"] === "invalid")).toHaveLength(1)
    }
    trafficDone = Date.now() / 1000
    exported = sampleNames(parseExposition(await scrape(gateway.adminPort)))
    // a scrape well after it: rates over the last minute then span the traffic
    await until("a scrape after the traffic", 20_000, async () =>
      (await query(prometheus, `timestamp(up{job="iot-gateway"}) > ${trafficDone + 1.5}`)).length === 1)
  }, 90_000)

  afterAll(async () => {
    await prometheus?.stop()
    await cleanupChildren()
  })

  it("counts what was sent: messages by kind and outcome, connections by result, errors by class", async () => {
    // scraped every second: wait for a scrape after the connections were counted closed
    await until("Prometheus sees the traffic", 20_000, async () => {
      const closed = byLabel(await query(prometheus, "sum by (result) (gateway_connections_total)"), "result").get("closed")
      return closed === 3
    })
    const up = await query(prometheus, 'up{job="iot-gateway"}')
    expect(up.map((s) => s.value[1])).toEqual(["1"])

    const messages = await query(prometheus, "sum by (kind, outcome) (gateway_messages_total)")
    const got = new Map(messages.map((s) => [`${s.metric["kind"]} ${s.metric["outcome"]}`, Number(s.value[1])]))
    expect(got.size).toBe(18) // every kind × outcome exists from the start
    for (const [key, value] of got) {
      const expected = key === "telemetry committed" ? 60 : key === "event committed" ? 15 : key === "telemetry invalid" ? 3 : 0
      expect(value, key).toBe(expected)
    }
    const connections = byLabel(await query(prometheus, "sum by (result) (gateway_connections_total)"), "result")
    expect(connections.get("accepted")).toBe(3)
    expect(connections.get("closed")).toBe(3)
    expect([...connections.values()].reduce((a, b) => a + b, 0)).toBe(6)
    const errors = byLabel(await query(prometheus, "sum by (class) (gateway_errors_total)"), "class")
    expect(errors.get("ValidationError")).toBe(3)
    expect([...errors.values()].reduce((a, b) => a + b, 0)).toBe(3)
    const commits = await query(prometheus, "sum(gateway_ingest_to_commit_latency_seconds_count)")
    expect(Number(commits[0]?.value[1])).toBe(75)
  }, 30_000)

  it("histogram_quantile gives a sane ingest-to-commit p99 in seconds, over all time and over the last minute", async () => {
    for (
      const promql of [
        "histogram_quantile(0.99, sum by (le) (gateway_ingest_to_commit_latency_seconds_bucket))",
        "histogram_quantile(0.99, sum by (le) (rate(gateway_ingest_to_commit_latency_seconds_bucket[1m])))",
        "histogram_quantile(0.5, sum by (le) (rate(gateway_ingest_to_commit_latency_seconds_bucket[1m])))"
      ]
    ) {
      const result = await query(prometheus, promql)
      expect(result, promql).toHaveLength(1)
      const seconds = Number(result[0]!.value[1])
      expect(Number.isFinite(seconds), `${promql} = ${result[0]!.value[1]}`).toBe(true)
      expect(seconds, promql).toBeGreaterThan(0)
      expect(seconds, promql).toBeLessThan(5) // 78 frames on an idle local store: milliseconds, not seconds
    }
    const p50 = Number((await query(prometheus, "histogram_quantile(0.5, sum by (le) (gateway_ingest_to_commit_latency_seconds_bucket))"))[0]?.value[1])
    const p99 = Number((await query(prometheus, "histogram_quantile(0.99, sum by (le) (gateway_ingest_to_commit_latency_seconds_bucket))"))[0]?.value[1])
    expect(p50).toBeLessThanOrEqual(p99)
  })

  it("every alerting rule of otel/alerts.yml evaluates on the real series without error, and none fires", async () => {
    const expected = alertRules().map((r) => r.alert).sort()
    let rules: Array<Rule> = []
    await until("every rule evaluated after the traffic", 20_000, async () => {
      const body = await (await fetch(`http://127.0.0.1:${prometheus.port}/api/v1/rules`)).json() as {
        data: { groups: Array<{ rules: Array<Rule> }> }
      }
      rules = body.data.groups.flatMap((g) => g.rules)
      return rules.length === expected.length && rules.every((r) => Date.parse(r.lastEvaluation) / 1000 > trafficDone + 1)
    })
    expect(rules.map((r) => r.name).sort()).toEqual(expected)
    for (const r of rules) {
      expect(r.health, `${r.name}: ${r.lastError ?? ""}`).toBe("ok")
      expect(r.state, r.name).not.toBe("firing")
    }
    const alerts = await query(prometheus, 'ALERTS{alertstate="firing"}')
    expect(alerts.map((a) => a.metric["alertname"])).toEqual([])
  }, 30_000)

  it("every dashboard query is valid PromQL, and returns series when the gateway exports what it reads", async () => {
    const queries = dashboardQueries()
    expect(queries.length).toBeGreaterThan(30)
    const empty: Array<string> = []
    for (const q of queries) {
      const promql = q.expr.replaceAll("$__rate_interval", "1m").replaceAll("$instance", ".*")
      const result = await query(prometheus, promql) // throws with Prometheus's parse error
      const reads = [...metricNames(q.expr)]
      if (reads.every((name) => exported.has(name) || SYNTHETIC.has(name)) && result.length === 0) empty.push(`${q.where}: ${promql}`)
    }
    expect(empty).toEqual([])
  }, 60_000)
})
