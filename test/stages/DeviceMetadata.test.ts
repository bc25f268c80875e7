import { afterAll, describe, expect, it } from "@effect/vitest"
import { Effect, type Scope } from "effect"
import { TestClock } from "effect/testing"
import * as Fs from "node:fs/promises"
import * as Http from "node:http"
import type { AddressInfo } from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import type { Envelope } from "../../src/domain/Envelope.ts"
import * as Stage from "../../src/pipeline/Stage.ts"
import {
  DeviceDirectory,
  type DeviceInfo,
  deviceMetadata,
  InfoCache,
  type Options,
  type WithMetadata
} from "../../src/stages/DeviceMetadata.ts"
import { eventEnvelope, telemetryEnvelope } from "../support/envelopes.ts"

const telemetry = (device: string, seq: number, metrics: Record<string, number> = { temp: 20 }) =>
  telemetryEnvelope(device, seq, metrics)

const event = (device: string, seq: number, name = "boot") => eventEnvelope(device, seq, name)

const KNOWN: Readonly<Record<string, DeviceInfo>> = {
  "dev-a": { site: "north", model: "TH-100" },
  "dev-b": { site: "south", model: "TH-200", floor: "3" },
  "dev-c": { site: "east", model: "PX-1" }
}

/** How the test inventory answers. */
type Mode = "ok" | "error" | "garbage"

/** A real HTTP inventory on 127.0.0.1: `GET /?ids=a,b` answers the known devices among them. */
interface Inventory {
  readonly url: string
  /** The ids asked for, one entry per request. */
  readonly requests: Array<ReadonlyArray<string>>
  mode: Mode
  readonly close: () => Promise<void>
}

const servers = new Set<Http.Server>()

const closeServer = (server: Http.Server) =>
  new Promise<void>((resolve) => {
    servers.delete(server)
    if (!server.listening) return resolve()
    server.close(() => resolve())
    server.closeAllConnections()
  })

// a safety net: every test closes its server itself (scope finalizer), this only catches leftovers
afterAll(async () => {
  for (const server of [...servers]) await closeServer(server)
})

const startInventory = (known: Readonly<Record<string, DeviceInfo>> = KNOWN): Promise<Inventory> =>
  new Promise((resolve, reject) => {
    const requests: Array<ReadonlyArray<string>> = []
    const state: { mode: Mode } = { mode: "ok" }
    const server = Http.createServer((req, res) => {
      const url = new URL(req.url ?? "/", "http://localhost")
      const ids = url.searchParams.get("ids")?.split(",") ?? []
      requests.push(ids)
      if (state.mode === "error") {
        // a JSON body that would read as "no device known" if the status were ignored
        res.writeHead(500, { "content-type": "application/json" })
        res.end("{}")
        return
      }
      const answer: Record<string, unknown> = {}
      for (const id of ids) {
        if (Object.hasOwn(known, id)) answer[id] = state.mode === "garbage" ? { site: 42 } : known[id]
      }
      res.writeHead(200, { "content-type": "application/json" })
      res.end(JSON.stringify(answer))
    })
    servers.add(server)
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as AddressInfo
      resolve({
        url: `http://127.0.0.1:${port}/`,
        requests,
        get mode() {
          return state.mode
        },
        set mode(mode: Mode) {
          state.mode = mode
        },
        close: () => closeServer(server)
      })
    })
  })

/** A test inventory, closed when the test's scope closes. */
const inventory = (known?: Readonly<Record<string, DeviceInfo>>): Effect.Effect<Inventory, never, Scope.Scope> =>
  Effect.acquireRelease(Effect.promise(() => startInventory(known)), (inv) => Effect.promise(() => inv.close()))

/** The stage built against the HTTP inventory at `url`. */
const runnerFor = (url: string, options: Options = {}) =>
  Stage.build(deviceMetadata(options)).pipe(Effect.provide(DeviceDirectory.http({ url, timeoutMs: 5_000 })))

