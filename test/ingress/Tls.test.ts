/**
 * TLS and mutual TLS on the device port, on real sockets with a PKI made by `openssl`: the
 * protocol over TLS, devices named by their client certificates (CN or SAN), refusals of
 * missing, foreign and mismatched certificates, the hello deadline covering the handshake,
 * certificate reloads (SIGHUP, file change, a bad file kept out), `openssl s_client` as a
 * device, and start failures for unusable TLS files.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from "@effect/vitest"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Path from "node:path"
import { hasOpenssl, makePki, type Pair, type TestCa } from "../support/certs.ts"
import { type Answer, Device, event, telemetry } from "../support/client.ts"
import { cleanupChildren, runToExit, tempDir } from "../support/childGateway.ts"
import { logLines, messageOf } from "../support/process.ts"
import { startGateway, tempDir as keptDir, type TestGateway } from "../support/gateway.ts"
import { metricValue, scrape } from "../support/metrics.ts"

if (!hasOpenssl()) {
  const reason = "TLS tests need the `openssl` command (apt-get install openssl)"
  if (process.env["GATEWAY_REQUIRE_SERVICES"] === "1") throw new Error(reason)
  console.warn(`SKIPPED LOUDLY: ${reason}`)
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

let dir = ""
let pki: { ca: TestCa; server: Pair; foreign: TestCa }
let serverCopy: Pair
const gateways: Array<TestGateway> = []

beforeAll(() => {
  if (!hasOpenssl()) return
  dir = keptDir("gw-tls-") // kept across the tests (tempDir's are removed after each)
  pki = makePki(dir)
  // the gateway's own copies of its certificate and key, rewritten by the reload tests
  serverCopy = { cert: Path.join(dir, "gw.crt"), key: Path.join(dir, "gw.key") }
})

afterEach(async () => {
  for (const g of gateways.splice(0)) await g.stop()
  await cleanupChildren()
})

afterAll(() => {
  if (dir !== "") Fs.rmSync(dir, { recursive: true, force: true })
})

const useServer = (pair: Pair) => {
  Fs.copyFileSync(pair.cert, serverCopy.cert)
  Fs.copyFileSync(pair.key, serverCopy.key)
}

const start = async (env: Record<string, string>) => {
  useServer(pki.server)
  const g = await startGateway({ GATEWAY_TLS_CERT: serverCopy.cert, GATEWAY_TLS_KEY: serverCopy.key, GATEWAY_HELLO_TIMEOUT_MS: "2000", ...env })
  gateways.push(g)
  return g
}

const trust = () => ({ ca: Fs.readFileSync(pki.ca.cert) })
const withCert = (pair: Pair) => ({ ...trust(), cert: Fs.readFileSync(pair.cert), key: Fs.readFileSync(pair.key) })

/** Opens a TLS session as `device`; the first answer to its hello. */
const hello = async (port: number, device: string, options: object) => {
  const d = await Device.connectTls(port, options)
  d.send({ type: "hello", v: 1, device, token: "t" })
  return { d, answer: await d.next() }
}

/** Resolves with how the connection ended: a TLS error (handshake refused) or a close. */
const handshakeOutcome = (port: number, options: object) =>
  Device.connectTls(port, options).then(
    async (d) => {
      // TLS 1.3: the server checks the client certificate after the client's handshake is done,
      // so a refusal arrives as an alert on the first read
      d.send({ type: "hello", v: 1, device: "x", token: "t" })
      const line = await d.nextLine(3_000).catch((e: unknown) => `closed: ${String(e)}`)
      return `connected, then: ${line}`
    },
    (e: unknown) => `refused: ${String(e)}`
  )

