/**
 * How a benchmark device opens its socket to a server on 127.0.0.1: plain TCP, TLS trusting
 * the bench CA, or mutual TLS presenting the device's own client certificate. Every dial is a
 * new socket and (TLS) a full handshake: no session is resumed, as after a device's reboot.
 */
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Tls from "node:tls"
import type { Pair } from "../test/support/certs.ts"

/** Opens device `device`'s socket to `port`; `ready` runs once it can carry the hello (TLS: handshake done). */
export type Dial = (port: number, device: string, ready: () => void) => Net.Socket

/** Plain TCP, Nagle off. */
export const plainDial: Dial = (port, _device, ready) => {
  const socket = Net.connect({ port, host: "127.0.0.1", noDelay: true })
  socket.once("connect", ready)
  return socket
}

const tlsConnect = (port: number, secureContext: Tls.SecureContext, ready: () => void): Net.Socket => {
  const socket = Tls.connect({ port, host: "127.0.0.1", secureContext })
  socket.setNoDelay(true)
  socket.once("secureConnect", ready)
  return socket
}

/** TLS without a client certificate, trusting the CA in `caFile` (the server certificate names 127.0.0.1). */
export const tlsDial = (caFile: string): Dial => {
  const context = Tls.createSecureContext({ ca: Fs.readFileSync(caFile) })
  return (port, _device, ready) => tlsConnect(port, context, ready)
}

/**
 * Mutual TLS: each device presents the certificate `certs` gives it (a device without one
 * presents none and is refused). The secure contexts, one per certificate, are made here, up
 * front, as a device loads its credentials at boot.
 */
export const mutualTlsDial = (caFile: string, certs: ReadonlyMap<string, Pair>): Dial => {
  const ca = Fs.readFileSync(caFile)
  const byCert = new Map<string, Tls.SecureContext>()
  const byDevice = new Map<string, Tls.SecureContext>()
  for (const [device, pair] of certs) {
    let context = byCert.get(pair.cert)
    if (context === undefined) {
      context = Tls.createSecureContext({ ca, cert: Fs.readFileSync(pair.cert), key: Fs.readFileSync(pair.key) })
      byCert.set(pair.cert, context)
    }
    byDevice.set(device, context)
  }
  const none = Tls.createSecureContext({ ca })
  return (port, device, ready) => tlsConnect(port, byDevice.get(device) ?? none, ready)
}