/** The ids of every request, each sorted, in request order. */
const askedFor = (inv: Inventory) => inv.requests.map((ids) => [...ids].sort())

const metadataOf = (passed: ReadonlyArray<WithMetadata>) => passed.map((e) => [e.device, e.metadata] as const)

describe("deviceMetadata over an HTTP inventory", () => {
  it.effect("adds the inventory record as `metadata`, or null for a device the inventory does not know", () =>
    Effect.gen(function*() {
      const inv = yield* inventory()
      const runner = yield* runnerFor(inv.url)
      const inputs: ReadonlyArray<Envelope> = [
        telemetry("dev-a", 1, { temp: 21.5 }),
        event("dev-b", 2, "door_open"),
        telemetry("dev-unknown", 3)
      ]
      const outcome = yield* runner.run(inputs)
      expect(outcome.stops).toEqual([])
      expect(outcome.passed).toHaveLength(3)
      expect(metadataOf(outcome.passed)).toEqual([
        ["dev-a", { site: "north", model: "TH-100" }],
        ["dev-b", { site: "south", model: "TH-200", floor: "3" }],
        ["dev-unknown", null]
      ])
      // the envelope is otherwise unchanged, and the input is not mutated
      for (let i = 0; i < inputs.length; i++) {
        const { metadata: _metadata, ...rest } = outcome.passed[i]!
        expect(rest).toEqual(inputs[i])
        expect("metadata" in inputs[i]!).toBe(false)
      }
    }))

  it.effect("makes one lookup per chunk, for the distinct devices it misses", () =>
    Effect.gen(function*() {
      const inv = yield* inventory()
      const runner = yield* runnerFor(inv.url)
      const devices = ["dev-a", "dev-b", "dev-nobody"]
      const inputs = Array.from({ length: 50 }, (_, i) => telemetry(devices[i % 3]!, i + 1, { temp: i }))
      const outcome = yield* runner.run(inputs)
      expect(askedFor(inv)).toEqual([["dev-a", "dev-b", "dev-nobody"]])
      expect(outcome.stops).toEqual([])
      expect(outcome.passed).toHaveLength(50)
      outcome.passed.forEach((e, i) => {
        expect(e.seq).toBe(i + 1)
        expect(e.metadata).toEqual(KNOWN[devices[i % 3]!] ?? null)
      })
    }))

  it.effect("splits a lookup of many devices into requests of at most 100 ids", () =>
    Effect.gen(function*() {
      const inv = yield* inventory()
      const runner = yield* runnerFor(inv.url)
      const inputs = Array.from({ length: 250 }, (_, i) => telemetry(i === 0 ? "dev-a" : `dev-${1000 + i}`, i + 1))
      const outcome = yield* runner.run(inputs)
      expect(inv.requests).toHaveLength(3)
      for (const ids of inv.requests) expect(ids.length).toBeLessThanOrEqual(100)
      expect(inv.requests.flat().sort()).toEqual(inputs.map((e) => e.device).sort())
      expect(outcome.passed[0]!.metadata).toEqual(KNOWN["dev-a"])
      expect(outcome.passed.slice(1).every((e) => e.metadata === null)).toBe(true)
    }))

  it.effect("caches answers, unknown devices included: a second chunk of the same devices makes no request", () =>
    Effect.gen(function*() {
      const inv = yield* inventory()
      const runner = yield* runnerFor(inv.url)
      const first = yield* runner.run([telemetry("dev-a", 1), telemetry("dev-ghost", 2)])
      expect(inv.requests).toHaveLength(1)
      expect(metadataOf(first.passed)).toEqual([["dev-a", KNOWN["dev-a"]], ["dev-ghost", null]])

      const second = yield* runner.run([telemetry("dev-ghost", 3), event("dev-a", 4), telemetry("dev-a", 5)])
      expect(inv.requests).toHaveLength(1) // all cached, the unknown device too
      expect(metadataOf(second.passed)).toEqual([
        ["dev-ghost", null],
        ["dev-a", KNOWN["dev-a"]],
        ["dev-a", KNOWN["dev-a"]]
      ])

      // a chunk mixing cached and new devices asks only for the new ones
      const third = yield* runner.run([telemetry("dev-a", 6), telemetry("dev-c", 7), telemetry("dev-ghost", 8), telemetry("dev-ghost-2", 9)])
      expect(askedFor(inv)).toEqual([["dev-a", "dev-ghost"], ["dev-c", "dev-ghost-2"]])
      expect(metadataOf(third.passed)).toEqual([
        ["dev-a", KNOWN["dev-a"]],
        ["dev-c", KNOWN["dev-c"]],
        ["dev-ghost", null],
        ["dev-ghost-2", null]
      ])
    }))

  it.effect("asks again once an answer is older than ttlMs (Clock time)", () =>
    Effect.gen(function*() {
      const inv = yield* inventory()
      const runner = yield* runnerFor(inv.url, { ttlMs: 10_000 })
      yield* runner.run([telemetry("dev-a", 1), telemetry("dev-ghost", 2)])
      expect(inv.requests).toHaveLength(1)

      yield* TestClock.adjust(9_999)
      yield* runner.run([telemetry("dev-a", 3), telemetry("dev-ghost", 4)])
      expect(inv.requests).toHaveLength(1) // still fresh

      yield* TestClock.adjust(2)
      const outcome = yield* runner.run([telemetry("dev-a", 5), telemetry("dev-ghost", 6)])
      expect(askedFor(inv)).toEqual([["dev-a", "dev-ghost"], ["dev-a", "dev-ghost"]])
      expect(metadataOf(outcome.passed)).toEqual([["dev-a", KNOWN["dev-a"]], ["dev-ghost", null]])

      // the new answer is cached for another ttlMs
      yield* TestClock.adjust(5_000)
      yield* runner.run([telemetry("dev-a", 7)])
      expect(inv.requests).toHaveLength(2)
    }))

  it.effect("ttlMs 0 caches nothing", () =>
    Effect.gen(function*() {
      const inv = yield* inventory()
      const runner = yield* runnerFor(inv.url, { ttlMs: 0 })
      yield* runner.run([telemetry("dev-a", 1)])
      yield* runner.run([telemetry("dev-a", 2)])
      expect(askedFor(inv)).toEqual([["dev-a"], ["dev-a"]])
    }))

  it.effect("evicts the least recently used device when the cache is full", () =>
    Effect.gen(function*() {
      const inv = yield* inventory()
      const runner = yield* runnerFor(inv.url, { capacity: 2 })
      yield* runner.run([telemetry("dev-a", 1), telemetry("dev-b", 2)]) // cache: a, b
      yield* runner.run([telemetry("dev-c", 3)]) // a evicted: b, c
      yield* runner.run([telemetry("dev-b", 4)]) // hit: c, b
      expect(inv.requests).toHaveLength(2)
      const outcome = yield* runner.run([telemetry("dev-a", 5)]) // miss: a asked again, c evicted
      expect(askedFor(inv)).toEqual([["dev-a", "dev-b"], ["dev-c"], ["dev-a"]])
      expect(outcome.passed[0]!.metadata).toEqual(KNOWN["dev-a"])
      yield* runner.run([telemetry("dev-b", 6)]) // b still cached
      expect(inv.requests).toHaveLength(3)
    }))

  describe("when the inventory is down", () => {
    it.effect("passes messages on with metadata null by default (HTTP 500), and asks again when it is back", () =>
      Effect.gen(function*() {
        const inv = yield* inventory()
        const runner = yield* runnerFor(inv.url)
        inv.mode = "error"
        const down = yield* runner.run([telemetry("dev-a", 1), event("dev-b", 2)])
        expect(inv.requests).toHaveLength(1)
        expect(down.stops).toEqual([])
        expect(metadataOf(down.passed)).toEqual([["dev-a", null], ["dev-b", null]])

        // for retryAfterMs (default 5 s) misses are not looked up: the inventory gets time to recover
        inv.mode = "ok"
        const paused = yield* runner.run([telemetry("dev-a", 3)])
        expect(inv.requests).toHaveLength(1)
        expect(metadataOf(paused.passed)).toEqual([["dev-a", null]])
        // then a failure is not cached as "unknown": it is asked again
        yield* TestClock.adjust(5_000)
        const back = yield* runner.run([telemetry("dev-a", 3), event("dev-b", 4)])
        expect(askedFor(inv)).toEqual([["dev-a", "dev-b"], ["dev-a", "dev-b"]])
        expect(metadataOf(back.passed)).toEqual([["dev-a", KNOWN["dev-a"]], ["dev-b", KNOWN["dev-b"]]])
      }))

    it.effect("passes messages on with metadata null by default (server closed), cached devices keep theirs", () =>
      Effect.gen(function*() {
        const inv = yield* inventory()
        const runner = yield* runnerFor(inv.url)
        yield* runner.run([telemetry("dev-a", 1)])
        yield* Effect.promise(() => inv.close())
        const outcome = yield* runner.run([telemetry("dev-a", 2), telemetry("dev-b", 3), telemetry("dev-ghost", 4)])
        expect(outcome.stops).toEqual([])
        expect(metadataOf(outcome.passed)).toEqual([["dev-a", KNOWN["dev-a"]], ["dev-b", null], ["dev-ghost", null]])
      }))

    it.effect("passes messages on with metadata null when the answer is not an inventory", () =>
      Effect.gen(function*() {
        const inv = yield* inventory()
        const runner = yield* runnerFor(inv.url)
        inv.mode = "garbage"
        const outcome = yield* runner.run([telemetry("dev-a", 1)])
        expect(inv.requests).toHaveLength(1)
        expect(metadataOf(outcome.passed)).toEqual([["dev-a", null]])
      }))

    it.effect("with onLookupFailure reject: uncached devices are rejected, a cached device passes (HTTP 500)", () =>
      Effect.gen(function*() {
        const inv = yield* inventory()
        const runner = yield* runnerFor(inv.url, { onLookupFailure: "reject" })
        yield* runner.run([telemetry("dev-a", 1), telemetry("dev-ghost", 2)])
        inv.mode = "error"
        const outcome = yield* runner.run([
          telemetry("dev-a", 3),
          telemetry("dev-b", 4),
          event("dev-ghost", 5),
          telemetry("dev-c", 6),
          telemetry("dev-a", 7)
        ])
        expect(askedFor(inv)).toEqual([["dev-a", "dev-ghost"], ["dev-b", "dev-c"]])
        expect(outcome.passedAt).toEqual([0, 2, 4])
        expect(metadataOf(outcome.passed)).toEqual([["dev-a", KNOWN["dev-a"]], ["dev-ghost", null], ["dev-a", KNOWN["dev-a"]]])
        expect(outcome.stoppedAt).toEqual([1, 3])
        expect(outcome.stoppedBy).toEqual(["device-metadata", "device-metadata"])
        for (const stop of outcome.stops) {
          if (!(stop instanceof Stage.Rejected)) return expect.unreachable("expected a rejection")
          expect(stop.error._tag).toBe("TransientUpstreamError")
        }
      }))

    it.effect("with onLookupFailure reject: server closed", () =>
      Effect.gen(function*() {
        const inv = yield* inventory()
        const runner = yield* runnerFor(inv.url, { onLookupFailure: "reject" })
        yield* runner.run([telemetry("dev-b", 1)])
        yield* Effect.promise(() => inv.close())
        const outcome = yield* runner.run([telemetry("dev-a", 2), telemetry("dev-b", 3)])
        expect(outcome.passedAt).toEqual([1])
        expect(metadataOf(outcome.passed)).toEqual([["dev-b", KNOWN["dev-b"]]])
        expect(outcome.stoppedAt).toEqual([0])
        const stop = outcome.stops[0]
        if (!(stop instanceof Stage.Rejected)) return expect.unreachable("expected a rejection")
        expect(stop.error._tag).toBe("TransientUpstreamError")
      }))
  })
})

