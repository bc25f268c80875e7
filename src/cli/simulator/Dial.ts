/**
 * How a simulated device opens its socket: plain TCP, or TLS (the same framing inside, see
 * PROTOCOL.md) verified against a CA bundle, with a client certificate shared by the fleet or one
 * per device (`<dir>/<device>.crt` and `<dir>/<device>.key`, read once and kept for reconnects).
 */
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Path from "node:path"
import * as Tls from "node:tls"

/** TLS settings of the fleet. */
export interface TlsSettings {
  /** CA bundle the gateway's certificate must chain to (undefined: Node's default CAs). */
  readonly ca: Buffer | undefined
  /** One client certificate and key for every device. */
  readonly cert: Buffer | undefined
  readonly key: Buffer | undefined
  /** A directory with `<device>.crt` and `<device>.key` per device. */
  readonly certsDir: string | undefined
  /** Server name to verify (and send as SNI); default the host. */
  readonly servername: string | undefined
}

/** An opened (connecting) socket and the event that says it is ready for the hello. */
export interface Dialed {
  readonly socket: Net.Socket
  readonly readyEvent: "connect" | "secureConnect"
}

/** Opens a device's socket to the gateway; throws when its certificate files cannot be read. */
export type Dial = (device: string) => Dialed

/** The certificate and key files of `device` in `dir`. */
export const deviceCertFiles = (dir: string, device: string): { readonly cert: string; readonly key: string } => ({
  cert: Path.join(dir, `${device}.crt`),
  key: Path.join(dir, `${device}.key`)
})

/** A dialer to `host:port`, TLS when `tls` is given. */
export const makeDial = (host: string, port: number, tls: TlsSettings | undefined): Dial => {
  if (tls === undefined) {
    return () => ({ socket: Net.connect({ host, port, noDelay: true }), readyEvent: "connect" })
  }
  const pairs = new Map<string, { readonly cert: Buffer; readonly key: Buffer }>()
  const pairOf = (device: string) => {
    if (tls.certsDir === undefined) return tls.cert !== undefined && tls.key !== undefined ? { cert: tls.cert, key: tls.key } : undefined
    let pair = pairs.get(device)
    if (pair === undefined) {
      const files = deviceCertFiles(tls.certsDir, device)
      pair = { cert: Fs.readFileSync(files.cert), key: Fs.readFileSync(files.key) }
      pairs.set(device, pair)
    }
    return pair
  }
  const servername = tls.servername ?? (Net.isIP(host) === 0 ? host : undefined)
  return (device) => {
    const pair = pairOf(device)
    const socket = Tls.connect({
      host,
      port,
      ...(tls.ca === undefined ? {} : { ca: tls.ca }),
      ...(pair === undefined ? {} : { cert: pair.cert, key: pair.key }),
      // an IP address is checked against the certificate's IP SANs (Node does so without servername)
      ...(servername === undefined ? {} : { servername })
    })
    socket.setNoDelay(true)
    return { socket, readyEvent: "secureConnect" }
  }
}
