/**
 * Test support: a device speaking raw bytes over a real TCP (or TLS) socket, reading answers line by line.
 */
import * as Net from "node:net"
import * as Tls from "node:tls"

/** A frame the gateway wrote, parsed. */
export type Answer = Record<string, unknown> & { readonly type: string }

/** A line-protocol client for tests. */
export class Device {
  private buffer = ""
  private readonly lines: Array<string> = []
  private waiters: Array<() => void> = []
  /** Resolves when the gateway closed the connection. */
  readonly closed: Promise<void>
  readonly socket: Net.Socket

  private constructor(socket: Net.Socket) {
    this.socket = socket
    socket.setEncoding("utf8")
    socket.on("data", (d: string) => {
      this.buffer += d
      let nl = this.buffer.indexOf("\n")
      while (nl !== -1) {
        this.lines.push(this.buffer.slice(0, nl))
        this.buffer = this.buffer.slice(nl + 1)
        nl = this.buffer.indexOf("\n")
      }
      this.notify()
    })
    this.closed = new Promise((resolve) => {
      socket.on("close", () => {
        this.notify()
        resolve()
      })
    })
    socket.on("error", () => undefined)
  }

  private notify() {
    const w = this.waiters
    this.waiters = []
    for (const f of w) f()
  }

  /** Connects to the gateway on 127.0.0.1 (from `localAddress`, another loopback address, when given). */
  static connect(port: number, localAddress?: string): Promise<Device> {
    return new Promise((resolve, reject) => {
      const socket = Net.connect({ port, host: "127.0.0.1", ...(localAddress === undefined ? {} : { localAddress }) }, () => resolve(new Device(socket)))
      socket.once("error", reject)
    })
  }

  /** Connects over TLS (`options`: CA, client certificate…); resolves once the handshake is done. */
  static connectTls(port: number, options: Tls.ConnectionOptions = {}): Promise<Device> {
    return new Promise((resolve, reject) => {
      const socket = Tls.connect({ port, host: "127.0.0.1", ...options }, () => resolve(new Device(socket)))
      socket.once("error", reject)
    })
  }

  /** Connects and completes hello; resolves with the welcome frame. */
  static async open(port: number, device: string, extra: Record<string, unknown> = {}): Promise<{ d: Device; welcome: Answer }> {
    const d = await Device.connect(port)
    d.send({ type: "hello", v: 1, device, token: "t", ...extra })
    const welcome = await d.next()
    if (welcome.type !== "welcome") throw new Error(`expected welcome, got ${JSON.stringify(welcome)}`)
    return { d, welcome }
  }

  /** Writes frames (objects are JSON-encoded and newline-terminated; strings go raw). */
  send(...frames: Array<string | object>): void {
    this.socket.write(frames.map((f) => (typeof f === "string" ? f : JSON.stringify(f) + "\n")).join(""))
  }

  /** The next answer line as raw text; rejects after `timeoutMs` or when closed with no line. */
  async nextLine(timeoutMs = 5_000): Promise<string> {
    const deadline = Date.now() + timeoutMs
    while (this.lines.length === 0) {
      if (this.socket.destroyed || this.socket.readableEnded) throw new Error("connection closed with no further answer")
      const left = deadline - Date.now()
      if (left <= 0) throw new Error(`no answer within ${timeoutMs} ms`)
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left)
        this.waiters.push(() => {
          clearTimeout(t)
          resolve()
        })
      })
    }
    return this.lines.shift()!
  }

  /** The next answer, parsed. */
  async next(timeoutMs = 5_000): Promise<Answer> {
    return JSON.parse(await this.nextLine(timeoutMs)) as Answer
  }

  /** The next `n` answers. */
  async take(n: number, timeoutMs = 10_000): Promise<Array<Answer>> {
    const out: Array<Answer> = []
    for (let i = 0; i < n; i++) out.push(await this.next(timeoutMs))
    return out
  }

  /** True when nothing arrives within `ms`. */
  async silentFor(ms: number): Promise<boolean> {
    try {
      await this.nextLine(ms)
      return false
    } catch {
      return true
    }
  }

  /** The answer lines received and not yet taken. */
  received(): ReadonlyArray<string> {
    return this.lines
  }

  /** The subject CN of the gateway's certificate (TLS connections). */
  peerCertificateCn(): string | undefined {
    const cn = this.socket instanceof Tls.TLSSocket ? this.socket.getPeerCertificate().subject?.CN : undefined
    return typeof cn === "string" ? cn : undefined
  }

  /** Closes our side. */
  end(): void {
    this.socket.destroy()
  }
}

/** A telemetry frame. */
export const telemetry = (seq: number, metrics: Record<string, unknown> = { t: seq }, extra: Record<string, unknown> = {}) => ({
  type: "telemetry",
  seq,
  ts: 1_700_000_000_000 + seq,
  body: { metrics },
  ...extra
})

/** An event frame. */
export const event = (seq: number, name = "door_open", extra: Record<string, unknown> = {}) => ({
  type: "event",
  seq,
  ts: 1_700_000_000_000 + seq,
  body: { name, severity: "info" },
  ...extra
})
