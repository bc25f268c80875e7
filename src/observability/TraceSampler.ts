/**
 * Sampling and ids, as plain functions (no Effect, no OpenTelemetry object): the sampler of
 * `OTEL_TRACES_SAMPLER` decided once per message before any span work, and the W3C ids of the
 * spans that are sampled. The ratio is taken on the trace id exactly as OpenTelemetry JS's
 * `TraceIdRatioBasedSampler` does (the four 32-bit words of the id XORed, below
 * `floor(ratio × 0xffffffff)`), so a trace id gets the same decision here as in any OTel JS
 * service. A root's hash is drawn before its id ({@link decideRoot}), so a message that is not
 * sampled costs one random number and one comparison; a sampled one's traceparent is written
 * into one buffer and read as one string.
 */

/** The standard sampler names (`OTEL_TRACES_SAMPLER`). */
export const SAMPLER_NAMES = [
  "always_on",
  "always_off",
  "traceidratio",
  "parentbased_always_on",
  "parentbased_always_off",
  "parentbased_traceidratio"
] as const

/** One of {@link SAMPLER_NAMES}. */
export type SamplerName = (typeof SAMPLER_NAMES)[number]

/** A sampler: how a span with a remote parent (a device's traceparent) and a root span are decided. */
export interface Sampler {
  readonly name: SamplerName
  /** The ratio of roots (and, when not parent-based, of every trace id) sampled, 0..1. */
  readonly ratio: number
  /** True for the `parentbased_*` samplers: a remote parent's sampled flag decides. */
  readonly parentBased: boolean
  /** A trace id is sampled when its hash is below this (0: never; 2^32: always). */
  readonly bound: number
}

const ALWAYS = 0x100000000

/** The bound of `ratio` as OpenTelemetry JS computes it (1 → every id, 0 → none). */
export const ratioBound = (ratio: number): number =>
  ratio >= 1 ? ALWAYS : ratio <= 0 || Number.isNaN(ratio) ? 0 : Math.floor(ratio * 0xffffffff)

/** The sampler `name` with `ratio` (used by the ratio samplers; the others fix their own). */
export const makeSampler = (name: SamplerName, ratio = 1): Sampler => {
  switch (name) {
    case "always_on":
      return { name, ratio: 1, parentBased: false, bound: ALWAYS }
    case "always_off":
      return { name, ratio: 0, parentBased: false, bound: 0 }
    case "traceidratio":
      return { name, ratio, parentBased: false, bound: ratioBound(ratio) }
    case "parentbased_always_on":
      return { name, ratio: 1, parentBased: true, bound: ALWAYS }
    case "parentbased_always_off":
      return { name, ratio: 0, parentBased: true, bound: 0 }
    case "parentbased_traceidratio":
      return { name, ratio, parentBased: true, bound: ratioBound(ratio) }
  }
}

/** The value of a lowercase (or uppercase) hex digit's char code. */
const hexValue = (c: number): number => (c < 58 ? c - 48 : c < 71 ? c - 55 : c - 87)

/** The trace id's hash: its four 32-bit words XORed (OpenTelemetry JS's `_accumulate`). */
export const traceIdHash = (traceId: string): number => {
  let acc = 0
  for (let i = 0; i < 32; i += 8) {
    let word = 0
    for (let j = 0; j < 8; j++) word = (word << 4) | hexValue(traceId.charCodeAt(i + j))
    acc = (acc ^ word) >>> 0
  }
  return acc
}

/**
 * The decision for a span whose parent is remote (a device's traceparent, trace id at 3..35 and
 * flags at 53..55): parent-based samplers follow the parent's sampled flag, the others take
 * the ratio on the trace id.
 */
export const sampleTraceparent = (sampler: Sampler, traceparent: string): boolean =>
  sampler.parentBased
    ? (hexValue(traceparent.charCodeAt(54)) & 1) === 1
    : sampler.bound === ALWAYS || (sampler.bound > 0 && traceIdHash(traceparent.slice(3, 35)) < sampler.bound)

/** The decision for a root whose trace id's hash (see {@link traceIdHash}) is `hash`. */
export const sampleRoot = (sampler: Sampler, hash: number): boolean => hash < sampler.bound

// ---- ids ----

const HEX: ReadonlyArray<string> = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, "0"))
const HEX_CHAR = Uint8Array.from("0123456789abcdef", (c) => c.charCodeAt(0))

/** A 32-bit word as 8 lowercase hex digits. */
export const hexWord = (w: number): string => HEX[w >>> 24]! + HEX[(w >>> 16) & 255]! + HEX[(w >>> 8) & 255]! + HEX[w & 255]!

/**
 * The state of xorshift128 (Marsaglia; period 2^128 - 1), seeded from the system's CSPRNG: ids
 * need to be unique and spread, not secret (OpenTelemetry JS draws them from Math.random, an
 * xorshift128+), and a draw costs a few integer operations instead of a call.
 */
