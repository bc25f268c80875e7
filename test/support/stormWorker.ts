/**
 * Test support: a reconnection storm, run in a worker thread so that the devices' own work does
 * not compete with the gateway's event loop. N devices connect at once and send hello; on
 * `error busy` a device closes and reconnects after exactly `retryAfterMs`; after `welcome` it
 * sends one telemetry frame and records every answer that follows. A connection that ends
 * without the answer it waited for (a reset, a close without a frame) is recorded and retried
 * after a short backoff. Posts a {@link StormResult} when every device has its answer (plus a
 * short quiet period, to catch extra answers) or at the deadline; the devices stay connected
 * until the main thread asks the storm to end (so a mass disconnect is not part of what it
 * measures meanwhile).
 *
 * Started by `runStorm` (main thread); the worker body runs when loaded as a worker.
 */
import * as Net from "node:net"
import { isMainThread, parentPort, Worker, workerData } from "node:worker_threads"

export interface StormOptions {
  readonly port: number
  readonly devices: number
  readonly prefix: string
  readonly timeoutMs: number
}

export interface StormResult {
  readonly devices: number
  readonly welcomed: number
  /** Devices whose telemetry was acked. */
  readonly acked: number
  /** Every `retryAfterMs` of every `error busy`. */
  readonly busyRetries: ReadonlyArray<number>
  /** ms since the start at which each `error busy` arrived (same order as busyRetries). */
  readonly busyTimes: ReadonlyArray<number>
  /** Messages of the busy answers, by message. */
  readonly busyMessages: Readonly<Record<string, number>>
  /** ms since the start at which each device was welcomed. */
  readonly welcomeTimes: ReadonlyArray<number>
  /** Connections per device, at most. */
  readonly maxAttempts: number
  /** Connections that ended without the frame we waited for. */
  readonly unanswered: number
  /** Socket error codes seen (ECONNRESET, ...). */
  readonly socketErrors: Readonly<Record<string, number>>
  /** `error` frames other than busy, and any answer not expected, as text. */
  readonly violations: ReadonlyArray<string>
  /** ms from the start until every device had its answer (undefined: the deadline came first). */
  readonly doneMs: number | undefined
}

interface DeviceState {
  readonly id: string
  socket: Net.Socket | undefined
  attempts: number
  welcomed: boolean
  /** Answers to the telemetry frame (exactly one expected). */
  answers: Array<string>
}

const QUIET_MS = 300

