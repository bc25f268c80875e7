/**
 * Test support: a throw-away PKI made with the `openssl` command (Debian's `openssl` package):
 * a fleet CA, the gateway's server certificate (for 127.0.0.1 and localhost), client
 * certificates naming devices (in the CN or a SAN), and a foreign CA that signs impostors.
 */
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Path from "node:path"

/** True when the `openssl` command is installed. */
export const hasOpenssl = (): boolean => ChildProcess.spawnSync("openssl", ["version"]).status === 0

const openssl = (args: ReadonlyArray<string>, cwd: string) => {
  const r = ChildProcess.spawnSync("openssl", args, { cwd, encoding: "utf8" })
  if (r.status !== 0) throw new Error(`openssl ${args.join(" ")}: ${r.stderr}`)
}

/** Paths of a certificate and its key (PEM). */
export interface Pair {
  readonly cert: string
  readonly key: string
}

/** A CA that signs certificates in `dir`. */
export class TestCa {
  readonly dir: string
  readonly name: string
  readonly cert: string
  readonly key: string

  private constructor(dir: string, name: string) {
    this.dir = dir
    this.name = name
    this.cert = Path.join(dir, `${name}.crt`)
    this.key = Path.join(dir, `${name}.key`)
  }

  /** A new self-signed CA (EC P-256, valid one day). */
  static create(dir: string, name: string): TestCa {
    const ca = new TestCa(dir, name)
    openssl(["req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
      "-subj", `/CN=${name}`, "-keyout", ca.key, "-out", ca.cert, "-addext", "basicConstraints=critical,CA:TRUE",
      "-addext", "keyUsage=critical,keyCertSign,cRLSign"], dir)
    return ca
  }

  /** A certificate signed by this CA, with subject CN `cn` and the given subjectAltName entries (e.g. `DNS:x`). */
  issue(file: string, cn: string, altNames: ReadonlyArray<string> = [], days = 1): Pair {
    const key = Path.join(this.dir, `${file}.key`)
    const csr = Path.join(this.dir, `${file}.csr`)
    const cert = Path.join(this.dir, `${file}.crt`)
    const ext = Path.join(this.dir, `${file}.ext`)
    openssl(["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", `/CN=${cn}`, "-keyout", key, "-out", csr], this.dir)
    Fs.writeFileSync(ext, altNames.length === 0 ? "basicConstraints=CA:FALSE\n" : `basicConstraints=CA:FALSE\nsubjectAltName=${altNames.join(",")}\n`)
    openssl(["x509", "-req", "-in", csr, "-CA", this.cert, "-CAkey", this.key, "-CAcreateserial", "-days", String(days), "-extfile", ext, "-out", cert], this.dir)
    return { cert, key }
  }
}

/** A fleet PKI in `dir`: the CA, the gateway's server certificate, and a foreign CA. */
export const makePki = (dir: string) => {
  const ca = TestCa.create(dir, "fleet-ca")
  const server = ca.issue("server", "gateway.test", ["IP:127.0.0.1", "DNS:localhost"])
  const foreign = TestCa.create(dir, "foreign-ca")
  return { ca, server, foreign }
}
