/**
 * Waiting in tests without fixed sleeps: poll a condition until it holds or a deadline passes,
 * and read `/readyz`.
 */

/** Resolves after `ms`. */
export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

/** Polls `probe` every 50 ms until it is true; throws `<what>: not within <ms> ms` after `ms`. */
export const until = async (what: string, ms: number, probe: () => Promise<boolean>): Promise<void> => {
  const deadline = Date.now() + ms
  while (!(await probe())) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms`)
    await sleep(50)
  }
}

/** `/readyz` of the admin port: status and body. */
export const readyz = async (adminPort: number): Promise<{ status: number; body: string }> => {
  const r = await fetch(`http://127.0.0.1:${adminPort}/readyz`)
  return { status: r.status, body: await r.text() }
}
