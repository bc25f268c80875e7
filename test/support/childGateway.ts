/**
 * Test support: the names the process-level tests use for a gateway child process, on top of
 * ./process.ts (which spawns it and reads its log lines), plus temporary directories removed
 * after each test. Call {@link cleanupChildren} after each test.
 */
import * as Fs from "node:fs"
import { tempDir as makeTempDir } from "./gateway.ts"
import { childEnv, killChildren, NODE_ARGS, ROOT, runToExit, type RunningGateway, startChild } from "./process.ts"

export { NODE_ARGS, runToExit }

/** The repository's root (the gateway's working directory). */
export const CWD = ROOT

/** A gateway child process listening on its ports. */
export type GatewayProcess = RunningGateway

/** The environment of a gateway child (ports 0, `dataDir`, then `env`). */
export const gatewayEnv = childEnv

/** Spawns the gateway on `dataDir` and waits for its `listening` line. */
export const spawnGateway = (dataDir: string, env: Record<string, string> = {}): Promise<GatewayProcess> =>
  startChild(dataDir, env)

const dirs = new Set<string>()

/** A temporary directory removed by {@link cleanupChildren}. */
export const tempDir = (prefix: string): string => {
  const dir = makeTempDir(prefix)
  dirs.add(dir)
  return dir
}

/** Kills the children still running and removes the temporary directories. */
export const cleanupChildren = async (): Promise<void> => {
  await killChildren()
  for (const dir of dirs) Fs.rmSync(dir, { recursive: true, force: true })
  dirs.clear()
}

/** Rejects with `what` when `p` takes longer than `ms`. */
export const withTimeout = <A>(p: Promise<A>, ms: number, what: string): Promise<A> =>
  new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`${what} within ${ms} ms`)), ms)
    p.then((a) => {
      clearTimeout(t)
      resolve(a)
    }, (e: unknown) => {
      clearTimeout(t)
      reject(e instanceof Error ? e : new Error(String(e)))
    })
  })