const storm = (o: StormOptions): { readonly result: Promise<StormResult>; readonly close: () => void } => {
  const everyone: Array<DeviceState> = []
  const result = new Promise<StormResult>((resolve) => {
    const t0 = performance.now()
    const busyRetries: Array<number> = []
    const busyTimes: Array<number> = []
    const busyMessages: Record<string, number> = {}
    const welcomeTimes: Array<number> = []
    const socketErrors: Record<string, number> = {}
    const violations: Array<string> = []
    let unanswered = 0
    let done = 0
    let doneMs: number | undefined
    let finished = false
    const devices: Array<DeviceState> = Array.from({ length: o.devices }, (_, i) => ({
      id: `${o.prefix}-${i}`,
      socket: undefined,
      attempts: 0,
      welcomed: false,
      answers: []
    }))

    const finish = () => {
      if (finished) return
      finished = true
      clearTimeout(deadline)
      resolve({
        devices: o.devices,
        welcomed: devices.filter((d) => d.welcomed).length,
        acked: devices.filter((d) => d.answers.length > 0 && JSON.parse(d.answers[0]!).type === "ack").length,
        busyRetries,
        busyTimes,
        busyMessages,
        welcomeTimes,
        maxAttempts: Math.max(...devices.map((d) => d.attempts)),
        unanswered,
        socketErrors,
        violations: [
          ...violations,
          ...devices.filter((d) => d.answers.length > 1).map((d) => `${d.id}: ${d.answers.length} answers: ${d.answers.join(" ")}`)
        ],
        doneMs
      })
    }
    const deadline = setTimeout(finish, o.timeoutMs)

    const connect = (d: DeviceState) => {
      if (finished) return
      d.attempts++
      let buffer = ""
      let decided = false // this connection got the frame it waited for (welcome or busy)
      const socket = Net.connect({ port: o.port, host: "127.0.0.1", noDelay: true })
      d.socket = socket
      socket.setEncoding("utf8")
      socket.on("connect", () => socket.write(`{"type":"hello","v":1,"device":"${d.id}","token":"t"}\n`))
      socket.on("error", (e: NodeJS.ErrnoException) => {
        socketErrors[e.code ?? "other"] = (socketErrors[e.code ?? "other"] ?? 0) + 1
      })
      socket.on("close", () => {
        if (finished || d.socket !== socket) return
        if (!decided || (d.welcomed && d.answers.length === 0)) {
          // ended without an answer: retry soon (counted: the gateway should not do this)
          unanswered++
          d.welcomed = false
          setTimeout(() => connect(d), 100 + Math.floor(Math.random() * 200))
        }
      })
      socket.on("data", (chunk: string) => {
        buffer += chunk
        let nl = buffer.indexOf("\n")
        while (nl !== -1) {
          const line = buffer.slice(0, nl)
          buffer = buffer.slice(nl + 1)
          nl = buffer.indexOf("\n")
          const frame = JSON.parse(line) as { type?: string; code?: string; retryAfterMs?: number; message?: string }
          if (!decided) {
            decided = true
            if (frame.type === "welcome") {
              d.welcomed = true
              welcomeTimes.push(performance.now() - t0)
              socket.write(`{"type":"telemetry","seq":1,"ts":${Date.now()},"body":{"metrics":{"t":1}}}\n`)
            } else if (frame.type === "error" && frame.code === "busy") {
              busyRetries.push(frame.retryAfterMs ?? -1)
              busyTimes.push(performance.now() - t0)
              busyMessages[frame.message ?? ""] = (busyMessages[frame.message ?? ""] ?? 0) + 1
              d.socket = undefined
              socket.destroy()
              setTimeout(() => connect(d), frame.retryAfterMs ?? 1_000)
              return
            } else {
              violations.push(`${d.id}: expected welcome or busy, got ${line}`)
            }
            continue
          }
          if (!d.welcomed) continue
          d.answers.push(line)
          if (frame.type !== "ack" && frame.type !== "nack") violations.push(`${d.id}: after welcome: ${line}`)
          if (d.answers.length === 1 && ++done === o.devices) {
            doneMs = performance.now() - t0
            setTimeout(finish, QUIET_MS)
          }
        }
      })
    }

    everyone.push(...devices)
    for (const d of devices) connect(d)
  })
  return { result, close: () => everyone.forEach((d) => d.socket?.destroy()) }
}

/** A storm running in a worker thread. */
export interface RunningStorm {
  /** Resolves when every device has its answer, or at the deadline. */
  readonly result: Promise<StormResult>
  /** Closes every device's connection and ends the worker. */
  readonly close: () => Promise<void>
}

/** Starts the storm in a worker thread. */
export const runStorm = (options: StormOptions): RunningStorm => {
  const worker = new Worker(new URL(import.meta.url), {
    workerData: { ...options, stormWorker: true },
    execArgv: ["--disable-warning=ExperimentalWarning"]
  })
  const exited = new Promise<void>((resolve) => worker.once("exit", () => resolve()))
  const result = new Promise<StormResult>((resolve, reject) => {
    worker.once("message", (r: StormResult) => resolve(r))
    worker.once("error", reject)
    void exited.then(() => reject(new Error("storm worker exited before reporting")))
  })
  return {
    result,
    close: async () => {
      worker.postMessage("close")
      await exited
    }
  }
}

// the worker body: only in a worker started by runStorm (marked), never in a test runner's worker
if (!isMainThread && parentPort !== null && (workerData as { stormWorker?: unknown } | null)?.stormWorker === true) {
  const port = parentPort
  const running = storm(workerData as StormOptions)
  void running.result.then((result) => port.postMessage(result))
  port.on("message", () => {
    running.close()
    process.exit(0)
  })
}
