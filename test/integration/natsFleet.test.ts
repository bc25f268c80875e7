/**
 * The fleet that outgrew one machine (load project): a private 3-node NATS cluster on loopback
 * (never the shared server on 4222), an R3 file-store stream created by the first gateway
 * (NATS_STREAM_CREATE=true, NATS_REPLICAS=3), TWO gateway processes (GATEWAY_SINK=nats, NATS_URL
 * naming all three servers, data directories of their own, free ports) and a fleet of devices on
 * real TCP sockets (test/support/fleetDevice.ts) publishing under steady load, half on each
 * gateway. Meanwhile:
 *
 * 1. the stream leader's server is SIGKILLed mid-load (devices get `nack unavailable` and resend
 *    after `retryAfterMs`); a new leader is elected and acks resume; the server restarts later;
 * 2. every device hops to the other gateway with the answers of its last frames lost, so it
 *    resends messages that WERE stored: the stream's `Nats-Msg-Id` dedup makes them `ack dup:true`;
 * 3. one gateway is SIGTERMed: a graceful drain (goaway, what is in flight answered, exit 0); its
 *    devices move to the other one with what was never acked; it is started again (a new process
 *    on the same data directory) and half of the fleet hops back to it (answers lost again).
 *
 * At the end every device has every message acked, and the stream read back holds each exactly
 * once (no duplicates across the gateways, no key never sent), with its subject, key fields and
 * `traceparent` header (continuing the device's trace); both gateways (and the restarted one)
 * stored messages, and the stream's leader changed. The phases wait on conditions with deadlines,
 * never on fixed timings; a timeline of the run is printed.
 */
import { afterAll, afterEach, describe, expect, it } from "@effect/vitest"
import { jetstreamManager } from "@nats-io/jetstream"
import { connect } from "@nats-io/transport-node"
import { cleanupChildren, type GatewayProcess, spawnGateway, tempDir, withTimeout } from "../support/childGateway.ts"
import { FleetDevice, type FleetMessage, type FleetRoute } from "../support/fleetDevice.ts"
import { hasNatsServer, type NatsCluster, requireNatsServer, startNatsCluster, stopAllNatsServers } from "../support/natsServer.ts"
import { readStream } from "../support/natsStream.ts"

requireNatsServer("The NATS fleet tests (two gateways on a 3-node cluster)")

const STREAM = "DEVICES"
const DEVICES = 32
const EPOCH = 7
/** Each device produces one message per tick: ~640 msgs/s for the fleet. */
const TICK_MS = 50
/** How long a hopping device keeps sending without reading the answers before it drops the socket. */
const LOSS_MS = 200
/** The gateways whose processes must have stored messages. */
const GATEWAYS = ["gw-a-1", "gw-b-1", "gw-a-2"]

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

let cluster: NatsCluster | undefined
const fleet: Array<FleetDevice> = []
let ticker: ReturnType<typeof setInterval> | undefined
afterEach(async () => {
  clearInterval(ticker)
  for (const d of fleet.splice(0)) d.close()
  await cleanupChildren()
  await cluster?.stop()
  cluster = undefined
})
afterAll(stopAllNatsServers)

