/**
 * One row of a load table: start a server child process, warm it up for 1 s, run the load of
 * bench/load.ts against it, and read what it cost the server (peak RSS, CPU of its process
 * tree) and the load generator (CPU of this process), then stop the server.
 */
import { type LoadOptions, type LoadResult, runLoad } from "./load.ts"
import { cpuDeltaMs, processTree, type Server, statusKb, stopServer, treeCpu } from "./proc.ts"

/** A measured load against one server. */
export interface Row extends LoadResult {
  readonly server: string
  readonly rssMb: number
  /** CPU of the load generator (this process) over the measured run, in cores (1 = one core busy). */
  readonly loadCpu: number
  /** CPU of the server's process tree over the measured run, in cores. */
  readonly serverCpu: number
  /** Processes in the server's tree at the end of the run (1 unless it has workers). */
  readonly processes: number
}

/** Starts a server, warms it up for 1 s, runs `load` against it and stops it. */
export const measure = async (name: string, server: () => Promise<Server>, load: Omit<LoadOptions, "port">): Promise<Row> => {
  const s = await server()
  await runLoad({ ...load, port: s.port, durationMs: 1_000, devicePrefix: `${load.devicePrefix}-warm` }) // warm-up
  const serverBefore = treeCpu(s.pid)
  const loadBefore = process.cpuUsage()
  const wallBefore = performance.now()
  const r = await runLoad({ ...load, port: s.port })
  const wallMs = performance.now() - wallBefore
  const loadUsage = process.cpuUsage(loadBefore)
  const serverMs = cpuDeltaMs(serverBefore, treeCpu(s.pid))
  const tree = processTree(s.pid)
  const rssMb = tree.reduce((sum, p) => sum + statusKb(p, "VmHWM"), 0) / 1024 // peak, summed over workers
  await stopServer(s)
  return {
    server: name,
    rssMb,
    loadCpu: (loadUsage.user + loadUsage.system) / 1000 / wallMs,
    serverCpu: serverMs / wallMs,
    processes: tree.length,
    ...r
  }
}