describe("InfoCache", () => {
  it("evicts the least recently used entry", () => {
    const cache = new InfoCache(2, 1_000)
    cache.set("a", { site: "north" }, 0)
    cache.set("b", null, 0)
    expect(cache.get("a", 1)?.info).toEqual({ site: "north" }) // a is now the most recent
    cache.set("c", { site: "east" }, 2)
    expect(cache.size).toBe(2)
    expect(cache.get("b", 3)).toBeUndefined()
    expect(cache.get("a", 3)?.info).toEqual({ site: "north" })
    expect(cache.get("c", 3)?.info).toEqual({ site: "east" })
  })

  it("without reads, evicts the oldest entry; setting an entry again refreshes it without evicting", () => {
    const cache = new InfoCache(2, 1_000)
    cache.set("a", null, 0)
    cache.set("b", null, 0)
    cache.set("a", { site: "x" }, 0) // update in place: nothing evicted, a becomes the most recent
    expect(cache.size).toBe(2)
    cache.set("c", null, 0)
    expect(cache.get("b", 0)).toBeUndefined()
    expect(cache.get("a", 0)?.info).toEqual({ site: "x" })
    expect(cache.get("c", 0)).toEqual({ info: null, until: 1_000 })
    expect(cache.size).toBe(2)
  })

  it("setting a cached entry again, when full, evicts nothing", () => {
    const cache = new InfoCache(2, 1_000)
    cache.set("a", null, 0)
    cache.set("b", null, 0)
    cache.set("b", { site: "y" }, 0)
    expect(cache.size).toBe(2)
    expect(cache.get("a", 0)).toBeDefined()
    expect(cache.get("b", 0)?.info).toEqual({ site: "y" })
  })

  it("setting an entry again makes it the most recently used", () => {
    const cache = new InfoCache(3, 1_000)
    cache.set("a", null, 0)
    cache.set("b", null, 0)
    cache.set("a", null, 0) // order now: b, a
    cache.set("c", null, 0)
    cache.set("d", null, 0) // evicts b
    expect(cache.get("b", 0)).toBeUndefined()
    expect(cache.get("a", 0)).toBeDefined()
    expect(cache.get("c", 0)).toBeDefined()
    expect(cache.get("d", 0)).toBeDefined()
  })

  it("keeps an unknown device (null) apart from a miss", () => {
    const cache = new InfoCache(10, 1_000)
    cache.set("ghost", null, 0)
    const hit = cache.get("ghost", 10)
    expect(hit).toBeDefined()
    expect(hit?.info).toBeNull()
    expect(cache.get("never-seen", 10)).toBeUndefined()
  })

  it("expires an entry ttlMs after it was set", () => {
    const cache = new InfoCache(10, 1_000)
    cache.set("a", { site: "north" }, 5_000)
    expect(cache.get("a", 5_000)?.info).toEqual({ site: "north" })
    expect(cache.get("a", 5_999)?.info).toEqual({ site: "north" })
    expect(cache.get("a", 6_001)).toBeUndefined()
    // an expired entry stays, as the fallback while the inventory is down, until evicted
    expect(cache.size).toBe(1)
    expect(cache.stale("a")?.info).toEqual({ site: "north" })
  })

  it("a re-set after expiry is fresh again", () => {
    const cache = new InfoCache(10, 100)
    cache.set("a", null, 0)
    expect(cache.get("a", 200)).toBeUndefined()
    cache.set("a", { site: "south" }, 200)
    expect(cache.get("a", 250)?.info).toEqual({ site: "south" })
  })
})