const XS = crypto.getRandomValues(new Uint32Array(4))
if ((XS[0]! | XS[1]! | XS[2]! | XS[3]!) === 0) XS[0] = 1

/** A uniformly random 32-bit word. */
export const randomWord = (): number => {
  let t = XS[3]!
  const s = XS[0]!
  XS[3] = XS[2]!
  XS[2] = XS[1]!
  XS[1] = s
  t ^= t << 11
  t ^= t >>> 8
  const next = (t ^ s ^ (s >>> 19)) >>> 0
  XS[0] = next
  return next
}

/**
 * A root's decision: the hash of its trace id is drawn first (one random word: the XOR of four
 * uniform words is uniform) and compared with the bound; only when it is sampled are the id's
 * words drawn ({@link rootTraceparent}), the last one chosen so that the id has that hash.
 */
let rootHash = 0

/** Draws a root's trace id hash and decides it (one random number for a message not sampled). */
export const decideRoot = (sampler: Sampler): boolean => {
  if (sampler.bound === 0) return false
  rootHash = randomWord()
  return rootHash < sampler.bound
}

/** `00-<trace id>-<span id>-01`, filled in place and read as one flat string. */
const TEMPLATE = Buffer.from(`00-${"0".repeat(32)}-${"0".repeat(16)}-01`, "latin1")

/** Node's own latin1 reader of a Buffer (what `toString("latin1")` ends in, without its argument checks). */
const latin1 = (TEMPLATE as Buffer & { readonly latin1Slice?: (start: number, end: number) => string }).latin1Slice
const readTemplate: () => string = typeof latin1 === "function"
  ? () => latin1.call(TEMPLATE, 0, 55)
  : () => TEMPLATE.toString("latin1", 0, 55)

const putWord = (w: number, at: number): void => {
  for (let k = 7; k >= 0; k--) {
    TEMPLATE[at + k] = HEX_CHAR[w & 15]!
    w >>>= 4
  }
}

/**
 * The ids of the last traceparent {@link rootTraceparent} or {@link childTraceparent} made, as
 * 32-bit words: the trace id in 0..3, the span id in 4..5 (so its exporter writes them as bytes
 * without reading the hex back).
 */
export const IDS = new Uint32Array(6)

const putSpanId = (): void => {
  const hi = randomWord()
  const lo = randomWord()
  IDS[4] = hi
  IDS[5] = (hi | lo) === 0 ? 1 : lo
  putWord(IDS[4], 36)
  putWord(IDS[5], 44)
}

/** The sampled traceparent of a new root span, whose trace id has the hash of the last {@link decideRoot}. */
export const rootTraceparent = (): string => {
  let w0 = randomWord()
  const w1 = randomWord()
  const w2 = randomWord()
  if ((w0 | w1 | w2 | rootHash) === 0) w0 = 1
  IDS[0] = w0
  IDS[1] = w1
  IDS[2] = w2
  IDS[3] = rootHash ^ w0 ^ w1 ^ w2
  putWord(w0, 3)
  putWord(w1, 11)
  putWord(w2, 19)
  putWord(IDS[3], 27)
  putSpanId()
  return readTemplate()
}

/** The word of the 8 hex digits of `s` from `at`. */
const wordAt = (s: string, at: number): number => {
  let w = 0
  for (let i = 0; i < 8; i++) {
    const c = s.charCodeAt(at + i)
    w = (w << 4) | (c < 58 ? c - 48 : c < 71 ? c - 55 : c - 87)
  }
  return w >>> 0
}

/** The sampled traceparent of a new span in the trace of `parent` (a valid traceparent). */
export const childTraceparent = (parent: string): string => {
  for (let i = 3; i < 35; i++) TEMPLATE[i] = parent.charCodeAt(i)
  for (let k = 0; k < 4; k++) IDS[k] = wordAt(parent, 3 + 8 * k)
  putSpanId()
  return readTemplate()
}

/** A trace id with the hash of the last {@link decideRoot} (for a root span of `withSpan`). */
export const rootTraceId = (): string => {
  let w0 = randomWord()
  const w1 = randomWord()
  const w2 = randomWord()
  if ((w0 | w1 | w2 | rootHash) === 0) w0 = 1
  return hexWord(w0) + hexWord(w1) + hexWord(w2) + hexWord((rootHash ^ w0 ^ w1 ^ w2) >>> 0)
}

/** A new random trace id (never all zero). */
export const newTraceId = (): string => {
  const w0 = randomWord()
  const w1 = randomWord()
  const w2 = randomWord()
  const w3 = randomWord()
  return hexWord(w0) + hexWord(w1) + hexWord(w2) + hexWord((w0 | w1 | w2 | w3) === 0 ? 1 : w3)
}

/** A new random span id (never all zero). */
export const newSpanId = (): string => {
  const hi = randomWord()
  const lo = randomWord()
  return hexWord(hi) + hexWord((hi | lo) === 0 ? 1 : lo)
}
