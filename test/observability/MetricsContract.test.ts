/**
 * The metrics contract: the README's metrics table, the code and a running gateway's `/metrics`
 * cannot drift apart. A gateway process (SQLite, a route to an unreachable NATS with its
 * outbox, TLS on the device port) gets known traffic over real sockets; then every row of the
 * table must be exported with its documented type, label names and label values (no device id
 * anywhere), every exported family and every metric the code declares must be in the table, the
 * counters must equal the traffic, and every metric the Grafana dashboard and the alerting
 * rules read must be one the gateway (or a node's primary) really exports. A node of two
 * workers (GATEWAY_WORKERS=2) shows the node-only series and merges the new types: counters and
 * histograms (GC pauses, event-loop delay, CPU) summed, the event-loop gauges the worst worker's.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { hasOpenssl, makePki } from "../support/certs.ts"
import { cleanupChildren, type GatewayProcess, spawnGateway, tempDir } from "../support/childGateway.ts"
import { Device, event, telemetry } from "../support/client.ts"
import { scrape } from "../support/metrics.ts"
import { freePort } from "../support/natsServer.ts"
import { until } from "../support/poll.ts"
import { logLines, messageOf, startChild } from "../support/process.ts"
import {
  alertRules,
  type ContractRow,
  dashboardQueries,
  type Family,
  metricNames,
  parseExposition,
  readContract,
  ROOT,
  sampleNames,
  sampleValue,
  SYNTHETIC
} from "./support.ts"

const tls = hasOpenssl()
if (!tls) {
  const reason = "the TLS rows of the metrics contract need the `openssl` command (apt-get install openssl)"
  if (process.env["GATEWAY_REQUIRE_SERVICES"] === "1") throw new Error(reason)
  console.warn(`SKIPPED LOUDLY: ${reason}; they are checked in the code only`)
}

const DEVICES = ["contract-dev-1", "contract-dev-2", "remote-dev-1", "node-dev-1"]

/** A device over TCP or TLS: hello, then `frames`, then every answer. */
const send = async (port: number, device: string, frames: ReadonlyArray<object>, ca?: string) => {
  const d = ca === undefined ? await Device.connect(port) : await Device.connectTls(port, { ca: Fs.readFileSync(ca) })
  d.send({ type: "hello", v: 1, device, token: "t" })
  const welcome = await d.next()
  if (welcome.type !== "welcome") throw new Error(`expected welcome, got ${JSON.stringify(welcome)}`)
  d.send(...frames)
  const answers = await d.take(frames.length)
  d.end()
  await d.closed
  return answers
}

