/**
 * Test support: reads the admin port's Prometheus text and picks series out of it.
 */

/** The `/metrics` text of the admin port. */
export const scrape = async (adminPort: number): Promise<string> => {
  const response = await fetch(`http://127.0.0.1:${adminPort}/metrics`)
  if (response.status !== 200) throw new Error(`/metrics answered ${response.status}`)
  return response.text()
}

const LINE = /^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{([^}]*)\})?\s+(\S+)/
const LABEL = /([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"/g

/**
 * The value of the series `name` whose labels include `labels` (summed when several match;
 * 0 when none does, as for a counter never incremented).
 */
export const metricValue = (text: string, name: string, labels: Record<string, string> = {}): number => {
  let sum = 0
  for (const line of text.split("\n")) {
    const m = LINE.exec(line)
    if (m === null || m[1] !== name) continue
    const found: Record<string, string> = {}
    for (const l of (m[2] ?? "").matchAll(LABEL)) found[l[1]!] = l[2]!
    if (Object.entries(labels).every(([k, v]) => found[k] === v)) sum += Number(m[3])
  }
  return sum
}

/** Scrapes and reads one series. */
export const readMetric = async (adminPort: number, name: string, labels: Record<string, string> = {}): Promise<number> =>
  metricValue(await scrape(adminPort), name, labels)
