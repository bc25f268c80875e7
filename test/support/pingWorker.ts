/**
 * Test support: one connected device in its own worker thread that pings every `pingEveryMs`
 * and sends a telemetry frame every `dataEveryMs`, recording how long each answer took. Being in
 * its own thread, it keeps sending while the gateway's event loop (in the test's thread) is busy,
 * so the latencies it records are the gateway's, not those of the test's own event loop.
 */
import * as Net from "node:net"
import { isMainThread, parentPort, Worker, workerData } from "node:worker_threads"

export interface PingOptions {
  readonly port: number
  readonly device: string
  readonly pingEveryMs: number
  readonly dataEveryMs: number
}

export interface PingResult {
  /** ms from each ping to its pong. */
  readonly pongs: ReadonlyArray<number>
  /** ms from each telemetry frame to its ack. */
  readonly acks: ReadonlyArray<number>
  /** Answers that were neither (nacks, errors, goaway...), as text. */
  readonly other: ReadonlyArray<string>
  /** Pings and frames still unanswered when stopped (after a grace period). */
  readonly unanswered: number
  readonly welcomed: boolean
}

/** A running pinger: `ready` once welcomed, `stop` to end it and get what it measured. */
export interface RunningPinger {
  readonly ready: Promise<void>
  readonly stop: () => Promise<PingResult>
}

const pinger = (o: PingOptions, onReady: () => void, onStop: (handler: () => void) => void, report: (r: PingResult) => void) => {
  const pongs: Array<number> = []
  const acks: Array<number> = []
  const other: Array<string> = []
  const pendingPings: Array<number> = []
  const pendingData = new Map<number, number>()
  let welcomed = false
  let buffer = ""
  let seq = 0
  const timers: Array<ReturnType<typeof setInterval>> = []
  const socket = Net.connect({ port: o.port, host: "127.0.0.1", noDelay: true })
  socket.setEncoding("utf8")
  socket.on("connect", () => socket.write(`{"type":"hello","v":1,"device":"${o.device}","token":"t"}\n`))
  socket.on("error", (e) => other.push(`socket error ${e.message}`))
  socket.on("data", (chunk: string) => {
    buffer += chunk
    let nl = buffer.indexOf("\n")
    while (nl !== -1) {
      const line = buffer.slice(0, nl)
      buffer = buffer.slice(nl + 1)
      nl = buffer.indexOf("\n")
      const frame = JSON.parse(line) as { type?: string; seq?: number }
      const now = performance.now()
      if (!welcomed) {
        if (frame.type !== "welcome") {
          other.push(line)
          continue
        }
        welcomed = true
        timers.push(setInterval(() => {
          pendingPings.push(performance.now())
          socket.write(`{"type":"ping"}\n`)
        }, o.pingEveryMs))
        timers.push(setInterval(() => {
          seq++
          pendingData.set(seq, performance.now())
          socket.write(`{"type":"telemetry","seq":${seq},"ts":${Date.now()},"body":{"metrics":{"t":${seq}}}}\n`)
        }, o.dataEveryMs))
        onReady()
        continue
      }
      const sent = frame.type === "ack" && frame.seq !== undefined ? pendingData.get(frame.seq) : undefined
      if (frame.type === "pong" && pendingPings.length > 0) pongs.push(now - pendingPings.shift()!)
      else if (sent !== undefined) {
        acks.push(now - sent)
        pendingData.delete(frame.seq!)
      } else other.push(line)
    }
  })
  onStop(() => {
    for (const t of timers) clearInterval(t)
    // a grace period for the answers still on their way
    const deadline = performance.now() + 3_000
    const check = () => {
      if ((pendingPings.length > 0 || pendingData.size > 0) && performance.now() < deadline) return setTimeout(check, 10)
      socket.destroy()
      report({ pongs, acks, other, unanswered: pendingPings.length + pendingData.size, welcomed })
    }
    check()
  })
}

/** Starts the pinger in a worker thread. */
export const startPinger = (options: PingOptions): RunningPinger => {
  const worker = new Worker(new URL(import.meta.url), {
    workerData: { ...options, pingWorker: true },
    execArgv: ["--disable-warning=ExperimentalWarning"]
  })
  const exited = new Promise<void>((resolve) => worker.once("exit", () => resolve()))
  let result: ((r: PingResult) => void) | undefined
  const results = new Promise<PingResult>((resolve, reject) => {
    result = resolve
    worker.once("error", reject)
    void exited.then(() => reject(new Error("ping worker exited before reporting")))
  })
  const ready = new Promise<void>((resolve, reject) => {
    worker.on("message", (m: "ready" | PingResult) => (m === "ready" ? resolve() : result?.(m)))
    worker.once("error", reject)
    void exited.then(() => reject(new Error("ping worker exited before it was welcomed")))
  })
  // a rejection nobody waits for (the test already failed) is not an unhandled one
  results.catch(() => undefined)
  ready.catch(() => undefined)
  return {
    ready,
    stop: async () => {
      worker.postMessage("stop")
      const r = await results
      await worker.terminate()
      return r
    }
  }
}

// the worker body: only in a worker started by startPinger (marked), never in a test runner's worker
if (!isMainThread && parentPort !== null && (workerData as { pingWorker?: unknown } | null)?.pingWorker === true) {
  const port = parentPort
  pinger(
    workerData as PingOptions,
    () => port.postMessage("ready"),
    (handler) => port.once("message", handler),
    (r) => port.postMessage(r)
  )
}
