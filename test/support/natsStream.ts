/**
 * Test support: reading a JetStream stream back (every stored message with its subject, the
 * headers the sink sets and its JSON payload) on a connection of its own, managing test
 * streams, and NATS credentials files for a server in nkey mode.
 */
import { jetstream, type JetStreamManager, jetstreamManager, type StreamConfig } from "@nats-io/jetstream"
import { connect, type NatsConnection, type NodeConnectionOptions, nkeys } from "@nats-io/transport-node"
import * as Fs from "node:fs"
import * as Path from "node:path"

/** One message as the stream stores it. */
export interface StoredMessage {
  readonly seq: number
  readonly subject: string
  readonly msgId: string | undefined
  readonly traceparent: string | undefined
  readonly payload: unknown
}

/** Runs `f` with a fresh connection to `urls` (comma-separated) and a manager; closes it after. */
export const withManager = async <A>(
  urls: string,
  f: (jsm: JetStreamManager, nc: NatsConnection) => Promise<A>,
  options: NodeConnectionOptions = {}
): Promise<A> => {
  const nc = await connect({ servers: urls.split(","), timeout: 5_000, ...options })
  try {
    return await f(await jetstreamManager(nc, { timeout: 10_000, checkAPI: false }), nc)
  } finally {
    await nc.close()
  }
}

/** Every message of `stream`, in stream order (an ordered consumer on a connection of its own). */
export const readStream = (urls: string, stream: string, options: NodeConnectionOptions = {}): Promise<Array<StoredMessage>> =>
  withManager(urls, async (jsm, nc) => {
    const info = await jsm.streams.info(stream)
    const out: Array<StoredMessage> = []
    if (info.state.messages === 0) return out
    // a cluster that just lost a member may take a while to place a consumer: retry for 30 s
    const js = jetstream(nc, { timeout: 5_000 })
    const until = Date.now() + 30_000
    let consumer: Awaited<ReturnType<typeof js.consumers.get>> | undefined
    while (consumer === undefined) {
      try {
        consumer = await js.consumers.get(stream)
      } catch (e) {
        if (Date.now() > until) throw e
        await new Promise((r) => setTimeout(r, 250))
      }
    }
    const messages = await consumer.consume({ max_messages: 2_000 })
    const deadline = setTimeout(() => messages.stop(), 60_000)
    try {
      for await (const m of messages) {
        out.push({
          seq: m.seq,
          subject: m.subject,
          msgId: m.headers?.get("Nats-Msg-Id") || undefined,
          traceparent: m.headers?.get("traceparent") || undefined,
          payload: m.json<unknown>()
        })
        if (m.info.pending === 0 && m.seq >= info.state.last_seq) break
      }
    } finally {
      clearTimeout(deadline)
      messages.stop()
    }
    if (out.length !== info.state.messages) throw new Error(`read ${out.length} of ${info.state.messages} messages of ${stream}`)
    return out
  }, options)

/** Creates a stream (test setup: "a stream that already exists"). */
export const addStream = (urls: string, config: Partial<StreamConfig> & { readonly name: string }): Promise<void> =>
  withManager(urls, async (jsm) => {
    await jsm.streams.add(config)
  })

/** Deletes every stream of the server (between tests). */
export const deleteAllStreams = (urls: string): Promise<void> =>
  withManager(urls, async (jsm) => {
    for await (const name of jsm.streams.names()) await jsm.streams.delete(name)
  })

/** A user nkey: its public key (for the server's `authorization { users = [{ nkey }] }`) and a creds file. */
export interface TestUser {
  readonly publicKey: string
  readonly credsFile: string
}

/**
 * Writes a `.creds` file for a new user nkey in `dir`. The JWT part is a placeholder: a server in
 * nkey mode checks the nkey and its signature of the nonce (the credentials authenticator sends
 * both), an operator-mode server would also check the JWT.
 */
export const makeTestUser = (dir: string, name: string): TestUser => {
  const kp = nkeys.createUser()
  const seed = new TextDecoder().decode(kp.getSeed())
  const credsFile = Path.join(dir, `${name}.creds`)
  Fs.writeFileSync(
    credsFile,
    `-----BEGIN NATS USER JWT-----\neyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.e30.placeholder\n------END NATS USER JWT------\n\n` +
      `-----BEGIN USER NKEY SEED-----\n${seed}\n------END USER NKEY SEED------\n`
  )
  return { publicKey: kp.getPublicKey(), credsFile }
}
