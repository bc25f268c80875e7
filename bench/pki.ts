/**
 * The throw-away PKI of the TLS benchmarks: a fleet CA and the gateway's server certificate
 * (made by test/support/certs.ts), and device certificates issued in parallel, one `openssl req
 * -x509 -CA` process per certificate (each with its own EC P-256 key), naming devices in the
 * subject CN and in DNS subject alternative names.
 */
import * as ChildProcess from "node:child_process"
import * as Os from "node:os"
import * as Path from "node:path"
import { hasOpenssl, type Pair, TestCa } from "../test/support/certs.ts"

/** True when the `openssl` command is installed (the TLS scenarios need it). */
export { hasOpenssl }

/** A fleet CA and the gateway's certificate for 127.0.0.1 (PEM files in `dir`). */
export interface BenchPki {
  readonly dir: string
  readonly ca: TestCa
  readonly server: Pair
}

/** A new CA and server certificate in `dir`. */
export const makeBenchPki = (dir: string): BenchPki => {
  const ca = TestCa.create(dir, "bench-ca")
  return { dir, ca, server: ca.issue("server", "gateway.bench", ["IP:127.0.0.1", "DNS:localhost"]) }
}

/** A device certificate to issue: the file name, and the device ids it names (the first is the CN). */
export interface DeviceCertSpec {
  readonly file: string
  readonly devices: ReadonlyArray<string>
}

/** Device certificates issued, and what issuing them cost. */
export interface IssuedCerts {
  /** The certificate and key of each device id. */
  readonly byDevice: ReadonlyMap<string, Pair>
  readonly certificates: number
  readonly wallMs: number
}

const issueOne = (ca: TestCa, spec: DeviceCertSpec): Promise<Pair> =>
  new Promise((resolve, reject) => {
    const key = Path.join(ca.dir, `${spec.file}.key`)
    const cert = Path.join(ca.dir, `${spec.file}.crt`)
    const args = ["req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
      "-subj", `/CN=${spec.devices[0]}`, "-CA", ca.cert, "-CAkey", ca.key, "-keyout", key, "-out", cert,
      "-addext", "basicConstraints=CA:FALSE", "-addext", `subjectAltName=${spec.devices.map((d) => `DNS:${d}`).join(",")}`]
    const child = ChildProcess.spawn("openssl", args, { stdio: ["ignore", "ignore", "pipe"] })
    let stderr = ""
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()))
    child.on("error", reject)
    child.on("exit", (code) => code === 0 ? resolve({ cert, key }) : reject(new Error(`openssl req -x509 -CA (${spec.file}): ${stderr}`)))
  })

/** Issues `specs` with the CA, a few `openssl` processes at a time (two per core). */
export const issueDeviceCerts = async (ca: TestCa, specs: ReadonlyArray<DeviceCertSpec>): Promise<IssuedCerts> => {
  const t0 = performance.now()
  const byDevice = new Map<string, Pair>()
  let next = 0
  const worker = async () => {
    while (next < specs.length) {
      const spec = specs[next++]!
      const pair = await issueOne(ca, spec)
      for (const d of spec.devices) byDevice.set(d, pair)
    }
  }
  await Promise.all(Array.from({ length: Math.max(1, Os.cpus().length * 2) }, worker))
  return { byDevice, certificates: specs.length, wallMs: performance.now() - t0 }
}

/** One certificate per device id (the CN and the only SAN). */
export const onePerDevice = (devices: ReadonlyArray<string>): Array<DeviceCertSpec> =>
  devices.map((d) => ({ file: `dev-${d}`, devices: [d] }))

/** `certificates` certificates sharing the devices out in consecutive runs, each naming its run in SANs. */
export const pooled = (devices: ReadonlyArray<string>, certificates: number): Array<DeviceCertSpec> => {
  const per = Math.ceil(devices.length / Math.max(1, certificates))
  const out: Array<DeviceCertSpec> = []
  for (let i = 0; i < devices.length; i += per) out.push({ file: `pool-${out.length}`, devices: devices.slice(i, i + per) })
  return out
}
