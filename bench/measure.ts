/**
 * One row of a load table: start a server child process, warm it up for 1 s, run a load against
 * it (bench/load.ts, bench/fleet.ts), and read what it cost the server (peak RSS, CPU of its
 * process tree) and the load generator (CPU of this process), then stop the server.
 */
import { type FleetOptions, type FleetResult, runFleet } from "./fleet.ts"
import { type LoadOptions, type LoadResult, runLoad } from "./load.ts"
import { cpuDeltaMs, processTree, type Server, statusKb, stopServer, treeCpu } from "./proc.ts"

/** What a measured run cost, next to its load's own result. */
export interface Cost {
  readonly server: string
  readonly rssMb: number
  /** CPU of the load generator (this process) over the measured run, in cores (1 = one core busy). */
  readonly loadCpu: number
  /** CPU of the server's process tree over the measured run, in cores. */
  readonly serverCpu: number
  /** Processes in the server's tree at the end of the run (1 unless it has workers). */
  readonly processes: number
}

/** A measured load against one server. */
export interface Row extends LoadResult, Cost {}

/** A measured fleet-shaped load against one server. */
export interface FleetRow extends FleetResult, Cost {}

/** Marks the measured interval inside a run (default: the whole run). */
export interface Interval {
  readonly begin: () => void
  readonly end: () => void
}

/**
 * Starts a server, runs `run(port, true, …)` as a warm-up, then measures `run(port, false, …)`
 * (CPU over the interval the run marks, or over all of it) and stops the server.
 */
export const measureWith = async <R>(
  name: string,
  server: () => Promise<Server>,
  run: (port: number, warmUp: boolean, interval: Interval) => Promise<R>
): Promise<R & Cost> => {
  const s = await server()
  const ignore: Interval = { begin: () => {}, end: () => {} }
  await run(s.port, true, ignore)
  let serverBefore = treeCpu(s.pid)
  let loadBefore = process.cpuUsage()
  let wallBefore = performance.now()
  let after: { server: Map<number, number>; load: NodeJS.CpuUsage; wall: number } | undefined
  const interval: Interval = {
    begin: () => {
      serverBefore = treeCpu(s.pid)
      loadBefore = process.cpuUsage()
      wallBefore = performance.now()
    },
    end: () => {
      after = { server: treeCpu(s.pid), load: process.cpuUsage(loadBefore), wall: performance.now() }
    }
  }
  const r = await run(s.port, false, interval)
  after ??= { server: treeCpu(s.pid), load: process.cpuUsage(loadBefore), wall: performance.now() }
  const wallMs = after.wall - wallBefore
  const loadUsage = after.load
  const serverMs = cpuDeltaMs(serverBefore, after.server)
  const tree = processTree(s.pid)
  const rssMb = tree.reduce((sum, p) => sum + statusKb(p, "VmHWM"), 0) / 1024 // peak, summed over workers
  await stopServer(s)
  return {
    ...r,
    server: name,
    rssMb,
    loadCpu: (loadUsage.user + loadUsage.system) / 1000 / wallMs,
    serverCpu: serverMs / wallMs,
    processes: tree.length
  }
}

/** Starts a server, warms it up for 1 s, runs `load` against it and stops it. */
export const measure = (name: string, server: () => Promise<Server>, load: Omit<LoadOptions, "port">): Promise<Row> =>
  measureWith(name, server, (port, warmUp) =>
    runLoad(warmUp ? { ...load, port, durationMs: 1_000, devicePrefix: `${load.devicePrefix}-warm` } : { ...load, port }))

/**
 * Starts a server, warms it up with the fleet for 2 s, then runs the fleet again (a fresh join)
 * and measures CPU over its measured interval only (not over the devices' join, nor the
 * settling of the fleet's first `settleMs`).
 */
export const measureFleet = (name: string, server: () => Promise<Server>, fleet: Omit<FleetOptions, "port" | "interval">): Promise<FleetRow> =>
  measureWith(name, server, (port, warmUp, interval) =>
    runFleet(
      warmUp
        ? { ...fleet, port, durationMs: 2_000, settleMs: 0, devicePrefix: `${fleet.devicePrefix}-warm` }
        : { ...fleet, port, interval }
    ))
