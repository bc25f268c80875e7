/**
 * Closing a device socket without losing the last frame. Destroying a socket that still has
 * unread input makes the kernel answer with a reset, and the device's stack then drops the
 * `error` frame it had not read yet. So the gateway half-closes after its last frame and keeps
 * reading and discarding, until the device closes too, or a bounded time or byte count passes.
 */
import type * as Net from "node:net"
import { errorFrame } from "../domain/Frames.ts"
import * as Metrics from "../observability/Metrics.ts"

let lingering = 0

/** Sockets closing gracefully now (each still holds a descriptor): admission counts them. */
export const lingeringSockets = (): number => lingering

/** How long a closing socket is read and discarded at most. */
const LINGER_MS = 5_000
/** How many bytes a closing socket may still send before it is reset. */
const LINGER_MAX_BYTES = 8 * 1024 * 1024

/**
 * Writes `last` (if any), half-closes, and discards input until the peer closes (then the
 * socket is destroyed), `lingerMs` pass, or more than LINGER_MAX_BYTES arrive. `onClosed`
 * runs once when the socket is gone.
 */
export const closeGracefully = (socket: Net.Socket, last: string, lingerMs = LINGER_MS, onClosed?: () => void): void => {
  lingering++
  let discarded = 0
  socket.removeAllListeners("data")
  socket.removeAllListeners("timeout")
  socket.setTimeout(0)
  socket.on("data", (chunk: Buffer) => {
    discarded += chunk.length
    if (discarded > LINGER_MAX_BYTES) socket.destroy()
  })
  socket.on("error", () => socket.destroy())
  socket.once("end", () => socket.destroy())
  const timer = setTimeout(() => socket.destroy(), lingerMs)
  timer.unref()
  socket.once("close", () => {
    lingering--
    clearTimeout(timer)
    onClosed?.()
  })
  if (last.length > 0) socket.end(last)
  else socket.end()
  socket.resume()
}

/** Answers a refused connection with `error busy` (its retryAfterMs) and closes it gracefully. */
export const refuseBusy = (
  socket: Net.Socket,
  refusal: { readonly message: string; readonly retryAfterMs: number },
  lingerMs: number
): void => {
  closeGracefully(socket, errorFrame("busy", refusal.message, refusal.retryAfterMs), lingerMs)
  Metrics.record(Metrics.connections("busy"), 1)
  Metrics.record(Metrics.errors("OverloadError"), 1)
}
