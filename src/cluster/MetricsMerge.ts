/**
 * The node's metrics from its workers' (Prometheus text format): every sample of the same name
 * and labels is summed across workers, each family keeps one `# HELP` and `# TYPE`. Summing is
 * right for most of what the gateway exports: counters and histograms (buckets, `_sum` and
 * `_count` each add up), and gauges that count or measure things (connections, queue depth and
 * capacity, bytes held, memory budget, resident memory). The exceptions are gauges that are a
 * statistic of one process or a state ({@link MAXIMUM}: event-loop lag quantiles and maximum, the
 * breaker state, the size of the store's WAL that all workers share): the node's is its worst worker's. Summary quantiles cannot be merged and are
 * left out (the gateway has none).
 *
 * A worker that dies takes its counters with it, and a restarted one counts from zero: the
 * node's counters would fall, which Prometheus reads as a reset. {@link cumulative} keeps the
 * counter and histogram samples of a worker's last scrape so that the caller can keep adding
 * them after it is gone; the node's counters then never go down.
 */

/** One metric family: its help, type and samples (series text such as `x_total{kind="a"}` → value). */
export interface Family {
  readonly name: string
  readonly help: string | undefined
  readonly type: string | undefined
  readonly samples: ReadonlyMap<string, number>
}

/** A parsed exposition: families in the order they first appeared. */
export type Exposition = ReadonlyMap<string, Family>

/** An empty exposition. */
export const empty: Exposition = new Map()

interface MutableFamily {
  readonly name: string
  help: string | undefined
  type: string | undefined
  readonly samples: Map<string, number>
}

const SUFFIXES: Record<string, ReadonlyArray<string>> = {
  histogram: ["_bucket", "_sum", "_count"],
  summary: ["_sum", "_count"]
}

/** Parses Prometheus text; lines it does not understand are skipped. */
export const parse = (text: string): Exposition => {
  const families = new Map<string, MutableFamily>()
  const family = (name: string) => {
    let f = families.get(name)
    if (f === undefined) families.set(name, f = { name, help: undefined, type: undefined, samples: new Map() })
    return f
  }
  let current: MutableFamily | undefined
  for (const raw of text.split("\n")) {
    const line = raw.trim()
    if (line === "") continue
    if (line.startsWith("#")) {
      const m = /^#\s+(HELP|TYPE)\s+(\S+)(?:\s+(.*))?$/.exec(line)
      if (m === null) continue
      current = family(m[2]!)
      if (m[1] === "HELP") current.help = m[3] ?? ""
      else current.type = m[3]
      continue
    }
    const sample = parseSample(line)
    if (sample === undefined) continue
    const owner = current !== undefined && belongsTo(sample.name, current) ? current : family(sample.name)
    if (owner.type === "summary" && !sample.name.endsWith("_sum") && !sample.name.endsWith("_count")) continue
    owner.samples.set(sample.series, (owner.samples.get(sample.series) ?? 0) + sample.value)
  }
  return families
}

const belongsTo = (sampleName: string, family: MutableFamily) =>
  sampleName === family.name || (SUFFIXES[family.type ?? ""] ?? []).some((s) => sampleName === family.name + s)

/** `name{labels} value [timestamp]` → series text, metric name, value (the timestamp is dropped). */
const parseSample = (line: string): { series: string; name: string; value: number } | undefined => {
  const brace = line.indexOf("{")
  const space = line.search(/\s/)
  if (space === -1) return undefined
  let end: number
  if (brace !== -1 && brace < space) {
    end = closingBrace(line, brace)
    if (end === -1) return undefined
    end += 1
  } else {
    end = space
  }
  const series = line.slice(0, end)
  const value = parseValue(line.slice(end).trim().split(/\s+/)[0] ?? "")
  if (value === undefined) return undefined
  return { series, name: line.slice(0, brace !== -1 && brace < space ? brace : space), value }
}

/** Index of the `}` closing the label set opened at `open`, skipping quoted label values. */
const closingBrace = (line: string, open: number): number => {
  let quoted = false
  for (let i = open + 1; i < line.length; i++) {
    const c = line[i]
    if (quoted) {
      if (c === "\\") i++
      else if (c === "\"") quoted = false
    } else if (c === "\"") quoted = true
    else if (c === "}") return i
  }
  return -1
}

const parseValue = (text: string): number | undefined => {
  if (text === "+Inf" || text === "Inf") return Infinity
  if (text === "-Inf") return -Infinity
  if (text === "NaN") return NaN
  if (text === "" || !/^[-+]?[0-9.eE+-]+$/.test(text)) return undefined
  const n = Number(text)
  return Number.isNaN(n) ? undefined : n
}

const formatValue = (n: number) => n === Infinity ? "+Inf" : n === -Infinity ? "-Inf" : Number.isNaN(n) ? "NaN" : String(n)

/**
 * Gauge families whose value for the node is the largest of its workers' (a per-process
 * statistic or a state code, not a quantity): event-loop lag, a sink's breaker state (the
 * worst worker's: 2 open, not 1 + 1 half-open), and the size of the WAL of the store they share.
 */
export const MAXIMUM: ReadonlyArray<RegExp> = [
  /^nodejs_eventloop_lag_/,
  /^gateway_sink_breaker_state$/,
  /^gateway_sqlite_wal_bytes$/ // every worker sees the one shared file
]

/**
 * Merges several expositions: samples of identical series add up (the largest wins in the
 * {@link MAXIMUM} families); help and type come from the first that has them.
 */
export const merge = (parts: ReadonlyArray<Exposition>): Exposition => {
  const out = new Map<string, MutableFamily>()
  for (const part of parts) {
    for (const f of part.values()) {
      let target = out.get(f.name)
      if (target === undefined) out.set(f.name, target = { name: f.name, help: f.help, type: f.type, samples: new Map() })
      target.help ??= f.help
      target.type ??= f.type
      const max = MAXIMUM.some((re) => re.test(f.name))
      for (const [series, value] of f.samples) {
        const before = target.samples.get(series)
        target.samples.set(series, before === undefined ? value : max ? Math.max(before, value) : before + value)
      }
    }
  }
  return out
}

/** Only what keeps counting up: counter families, histograms, and the `_sum`/`_count` of summaries. */
export const cumulative = (e: Exposition): Exposition => {
  const out = new Map<string, Family>()
  for (const f of e.values()) {
    if (f.type === "counter" || f.type === "histogram" || f.type === "summary") out.set(f.name, f)
  }
  return out
}

/** Prometheus text of an exposition. */
export const render = (e: Exposition): string => {
  let text = ""
  for (const f of e.values()) {
    if (f.help !== undefined) text += `# HELP ${f.name} ${f.help}\n`
    if (f.type !== undefined) text += `# TYPE ${f.name} ${f.type}\n`
    for (const [series, value] of f.samples) text += `${series} ${formatValue(value)}\n`
  }
  return text
}