/** The type the source declares for each metric name (`Metric.counter("name"`, …), by scanning src/. */
const declaredInSource = (): Map<string, Set<string>> => {
  const out = new Map<string, Set<string>>()
  const walk = (dir: string) => {
    for (const entry of Fs.readdirSync(dir, { withFileTypes: true })) {
      const path = Path.join(dir, entry.name)
      if (entry.isDirectory()) walk(path)
      else if (entry.name.endsWith(".ts")) {
        const text = Fs.readFileSync(path, "utf8")
        for (const m of text.matchAll(/Metric\.(counter|gauge|histogram|summary|timer)\(\s*["'`]([^"'`$]+)["'`]/g)) {
          const types = out.get(m[2]!) ?? new Set<string>()
          types.add(m[1] === "timer" ? "histogram" : m[1]!)
          out.set(m[2]!, types)
        }
        // a metric name built from a template would escape this check
        expect(text, path).not.toMatch(/Metric\.(counter|gauge|histogram|summary|timer)\(\s*`[^`]*\$\{/)
      }
    }
  }
  walk(Path.join(ROOT, "src"))
  return out
}

/** Checks one family against its row: type, label names (plus `le` on buckets), enumerated values. */
const checkFamily = (row: ContractRow, family: Family, where: string) => {
  expect(family.type, `${where}: # TYPE ${row.name}`).toBe(row.type)
  expect(family.samples.length, `${where}: ${row.name} has samples`).toBeGreaterThan(0)
  for (const s of family.samples) {
    const names = Object.keys(s.labels).filter((l) => !(l === "le" && s.name.endsWith("_bucket"))).sort()
    expect(names, `${where}: labels of ${s.name}`).toEqual([...row.labels.keys()].sort())
    for (const [label, value] of Object.entries(s.labels)) {
      expect(label, `${where}: ${s.name}`).not.toMatch(/device/i)
      expect(DEVICES, `${where}: ${s.name}{${label}}`).not.toContain(value)
      const allowed = row.labels.get(label)
      if (allowed !== undefined) expect(allowed, `${where}: ${s.name}{${label}="${value}"}`).toContain(value)
    }
    if (s.name.endsWith("_bucket")) expect(s.labels["le"], `${where}: ${s.name}`).toMatch(/^(\+Inf|[0-9.e+-]+)$/)
  }
  if (row.type === "histogram") {
    // cumulative buckets, +Inf equal to _count, per series
    const series = new Map<string, Array<{ le: number; value: number }>>()
    for (const s of family.samples.filter((x) => x.name.endsWith("_bucket"))) {
      const key = JSON.stringify(Object.entries(s.labels).filter(([k]) => k !== "le"))
      const list = series.get(key) ?? []
      list.push({ le: s.labels["le"] === "+Inf" ? Infinity : Number(s.labels["le"]), value: s.value })
      series.set(key, list)
    }
    expect(series.size, `${where}: ${row.name} has buckets`).toBeGreaterThan(0)
    for (const [key, buckets] of series) {
      buckets.sort((a, b) => a.le - b.le)
      for (let i = 1; i < buckets.length; i++) expect(buckets[i]!.value, `${where}: ${row.name} ${key}`).toBeGreaterThanOrEqual(buckets[i - 1]!.value)
      expect(buckets[buckets.length - 1]!.le).toBe(Infinity)
      const labels = Object.fromEntries(JSON.parse(key) as Array<[string, string]>)
      expect(buckets[buckets.length - 1]!.value, `${where}: ${row.name} ${key} +Inf = _count`)
        .toBe(family.samples.find((s) => s.name === `${row.name}_count` && JSON.stringify(Object.entries(s.labels)) === JSON.stringify(Object.entries(labels)))?.value)
    }
  }
}

/** Whether the row's series must exist on the single gateway of this test. */
const expectedOnGateway = (row: ContractRow) =>
  row.series === "start" || row.series === "sink" || row.series === "remote sink" || row.series === "stage" || (row.series === "TLS" && tls)

describe("the metrics contract (README, Metrics)", () => {
  let gateway: GatewayProcess
  let node: GatewayProcess
  let single: Map<string, Family>
  let merged: Map<string, Family>
  const contract = readContract()

  beforeAll(async () => {
    const dir = tempDir("gw-contract-")
    const routes = Path.join(dir, "routes.json")
    Fs.writeFileSync(routes, JSON.stringify({ routes: [{ kinds: ["telemetry"], devices: ["remote-*"], sinks: ["nats"] }], default: ["sqlite"] }))
    const natsPort = await freePort() // nothing listens there: the NATS sink starts unreachable, its outbox on
    const pki = tls ? makePki(dir) : undefined
    gateway = await spawnGateway(Path.join(dir, "single"), {
      GATEWAY_ROUTES_FILE: routes,
      NATS_URL: `nats://127.0.0.1:${natsPort}`,
      ...(pki === undefined ? {} : { GATEWAY_TLS_CERT: pki.server.cert, GATEWAY_TLS_KEY: pki.server.key })
    })
    const ca = pki?.ca.cert
    const first = await send(gateway.port, "contract-dev-1", [
      telemetry(1),
      telemetry(2),
      event(3),
      telemetry(4, { temp: "warm" }), // invalid: a metric must be a number
      telemetry(5),
      event(6)
    ], ca)
    expect(first.map((a) => a.type)).toEqual(["ack", "ack", "ack", "nack", "ack", "ack"])
    expect(await send(gateway.port, "contract-dev-2", [telemetry(1), telemetry(2), event(3)], ca)).toHaveLength(3)
    await until("both connections counted closed", 5_000, async () =>
      sampleValue(parseExposition(await scrape(gateway.adminPort)), "gateway_connections_total", { result: "closed" }) === 2)
    single = parseExposition(await scrape(gateway.adminPort))

    node = await startChild(Path.join(dir, "node"), {
      GATEWAY_WORKERS: "2",
      GATEWAY_ROUTES_FILE: routes,
      NATS_URL: `nats://127.0.0.1:${natsPort}`
    }, undefined, 30_000)
    expect(await send(node.port, "node-dev-1", [telemetry(1), event(2)])).toHaveLength(2)
    merged = parseExposition(await scrape(node.adminPort))
  }, 90_000)

  afterAll(cleanupChildren)

  it("the table names every metric once, with a known type and series", () => {
    expect(contract.length).toBeGreaterThanOrEqual(50)
    expect(new Set(contract.map((r) => r.name)).size).toBe(contract.length)
    for (const row of contract) {
      expect(["counter", "gauge", "histogram"], row.name).toContain(row.type)
      expect(row.name.endsWith("_total"), `${row.name}: counters end in _total, nothing else does`).toBe(row.type === "counter")
      expect(["start", "sink", "remote sink", "TLS", "stage", "node"].includes(row.series) || row.series.startsWith("first "), row.name).toBe(true)
      expect(row.meaning.length, row.name).toBeGreaterThan(5)
    }
    for (
      const required of [
        "gateway_connections_total",
        "gateway_messages_total",
        "gateway_errors_total",
        "gateway_queue_depth",
        "gateway_queue_capacity",
        "gateway_sink_queue_depth",
        "gateway_sink_queue_capacity",
        "gateway_ingest_to_commit_latency_seconds",
        "gateway_sink_batch_size",
        "gateway_sink_batch_duration_seconds",
        "gateway_sink_retries_total",
        "gateway_sink_breaker_state",
        "gateway_outbox_messages",
        "gateway_outbox_oldest_age_seconds",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "nodejs_heap_size_used_bytes",
        "nodejs_eventloop_lag_seconds",
        "nodejs_eventloop_lag_p50_seconds",
        "nodejs_eventloop_lag_p90_seconds",
        "nodejs_eventloop_lag_p99_seconds",
        "nodejs_eventloop_lag_max_seconds",
        "nodejs_eventloop_delay_seconds",
        "nodejs_gc_duration_seconds"
      ]
    ) expect(contract.map((r) => r.name)).toContain(required)
  })

  it("the table and the code agree: every metric the code declares is in the table, with the same type", () => {
    const declared = declaredInSource()
    expect(declared.size).toBeGreaterThanOrEqual(50)
    const documented = new Map(contract.map((r) => [r.name, r.type]))
    for (const [name, types] of declared) {
      expect(documented.has(name), `${name} is declared in src/ but not in the README's table`).toBe(true)
      expect([...types], name).toEqual([documented.get(name)])
    }
    for (const row of contract) expect(declared.has(row.name), `${row.name} is in the table but declared nowhere in src/`).toBe(true)
  })

  it("a running gateway exports every row with its documented type and labels, and nothing else", () => {
    for (const row of contract) {
      const family = single.get(row.name)
      if (expectedOnGateway(row)) {
        expect(family, `${row.name} (${row.series}) missing from a gateway's /metrics`).toBeDefined()
      }
      if (family !== undefined) checkFamily(row, family, "gateway")
    }
    const documented = new Set(contract.map((r) => r.name))
    expect([...single.keys()].filter((name) => !documented.has(name))).toEqual([])
  })

  it("its counters are the traffic: messages by kind and outcome, connections by result, errors by class, latency observed per commit", () => {
    const v = (name: string, labels: Record<string, string> = {}) => sampleValue(single, name, labels)
    expect(v("gateway_messages_total", { kind: "telemetry", outcome: "committed" })).toBe(5)
    expect(v("gateway_messages_total", { kind: "event", outcome: "committed" })).toBe(3)
    expect(v("gateway_messages_total", { kind: "telemetry", outcome: "invalid" })).toBe(1)
    expect(v("gateway_messages_total")).toBe(9)
    expect(v("gateway_errors_total", { class: "ValidationError" })).toBe(1)
    expect(v("gateway_errors_total")).toBe(1)
    expect(v("gateway_connections_total", { result: "accepted" })).toBe(2)
    expect(v("gateway_connections_total", { result: "closed" })).toBe(2)
    expect(v("gateway_connections_total")).toBe(4)
    expect(v("gateway_connections_active")).toBe(0)
    expect(v("gateway_ingest_to_commit_latency_seconds_count")).toBe(8)
    // seconds: 8 local commits take well under 8 × 10 s and more than nothing
    expect(v("gateway_ingest_to_commit_latency_seconds_sum")).toBeGreaterThan(0)
    expect(v("gateway_ingest_to_commit_latency_seconds_sum")).toBeLessThan(8 * 10)
    expect(v("gateway_sink_batch_size_sum", { sink: "sqlite" })).toBe(8)
    expect(v("gateway_sink_queue_capacity", { sink: "sqlite" })).toBeGreaterThan(0)
    expect(v("gateway_sink_queue_capacity", { sink: "nats" })).toBeGreaterThan(0)
    expect(v("gateway_sink_breaker_state", { sink: "nats" })).toBe(0)
    expect(v("gateway_queue_capacity", { lane: "critical" })).toBeGreaterThan(0)
  })

  it("every metric the dashboard and the alerting rules read is exported by a running gateway or node", () => {
    const exported = new Set([...sampleNames(single), ...sampleNames(merged)])
    const queries = [...dashboardQueries(), ...alertRules().map((r) => ({ where: `rule ${r.alert}`, expr: r.expr }))]
    const read = queries.flatMap((q) => [...metricNames(q.expr)].map((name) => ({ where: q.where, name })))
    expect(read.length).toBeGreaterThan(50)
    expect(read.filter((r) => !exported.has(r.name) && !SYNTHETIC.has(r.name)).map((r) => `${r.where}: ${r.name}`)).toEqual([])
  })

  it("a node of two workers exports the node's own series and every worker family with the same type", () => {
    for (const row of contract) {
      const family = merged.get(row.name)
      if (row.series === "node" || (expectedOnGateway(row) && row.series !== "TLS")) {
        expect(family, `${row.name} (${row.series}) missing from a node's /metrics`).toBeDefined()
      }
      if (family !== undefined) checkFamily(row, family, "node")
    }
    expect(sampleValue(merged, "gateway_workers")).toBe(2)
    expect(sampleValue(merged, "gateway_messages_total", { outcome: "committed" })).toBe(2)
  })

  it("the node sums counters and histograms of its workers (GC pauses, event-loop delay, CPU) and takes the worst event-loop gauges", async () => {
    const ports = logLines(node.output()).filter((l) => messageOf(l) === "worker listening").map((l) => l.annotations?.["adminPort"])
    expect(ports).toHaveLength(2)
    const workers = async () => Promise.all(ports.map(async (p) => parseExposition(await scrape(Number(p)))))
    const before = await workers()
    const nodeNow = parseExposition(await scrape(node.adminPort))
    const after = await workers()
    const summed = ["nodejs_gc_duration_seconds", "nodejs_eventloop_delay_seconds", "process_cpu_seconds_total", "gateway_messages_total", "gateway_stage_duration_seconds"]
    for (const name of summed) {
      const family = nodeNow.get(name)
      expect(family, name).toBeDefined()
      for (const s of family?.samples ?? []) {
        const sum = (parts: ReadonlyArray<Map<string, Family>>) => parts.reduce((acc, p) => acc + sampleValue(p, s.name, s.labels), 0)
        const where = `${s.name}${JSON.stringify(s.labels)}`
        expect(s.value, where).toBeGreaterThanOrEqual(sum(before) - 1e-9)
        expect(s.value, where).toBeLessThanOrEqual(sum(after) + 1e-9)
      }
    }
    // a statistic of one process: the worst worker's, never their sum
    const lag = sampleValue(nodeNow, "nodejs_eventloop_lag_max_seconds")
    const seen = [...before, ...after].map((p) => sampleValue(p, "nodejs_eventloop_lag_max_seconds"))
    expect(lag).toBeLessThanOrEqual(Math.max(...seen) + 1e-12)
    expect(sampleValue(nodeNow, "gateway_sink_breaker_state", { sink: "nats" })).toBe(0)
  })
})
