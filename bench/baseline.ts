/**
 * The raw `node:net` baseline: newline framing + JSON.parse + ack, no validation, no store.
 * It answers hello with a welcome so the same load generator drives it and the gateway.
 * Prints `{"message":"listening","port":N}` once bound. Usage: node bench/baseline.ts [port]
 * With BASELINE_TLS_CERT and BASELINE_TLS_KEY (PEM files) the same server speaks TLS
 * (`node:tls`, server certificate only).
 */
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Tls from "node:tls"

const serve = (socket: Net.Socket) => {
  let rest = ""
  socket.on("data", (chunk: Buffer) => {
    const text = rest + chunk.toString("utf8")
    let start = 0
    let out = ""
    let nl = text.indexOf("\n")
    while (nl !== -1) {
      const frame = JSON.parse(text.slice(start, nl)) as { readonly type: string; readonly seq?: number }
      if (frame.type === "hello") out += `{"type":"welcome","v":1,"session":"s","keepaliveMs":30000,"maxFrameBytes":65536,"lastSeq":null}\n`
      else if (frame.type === "ping") out += `{"type":"pong"}\n`
      else out += `{"type":"ack","seq":${frame.seq}}\n`
      start = nl + 1
      nl = text.indexOf("\n", start)
    }
    rest = text.slice(start)
    if (out.length > 0) socket.write(out)
  })
  socket.on("error", () => socket.destroy())
}

const certFile = process.env["BASELINE_TLS_CERT"]
const keyFile = process.env["BASELINE_TLS_KEY"]
const server = certFile !== undefined && keyFile !== undefined
  ? Tls.createServer({ noDelay: true, cert: Fs.readFileSync(certFile), key: Fs.readFileSync(keyFile) }, serve)
  : Net.createServer({ noDelay: true }, serve)

server.listen(Number(process.argv[2] ?? 0), "127.0.0.1", () => {
  const address = server.address()
  console.log(JSON.stringify({ message: "listening", port: typeof address === "object" && address ? address.port : 0 }))
})
process.on("SIGTERM", () => process.exit(0))
