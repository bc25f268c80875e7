/**
 * Test support, run as its own process (so the load does not slow the test's own clock):
 * - `frames`: `devices` devices flood the gateway at `port` with valid 60 KB telemetry frames
 *   (3,000 metrics and a long tag), each keeping up to 1,024 frames unanswered and 4 MB unsent,
 *   for `durationMs`; prints `{"sent":…,"answered":…}`.
 * - `preauth`: `devices` connections each send 65 KB without a newline before any hello and
 *   wait (at most `durationMs`) for the gateway to close them; prints `{"sent":…,"answered":…}`
 *   where `answered` counts the connections that got `error protocol` before the close.
 *
 *   node test/support/floodClient.ts <frames|preauth> <port> <devices> <durationMs>
 */
import * as Net from "node:net"

const mode = process.argv[2]
const [port, devices, durationMs] = process.argv.slice(3).map(Number) as [number, number, number]

const BODY = (() => {
  const metrics: Record<string, number> = {}
  for (let i = 0; i < 3_000; i++) metrics[`m${i}`] = i + 0.5
  const bare = JSON.stringify({ metrics, tags: { pad: "" } })
  return JSON.stringify({ metrics, tags: { pad: "x".repeat(60_000 - bare.length) } })
})()

let sent = 0
let answered = 0
let stopped = false
const sockets: Array<Net.Socket> = []

const frames = () => {
for (let k = 0; k < devices; k++) {
  const socket = Net.connect({ port, host: "127.0.0.1" })
  sockets.push(socket)
  socket.on("error", () => undefined)
  let mine = 0
  let mineAnswered = 0
  let welcomed = false
  let buf = ""
  const pump = () => {
    while (welcomed && !stopped && mine - mineAnswered < 1024 && socket.writableLength < 4 << 20) {
      socket.write(`{"type":"telemetry","seq":${mine++},"ts":${Date.now()},"body":${BODY}}\n`)
      sent++
    }
  }
  socket.setEncoding("utf8")
  socket.on("data", (d: string) => {
    buf += d
    let nl = buf.indexOf("\n")
    while (nl !== -1) {
      const line = buf.slice(0, nl)
      buf = buf.slice(nl + 1)
      if (!welcomed) welcomed = line.includes('"welcome"')
      else if (line.includes('"seq"')) {
        mineAnswered++
        answered++
      }
      nl = buf.indexOf("\n")
    }
    pump()
  })
  socket.on("drain", pump)
  socket.write(`{"type":"hello","v":1,"device":"flood-${process.pid}-${k}","token":"t"}\n`)
}
}

const preauth = () => {
  const junk = Buffer.alloc(65 * 1024, "x")
  let closed = 0
  for (let k = 0; k < devices; k++) {
    const socket = Net.connect({ port, host: "127.0.0.1" }, () => {
      socket.write(junk)
      sent++
    })
    let got = ""
    socket.setEncoding("utf8")
    socket.on("data", (d: string) => (got += d))
    socket.on("error", () => undefined)
    socket.on("close", () => {
      if (got.includes('"code":"protocol"')) answered++
      if (++closed === devices) finish()
    })
  }
}

const finish = () => {
  stopped = true
  for (const s of sockets) s.destroy()
  process.stdout.write(JSON.stringify({ sent, answered }), () => process.exit(0))
}

if (mode === "frames") frames()
else preauth()

setTimeout(finish, durationMs)
