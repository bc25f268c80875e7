/**
 * Traces over OTLP/HTTP to a real (local) collector endpoint: the ingest span of a message
 * continues the device's traceparent, the sink batch span links it, each stage gets a span
 * inside it, and the stored envelope names the ingest span.
 */
import { afterEach, describe, expect, it } from "@effect/vitest"
import * as Fs from "node:fs"
import * as Http from "node:http"
import type { AddressInfo } from "node:net"
import * as Path from "node:path"
import * as Tracing from "../../src/observability/Tracing.ts"
import { Device, telemetry } from "../support/client.ts"
import { startGateway, tempDir } from "../support/gateway.ts"
import { rows } from "../support/store.ts"

interface OtlpSpan {
  readonly traceId: string
  readonly spanId: string
  readonly parentSpanId?: string
  readonly name: string
  readonly links?: ReadonlyArray<{ readonly traceId: string; readonly spanId: string }>
}
interface OtlpExport {
  readonly resourceSpans: ReadonlyArray<{ readonly scopeSpans: ReadonlyArray<{ readonly spans: ReadonlyArray<OtlpSpan> }> }>
}

const collector = async () => {
  const spans: Array<OtlpSpan> = []
  const server = Http.createServer((req, res) => {
    let body = ""
    req.on("data", (d: Buffer) => (body += d.toString()))
    req.on("end", () => {
      const parsed = JSON.parse(body) as OtlpExport
      for (const rs of parsed.resourceSpans) for (const ss of rs.scopeSpans) spans.push(...ss.spans)
      res.writeHead(200, { "content-type": "application/json" }).end("{}")
    })
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  return { spans, server, port: (server.address() as AddressInfo).port }
}

const saved = process.env["OTEL_EXPORTER_OTLP_ENDPOINT"]
afterEach(() => {
  if (saved === undefined) delete process.env["OTEL_EXPORTER_OTLP_ENDPOINT"]
  else process.env["OTEL_EXPORTER_OTLP_ENDPOINT"] = saved
})

describe("tracing", () => {
  it("exports an ingest span per message continuing the device's trace, and a linked sink batch span", async () => {
    const c = await collector()
    process.env["OTEL_EXPORTER_OTLP_ENDPOINT"] = `http://127.0.0.1:${c.port}`
    const dir = tempDir("gw-trace-")
    const stagesFile = Path.join(dir, "stages.json")
    Fs.writeFileSync(stagesFile, JSON.stringify({ stages: [{ stage: "threshold", options: { limits: [] } }] }))
    const g = await startGateway(
      { GATEWAY_DATA_DIR: dir, GATEWAY_STAGES_FILE: stagesFile },
      Tracing.layerFromEnv("gateway-test")
    )
    const { d } = await Device.open(g.port, "dev-traced")
    const traceId = "4bf92f3577b34da6a3ce929d0e0e4736"
    d.send(telemetry(1, { t: 1 }, { trace: `00-${traceId}-00f067aa0ba902b7-01` }), telemetry(2))
    expect(await d.take(2)).toEqual([{ type: "ack", seq: 1 }, { type: "ack", seq: 2 }])
    d.end()
    await g.stop() // flushes the exporter
    c.server.close()
    const ingest = c.spans.filter((s) => s.name === "ingest telemetry")
    expect(ingest).toHaveLength(2)
    const continued = ingest.find((s) => s.traceId === traceId)
    expect(continued?.parentSpanId).toBe("00f067aa0ba902b7")
    const stored = rows(g.dataDir, "dev-traced")
    expect(stored[0]!.traceparent).toBe(`00-${traceId}-${continued!.spanId}-01`)
    expect(stored[1]!.traceparent).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/)
    const batches = c.spans.filter((s) => s.name === "sink.batch")
    expect(batches.length).toBeGreaterThanOrEqual(1)
    const linked = batches.flatMap((b) => b.links ?? []).map((l) => l.spanId)
    expect(linked).toContain(continued!.spanId)
    expect(c.spans.some((s) => s.name === "gateway.connection")).toBe(true)
    // each sink's write has a span of its own, linked to the batches it wrote
    const writes = c.spans.filter((s) => s.name === "sink.write")
    expect(writes.length).toBeGreaterThanOrEqual(1)
    expect(writes.flatMap((w) => w.links ?? []).length).toBeGreaterThanOrEqual(1)
    // every stage of the persistence pipeline gets a span per chunk, inside the batch span
    for (const name of ["stage threshold", "stage commit"]) {
      const stageSpans = c.spans.filter((s) => s.name === name)
      expect({ name, count: stageSpans.length > 0 }).toEqual({ name, count: true })
      for (const span of stageSpans) expect(batches.map((b) => b.spanId)).toContain(span.parentSpanId)
    }
  })
})