describe("DeviceDirectory.file", () => {
  const tempDir = Effect.acquireRelease(
    Effect.promise(() => Fs.mkdtemp(Path.join(Os.tmpdir(), "device-metadata-"))),
    (dir) => Effect.promise(() => Fs.rm(dir, { recursive: true, force: true }))
  )

  it.effect("serves the devices of a JSON file", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const file = Path.join(dir, "devices.json")
      yield* Effect.promise(() => Fs.writeFile(file, JSON.stringify(KNOWN)))
      const runner = yield* Stage.build(deviceMetadata()).pipe(Effect.provide(DeviceDirectory.file(file)))
      const outcome = yield* runner.run([telemetry("dev-c", 1), telemetry("dev-ghost", 2), event("dev-a", 3)])
      expect(outcome.stops).toEqual([])
      expect(metadataOf(outcome.passed)).toEqual([["dev-c", KNOWN["dev-c"]], ["dev-ghost", null], ["dev-a", KNOWN["dev-a"]]])

      const found = yield* Effect.gen(function*() {
        const directory = yield* DeviceDirectory
        return yield* directory.lookup(["dev-a", "dev-ghost", "dev-b"])
      }).pipe(Effect.provide(DeviceDirectory.file(file)))
      expect([...found.keys()].sort()).toEqual(["dev-a", "dev-b"])
      expect(found.get("dev-b")).toEqual(KNOWN["dev-b"])
    }))

  it.effect("fails building the layer with TransientUpstreamError when the file is missing", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const missing = Path.join(dir, "nope.json")
      const error = yield* Stage.build(deviceMetadata()).pipe(Effect.provide(DeviceDirectory.file(missing)), Effect.flip)
      expect(error._tag).toBe("TransientUpstreamError")
      expect(error.message).toContain(missing)
    }))

  it.effect("fails building the layer with TransientUpstreamError when the file is not an inventory", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const notJson = Path.join(dir, "bad.json")
      const notInventory = Path.join(dir, "wrong.json")
      yield* Effect.promise(() => Fs.writeFile(notJson, "{ not json"))
      yield* Effect.promise(() => Fs.writeFile(notInventory, JSON.stringify([{ "dev-a": { site: "x" } }])))
      for (const file of [notJson, notInventory]) {
        const error = yield* Stage.build(deviceMetadata()).pipe(Effect.provide(DeviceDirectory.file(file)), Effect.flip)
        expect(error._tag).toBe("TransientUpstreamError")
      }
    }))

  it.effect("skips a record of the wrong shape (that device is unknown), keeps the others", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const file = Path.join(dir, "mixed.json")
      yield* Effect.promise(() => Fs.writeFile(file, JSON.stringify({ "dev-a": { site: 1 }, "dev-b": { site: "b" } })))
      const runner = yield* Stage.build(deviceMetadata()).pipe(Effect.provide(DeviceDirectory.file(file)))
      const outcome = yield* runner.run([telemetry("dev-a", 1), telemetry("dev-b", 2)])
      expect(metadataOf(outcome.passed)).toEqual([["dev-a", null], ["dev-b", { site: "b" }]])
    }))
})