/** Polls `check` every 100 ms until it is true; throws `what` (and `detail()`) after `ms`. */
const until = async (what: string, ms: number, check: () => boolean | Promise<boolean>, detail: () => string = () => "") => {
  const deadline = Date.now() + ms
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms ${detail()}`)
    await sleep(100)
  }
}

const readyz = (adminPort: number): Promise<number> =>
  fetch(`http://127.0.0.1:${adminPort}/readyz`, { signal: AbortSignal.timeout(2_000) }).then((r) => r.status, () => 0)

/** The name of the server leading the stream, asked of `urls` every 200 ms until one names it (30 s at most). */
const streamLeader = async (urls: string): Promise<string> => {
  const nc = await connect({ servers: urls.split(","), timeout: 5_000 })
  try {
    // short requests: while no (meta) leader is elected they go unanswered
    const jsm = await jetstreamManager(nc, { timeout: 1_500, checkAPI: false })
    const deadline = Date.now() + 30_000
    while (Date.now() < deadline) {
      const leader = await jsm.streams.info(STREAM).then((i) => i.cluster?.leader, () => undefined)
      if (leader !== undefined && leader !== "") return leader
      await sleep(200)
    }
    throw new Error(`no leader for ${STREAM} within 30 s`)
  } finally {
    await nc.close()
  }
}

/**
 * A 3-node cluster; started again (twice at most) when a member could not bind its ports: the
 * free ports the helper picks are released before nats-server binds them, and another process
 * on a busy machine can take one meanwhile ("address already in use").
 */
const startCluster = async (): Promise<NatsCluster> => {
  for (let attempt = 1; ; attempt++) {
    try {
      return await startNatsCluster(3)
    } catch (e) {
      if (attempt === 3 || !String(e).includes("address already in use")) throw e
      console.warn(`natsFleet: cluster start failed on a port taken meanwhile (attempt ${attempt}), starting again`)
      // only this file's servers run in this worker
      await stopAllNatsServers()
    }
  }
}

/** One of the two gateway "machines": its data directory outlives its processes. */
interface Slot {
  readonly key: "a" | "b"
  readonly dataDir: string
  process: GatewayProcess | undefined
  /** The GATEWAY_ID of its current process (`gw-<key>-<incarnation>`). */
  id: string
  incarnation: number
  /** Devices may be routed here. */
  up: boolean
}

describe.runIf(hasNatsServer)("a fleet on two gateways and a 3-node NATS cluster", () => {
  it("devices move between gateways through a leader kill and a drain; the stream holds every acked message once", async () => {
    const t0 = Date.now()
    const timeline: Array<string> = []
    const mark = (what: string) => timeline.push(`${((Date.now() - t0) / 1_000).toFixed(1)}s ${what}`)
    try {
      await fleetRun(mark)
    } finally {
      console.info(`natsFleet timeline:\n  ${timeline.join("\n  ")}`)
    }
  }, 120_000)
})

const fleetRun = async (mark: (what: string) => void): Promise<void> => {
  const c = await startCluster()
  cluster = c
  mark("cluster ready")

  const slots: Record<"a" | "b", Slot> = {
    a: { key: "a", dataDir: tempDir("gw-fleet-a-"), process: undefined, id: "", incarnation: 0, up: false },
    b: { key: "b", dataDir: tempDir("gw-fleet-b-"), process: undefined, id: "", incarnation: 0, up: false }
  }
  const start = async (slot: Slot) => {
    slot.incarnation++
    const id = `gw-${slot.key}-${slot.incarnation}`
    const g = await spawnGateway(slot.dataDir, {
      GATEWAY_SINK: "nats",
      GATEWAY_OUTBOX: "off", // devices resend what is not taken; the outbox is tested in outboxGateway.test.ts
      NATS_URL: c.urls,
      NATS_STREAM: STREAM,
      NATS_STREAM_CREATE: "true",
      NATS_REPLICAS: "3",
      NATS_STORAGE: "file",
      NATS_ACK_TIMEOUT_MS: "2000",
      GATEWAY_ID: id,
      GATEWAY_RESUME_SECRET: "fleet-resume-secret-shared-by-both-nodes"
    })
    await until(`${id} ready`, 30_000, async () => (await readyz(g.adminPort)) === 200, () => g.output().slice(-2_000))
    slot.process = g
    slot.id = id
    slot.up = true
    mark(`${id} ready on port ${g.port}`)
  }
  // the first creates the stream, the second finds it
  await start(slots.a)
  await start(slots.b)
  const leaderBefore = await streamLeader(c.urls)
  const info = await connect({ servers: c.urls.split(",") }).then(async (nc) => {
    try {
      return await (await jetstreamManager(nc, { timeout: 5_000 })).streams.info(STREAM)
    } finally {
      await nc.close()
    }
  })
  expect(info.config.num_replicas).toBe(3)
  expect(info.config.storage).toBe("file")

  const at = (slot: Slot): FleetRoute | undefined =>
    slot.up && slot.process !== undefined ? { gateway: slot.id, port: slot.process.port } : undefined
  /** The other gateway when it is up, else the same one, else none (the device asks again later). */
  const route = (last: string | undefined): FleetRoute | undefined => {
    const from = last?.startsWith("gw-a-") ? slots.a : last?.startsWith("gw-b-") ? slots.b : undefined
    return at(from === slots.a ? slots.b : slots.a) ?? (from === undefined ? undefined : at(from))
  }
  for (let i = 0; i < DEVICES; i++) {
    const home = i % 2 === 0 ? slots.a : slots.b
    const d = new FleetDevice({
      id: `meter-${String(i).padStart(2, "0")}`,
      epoch: EPOCH,
      route: (last) => last === undefined ? at(home) ?? route(last) : route(last),
      window: 256
    })
    fleet.push(d)
    d.start()
  }
  ticker = setInterval(() => {
    for (const d of fleet) d.produce(1)
  }, TICK_MS)

  const acked = () => fleet.reduce((n, d) => n + d.ackedCount, 0)
  const produced = () => fleet.reduce((n, d) => n + d.messages.length, 0)
  const onGateway = (id: string) => fleet.filter((d) => d.gateway === id).length
  const status = () => `(acked ${acked()} of ${produced()}; open on ${slots.a.id}: ${onGateway(slots.a.id)}, on ${slots.b.id}: ${onGateway(slots.b.id)})`
  /** Messages acked after `t` (by `gateway` when given). */
  const ackedSince = (t: number, gateway?: string) =>
    fleet.reduce((n, d) => n + d.messages.filter((m) => m.ackedBy !== undefined && m.ackedAt > t && (gateway === undefined || m.ackedBy === gateway)).length, 0)
  /** Hops `devices` (staggered) to the other gateway; the gateway each left. */
  const hop = (devices: ReadonlyArray<FleetDevice>) =>
    Promise.all(devices.map(async (d, i) => {
      await sleep(i * 25)
      const from = d.gateway
      return (await d.hop(LOSS_MS)) ? from : undefined
    }))

  await until("every device acked on its first gateway", 20_000, () => fleet.every((d) => d.ackedCount >= 10), status)
  expect(onGateway(slots.a.id)).toBe(DEVICES / 2)
  expect(onGateway(slots.b.id)).toBe(DEVICES / 2)
  mark(`fleet under load ${status()}`)

  // 1. the stream's leader killed mid-load
  const before = await streamLeader(c.urls)
  const victim = c.servers.find((s) => s.name === before)
  if (victim === undefined) throw new Error(`leader ${before} is not a member`)
  await victim.kill()
  mark(`killed the stream leader ${before} (first leader ${leaderBefore}) ${status()}`)
  const survivors = c.servers.filter((s) => s !== victim).map((s) => s.url).join(",")
  const after = await streamLeader(survivors)
  const electedAt = Date.now()
  mark(`new stream leader ${after} ${status()}`)
  expect(after).not.toBe(before)
  // both gateways commit again (each through its own NATS connection, to whichever server it is on)
  for (const slot of [slots.a, slots.b]) {
    await until(`acks from ${slot.id} after the re-election`, 30_000, () => ackedSince(electedAt, slot.id) >= DEVICES * 5, status)
    mark(`${slot.id} acking again ${status()}`)
  }

  // 2. every device hops to the other gateway, the answers of its last frames lost
  await until("every device open", 20_000, () => fleet.every((d) => d.gateway !== undefined), status)
  const left = await hop(fleet)
  expect(left.filter((g) => g === undefined)).toEqual([])
  await until("every device open on the other gateway", 20_000, () => fleet.every((d, i) => d.gateway !== undefined && d.gateway !== left[i]), status)
  mark(`every device hopped ${status()}`)

  await victim.restart()
  mark(`restarted ${victim.name}`)

  // 3. gateway a drained (SIGTERM): its devices get goaway and move to b with what was never acked
  const a1 = slots.a.process
  if (a1 === undefined) throw new Error("gateway a is not running")
  const goawaysBefore = fleet.reduce((n, d) => n + d.stats.goaways, 0)
  const onA = onGateway(slots.a.id)
  slots.a.up = false
  a1.child.kill("SIGTERM")
  const a1Exit = await withTimeout(a1.exited, 30_000, `${slots.a.id} did not exit after SIGTERM`)
  slots.a.process = undefined
  const goaways = fleet.reduce((n, d) => n + d.stats.goaways, 0) - goawaysBefore
  mark(`${slots.a.id} drained: exit ${a1Exit}, ${goaways} goaways to the ${onA} devices on it`)
  expect(a1Exit, a1.output().slice(-3_000)).toBe(0)
  expect(onA).toBeGreaterThan(0)
  expect(goaways).toBeGreaterThan(0)
  await until(`every device open on ${slots.b.id}`, 20_000, () => fleet.every((d) => d.gateway === slots.b.id), status)
  mark(`every device on ${slots.b.id} ${status()}`)

  // a new process on a's data directory; half the fleet hops back to it
  await start(slots.a)
  const back = fleet.filter((_, i) => i % 2 === 0)
  await hop(back)
  await until(`half the fleet open on ${slots.a.id}`, 20_000, () => back.every((d) => d.gateway === slots.a.id), status)
  const backAt = Date.now()
  await until(`acks after the hop back`, 20_000, () => ackedSince(backAt) >= DEVICES * 10, status)
  mark(`half the fleet back on ${slots.a.id} ${status()}`)

  // the load stops; everything produced is acked in the end
  clearInterval(ticker)
  await until("every message acked", 40_000, () => fleet.every((d) => d.allAcked), status)
  mark(`every message acked ${status()}`)
  for (const d of fleet) d.close()

  // what the devices saw
  const sum = (f: (d: FleetDevice) => number) => fleet.reduce((n, d) => n + f(d), 0)
  const merge = (f: (d: FleetDevice) => ReadonlyMap<string, number>) => {
    const out: Record<string, number> = {}
    for (const d of fleet) for (const [k, n] of f(d)) out[k] = (out[k] ?? 0) + n
    return out
  }
  const seen = {
    produced: produced(),
    acksBy: merge((d) => d.stats.acksBy),
    dupAcks: sum((d) => d.stats.dupAcks),
    resends: sum((d) => d.stats.resends),
    lostAnswers: sum((d) => d.stats.lostAnswers),
    goaways: sum((d) => d.stats.goaways),
    sessions: sum((d) => d.stats.sessions),
    connects: sum((d) => d.stats.connects),
    nacks: merge((d) => d.stats.nacks),
    errors: merge((d) => d.stats.errors)
  }
  mark(`devices saw ${JSON.stringify(seen)}`)
  expect(fleet.flatMap((d) => d.stats.surprises)).toEqual([])
  expect(fleet.flatMap((d) => d.stats.rejected)).toEqual([])
  // both gateways (and a's second process) answered
  for (const id of GATEWAYS) expect(seen.acksBy[id] ?? 0, `acks from ${id}`).toBeGreaterThan(0)
  // answers lost on purpose: messages that were stored came back as resends, and were duplicates
  expect(seen.lostAnswers).toBeGreaterThan(0)
  expect(seen.resends).toBeGreaterThan(0)
  expect(seen.dupAcks).toBeGreaterThan(0)
  // nothing fatal beyond what a drain or a hop may cause
  for (const code of Object.keys(seen.errors)) expect(["shutdown", "busy", "replaced"]).toContain(code)

  // the stream read back: each acked message exactly once, nothing else
  const stored = await readStream(c.urls, STREAM)
  mark(`read back ${stored.length} messages`)
  const sent = new Map<string, FleetMessage & { readonly device: string }>()
  for (const d of fleet) for (const m of d.messages) if (m.sends > 0) sent.set(`${d.id}:${EPOCH}:${m.seq}`, { ...m, device: d.id })
  const counts = new Map<string, number>()
  const storedBy: Record<string, number> = {}
  const problems: Array<string> = []
  for (const s of stored) {
    const id = s.msgId ?? "(no Nats-Msg-Id)"
    counts.set(id, (counts.get(id) ?? 0) + 1)
    const m = sent.get(id)
    if (m === undefined) {
      problems.push(`${id}: never sent`)
      continue
    }
    const p = s.payload as Partial<Record<"device" | "epoch" | "seq" | "kind" | "gateway" | "traceparent", unknown>>
    const gateway = String(p.gateway)
    storedBy[gateway] = (storedBy[gateway] ?? 0) + 1
    if (s.subject !== `devices.${m.kind}.${m.device}`) problems.push(`${id}: subject ${s.subject}`)
    if (p.device !== m.device || p.epoch !== EPOCH || p.seq !== m.seq || p.kind !== m.kind) {
      problems.push(`${id}: payload key ${JSON.stringify([p.device, p.epoch, p.seq, p.kind])}`)
    }
    // the device's trace goes on: its traceparent as is (tracing off), or the gateway's ingest span in that trace
    const trace = s.traceparent ?? ""
    if (!/^00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]$/.test(trace) || trace.slice(3, 35) !== m.trace.slice(3, 35)) {
      problems.push(`${id}: traceparent header ${JSON.stringify(s.traceparent)}, the device sent ${m.trace}`)
    }
    if (p.traceparent !== trace) problems.push(`${id}: payload traceparent ${JSON.stringify(p.traceparent)}`)
  }
  for (const [id, n] of counts) if (n !== 1) problems.push(`${id}: stored ${n} times`)
  for (const d of fleet) {
    for (const m of d.messages) {
      const id = `${d.id}:${EPOCH}:${m.seq}`
      if (m.ackedBy === undefined) problems.push(`${id}: never acked`)
      else if (!counts.has(id)) problems.push(`${id}: acked by ${m.ackedBy}${m.dup ? " (dup)" : ""} but not in the stream`)
    }
  }
  mark(`stored by ${JSON.stringify(storedBy)}`)
  expect(problems.slice(0, 20), `${problems.length} problems`).toEqual([])
  expect(stored.length).toBe(seen.produced)
  for (const id of GATEWAYS) expect(storedBy[id] ?? 0, `stored by ${id}`).toBeGreaterThan(0)

  // the leader changed; the cluster, whole again, still has one
  const finalLeader = await streamLeader(c.urls)
  mark(`stream leader at the end ${finalLeader}`)
  expect(c.servers.map((s) => s.name)).toContain(finalLeader)
}
