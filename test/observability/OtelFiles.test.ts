/**
 * otel/ is ready to run: the compose file (Jaeger, Prometheus, Grafana) parses and mounts files
 * that exist, Prometheus's configuration and alerting rules pass `promtool check` and the rules'
 * own unit tests (`promtool test rules`), Grafana's provisioning points at what compose mounts,
 * and every metric the dashboard and the rules read is in the README's metrics table (that the
 * table is what a running gateway exports is MetricsContract.test.ts's job). Containers cannot
 * run on the test machine: `docker compose config` is used only where the compose plugin is.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { GatewayConfig } from "../../src/config/GatewayConfig.ts"
import {
  alertRules,
  asArray,
  asRecord,
  dashboardQueries,
  metricNames,
  otelPath,
  promtool,
  promtoolBinary,
  readContract,
  readDashboard,
  readYaml,
  requireBinary,
  ROOT,
  SYNTHETIC
} from "./support.ts"

const hasPromtool = requireBinary(promtoolBinary, "promtool", "the checks of otel/prometheus.yml and otel/alerts.yml")

/** The compose file's services. */
const services = () => asRecord(asRecord(readYaml("compose.yaml"), "compose.yaml")["services"], "services")
const service = (name: string) => asRecord(services()[name], `service ${name}`)
const strings = (value: unknown, what: string) => asArray(value ?? [], what).map(String)

/** The host paths a service mounts from otel/ (`./x:/y[:ro]`), with their container paths. */
const mounts = (name: string) =>
  strings(service(name)["volumes"], `${name} volumes`).flatMap((v) => {
    const [from, to] = v.split(":")
    return from !== undefined && to !== undefined && from.startsWith("./") ? [{ from: otelPath(from), to }] : []
  })

