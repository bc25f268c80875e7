/**
 * Test support for the observability tests: the `prometheus` and `promtool` binaries (a loud
 * skip without them, a failure under GATEWAY_REQUIRE_SERVICES=1), a Prometheus text parser
 * that keeps types and labels, the README's metrics table (the contract), and the metric names
 * a PromQL expression reads.
 */
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Path from "node:path"
import * as Yaml from "yaml"
import { ROOT } from "../support/process.ts"

export { ROOT }

/** The path of `name` on PATH, or null. */
const which = (name: string): string | null => {
  const found = ChildProcess.spawnSync("sh", ["-c", `command -v ${name}`], { encoding: "utf8" })
  const path = found.status === 0 ? found.stdout.trim() : ""
  return path === "" ? null : path
}

/** Prometheus's server binary (Debian package `prometheus`), or null. */
export const prometheusBinary = which("prometheus")
/** Prometheus's `promtool` (same package), or null. */
export const promtoolBinary = which("promtool")

/**
 * Call at the top of a test file that needs `binary`: without it, warns loudly (the tests are
 * then skipped with `describe.runIf`) or throws when GATEWAY_REQUIRE_SERVICES=1.
 */
export const requireBinary = (binary: string | null, name: string, what: string): boolean => {
  if (binary !== null) return true
  const reason = `${what} need the \`${name}\` command (apt-get install prometheus)`
  if (process.env["GATEWAY_REQUIRE_SERVICES"] === "1") throw new Error(reason)
  console.warn(`SKIPPED LOUDLY: ${reason}`)
  return false
}

/** Runs promtool with `args` in the repository root: exit code and output. */
export const promtool = (args: ReadonlyArray<string>): { readonly code: number | null; readonly output: string } => {
  if (promtoolBinary === null) throw new Error("promtool is not installed")
  const r = ChildProcess.spawnSync(promtoolBinary, [...args], { cwd: ROOT, encoding: "utf8", timeout: 30_000 })
  return { code: r.status, output: `${r.stdout}${r.stderr}` }
}

// ---- Prometheus text ----

/** One sample: its metric name (with a histogram's suffix), labels and value. */
export interface Sample {
  readonly name: string
  readonly labels: Readonly<Record<string, string>>
  readonly value: number
}

/** One family: its `# TYPE` (undefined without one) and samples. */
export interface Family {
  readonly name: string
  readonly type: string | undefined
  readonly samples: Array<Sample>
}

const SAMPLE = /^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$/
const LABEL = /([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"/g
const HISTOGRAM_SUFFIXES = ["_bucket", "_sum", "_count"]

/** Parses Prometheus text into families (a histogram's `_bucket`, `_sum`, `_count` samples are its own). */
export const parseExposition = (text: string): Map<string, Family> => {
  const families = new Map<string, Family & { type: string | undefined }>()
  const family = (name: string) => {
    let f = families.get(name)
    if (f === undefined) families.set(name, f = { name, type: undefined, samples: [] })
    return f
  }
  for (const line of text.split("\n")) {
    if (line.trim() === "") continue
    const type = /^# TYPE (\S+) (\S+)$/.exec(line)
    if (type !== null) {
      family(type[1]!).type = type[2]
      continue
    }
    if (line.startsWith("#")) continue
    const m = SAMPLE.exec(line)
    if (m === null) throw new Error(`not a sample line: ${line}`)
    const name = m[1]!
    const labels: Record<string, string> = {}
    for (const l of (m[2] ?? "").matchAll(LABEL)) labels[l[1]!] = l[2]!
    const suffix = HISTOGRAM_SUFFIXES.find((s) => name.endsWith(s) && families.get(name.slice(0, -s.length))?.type === "histogram")
    family(suffix === undefined ? name : name.slice(0, -suffix.length)).samples.push({ name, labels, value: Number(m[3]) })
  }
  return families
}

/** The sum of the samples named `name` whose labels include `labels`. */
export const sampleValue = (families: ReadonlyMap<string, Family>, name: string, labels: Record<string, string> = {}): number => {
  let sum = 0
  for (const f of families.values()) {
    for (const s of f.samples) {
      if (s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v)) sum += s.value
    }
  }
  return sum
}

/** Every sample name of an exposition (a histogram contributes `_bucket`, `_sum` and `_count`). */
export const sampleNames = (families: ReadonlyMap<string, Family>): Set<string> =>
  new Set([...families.values()].flatMap((f) => f.samples.map((s) => s.name)))

// ---- the README's metrics table ----

/** One row of the README's metrics table. */
export interface ContractRow {
  readonly name: string
  readonly type: string
  /** Label names; their values when the table lists them all (undefined: set by code or configuration). */
  readonly labels: ReadonlyMap<string, ReadonlyArray<string> | undefined>
  /** When the series exist: start, sink, remote sink, TLS, stage, node, first … */
  readonly series: string
  readonly meaning: string
}

/** The rows of the table under `### Metrics` in README.md. */
export const readContract = (readme: string = Fs.readFileSync(Path.join(ROOT, "README.md"), "utf8")): Array<ContractRow> => {
  const start = readme.indexOf("\n### Metrics\n")
  if (start === -1) throw new Error("README.md has no ### Metrics section")
  const end = readme.indexOf("\n#", start + 1)
  const section = readme.slice(start, end === -1 ? undefined : end)
  const rows: Array<ContractRow> = []
  for (const line of section.split("\n")) {
    if (!line.startsWith("| `")) continue
    const cells = line.split("|").slice(1, -1).map((c) => c.trim())
    if (cells.length !== 5) throw new Error(`a metrics table row needs 5 cells: ${line}`)
    const [nameCell, type, labelCell, series, meaning] = cells as [string, string, string, string, string]
    const name = /^`([a-z_:][a-z0-9_:]*)`$/.exec(nameCell)?.[1]
    if (name === undefined) throw new Error(`not a metric name: ${nameCell}`)
    const labels = new Map<string, ReadonlyArray<string> | undefined>()
    for (const m of labelCell.matchAll(/`([a-z_]+)`(?: \(([^)]*)\))?/g)) {
      const inside = m[2] ?? ""
      const values = [...inside.matchAll(/`([^`]+)`/g)].map((v) => v[1]!)
      const open = inside.replace(/`[^`]+`/g, "").replace(/[,\s]/g, "") !== ""
      labels.set(m[1]!, values.length === 0 || open ? undefined : values)
    }
    rows.push({ name, type, labels, series, meaning })
  }
  return rows
}

