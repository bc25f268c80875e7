/**
 * The `tls-storm` scenario: the storm of bench/storm.ts (N devices reconnect at once, hello,
 * one telemetry frame, its ack, `error busy` honoured) against three fresh gateways in one run:
 * plain TCP, TLS (server certificate only, every device a full handshake), and mutual TLS.
 *
 * Mutual TLS certificates: one per device by default (the real shape), one `openssl` process
 * each: ~30 ms of wall time per certificate on 2 cores, 2.5 min for 5,000 devices. With
 * `certs` < devices the devices share that many certificates, each naming its run of devices in
 * DNS subject alternative names (the gateway accepts the hello of any device its certificate
 * names): quicker to make, but such a certificate is bigger than a device's (50 SANs for 5,000
 * devices on 100 certificates) and costs the gateway more to verify, hold and read (measured:
 * ~0.7 ms more CPU per handshake, +80 MB peak RSS), so it overstates mutual TLS. The issuing
 * cost is measured and reported.
 *
 *   npm run bench -- --only tls-storm --devices 5000                  # one certificate per device
 *   npm run bench -- --only tls-storm --devices 5000 --storm-certs 100
 */
import { mutualTlsDial, tlsDial } from "./dial.ts"
import { issueDeviceCerts, makeBenchPki, onePerDevice, pooled } from "./pki.ts"
import { fmt, type NodeFlags, removeDir, tempDir } from "./proc.ts"
import { runStorm, type StormResult } from "./storm.ts"

/** What to run. */
export interface TlsStormOptions {
  readonly devices: number
  readonly timeoutMs: number
  readonly flags: NodeFlags
  /** Client certificates for the mutual TLS storm (≥ devices: one each; fewer: shared, see above). */
  readonly certs: number
  /** The goal: every device welcomed and acked within this many ms. */
  readonly goalMs: number
}

/** The three storms, and what issuing the client certificates cost. */
export interface TlsStormResult {
  readonly storms: ReadonlyArray<{ readonly transport: string; readonly result: StormResult }>
  readonly certificates: number
  readonly devicesPerCertificate: number
  readonly issueMs: number
}

/** Issues the certificates, then runs the plain, TLS and mutual TLS storms one after the other. */
export const runTlsStorm = async (o: TlsStormOptions): Promise<TlsStormResult> => {
  const dir = tempDir()
  const pki = makeBenchPki(dir)
  const ids = Array.from({ length: o.devices }, (_, i) => `mtls-storm-${i}`)
  const specs = o.certs >= o.devices ? onePerDevice(ids) : pooled(ids, o.certs)
  const issued = await issueDeviceCerts(pki.ca, specs)
  const tlsEnv = { GATEWAY_TLS_CERT: pki.server.cert, GATEWAY_TLS_KEY: pki.server.key }
  const base = { devices: o.devices, timeoutMs: o.timeoutMs, flags: o.flags }
  const storms = [
    { transport: "plain TCP", result: await runStorm({ ...base, idPrefix: "storm" }) },
    { transport: "TLS", result: await runStorm({ ...base, idPrefix: "tls-storm", env: tlsEnv, dial: tlsDial(pki.ca.cert) }) },
    {
      transport: "mutual TLS",
      result: await runStorm({
        ...base,
        idPrefix: "mtls-storm",
        env: { ...tlsEnv, GATEWAY_TLS_CA: pki.ca.cert },
        dial: mutualTlsDial(pki.ca.cert, issued.byDevice)
      })
    }
  ]
  removeDir(dir)
  return { storms, certificates: issued.certificates, devicesPerCertificate: Math.ceil(o.devices / specs.length), issueMs: issued.wallMs }
}

const ms = (v: number | undefined) => (v === undefined ? "not reached" : `${fmt(v)} ms`)
const counts = (c: Readonly<Record<string, number>> | undefined) =>
  c === undefined ? "not scraped" : Object.entries(c).map(([k, v]) => `${k}: ${fmt(v)}`).join(", ") || "none"

/** The three storms side by side, with the goal. */
export const tlsStormTable = (r: TlsStormResult, o: TlsStormOptions): string => {
  const col = (f: (s: StormResult) => string) => r.storms.map((s) => f(s.result)).join(" | ")
  const rows: Array<[string, (s: StormResult) => string]> = [
    ["devices welcomed / first messages acked", (s) => `${fmt(s.welcomed)} / ${fmt(s.acked)}`],
    ["time until all welcomed", (s) => ms(s.allWelcomedMs)],
    ["time until all acked", (s) => ms(s.allAnsweredMs)],
    ["welcome time per device p50 / p99", (s) => `${fmt(s.welcomeP50Ms)} / ${fmt(s.welcomeP99Ms)} ms`],
    ["connection attempts", (s) => fmt(s.attempts)],
    ["busy answers read by devices", (s) => fmt(s.busy)],
    ["busy refusals by reason (gateway)", (s) => counts(s.refusals)],
    ["handshake failures seen by devices (closed before the TLS session)", (s) => fmt(s.notReady)],
    ["failed handshakes by reason (gateway)", (s) => counts(s.tlsFailures)],
    ["resets / closed after the handshake without answer", (s) => `${fmt(s.resets)} / ${fmt(s.closedEarly)}`],
    ["other codes", (s) => counts(s.codes)],
    ["gateway CPU until all acked (per device)", (s) => `${fmt(s.gatewayCpuMs)} ms (${fmt(s.gatewayCpuMs / s.devices, 2)} ms)`],
    ["load generator CPU (the devices' side)", (s) => `${fmt(s.generatorCpuMs)} ms`],
    ["gateway peak RSS", (s) => `${fmt(s.peakRssMb)} MB`],
    ["kernel listen queue overflows", (s) => fmt(s.listenOverflows)],
    ["gateway alive at the end", (s) => (s.gatewayAlive ? "yes" : "NO")]
  ]
  const within = (s: StormResult) => s.allAnsweredMs !== undefined && s.allAnsweredMs <= o.goalMs
  const verdict = r.storms.filter((s) => s.transport !== "plain TCP")
    .map((s) => `${s.transport} ${within(s.result) ? "met" : "NOT met"}`).join(", ")
  const perCert = r.issueMs / Math.max(1, r.certificates)
  return [
    `\n### tls-storm: ${fmt(o.devices)} devices reconnect at once over plain TCP, TLS and mutual TLS (give up after ${o.timeoutMs / 1000} s)`,
    `Full TLS 1.3 handshakes (no session resumption). Mutual TLS: ${fmt(r.certificates)} client certificates, ${
      r.devicesPerCertificate === 1 ? "one per device" : `each naming ${fmt(r.devicesPerCertificate)} devices in DNS SANs`
    }, issued by \`openssl\` in ${fmt(r.issueMs)} ms (${fmt(perCert, 1)} ms each in parallel${
      r.devicesPerCertificate === 1 ? "" : `; one per device would take ~${fmt((perCert * o.devices) / 1000)} s`
    }).`,
    `| measure | ${r.storms.map((s) => s.transport).join(" | ")} |`,
    `|---|${r.storms.map(() => "---:").join("|")}|`,
    ...rows.map(([name, f]) => `| ${name} | ${col(f)} |`),
    `goal: all ${fmt(o.devices)} welcomed and acked within ${o.goalMs / 1000} s over TLS: ${verdict}`
  ].join("\n")
}
