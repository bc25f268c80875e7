/**
 * The sink's connections to PostgreSQL: at most `PG_POOL_SIZE`, opened when first needed and
 * kept, each a `@effect/sql-pg` session over a socket this module opens itself, so that it can
 * be cut at once. That is the point of the module: a statement gets `PG_STATEMENT_TIMEOUT_MS`
 * from the server (`statement_timeout`) and, one second later, the client's own deadline, when
 * the socket is destroyed ({@link StatementDeadline}): a blackholed connection is given up
 * within the deadline and never reused, instead of waiting for a cancel request that cannot
 * arrive either. A connection whose socket closed (server restart, a reset) is replaced at its
 * next use; a failure that condemns the connection (the classifier says which) drops it.
 *
 * Every session starts with `statement_timeout` and `synchronous_commit = on` (a statement's
 * answer means its transaction's WAL is flushed, whatever the server's default), and the
 * `application_name` of the settings. Closing the pool's scope waits (up to the deadline) for
 * the statements in flight, then ends every session.
 */
import * as PgConnection from "@effect/sql-pg/PgConnection"
import { Data, Duration, Effect, Exit, Fiber, Option, Queue, Scope } from "effect"
import type { SqlError } from "effect/sql/SqlError"
import * as Net from "node:net"
import type { PostgresSettings } from "./PostgresSettings.ts"
import type { PgTarget } from "./PostgresUrl.ts"

/** No answer to a statement within the client's deadline: its connection was cut. */
export class StatementDeadline extends Data.TaggedError("StatementDeadline")<{ readonly ms: number }> {
  override get message(): string {
    return `no answer from PostgreSQL within ${this.ms} ms (the connection was dropped)`
  }
}

/** One open session of the pool. */
export interface PgSession {
  readonly conn: PgConnection.PgConnection
  /** False once its socket closed (the next use of its slot opens a new one). */
  readonly alive: () => boolean
  /** Destroys its socket now: the statement in flight fails at once, the session is over. */
  readonly cut: () => void
}

/** The pool. */
export interface PgPool {
  /**
   * Runs `f` with a session (opening one when the slot has none, bounded by
   * `PG_CONNECT_TIMEOUT_MS`); waits while every session is in use. A failure for which `drop`
   * is true (and a {@link StatementDeadline}) closes the session.
   */
  readonly use: <A, E>(
    f: (s: PgSession) => Effect.Effect<A, E>,
    drop: (e: E | SqlError | StatementDeadline) => boolean
  ) => Effect.Effect<A, E | SqlError>
  /** {@link use} when a session slot is free now; `None` at once when every one is busy. */
  readonly useIfFree: <A, E>(
    f: (s: PgSession) => Effect.Effect<A, E>,
    drop: (e: E | SqlError | StatementDeadline) => boolean
  ) => Effect.Effect<Option.Option<A>, E | SqlError>
  /** The client's deadline of one statement (statement timeout + 1 s). */
  readonly deadlineMs: number
  /** Runs one statement on `s`; no answer within {@link deadlineMs}: its socket is cut and it fails with {@link StatementDeadline}. */
  readonly bounded: <A, E>(s: PgSession, statement: Effect.Effect<A, E>) => Effect.Effect<A, E | StatementDeadline>
}

interface Live extends PgSession {
  readonly scope: Scope.Closeable
  /** Marks the close as the pool's own (not a lost connection). */
  readonly markClosed: () => void
}

interface Slot {
  live: Live | undefined
}

/**
 * Opens the pool for the life of the scope (no connection yet). `onLost` is called when a
 * session's socket closes while the pool did not close it (the server went away or reset it).
 */
