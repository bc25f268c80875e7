/**
 * One envelope as a JetStream message (DESIGN.md): subject `devices.<kind>.<device>`, header
 * `Nats-Msg-Id: <device>:<epoch>:<seq>` (set by the publisher from {@link messageId}), header
 * `traceparent` when the envelope has one, and the envelope as JSON.
 *
 * Subject tokens: NATS forbids `.` (the separator), whitespace, and `*` / `>` (wildcards)
 * inside a token; everything else printable is legal, `:` included. Device ids are
 * `[A-Za-z0-9_:-]{1,128}` (PROTOCOL.md), so a valid id is its own token, unchanged. Anything
 * outside that alphabet (which validation never lets through, but a sink must not publish to
 * a wildcard or a wrong subject because a stage changed an id) is written `%XX` per UTF-8 byte;
 * `%` itself is outside the alphabet, so the encoding is reversible ({@link decodeSubjectToken}),
 * and an empty token is written `%` (text that is not well-formed Unicode, a lone surrogate,
 * comes back as U+FFFD, as from any UTF-8).
 *
 * Payload: `{"device","epoch","seq","kind","deviceTs","receivedAt","gateway","traceparent",
 * "body"}` — the normalized fields, named as in the envelope (the SQLite store's columns in
 * camelCase) — plus `"annotations"`, an object of the fields stages added (see
 * {@link annotationsOf}), present only when there are some.
 */
import { annotationsOf, type Envelope } from "../../domain/Envelope.ts"

/** The subject prefix of every message. */
export const SUBJECT_PREFIX = "devices"

const PLAIN_TOKEN = /^[A-Za-z0-9_:-]+$/
const encoder = new TextEncoder()

/** `token` as a legal subject token (unchanged when it is a valid device id or kind). */
export const encodeSubjectToken = (token: string): string => {
  if (PLAIN_TOKEN.test(token)) return token
  if (token === "") return "%"
  let out = ""
  for (const ch of token) {
    if (PLAIN_TOKEN.test(ch)) out += ch
    else for (const byte of encoder.encode(ch)) out += `%${byte.toString(16).toUpperCase().padStart(2, "0")}`
  }
  return out
}

/** The token {@link encodeSubjectToken} made, back to the original text. */
export const decodeSubjectToken = (token: string): string => {
  if (token === "%") return ""
  if (!token.includes("%")) return token
  return decodeURIComponent(token)
}

/** `devices.<kind>.<device>`. */
export const subjectOf = (e: { readonly kind: string; readonly device: string }): string =>
  `${SUBJECT_PREFIX}.${encodeSubjectToken(e.kind)}.${encodeSubjectToken(e.device)}`

/** JSON text of a value (`null` for what JSON has no text for, such as `undefined`). */
const json = (v: unknown): string => typeof v === "number" && Number.isFinite(v) ? `${v}` : JSON.stringify(v) ?? "null"

/**
 * The envelope as the JSON payload. Throws when a stage added a field JSON cannot hold (a
 * BigInt, a cycle): that message alone is refused.
 */
export const payloadOf = (e: Envelope): string => {
  const annotations = annotationsOf(e)
  return `{"device":${JSON.stringify(e.device)},"epoch":${json(e.epoch)},"seq":${json(e.seq)},"kind":${JSON.stringify(e.kind)},` +
    `"deviceTs":${json(e.deviceTs)},"receivedAt":${json(e.receivedAt)},"gateway":${JSON.stringify(e.gateway)},` +
    `"traceparent":${e.traceparent === null ? "null" : JSON.stringify(e.traceparent)},"body":${json(e.body)}` +
    (annotations === null ? "}" : `,"annotations":${annotations}}`)
}
