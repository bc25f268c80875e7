/**
 * TLS and mutual TLS on the device port (`node:tls`). The listener accepts plain TCP sockets
 * (admission answers at accept, before any handshake work) and wraps each admitted one in a
 * server-side `TLSSocket`; a connection then reads and writes through it like any socket, so
 * the hello deadline, which runs from the accept, covers the handshake too.
 *
 * With `GATEWAY_TLS_CA` a client certificate signed by that CA is required, and the device id
 * of the hello must be one of the names the certificate carries (its subject CN or a DNS, URI
 * or email subject alternative name): a fleet can then authenticate by certificate alone.
 *
 * The PEM files are read at start (a bad file stops the start with one line) and again on
 * SIGHUP (at most once a second) or when one of them changes (polled): new handshakes use the new certificates,
 * established connections keep theirs. A reload that fails keeps the previous certificates and
 * logs why.
 */
import { Data, Effect, Option, Schedule, type Scope } from "effect"
import * as Fs from "node:fs"
import type * as Net from "node:net"
import * as Tls from "node:tls"
import * as Metrics from "../observability/Metrics.ts"

/** The TLS files of the configuration. */
export interface TlsFiles {
  readonly cert: string
  readonly key: string
  /** CA bundle for client certificates; when set, every device must present one. */
  readonly ca: Option.Option<string>
}

/** A TLS file that cannot be used (unreadable, not PEM, key not matching the certificate). */
export class TlsFileError extends Data.TaggedError("TlsFileError")<{ readonly message: string }> {}

/**
 * Native memory a TLS connection holds beyond a plain socket's (OpenSSL's session and buffers,
 * Node's TLS stream): measured ~25 KB before the handshake, ~65 KB holding a partial
 * ClientHello, ~50 KB welcomed and idle. Counted in the memory budget's connection buffers.
 */
export const TLS_SESSION_BYTES = 48 * 1024

/** How often the certificate files are checked for changes. */
const POLL_MS = 2_000

/** Ends of a TLS file above this size are not certificates: refused before reading. */
const MAX_PEM_BYTES = 1024 * 1024

/** Wraps admitted sockets in TLS with the current certificates; reloads them when asked. */
export class TlsTerminator {
  private context: Tls.SecureContext
  private stamp: string
  private readonly files: TlsFiles
  /** True when a client certificate is required (and names the device). */
  readonly mutual: boolean

  private constructor(files: TlsFiles, context: Tls.SecureContext, stamp: string) {
    this.files = files
    this.context = context
    this.stamp = stamp
    this.mutual = Option.isSome(files.ca)
  }

  /** Reads the files; fails with one clear message when they cannot be used. */
  static load(files: TlsFiles): Effect.Effect<TlsTerminator, TlsFileError> {
    return Effect.try({
      try: () => new TlsTerminator(files, makeContext(files), stampOf(files)),
      catch: (e) => new TlsFileError({ message: e instanceof Error ? e.message : String(e) })
    })
  }

  /** A server-side TLS socket over an accepted TCP socket (the handshake starts at once). */
  wrap(socket: Net.Socket): Tls.TLSSocket {
    const tls = new Tls.TLSSocket(socket, {
      isServer: true,
      secureContext: this.context,
      requestCert: this.mutual,
      rejectUnauthorized: this.mutual
    })
    // no TLS 1.2 renegotiation: Node's limit on it applies only to tls.Server's sockets, and a
    // renegotiation makes Node hand the previous data again (a frame read twice)
    tls.disableRenegotiation()
    let secure = false
    tls.once("secure", () => {
      secure = true
      // OpenSSL accepts any client certificate during the handshake and records why it does
      // not verify; a server that owns the socket decides (as Node's tls.Server does)
      if (this.mutual && verifyErrorOf(tls) !== undefined) {
        Metrics.record(Metrics.tlsHandshakeFailures("certificate"), 1)
        tls.destroy()
      } else if (this.mutual) {
        VERIFIED.add(tls)
      }
    })
    // an error before the handshake completed is a handshake failure (no or a bad client
    // certificate, plain TCP on the TLS port, a scanner): counted; the connection closes
    tls.once("error", (e: NodeJS.ErrnoException) => {
      if (!secure) Metrics.record(Metrics.tlsHandshakeFailures(reasonOf(e)), 1)
    })
    return tls
  }

  /** Reads the files again when they changed (`force`: regardless); keeps the old ones on error. */
  reload(force: boolean): Effect.Effect<void> {
    return Effect.suspend(() => {
      const stamp = stampOf(this.files)
      if (!force && stamp === this.stamp) return Effect.void
      this.stamp = stamp
      return Effect.try({
        try: () => (this.context = makeContext(this.files)),
        catch: (e) => new TlsFileError({ message: e instanceof Error ? e.message : String(e) })
      }).pipe(
        Effect.andThen(Effect.logInfo("TLS certificates reloaded")),
        Effect.andThen(Effect.sync(() => Metrics.record(Metrics.tlsReloads("ok"), 1))),
        Effect.catch((e) =>
          Effect.logError("TLS certificates not reloaded: keeping the previous ones").pipe(
            Effect.annotateLogs({ reason: e.message }),
            Effect.andThen(Effect.sync(() => Metrics.record(Metrics.tlsReloads("failed"), 1)))
          )
        )
      )
    })
  }