describe("otel/", () => {
  it("compose.yaml: Jaeger with OTLP on 4317/4318 and its UI on 16686, Prometheus reaching the host, Grafana provisioned; every mounted file exists", () => {
    expect(Object.keys(services()).sort()).toEqual(["grafana", "jaeger", "prometheus"])
    for (const [name, s] of Object.entries(services())) {
      expect(String(asRecord(s, name)["image"]), `${name} image pinned`).toMatch(/^[\w./-]+:[\w.-]+$/)
      expect(String(asRecord(s, name)["image"])).not.toMatch(/:latest$/)
    }
    expect(strings(service("jaeger")["ports"], "jaeger ports")).toEqual(expect.arrayContaining(["4317:4317", "4318:4318", "16686:16686"]))
    expect(strings(service("prometheus")["ports"], "prometheus ports")).toContain("9090:9090")
    expect(strings(service("grafana")["ports"], "grafana ports")).toContain("3000:3000")
    expect(strings(service("prometheus")["extra_hosts"], "extra_hosts")).toContain("host.docker.internal:host-gateway")

    const prometheusMounts = mounts("prometheus")
    expect(prometheusMounts.map((m) => Path.relative(otelPath(), m.from)).sort()).toEqual(["alerts.yml", "prometheus.yml"])
    const config = strings(service("prometheus")["command"], "prometheus command").find((a) => a.startsWith("--config.file="))
    expect(config).toBe("--config.file=/etc/prometheus/prometheus.yml")
    expect(prometheusMounts.map((m) => m.to)).toContain("/etc/prometheus/prometheus.yml")
    // prometheus.yml names alerts.yml relative to itself: both mounted side by side
    expect(prometheusMounts.map((m) => m.to)).toContain("/etc/prometheus/alerts.yml")

    const all = [...mounts("prometheus"), ...mounts("grafana")]
    expect(all.length).toBe(5)
    for (const m of all) expect(Fs.existsSync(m.from), `${m.from} exists`).toBe(true)

    // where docker's compose plugin is installed, it must accept the file too (not on the test machine)
    const plugin = ChildProcess.spawnSync("docker", ["compose", "version"], { encoding: "utf8" })
    if (plugin.status === 0) {
      const r = ChildProcess.spawnSync("docker", ["compose", "-f", otelPath("compose.yaml"), "config", "-q"], { encoding: "utf8" })
      expect(r.status, r.stderr).toBe(0)
    }
  })

  it.effect("prometheus.yml scrapes the gateway's default admin port through host.docker.internal and loads alerts.yml", () =>
    Effect.gen(function*() {
      const config = yield* Effect.provide(GatewayConfig, GatewayConfig.layerWith({}))
      const prometheus = asRecord(readYaml("prometheus.yml"), "prometheus.yml")
      expect(strings(prometheus["rule_files"], "rule_files")).toEqual(["alerts.yml"])
      const jobs = asArray(prometheus["scrape_configs"], "scrape_configs").map((j) => asRecord(j, "job"))
      expect(jobs.map((j) => j["job_name"])).toEqual(["iot-gateway"])
      const targets = asArray(jobs[0]!["static_configs"], "static_configs").flatMap((c) => strings(asRecord(c, "static_config")["targets"], "targets"))
      expect(targets).toEqual([`host.docker.internal:${config.adminPort}`])
      // the rules' job selector is this job's name
      for (const rule of alertRules()) {
        for (const m of rule.expr.matchAll(/job="([^"]*)"/g)) expect(m[1], rule.alert).toBe("iot-gateway")
      }
    }))

  it.runIf(hasPromtool)("promtool: the configuration and the rules are valid, and the rules pass their unit tests", () => {
    const config = promtool(["check", "config", "otel/prometheus.yml"])
    expect(config.code, config.output).toBe(0)
    expect(config.output).toContain("SUCCESS: 1 rule files found")
    const rules = promtool(["check", "rules", "otel/alerts.yml"])
    expect(rules.code, rules.output).toBe(0)
    expect(rules.output).toContain(`SUCCESS: ${alertRules().length} rules found`)
    const tests = promtool(["test", "rules", "otel/alerts.test.yml"])
    expect(tests.code, tests.output).toBe(0)
    expect(tests.output).toContain("SUCCESS")
    // every alert of the rules file is exercised by a unit test that expects it to fire
    const tested = Fs.readFileSync(otelPath("alerts.test.yml"), "utf8")
    const fired = new Set([...tested.matchAll(/alertname: (\w+)\n\s+exp_alerts:\n\s+- exp_labels/g)].map((m) => m[1]))
    const untested = alertRules().map((r) => r.alert).filter((a) => !fired.has(a))
    expect(untested).toEqual([])
  })

  it("alerts.yml: what an operator is paged for, each rule with a severity and a summary", () => {
    const rules = alertRules()
    expect(rules.map((r) => r.alert)).toEqual(expect.arrayContaining([
      "GatewayDown",
      "GatewayLaneNearlyFull",
      "GatewayEventsWaiting",
      "GatewaySinkNotReady",
      "GatewaySinkBreakerOpen",
      "GatewayShedding",
      "GatewayErrorBurst",
      "GatewayOutboxGrowing",
      "GatewayOutboxOld",
      "GatewayEventLoopDelayHigh"
    ]))
    expect(new Set(rules.map((r) => r.alert)).size).toBe(rules.length)
    for (const r of rules) expect(["critical", "warning"], r.alert).toContain(r.severity)
  })

  it("grafana: the provisioned data sources and dashboards are what compose mounts; every panel queries the provisioned Prometheus; no panel overlaps another", () => {
    const grafanaMounts = mounts("grafana")
    const mountedAt = (dir: string) => grafanaMounts.find((m) => Path.relative(otelPath(), m.from) === dir)?.to
    expect(mountedAt("grafana/provisioning/datasources")).toBe("/etc/grafana/provisioning/datasources")
    expect(mountedAt("grafana/provisioning/dashboards")).toBe("/etc/grafana/provisioning/dashboards")

    const sources = asArray(asRecord(readYaml("grafana", "provisioning", "datasources", "datasources.yaml"), "datasources")["datasources"], "datasources")
      .map((d) => asRecord(d, "datasource"))
    const prometheus = sources.find((d) => d["type"] === "prometheus")
    expect(prometheus?.["url"]).toBe("http://prometheus:9090") // the compose service and its port
    expect(sources.find((d) => d["type"] === "jaeger")?.["url"]).toBe("http://jaeger:16686")

    const providers = asArray(asRecord(readYaml("grafana", "provisioning", "dashboards", "dashboards.yaml"), "dashboards")["providers"], "providers")
    const path = asRecord(asRecord(providers[0], "provider")["options"], "options")["path"]
    expect(path).toBe(mountedAt("grafana/dashboards"))
    expect(Fs.readdirSync(otelPath("grafana", "dashboards"))).toEqual(["iot-gateway.json"])

    const dashboard = readDashboard()
    const panels = dashboard.panels.filter((p) => p.type !== "row")
    expect(panels.length).toBeGreaterThanOrEqual(15)
    const ids = dashboard.panels.map((p) => p.id)
    expect(new Set(ids).size).toBe(ids.length)
    for (const p of panels) {
      expect(p.datasource?.uid, p.title).toBe(prometheus?.["uid"])
      expect(p.targets?.length, p.title).toBeGreaterThan(0)
      for (const t of p.targets ?? []) expect(t.datasource?.uid, p.title).toBe(prometheus?.["uid"])
    }
    for (const v of dashboard.templating.list) expect(v.datasource?.uid).toBe(prometheus?.["uid"])
    const cells = new Map<string, string>()
    for (const p of dashboard.panels) {
      const g = p.gridPos
      if (g === undefined) throw new Error(`panel ${p.title} has no gridPos`)
      expect(g.x + g.w, p.title).toBeLessThanOrEqual(24)
      for (let x = g.x; x < g.x + g.w; x++) {
        for (let y = g.y; y < g.y + g.h; y++) {
          const other = cells.get(`${x},${y}`)
          expect(other, `${p.title} overlaps ${other}`).toBeUndefined()
          cells.set(`${x},${y}`, p.title ?? "?")
        }
      }
    }
  })

  it("the dashboard shows what an operator needs: throughput, latency quantiles, lanes against capacity, drops, errors, connections, sinks, breaker, outbox, memory, event loop, GC", () => {
    const exprs = dashboardQueries().map((q) => q.expr).join("\n")
    for (const q of [0.5, 0.95, 0.99]) {
      expect(exprs).toContain(`histogram_quantile(${q}, sum by (le) (rate(gateway_ingest_to_commit_latency_seconds_bucket`)
    }
    for (
      const needle of [
        "sum by (kind, outcome) (rate(gateway_messages_total",
        "gateway_queue_depth",
        "gateway_queue_capacity",
        'outcome=~"shed|rate_limited"',
        "sum by (class) (rate(gateway_errors_total",
        "gateway_connections_active",
        "sum by (result) (rate(gateway_connections_total",
        "gateway_sink_batch_size_bucket",
        "gateway_sink_batch_duration_seconds_bucket",
        "gateway_sink_breaker_state",
        "gateway_outbox_messages",
        "gateway_outbox_oldest_age_seconds",
        "process_resident_memory_bytes",
        "nodejs_eventloop_delay_seconds_bucket",
        "nodejs_gc_duration_seconds_sum"
      ]
    ) expect(exprs).toContain(needle)
  })

  it("metric names are read from PromQL, not functions, labels, grouping, durations or Grafana variables", () => {
    expect([...metricNames(
      `histogram_quantile(0.99, sum by (instance, le) (rate(a_bucket{job="x", le!="1"}[5m]))) / ignoring(kind) group_left b_total offset 5m > bool 1e3`
    )].sort()).toEqual(["a_bucket", "b_total"])
    expect([...metricNames(`sum by (sink) (rate(c_total{instance=~"$instance"}[$__rate_interval])) and on(sink) d == 2`)].sort())
      .toEqual(["c_total", "d"])
    expect([...metricNames(`min_over_time(q{lane="critical"}[5m]) > 0`)]).toEqual(["q"])
  })

  it("every metric the dashboard and the rules read is in the README's metrics table", () => {
    const documented = new Set(readContract().flatMap((row) =>
      row.type === "histogram" ? [row.name, `${row.name}_bucket`, `${row.name}_sum`, `${row.name}_count`] : [row.name]
    ))
    const queries = [...dashboardQueries(), ...alertRules().map((r) => ({ where: `rule ${r.alert}`, expr: r.expr }))]
    expect(queries.length).toBeGreaterThan(40)
    const unknown = queries.flatMap((q) => [...metricNames(q.expr)].filter((n) => !documented.has(n) && !SYNTHETIC.has(n)).map((n) => `${q.where}: ${n}`))
    expect(unknown).toEqual([])
  })

  it("otel/README.md names the commands and files", () => {
    const text = Fs.readFileSync(Path.join(ROOT, "otel", "README.md"), "utf8")
    expect(text).toContain("docker compose -f otel/compose.yaml up -d")
    expect(text).toContain("OTEL_EXPORTER_OTLP_ENDPOINT")
    for (const file of ["compose.yaml", "prometheus.yml", "alerts.yml", "alerts.test.yml", "collector.yaml"]) expect(text).toContain(file)
  })
})
