/**
 * The fatal error frame reaches the device (issue "Hardening", defect 4): a device still
 * writing a 50 MB line without a newline gets `error frame_too_large` before the close, every
 * time. The issue saw the frame lost one run in three when the socket was destroyed with
 * unread input (the kernel answers with a reset); on this machine's kernel the previous close
 * did not lose it in 40 runs of this test, so this guards the behaviour rather than
 * reproducing the loss.
 */
import { afterEach, describe, expect, it } from "@effect/vitest"
import * as Fs from "node:fs"
import * as Net from "node:net"
import { startGateway, type TestGateway } from "../support/gateway.ts"

const running: Array<TestGateway> = []

afterEach(async () => {
  for (const g of running.splice(0)) {
    await g.stop()
    Fs.rmSync(g.dataDir, { recursive: true, force: true })
  }
})

const MB = 1024 * 1024

/** Sends hello, then `total` bytes of one unfinished line in one write; resolves with every answer line read before the close. */
const oversizedLine = (port: number, total: number) =>
  new Promise<{ lines: Array<string>; error: string | undefined }>((resolve) => {
    const socket = Net.connect({ port, host: "127.0.0.1" })
    let text = ""
    let error: string | undefined
    socket.on("connect", () => {
      socket.write(JSON.stringify({ type: "hello", v: 1, device: `big-${Math.floor(Math.random() * 1e9)}`, token: "t" }) + "\n")
      socket.write('{"type":"telemetry","seq":1,"ts":1700000000000,"body":{"pad":"')
      // one write of it all, as a device's stack that hands the OS one buffer
      socket.write(Buffer.alloc(total, "x"))
    })
    socket.setEncoding("utf8")
    socket.on("data", (d: string) => (text += d))
    socket.on("error", (e: NodeJS.ErrnoException) => (error = e.code))
    socket.on("close", () => resolve({ lines: text.split("\n").filter((l) => l !== ""), error }))
  })

describe("closing on a fatal error", () => {
  it("a device writing a 50 MB line gets error frame_too_large before the close, in each of 6 runs", async () => {
    const g = await startGateway({ GATEWAY_MAX_FRAME_BYTES: "65536" })
    running.push(g)
    for (let run = 0; run < 6; run++) {
      const { lines } = await oversizedLine(g.port, 50 * MB)
      expect(lines[0]).toContain('"welcome"')
      const last = JSON.parse(lines.at(-1)!) as Record<string, unknown>
      expect({ run, last }).toMatchObject({ run, last: { type: "error", code: "frame_too_large" } })
    }
  }, 60_000)
})
