/**
 * `NATS_URL`: one NATS server or several separated by commas (the members of a cluster), each
 * `nats://host:port`, `tls://host:port` or plain `host[:port]` (port 4222 when left out). No
 * dependencies, so the configuration can check the variable at start without loading the
 * client. Other schemes (`http://`, `ws://`, ...) and credentials in the URL are refused: the
 * Node client would silently treat `http://host` as a NATS server, and it ignores `user:pass@`
 * (credentials come from `NATS_CREDS`).
 */

/** The servers of a valid `NATS_URL`, normalized to `nats://host:port`. */
export interface NatsServers {
  readonly servers: ReadonlyArray<string>
  /** True when an entry used `tls://`: the connection then requires TLS (for every server). */
  readonly tlsRequired: boolean
}

const SCHEME = /^([A-Za-z][A-Za-z0-9+.-]*):\/\//
const HOST_PORT = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)(?::(\d{1,5}))?\/?$/

/** Parses `NATS_URL`; a string (what is wrong, in one line) when it is not valid. */
export const parseNatsUrl = (text: string): NatsServers | string => {
  const entries = text.split(",").map((s) => s.trim())
  if (entries.length === 0 || entries.every((e) => e === "")) return "expected one or more nats://host:port separated by commas"
  const servers: Array<string> = []
  let tlsRequired = false
  for (const entry of entries) {
    if (entry === "") return `empty server in the list "${text}"`
    let rest = entry
    const scheme = SCHEME.exec(entry)
    if (scheme !== null) {
      const name = (scheme[1] ?? "").toLowerCase()
      if (name !== "nats" && name !== "tls") {
        return `unsupported scheme "${name}://" in "${entry}": expected nats://host:port or tls://host:port`
      }
      if (name === "tls") tlsRequired = true
      rest = entry.slice(scheme[0].length)
    }
    if (rest.includes("@")) return `credentials in the URL "${entry}" are not supported: use NATS_CREDS (a credentials file)`
    const hp = HOST_PORT.exec(rest)
    if (hp === null) return `"${entry}" is not host:port`
    const port = hp[2] === undefined ? 4222 : Number(hp[2])
    if (port < 1 || port > 65535) return `port ${hp[2]} of "${entry}" is not from 1 to 65535`
    servers.push(`nats://${hp[1]}:${port}`)
  }
  return { servers, tlsRequired }
}