describe.runIf(hasOpenssl())("TLS on the device port", () => {
  it("speaks the protocol over TLS: welcome, ack after commit, ping", async () => {
    const g = await start({})
    const { d, answer } = await hello(g.port, "tls-1", trust())
    expect(answer).toMatchObject({ type: "welcome" })
    d.send(telemetry(1), { type: "ping" })
    const answers = [await d.next(), await d.next()]
    expect(answers).toContainEqual({ type: "pong" })
    expect(answers).toContainEqual(expect.objectContaining({ type: "ack", seq: 1 }))
    d.end()
  })

  it("a plain TCP client on the TLS port gets no session; the failure is counted", async () => {
    const g = await start({})
    const before = metricValue(await scrape(g.adminPort), "gateway_tls_handshake_failures_total", { reason: "not_tls" })
    const plain = await Device.connect(g.port)
    plain.send({ type: "hello", v: 1, device: "plain", token: "t" })
    await plain.closed
    // whatever came back is TLS (an alert), never a welcome
    expect(plain.received().join("\n")).not.toContain("welcome")
    await sleep(50)
    const after = metricValue(await scrape(g.adminPort), "gateway_tls_handshake_failures_total", { reason: "not_tls" })
    expect(after - before).toBe(1)
  })

  it("a connection refused at accept gets its `busy` inside TLS, with retryAfterMs", async () => {
    const g = await start({ GATEWAY_MAX_CONNECTIONS: "1" })
    const { d, answer } = await hello(g.port, "first", trust())
    expect(answer).toMatchObject({ type: "welcome" })
    // before: the busy frame went out in plain text on the TLS port (the client saw a TLS error)
    const refused = await Device.connectTls(g.port, trust())
    const busy = await refused.next(3_000)
    expect(busy).toMatchObject({ type: "error", code: "busy" })
    expect(busy["retryAfterMs"]).toBeGreaterThan(0)
    d.end()
  })

  it("TLS sessions count against the memory budget: past it new connections get busy, and the room comes back as they close", async () => {
    // high watermark 512 KiB: about 10 sessions of 48 KiB (before: TLS sessions were not counted at all)
    const g = await start({ GATEWAY_MEMORY_BUDGET: String(1024 * 1024), GATEWAY_MEMORY_HIGH_PERCENT: "50" })
    const sessions: Array<Device> = []
    let refused: Answer | undefined
    while (refused === undefined && sessions.length < 40) {
      const { d, answer } = await hello(g.port, `tls-mem-${sessions.length}`, trust())
      if (answer.type === "welcome") {
        sessions.push(d)
        await sleep(120) // the buffers are sampled every 100 ms
      } else refused = answer
    }
    expect(refused).toMatchObject({ type: "error", code: "busy" })
    // above the high watermark new sessions are refused at hello; past the budget, at accept
    expect(String(refused?.["message"])).toMatch(/saturated|memory/)
    expect(sessions.length).toBeGreaterThanOrEqual(10)
    expect(sessions.length).toBeLessThanOrEqual(12)
    for (const d of sessions.splice(0)) d.end()
    await sleep(400)
    expect((await hello(g.port, "tls-mem-again", trust())).answer).toMatchObject({ type: "welcome" })
  })

  it("the hello deadline runs from the accept: a socket that never starts the handshake is closed", async () => {
    const g = await start({ GATEWAY_HELLO_TIMEOUT_MS: "300" })
    const t0 = performance.now()
    const socket = Net.connect({ port: g.port, host: "127.0.0.1" })
    socket.on("error", () => undefined)
    // a byte every 100 ms (a slowloris on the handshake) does not extend it
    const drip = setInterval(() => socket.write("\x16"), 100)
    await new Promise<void>((resolve) => socket.once("close", () => resolve()))
    clearInterval(drip)
    const ms = performance.now() - t0
    expect(ms).toBeGreaterThanOrEqual(250)
    expect(ms).toBeLessThan(6_000) // the deadline, then at most the bounded linger of the close
    // a completed handshake with no hello: `error timeout`
    const d = await Device.connectTls(g.port, trust())
    expect(await d.next(3_000)).toMatchObject({ type: "error", code: "timeout" })
  })

  it("reloads the certificate on SIGHUP and when the files change, keeping established sessions; a bad file is not taken", async () => {
    const g = await start({})
    const { d } = await hello(g.port, "long-lived", trust())
    const cnOf = async () => {
      const c = await Device.connectTls(g.port, trust())
      const cn = c.peerCertificateCn()
      c.end()
      return cn
    }
    expect(await cnOf()).toBe("gateway.test")

    // SIGHUP: at once (well before the file poll)
    useServer(pki.ca.issue("server-2", "gateway-2.test", ["IP:127.0.0.1"]))
    process.kill(process.pid, "SIGHUP")
    await sleep(200)
    expect(await cnOf()).toBe("gateway-2.test")

    // a changed file: within the poll
    useServer(pki.ca.issue("server-3", "gateway-3.test", ["IP:127.0.0.1"]))
    const until = Date.now() + 5_000
    while (Date.now() < until && (await cnOf()) !== "gateway-3.test") await sleep(200)
    expect(await cnOf()).toBe("gateway-3.test")

    // a broken file: the previous certificate stays, the failure is counted
    const failedBefore = metricValue(await scrape(g.adminPort), "gateway_tls_reloads_total", { result: "failed" })
    Fs.writeFileSync(serverCopy.cert, "-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
    process.kill(process.pid, "SIGHUP") // within a second of the last forced reload: it waits its turn
    const failedBy = Date.now() + 3_000
    const failed = async () => metricValue(await scrape(g.adminPort), "gateway_tls_reloads_total", { result: "failed" }) - failedBefore
    while (Date.now() < failedBy && (await failed()) < 1) await sleep(100)
    expect(await failed()).toBeGreaterThanOrEqual(1)
    expect(await cnOf()).toBe("gateway-3.test")

    // the session opened before all this still works
    d.send(telemetry(7))
    expect(await d.next()).toMatchObject({ type: "ack", seq: 7 })
    d.end()
  })
})

describe.runIf(hasOpenssl())("mutual TLS: the client certificate names the device", () => {
  const mtls = () => start({ GATEWAY_TLS_CA: pki.ca.cert })

  it("authenticates by certificate alone (no registry): the CN or a SAN must be the hello's device", async () => {
    const g = await mtls()
    const byCn = pki.ca.issue("dev-cn", "sensor-cn")
    const bySan = pki.ca.issue("dev-san", "ignored-cn", ["DNS:sensor-san", "URI:urn:fleet:sensor-uri"])

    const a = await hello(g.port, "sensor-cn", withCert(byCn))
    expect(a.answer).toMatchObject({ type: "welcome" })
    a.d.send(event(1))
    expect(await a.d.next()).toMatchObject({ type: "ack", seq: 1 })
    a.d.end()

    for (const name of ["sensor-san", "urn:fleet:sensor-uri"]) {
      const b = await hello(g.port, name, withCert(bySan))
      expect(b.answer).toMatchObject({ type: "welcome" })
      b.d.end()
    }

    // another device's certificate: refused before any credential is looked at
    const c = await hello(g.port, "sensor-other", withCert(byCn))
    expect(c.answer).toMatchObject({ type: "error", code: "auth" })
    expect(String(c.answer["message"])).toContain("sensor-other")
  })

  it("refuses a client without a certificate, or with one from another CA, at the handshake", async () => {
    const g = await mtls()
    const before = metricValue(await scrape(g.adminPort), "gateway_tls_handshake_failures_total")
    const impostor = pki.foreign.issue("impostor", "sensor-cn")
    for (const options of [trust(), withCert(impostor)]) {
      const outcome = await handshakeOutcome(g.port, options)
      expect(outcome).not.toContain("welcome")
      expect(outcome).toMatch(/refused|closed|alert|certificate/i)
    }
    await sleep(50)
    expect(metricValue(await scrape(g.adminPort), "gateway_tls_handshake_failures_total") - before).toBe(2)
  })

  it("openssl s_client with a client certificate is a device", async () => {
    const g = await mtls()
    const pair = pki.ca.issue("dev-openssl", "sensor-openssl")
    const child = ChildProcess.spawn("openssl", [
      "s_client", "-connect", `127.0.0.1:${g.port}`, "-CAfile", pki.ca.cert, "-cert", pair.cert, "-key", pair.key, "-quiet", "-verify_return_error"
    ], { stdio: ["pipe", "pipe", "pipe"] })
    let out = ""
    child.stdout.setEncoding("utf8")
    child.stdout.on("data", (s: string) => (out += s))
    child.stdin.write(JSON.stringify({ type: "hello", v: 1, device: "sensor-openssl", token: "t" }) + "\n")
    child.stdin.write(JSON.stringify(telemetry(3)) + "\n")
    const until = Date.now() + 5_000
    while (Date.now() < until && !out.includes('"ack"')) await sleep(50)
    child.kill()
    const lines = out.trim().split("\n").map((l) => JSON.parse(l) as { type: string })
    expect(lines[0]).toMatchObject({ type: "welcome" })
    expect(lines[1]).toMatchObject({ type: "ack", seq: 3 })
  })
})

describe.runIf(hasOpenssl())("TLS files that cannot be used stop the start (exit 78, one line)", () => {
  it.each([
    ["a certificate without its key", (): Record<string, string> => ({ GATEWAY_TLS_CERT: pki.server.cert }), "go together"],
    ["a CA without a server certificate", (): Record<string, string> => ({ GATEWAY_TLS_CA: pki.ca.cert }), "GATEWAY_TLS_CA needs"],
    ["a missing file", (): Record<string, string> => ({ GATEWAY_TLS_CERT: Path.join(dir, "nope.crt"), GATEWAY_TLS_KEY: pki.server.key }), "cannot read"],
    ["a key that is not the certificate's", (): Record<string, string> => ({ GATEWAY_TLS_CERT: pki.server.cert, GATEWAY_TLS_KEY: pki.foreign.key }), "GATEWAY_TLS_CERT/GATEWAY_TLS_KEY"]
  ])("%s", async (_, env, reason) => {
    const { code, output } = await runToExit(tempDir("gw-tls-bad-"), env())
    expect(code).toBe(78)
    const errors = logLines(output).filter((l) => l["level"] === "ERROR")
    expect(errors).toHaveLength(1)
    expect(messageOf(errors[0]!)).toContain(reason)
    // never the key's bytes in the log
    expect(output).not.toContain("PRIVATE KEY")
  })
})