export const makePgPool = (
  settings: PostgresSettings,
  target: PgTarget,
  onLost: () => void
): Effect.Effect<PgPool, never, Scope.Scope> =>
  Effect.gen(function*() {
    const deadlineMs = settings.statementTimeoutMs + 1_000
    const slots = yield* Queue.bounded<Slot>(settings.poolSize)
    const all: Array<Slot> = []
    for (let i = 0; i < settings.poolSize; i++) {
      const slot: Slot = { live: undefined }
      all.push(slot)
      Queue.offerUnsafe(slots, slot)
    }
    let closing = false
    const base: PgConnection.Config = {
      ...(target.url === undefined ? {} : { url: target.url }),
      host: target.host,
      port: target.port,
      username: target.user,
      database: target.database,
      ...(target.password === undefined ? {} : { password: target.password }),
      connectTimeout: Duration.millis(settings.connectTimeoutMs),
      applicationName: settings.applicationName,
      startupParameters: { statement_timeout: String(settings.statementTimeoutMs), synchronous_commit: "on" }
    }
    const openSocket = (): Net.Socket => {
      const socket = target.host.startsWith("/")
        ? Net.connect({ path: `${target.host}/.s.PGSQL.${target.port}` })
        : Net.connect({ host: target.host, port: target.port, noDelay: true })
      socket.setKeepAlive(true, 10_000)
      return socket
    }

    const open = Effect.gen(function*() {
      const scope = yield* Scope.make()
      let socket: Net.Socket | undefined
      // the client also calls `stream` for a cancel request: the session's socket is the first one
      const config: PgConnection.Config = { ...base, stream: () => (socket ??= openSocket()) }
      const exit = yield* Effect.exit(Scope.provide(scope)(PgConnection.make(config)))
      if (Exit.isFailure(exit) || socket === undefined) {
        socket?.destroy()
        yield* Scope.close(scope, Exit.void)
        return yield* Exit.isFailure(exit) ? Effect.failCause(exit.cause) : Effect.die(new Error("the session has no socket"))
      }
      const s: Net.Socket = socket
      let alive = true
      let closedByUs = false
      s.once("close", () => {
        alive = false
        if (!closedByUs && !closing) onLost()
      })
      const live: Live = {
        conn: exit.value,
        scope,
        alive: () => alive && !s.destroyed,
        cut: () => s.destroy(),
        markClosed: () => {
          closedByUs = true
        }
      }
      return live
    })

    /** Ends the slot's session: cut at once, or (`graceful`) with a Terminate message. */
    const discard = (slot: Slot, graceful = false) =>
      Effect.suspend(() => {
        const live = slot.live
        slot.live = undefined
        if (live === undefined) return Effect.void
        live.markClosed()
        if (!graceful) live.cut()
        return Scope.close(live.scope, Exit.void)
      })

    const sessionOf = (slot: Slot): Effect.Effect<Live, SqlError> =>
      Effect.suspend(() => {
        const live = slot.live
        if (live !== undefined && live.alive()) return Effect.succeed(live)
        return discard(slot).pipe(
          Effect.andThen(open),
          Effect.tap((l) => Effect.sync(() => (slot.live = l)))
        )
      })

    const runIn = <A, E>(
      slot: Slot,
      f: (s: PgSession) => Effect.Effect<A, E>,
      drop: (e: E | SqlError | StatementDeadline) => boolean
    ): Effect.Effect<A, E | SqlError> =>
      Effect.gen(function*() {
        const live = yield* sessionOf(slot)
        const exit = yield* Effect.exit(f(live))
        if (Exit.isFailure(exit)) {
          const error = Option.getOrUndefined(Exit.findErrorOption(exit))
          if (error === undefined || error instanceof StatementDeadline || drop(error)) yield* discard(slot)
        }
        return yield* exit
      })

    const use = <A, E>(f: (s: PgSession) => Effect.Effect<A, E>, drop: (e: E | SqlError | StatementDeadline) => boolean) =>
      Effect.acquireUseRelease(Queue.take(slots), (slot) => runIn(slot, f, drop), (slot) => Queue.offer(slots, slot))

    const useIfFree = <A, E>(f: (s: PgSession) => Effect.Effect<A, E>, drop: (e: E | SqlError | StatementDeadline) => boolean) =>
      Effect.acquireUseRelease(
        Queue.poll(slots),
        (slot): Effect.Effect<Option.Option<A>, E | SqlError> =>
          Option.isNone(slot) ? Effect.succeedNone : Effect.asSome(runIn(slot.value, f, drop)),
        (slot) => Option.isNone(slot) ? Effect.void : Queue.offer(slots, slot.value)
      )

    // The statement runs in a child fiber: at the deadline (or when the caller is interrupted) the
    // socket is cut first, so the client's own cancel-and-drain, which would wait on the dead
    // connection, ends at once.
    const bounded = <A, E>(s: PgSession, statement: Effect.Effect<A, E>): Effect.Effect<A, E | StatementDeadline> =>
      Effect.gen(function*() {
        const fiber = yield* Effect.forkChild(statement)
        const answered = yield* Fiber.await(fiber).pipe(
          Effect.timeoutOption(deadlineMs),
          Effect.onInterrupt(() => Effect.sync(s.cut))
        )
        if (Option.isSome(answered)) return yield* answered.value
        s.cut()
        const late = yield* Fiber.await(fiber)
        if (Exit.isSuccess(late)) return late.value
        return yield* new StatementDeadline({ ms: deadlineMs })
      })

    // closing: the statements in flight end (or meet their deadline), then every session ends
    yield* Effect.addFinalizer(() =>
      Effect.gen(function*() {
        const taken = yield* Effect.forEach(all, () => Queue.take(slots)).pipe(Effect.timeoutOption(deadlineMs))
        closing = true
        const graceful = Option.isSome(taken)
        yield* Effect.forEach(all, (slot) => discard(slot, graceful), { discard: true })
      })
    )

    return { use, useIfFree, deadlineMs, bounded } satisfies PgPool
  })