// ---- PromQL ----

const KEYWORDS = new Set([
  "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "atan2", "inf", "nan"
])

/**
 * The metric names an expression reads (Grafana's `$variables` allowed): identifiers that are
 * neither functions nor aggregations (followed by `(`), keywords, label matchers, grouping
 * labels, durations nor strings.
 */
export const metricNames = (expr: string): Set<string> => {
  const stripped = expr
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'/g, "\"\"") // strings
    .replace(/\$\{[^}]*\}|\$\w+/g, "1m") // Grafana variables
    .replace(/\{[^}]*\}/g, "") // label matchers
    .replace(/\[[^\]]*\]/g, "") // ranges and subqueries
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, "$1") // grouping labels
  const names = new Set<string>()
  // a function or an aggregation: followed by `(`, or by `by`/`without` and then `(`
  for (const m of stripped.matchAll(/(?<![\w.])([A-Za-z_:][\w:]*)(\s*\(|\s+(?:by|without)\b)?/g)) {
    const word = m[1]!
    if (m[2] !== undefined || KEYWORDS.has(word.toLowerCase())) continue
    names.add(word)
  }
  return names
}

/** Prometheus's own series (not the gateway's): allowed in rules and dashboards. */
export const SYNTHETIC = new Set(["up", "scrape_duration_seconds", "scrape_samples_scraped"])

// ---- the files of otel/ ----

/** An otel/ file's path. */
export const otelPath = (...parts: ReadonlyArray<string>): string => Path.join(ROOT, "otel", ...parts)

/** A PromQL expression of the dashboard or the rules, with where it is. */
export interface Query {
  readonly where: string
  readonly expr: string
}

interface DashboardPanel {
  readonly title?: string
  readonly type?: string
  readonly targets?: ReadonlyArray<{ readonly expr?: string }>
  readonly panels?: ReadonlyArray<DashboardPanel>
}

/** The dashboard JSON, parsed. */
export const readDashboard = (): {
  readonly panels: ReadonlyArray<DashboardPanel & { readonly id?: number; readonly gridPos?: { x: number; y: number; w: number; h: number }; readonly datasource?: { uid?: string }; readonly targets?: ReadonlyArray<{ readonly expr?: string; readonly datasource?: { uid?: string } }> }>
  readonly templating: { readonly list: ReadonlyArray<{ readonly name: string; readonly definition?: string; readonly datasource?: { uid?: string } }> }
} => JSON.parse(Fs.readFileSync(otelPath("grafana", "dashboards", "iot-gateway.json"), "utf8"))

/** Every query of the dashboard: its panels' targets, and its variables' `label_values(metric, label)`. */
export const dashboardQueries = (): Array<Query> => {
  const d = readDashboard()
  const out: Array<Query> = []
  const walk = (panels: ReadonlyArray<DashboardPanel>) => {
    for (const p of panels) {
      for (const t of p.targets ?? []) if (t.expr !== undefined) out.push({ where: `panel "${p.title}"`, expr: t.expr })
      walk(p.panels ?? [])
    }
  }
  walk(d.panels)
  for (const v of d.templating.list) {
    const m = /^label_values\(([a-z_:][a-z0-9_:]*),\s*\w+\)$/.exec(v.definition ?? "")
    if (m === null) throw new Error(`variable ${v.name}: expected label_values(metric, label), got ${v.definition}`)
    out.push({ where: `variable ${v.name}`, expr: m[1]! })
  }
  return out
}

/** A YAML file of otel/, parsed. */
export const readYaml = (...parts: ReadonlyArray<string>): unknown => Yaml.parse(Fs.readFileSync(otelPath(...parts), "utf8"))

/** `value` as a record, or a failure naming `what`. */
export const asRecord = (value: unknown, what: string): Record<string, unknown> => {
  if (typeof value !== "object" || value === null || Array.isArray(value)) throw new Error(`${what}: expected a mapping`)
  return value as Record<string, unknown>
}

/** `value` as an array, or a failure naming `what`. */
export const asArray = (value: unknown, what: string): ReadonlyArray<unknown> => {
  if (!Array.isArray(value)) throw new Error(`${what}: expected a list`)
  return value
}

/** One alerting rule of alerts.yml. */
export interface AlertRule {
  readonly alert: string
  readonly expr: string
  readonly severity: unknown
}

/** The alerting rules of otel/alerts.yml. */
export const alertRules = (): Array<AlertRule> =>
  asArray(asRecord(readYaml("alerts.yml"), "alerts.yml")["groups"], "groups").flatMap((g, i) =>
    asArray(asRecord(g, `group ${i}`)["rules"], `group ${i} rules`).map((r, j) => {
      const rule = asRecord(r, `rule ${j}`)
      const labels = asRecord(rule["labels"] ?? {}, `rule ${j} labels`)
      return { alert: String(rule["alert"]), expr: String(rule["expr"]), severity: labels["severity"] }
    })
  )
