/**
 * GATEWAY_SINK=postgres end to end: a gateway process writing into a private PostgreSQL
 * (initdb into a temp dir; never the shared server's data). Acks only after the commit, each
 * acked message one row with its traceparent; a resend after a gateway restart (its dedup memory
 * gone) is `ack dup` by the unique key; `welcome.lastSeq` from the device states; the server
 * killed: `nack unavailable` naming postgres and `/readyz` 503, restarted: ready again without
 * traffic, acks again; a wrong password stops the start with one line that does not show it,
 * exit 78.
 */
import { afterAll, afterEach, describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { Device, event, telemetry } from "../support/client.ts"
import { cleanupChildren, runToExit, spawnGateway, tempDir } from "../support/childGateway.ts"
import { requirePostgresServer, startPostgresServer, stopAllPostgresServers, type PostgresServer } from "../support/postgresServer.ts"
import { logLines, messageOf } from "../support/process.ts"
import { query } from "../sinks/postgres/support.ts"
import { readyz, until } from "../support/poll.ts"

requirePostgresServer("The GATEWAY_SINK=postgres tests")

const servers: Array<PostgresServer> = []
const devices: Array<Device> = []
afterEach(async () => {
  for (const d of devices.splice(0)) d.end()
  await cleanupChildren()
  for (const s of servers.splice(0)) await s.stop()
})
afterAll(stopAllPostgresServers)


const open = async (port: number, id: string) => {
  const opened = await Device.open(port, id)
  devices.push(opened.d)
  return opened
}



const pgEnv = (s: PostgresServer) => ({ GATEWAY_SINK: "postgres", DATABASE_URL: s.url, PG_STATEMENT_TIMEOUT_MS: "2000", GATEWAY_STORE_RETRIES: "1", GATEWAY_OUTBOX: "off" })

const stored = async (s: PostgresServer, device: string) =>
  (await Effect.runPromise(query(s.url, "SELECT seq::int AS seq, kind, traceparent, body FROM messages WHERE device = $1 ORDER BY seq", [device])))
    .map((r) => ({ seq: Number(r["seq"]), kind: String(r["kind"]), traceparent: r["traceparent"], body: r["body"] }))

const TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

describe("GATEWAY_SINK=postgres", () => {
  it("acks after the commit; one row per acked message with its traceparent; a resend after a restart is a duplicate; lastSeq", async () => {
    const s = await startPostgresServer()
    servers.push(s)
    const dataDir = tempDir("gw-pg-")
    const g = await spawnGateway(dataDir, pgEnv(s))
    const { d } = await open(g.port, "pump-7")
    d.send(telemetry(1, { t: 21.5 }), telemetry(2, { t: 2 }, { trace: TRACE }), event(3))
    expect((await d.take(3)).map((a) => [a.type, a["seq"]]).sort()).toEqual([["ack", 1], ["ack", 2], ["ack", 3]])
    const rows = await stored(s, "pump-7")
    expect(rows.map((r) => [r.seq, r.kind])).toEqual([[1, "telemetry"], [2, "telemetry"], [3, "event"]])
    expect(rows[1]!.traceparent).toBe(TRACE)
    expect(rows[0]!.body).toEqual({ metrics: { t: 21.5 } })
    d.end()

    g.child.kill("SIGTERM")
    await new Promise((resolve) => g.child.once("exit", resolve))
    const again = await spawnGateway(dataDir, pgEnv(s))
    const r = await open(again.port, "pump-7")
    expect(r.welcome["lastSeq"]).toBe(3)
    r.d.send(telemetry(2, { t: 2 }), telemetry(4))
    expect(await r.d.take(2)).toEqual([
      expect.objectContaining({ type: "ack", seq: 2, dup: true }),
      expect.objectContaining({ type: "ack", seq: 4 })
    ])
    expect((await stored(s, "pump-7")).map((x) => x.seq)).toEqual([1, 2, 3, 4])
  }, 60_000)

  it("the server killed: nack unavailable naming postgres, /readyz 503; restarted: ready without traffic, acks again", async () => {
    const s = await startPostgresServer()
    servers.push(s)
    const g = await spawnGateway(tempDir("gw-pg-"), { ...pgEnv(s), GATEWAY_BREAKER_OPEN_MS: "500" })
    const { d } = await open(g.port, "pump-8")
    d.send(telemetry(1))
    expect((await d.take(1))[0]).toEqual(expect.objectContaining({ type: "ack", seq: 1 }))

    await s.kill()
    d.send(telemetry(2))
    const [nack] = await d.take(1, 20_000)
    expect(nack).toEqual(expect.objectContaining({ type: "nack", seq: 2, code: "unavailable" }))
    expect(String(nack!["message"])).toMatch(/postgres/)
    await until("not ready while PostgreSQL is down", 10_000, async () => (await readyz(g.adminPort)).status === 503)
    expect((await readyz(g.adminPort)).body).toMatch(/^sink postgres unavailable: /)

    await s.restart()
    await until("ready after PostgreSQL came back", 20_000, async () => (await readyz(g.adminPort)).status === 200)
    d.send(telemetry(2))
    expect((await d.take(1, 10_000))[0]).toEqual(expect.objectContaining({ type: "ack", seq: 2 }))
    expect((await stored(s, "pump-8")).map((x) => x.seq)).toEqual([1, 2])
  }, 90_000)

  it("a wrong password stops the start with one line naming the variable and not showing the password, exit 78", async () => {
    const s = await startPostgresServer({ password: "right-horse-battery" })
    servers.push(s)
    const url = new URL(s.url)
    url.password = "wrong-secret-4711"
    const run = await runToExit(tempDir("gw-pg-"), { GATEWAY_SINK: "postgres", DATABASE_URL: url.toString() })
    expect(run.code).toBe(78)
    const errors = logLines(run.output).filter((l) => l.level === "ERROR").map(messageOf)
    expect(errors).toEqual([expect.stringMatching(/^invalid configuration: postgres sink: /)])
    expect(run.output).not.toContain("wrong-secret-4711")
  }, 60_000)
})
