/**
 * The live session of each device: one connection per device. A newer connection of the same
 * device takes over; the older one is closed with `error replaced`. Bounded by the listener's
 * connection limit (an entry exists only while its connection is open).
 */
import { Context, Layer } from "effect"

/** What the registry needs of a connection. */
export interface Replaceable {
  /** Closes the connection with `error replaced`. */
  readonly replace: () => void
}

/** The device → live connection map. */
export class Sessions {
  private readonly live = new Map<string, Replaceable>()

  /** Registers `conn` as the device's session, replacing (and closing) an older one. */
  claim(device: string, conn: Replaceable): void {
    const old = this.live.get(device)
    this.live.set(device, conn)
    if (old !== undefined && old !== conn) old.replace()
  }

  /** Removes the device's entry if it still belongs to `conn`. */
  release(device: string, conn: Replaceable): void {
    if (this.live.get(device) === conn) this.live.delete(device)
  }
}

/** The sessions registry as a service. */
export class SessionRegistry extends Context.Service<SessionRegistry, Sessions>()("gateway/SessionRegistry") {
  /** An empty registry. */
  static readonly layer = Layer.sync(SessionRegistry, () => new Sessions())
}