describe("deviceMetadata under a slow or strict inventory (real HTTP)", () => {
  /** An inventory that knows every device, delays requests naming a `slow-` device, and records URL lengths. */
  const startSlow = async (delayMs: number) => {
    const urlLengths: Array<number> = []
    const server = Http.createServer((req, res) => {
      urlLengths.push((req.url ?? "").length)
      const ids = new URL(req.url ?? "/", "http://x").searchParams.get("ids")?.split(",") ?? []
      const answer = () => {
        res.setHeader("content-type", "application/json")
        res.end(JSON.stringify(Object.fromEntries(ids.map((id) => [id, { site: id.slice(0, 4) }]))))
      }
      if (ids.some((id) => id.startsWith("slow-"))) setTimeout(answer, delayMs)
      else answer()
    })
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
    return {
      url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/devices`,
      urlLengths,
      close: () => new Promise<void>((resolve) => {
        server.closeAllConnections()
        server.close(() => resolve())
      })
    }
  }

  it.live("keeps the groups that answered within lookupTimeoutMs; only the slow group's devices miss out", () =>
    Effect.gen(function*() {
      const inv = yield* Effect.acquireRelease(Effect.promise(() => startSlow(1_500)), (i) => Effect.promise(() => i.close()))
      const runner = yield* Stage.build(deviceMetadata({ lookupTimeoutMs: 300, retryAfterMs: 0 })).pipe(
        Effect.provide(DeviceDirectory.http({ url: inv.url, timeoutMs: 5_000 }))
      )
      const devices = [...Array.from({ length: 100 }, (_, i) => `fast-${i}`), ...Array.from({ length: 20 }, (_, i) => `slow-${i}`)]
      const started = Date.now()
      const first = yield* runner.run(devices.map((d, i) => telemetry(d, i)))
      expect(Date.now() - started).toBeLessThan(1_400) // did not wait for the slow group
      const meta = new Map(metadataOf(first.passed))
      expect(meta.get("fast-7")).toEqual({ site: "fast" })
      expect(meta.get("slow-3")).toBeNull()
      // the fast group was cached as it answered: a second chunk asks only for the slow devices
      const before = inv.urlLengths.length
      yield* runner.run([telemetry("fast-7", 1000)])
      expect(inv.urlLengths.length).toBe(before)
    }))

  it.live("a hung inventory: stale records and nulls within lookupTimeoutMs, then a pause counted from the failure", () =>
    Effect.gen(function*() {
      const inv = yield* Effect.acquireRelease(Effect.promise(() => startSlow(5_000)), (i) => Effect.promise(() => i.close()))
      // a pause shorter than the lookup timeout would be over before the failure, if counted from the start
      const runner = yield* Stage.build(deviceMetadata({ lookupTimeoutMs: 300, retryAfterMs: 200, ttlMs: 1 })).pipe(
        Effect.provide(DeviceDirectory.http({ url: inv.url, timeoutMs: 10_000 }))
      )
      yield* runner.run([telemetry("fast-1", 1)]) // cached, and soon expired (ttl 1 ms)
      yield* Effect.sleep("5 millis")
      const started = Date.now()
      const hung = yield* runner.run([telemetry("fast-1", 2), telemetry("slow-1", 3)])
      expect(Date.now() - started).toBeLessThan(1_000)
      expect(hung.stops).toEqual([])
      expect(metadataOf(hung.passed)).toEqual([["fast-1", { site: "fast" }], ["slow-1", null]]) // the expired record beats none
      const asked = inv.urlLengths.length
      yield* runner.run([telemetry("slow-2", 4)]) // right after the failure: paused, no request
      expect(inv.urlLengths.length).toBe(asked)
    }))

  it.live("splits long ids into requests whose query stays under 4,000 characters", () =>
    Effect.gen(function*() {
      const inv = yield* Effect.acquireRelease(Effect.promise(() => startSlow(0)), (i) => Effect.promise(() => i.close()))
      const runner = yield* Stage.build(deviceMetadata()).pipe(
        Effect.provide(DeviceDirectory.http({ url: inv.url, timeoutMs: 5_000 }))
      )
      const devices = Array.from({ length: 100 }, (_, i) => `dev:${String(i).padStart(3, "0")}:${"x".repeat(120)}`)
      const outcome = yield* runner.run(devices.map((d, i) => telemetry(d, i)))
      expect(outcome.passed.every((e) => e.metadata !== null)).toBe(true)
      expect(inv.urlLengths.length).toBeGreaterThan(1)
      for (const length of inv.urlLengths) expect(length).toBeLessThan(4_100)
    }))

  it.effect("while the inventory is down, an expired record is used rather than none", () =>
    Effect.gen(function*() {
      const inv = yield* inventory()
      const runner = yield* runnerFor(inv.url, { ttlMs: 1_000 })
      yield* runner.run([telemetry("dev-a", 1)])
      yield* TestClock.adjust(2_000) // expired
      inv.mode = "error"
      const outcome = yield* runner.run([telemetry("dev-a", 2)])
      expect(inv.requests).toHaveLength(2) // it did ask
      expect(metadataOf(outcome.passed)).toEqual([["dev-a", KNOWN["dev-a"]]])
    }))
})