  /** Reloads on SIGHUP and when a file changes, until the scope closes. */
  watch(): Effect.Effect<void, never, Scope.Scope> {
    return Effect.gen({ self: this }, function*() {
      // a storm of SIGHUPs reloads at most once a second (the first at once)
      let scheduled = false
      let last = 0
      const hup = () => {
        if (scheduled) return
        scheduled = true
        setTimeout(() => {
          scheduled = false
          last = Date.now()
          Effect.runFork(this.reload(true))
        }, Math.max(0, last + 1_000 - Date.now()))
      }
      yield* Effect.acquireRelease(
        Effect.sync(() => process.on("SIGHUP", hup)),
        () => Effect.sync(() => process.off("SIGHUP", hup))
      )
      yield* this.reload(false).pipe(Effect.repeat(Schedule.spaced(POLL_MS)), Effect.forkScoped)
    })
  }
}

/** TLS sockets whose client certificate verified against GATEWAY_TLS_CA. */
const VERIFIED = new WeakSet<Tls.TLSSocket>()

/**
 * Why the client certificate of a server-side socket did not verify, if it did not. A
 * `TLSSocket` made with `isServer` records OpenSSL's verdict in its handle but does not act on
 * it (only `tls.Server`'s connection listener does, and that listener would take the socket
 * from the admission and hello deadline of the listener): this reads it the same way Node's
 * own server does. The test of a certificate from a foreign CA fails if Node ever changes this.
 */
const verifyErrorOf = (tls: Tls.TLSSocket): unknown => {
  const handle = (tls as unknown as { readonly _handle?: { readonly verifyError?: () => unknown } | null })._handle
  if (handle === null || handle === undefined || typeof handle.verifyError !== "function") return new Error("no TLS handle to verify")
  return handle.verifyError() ?? undefined
}

/**
 * Checks that `device` is named by the client certificate of `socket`; a message for the
 * device when it is not. Only for mutual TLS (the handshake already verified the chain).
 */
export const certificateRefusal = (socket: Net.Socket, device: string): string | undefined => {
  if (!(socket instanceof Tls.TLSSocket) || !VERIFIED.has(socket)) return "a verified client certificate is required"
  const names = certificateNames(socket.getPeerCertificate())
  if (names.includes(device)) return undefined
  return `the client certificate does not name device ${JSON.stringify(device)}`
}

/** The names a certificate gives its subject: the CN, and DNS, URI and email alternative names. */
export const certificateNames = (cert: Tls.PeerCertificate | Record<string, never>): ReadonlyArray<string> => {
  const names: Array<string> = []
  const cn = (cert as Partial<Tls.PeerCertificate>).subject?.CN
  if (typeof cn === "string") names.push(cn)
  else if (Array.isArray(cn)) names.push(...(cn as ReadonlyArray<string>))
  const alt = (cert as Partial<Tls.PeerCertificate>).subjectaltname
  if (typeof alt === "string") {
    for (const part of alt.split(", ")) {
      const m = /^(DNS|URI|email):(.*)$/.exec(part)
      if (m !== null) names.push(m[2]!)
    }
  }
  return names
}

const reasonOf = (e: NodeJS.ErrnoException): Metrics.TlsFailure => {
  const code = e.code ?? ""
  if (code === "ECONNRESET" || code === "EPIPE") return "reset"
  if (/CERT|CERTIFICATE|UNABLE_TO_GET_ISSUER|SELF_SIGNED/.test(code) || /certificate/i.test(e.message)) return "certificate"
  if (/WRONG_VERSION|HTTP_REQUEST|UNKNOWN_PROTOCOL|PACKET_LENGTH|RECORD/.test(code) || /wrong version|http request/i.test(e.message)) return "not_tls"
  return "other"
}

const readPem = (path: string, what: string): Buffer => {
  let stat: Fs.Stats
  try {
    stat = Fs.statSync(path)
  } catch (e) {
    throw new Error(`${what}: cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`)
  }
  if (!stat.isFile()) throw new Error(`${what}: ${path} is not a regular file`)
  if (stat.size > MAX_PEM_BYTES) throw new Error(`${what}: ${path} is larger than ${MAX_PEM_BYTES} bytes: not a PEM file`)
  const pem = Fs.readFileSync(path)
  if (!pem.includes("-----BEGIN ")) throw new Error(`${what}: ${path} is not a PEM file`)
  return pem
}

const makeContext = (files: TlsFiles): Tls.SecureContext => {
  const cert = readPem(files.cert, "GATEWAY_TLS_CERT")
  const key = readPem(files.key, "GATEWAY_TLS_KEY")
  const ca = Option.isSome(files.ca) ? readPem(files.ca.value, "GATEWAY_TLS_CA") : undefined
  try {
    return Tls.createSecureContext({ cert, key, ...(ca === undefined ? {} : { ca }), minVersion: "TLSv1.2" })
  } catch (e) {
    // OpenSSL's message names the problem (key values mismatch, bad decrypt, no start line), never the key
    throw new Error(`GATEWAY_TLS_CERT/GATEWAY_TLS_KEY: ${e instanceof Error ? e.message : String(e)}`)
  }
}

/** What identifies the files' current versions (a change of any reloads them). */
const stampOf = (files: TlsFiles): string => {
  const paths = [files.cert, files.key, ...(Option.isSome(files.ca) ? [files.ca.value] : [])]
  return paths.map((p) => {
    try {
      const s = Fs.statSync(p)
      return `${s.ino}:${s.size}:${s.mtimeMs}`
    } catch {
      return "missing"
    }
  }).join("|")
}
