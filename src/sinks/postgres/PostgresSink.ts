/**
 * The PostgreSQL sink driver ({@link SinkDriver}): each envelope a row of the table `PG_TABLE`
 * (PostgresSchema.ts, created at start when missing), the rows of a batch written by ONE
 * statement: the columns as arrays, unnested, `ON CONFLICT (device, epoch, seq) DO NOTHING
 * RETURNING` the keys it inserted. Outcomes per message: a key returned is Committed; a key not
 * returned is Duplicate when the table holds it (checked: a trigger or rule that drops rows returns
 * nothing either, and those are Unavailable), whoever wrote it, or earlier in the same batch;
 * a message that cannot be a row (PostgresRows.ts) or that PostgreSQL refuses (a data or
 * constraint error, `22*`/`23*`: e.g. `\u0000` in a jsonb string) is Rejected ALONE: the batch is
 * retried in halves until the culprits are single rows (a few statements per bad row), and the
 * others are written. The batch fails with a {@link SinkError} only when no message of it could
 * be decided; a failure part-way through bisection leaves the undecided ones Unavailable.
 *
 * What Committed means: the statement runs in its own transaction (autocommit) and its answer
 * comes after the COMMIT, with `synchronous_commit = on` (PostgresPool.ts): the WAL holding the
 * rows was flushed on the server (and on synchronous standbys, if the server has them) before
 * the answer is read. An answer that does not come is not a commit: the connection is dropped
 * and the messages are retried; a resend of a message that had been committed is a Duplicate.
 *
 * Time: every statement gets the server's `statement_timeout` (`PG_STATEMENT_TIMEOUT_MS`) and a
 * client deadline one second later, when its connection is cut (a blackholed server is never
 * waited on); a new connection gets `PG_CONNECT_TIMEOUT_MS`.
 *
 * Health: follows the real writes (a failed statement makes it false with the failure's reason,
 * until one succeeds); when nothing was written for a second (or a connection was lost) the next
 * health call starts a probe in the background (PostgresSchema.ts `PROBE_SQL`: the table is
 * there, the user may insert, the server is not a read-only standby), so that readiness comes
 * back without traffic. Readiness never waits on a slow server: it says what was last known.
 *
 * Start: settings that cannot work (an unparseable `DATABASE_URL`, bad numbers, a bad `PG_TABLE`),
 * wrong credentials, a missing database, a table of another shape or no permission fail the start
 * with a {@link PostgresStartError}. A server that cannot be reached (or is a standby, or times
 * out) does not: the sink starts not ready and keeps trying in the background, writing nothing
 * until its table is checked.
 */
import { Clock, Duration, Effect, Exit, Option, Schedule, type Scope } from "effect"
import type { Envelope } from "../../domain/Envelope.ts"
import { type BatchResult, MessageOutcome, SinkError, type SinkDriver, type SinkFailure, type SinkHealth } from "../Contract.ts"
import { classifyPgError, type PgErrorClass } from "./PostgresClassifier.ts"
import { makePgPool, type PgSession } from "./PostgresPool.ts"
import { insertedRows, keyOf, paramsOf, prepareRows, type Rows, sliceRows } from "./PostgresRows.ts"
import { existingSql, insertSql, migrate, PROBE_SQL, quoteTable, SchemaPending, type TableFacts } from "./PostgresSchema.ts"
import type { PostgresSettings } from "./PostgresSettings.ts"
import { PostgresStartError } from "./PostgresStartError.ts"
import { type PgTarget, targetOf } from "./PostgresUrl.ts"

/** The driver's name in metrics, logs and errors. */
export const POSTGRES_SINK = "postgres"

/** How long a health answer (probe or write) stands before the server is asked again. */
export const HEALTH_TTL_MS = 1_000

/** The PostgreSQL sink: the contract, plus what it knows of its table. */
export interface PostgresSink extends SinkDriver {
  /** The table as the migration found it (undefined until the server answered once). */
  readonly table: () => TableFacts | undefined
}

/** A statement failed as a whole. */
type Stop = Extract<PgErrorClass, { readonly outcome: "failed" }>

const PENDING = 255
const EMPTY: BatchResult = { outcomes: new Uint8Array(0), reasons: new Map() }

const stopOf = (e: unknown): Stop => {
  if (typeof e === "object" && e !== null && "outcome" in e && e.outcome === "failed") return e as Stop
  const c = classifyPgError(e)
  return c.outcome === "failed" ? c : { outcome: "failed", failure: "unknown", connection: false, code: c.code, message: c.message }
}

const dropOn = (e: unknown): boolean => stopOf(e).connection

const positive = (variable: string, value: number, max: number): PostgresStartError | undefined =>
  Number.isInteger(value) && value >= 1 && value <= max
    ? undefined
    : new PostgresStartError({ variable, reason: "misconfigured", message: `expected an integer from 1 to ${max}, got ${value}` })

/** Checks the settings: the target to connect to and the quoted table, or what is wrong. */
export const checkSettings = (settings: PostgresSettings): Effect.Effect<{ readonly target: PgTarget; readonly quoted: string }, PostgresStartError> =>
  Effect.suspend(() => {
    const target = targetOf(settings)
    if (typeof target === "string") return Effect.fail(new PostgresStartError({ variable: "DATABASE_URL", reason: "misconfigured", message: target }))
    const quoted = quoteTable(settings.table)
    if (quoted === undefined) {
      return Effect.fail(new PostgresStartError({
        variable: "PG_TABLE",
        reason: "misconfigured",
        message: `"${settings.table}" is not a table name (expected name or schema.name: letters, digits, _ and $, at most 63 each)`
      }))
    }
    const bad = positive("PG_STATEMENT_TIMEOUT_MS", settings.statementTimeoutMs, 3_600_000) ??
      positive("PG_CONNECT_TIMEOUT_MS", settings.connectTimeoutMs, 600_000) ??
      positive("PG_POOL_SIZE", settings.poolSize, 1_000)
    return bad === undefined ? Effect.succeed({ target, quoted }) : Effect.fail(bad)
  })

/**
 * Starts the sink for the life of the scope: checks the settings, connects, runs the migration.
 * Fails with a {@link PostgresStartError} for what no retry fixes; an unreachable server only
 * makes it start not ready.
 */
export const makePostgresSink = (settings: PostgresSettings): Effect.Effect<PostgresSink, PostgresStartError, Scope.Scope> =>
  Effect.gen(function*() {
    const { target, quoted } = yield* checkSettings(settings)
    const insert = insertSql(quoted)
    const existing = existingSql(quoted)
    const scope = yield* Effect.scope
    let facts: TableFacts | undefined
    let problem: { readonly failure: SinkFailure; readonly message: string } = { failure: "unreachable", message: "connecting" }
    let observed: { readonly at: number; readonly health: SinkHealth } | undefined
    let lost = false
    let probing = false

    const pool = yield* makePgPool(settings, target, () => {
      lost = true
    })
    const observe = (health: SinkHealth) =>
      Effect.map(Clock.currentTimeMillis, (at) => {
        observed = { at, health }
      })

    // ---- start: the migration, now or in the background
    const migrateOnce: Effect.Effect<TableFacts, PostgresStartError | SchemaPending> = pool.use(
      (s) => migrate(s.conn, settings.table, quoted, (statement) => pool.bounded(s, statement)),
      dropOn
    ).pipe(
      Effect.mapError((e): PostgresStartError | SchemaPending => {
        if (e instanceof PostgresStartError || e instanceof SchemaPending) return e
        const c = stopOf(e) // the connection itself failed
        const message = `cannot connect to ${target.display}: ${c.message}`
        return c.failure === "misconfigured" || c.failure === "corrupt"
          ? new PostgresStartError({ variable: "DATABASE_URL", reason: c.failure, message, cause: e })
          : new SchemaPending({ failure: c.failure, message })
      })
    )
    const adopt = (f: TableFacts) =>
      Effect.gen(function*() {
        facts = f
        if (f.created) yield* Effect.logInfo(`PostgreSQL table ${f.name} created (${target.display})`)
        if (f.annotationsAdded) yield* Effect.logInfo(`PostgreSQL table ${f.name}: column annotations added`)
        yield* observe({ ready: true })
      })

    const first = yield* Effect.exit(migrateOnce)
    if (Exit.isSuccess(first)) {
      yield* adopt(first.value)
    } else {
      const error = Option.getOrUndefined(Exit.findErrorOption(first))
      if (error instanceof PostgresStartError) return yield* error
      problem = error === undefined ? { failure: "unknown", message: "interrupted" } : { failure: error.failure, message: error.message }
      yield* Effect.logWarning(`PostgreSQL not ready at start (${problem.message}); connecting in the background to ${target.display}`)
      let logged = ""
      const retry = Schedule.exponential("250 millis", 2).pipe(
        Schedule.jittered,
        Schedule.modifyDelay(({ duration }) => Effect.succeed(Duration.min(duration, Duration.seconds(5))))
      )
      yield* Effect.forkScoped(migrateOnce.pipe(
        Effect.tapError((e) =>
          Effect.gen(function*() {
            if (e instanceof SchemaPending) {
              problem = { failure: e.failure, message: e.message }
              return
            }
            // found once the server answered: not ready, saying why, and checked again
            problem = { failure: e.reason, message: e.line }
            if (e.line !== logged) yield* Effect.logError(e.line)
            logged = e.line
          })
        ),
        Effect.retry(retry),
        Effect.flatMap((f) => Effect.andThen(adopt(f), Effect.logInfo(`PostgreSQL reachable, table ${f.name} checked: ready (${target.display})`)))
      ))
    }

    // ---- writes
    const writeRows = (batch: ReadonlyArray<Envelope>): Effect.Effect<BatchResult, SinkError> =>
      Effect.gen(function*() {
        const { rows, refused } = prepareRows(batch)
        const outcomes = new Uint8Array(batch.length).fill(PENDING)
        const reasons = new Map<number, string>()
        for (const [i, why] of refused) {
          outcomes[i] = MessageOutcome.Rejected
          reasons.set(i, why)
        }
        if (rows.positions.length === 0) return { outcomes, reasons }

        // a key the INSERT did not return is a duplicate only if the table holds it: a trigger or
        // rule that drops rows returns nothing either, and those messages are not stored
        const settle = (s: PgSession, part: Rows, returned: ReadonlyArray<ReadonlyArray<unknown>>): Effect.Effect<void, Stop> => {
          const inserted = insertedRows(part, returned)
          const missing: Array<number> = []
          for (let r = 0; r < part.positions.length; r++) {
            if (inserted[r] === 1) outcomes[part.positions[r] as number] = MessageOutcome.Committed
            else missing.push(r)
          }
          if (missing.length === 0) return Effect.void
          const params = [missing.map((r) => part.device[r]!), missing.map((r) => part.epoch[r]!), missing.map((r) => part.seq[r]!)]
          return pool.bounded(s, s.conn.queryValues(existing, params)).pipe(
            Effect.mapError((e) => stopOf(e)),
            Effect.flatMap((found) =>
              Effect.sync(() => {
                const there = new Set(found.map((k) => keyOf(String(k[0]), k[1], k[2])))
                for (const r of missing) {
                  const i = part.positions[r] as number
                  if (there.has(keyOf(part.device[r]!, part.epoch[r], part.seq[r]))) outcomes[i] = MessageOutcome.Duplicate
                  else {
                    outcomes[i] = MessageOutcome.Unavailable
                    reasons.set(i, `not stored: the INSERT neither wrote the row nor found it (a trigger or rule on ${facts?.name ?? settings.table}?)`)
                  }
                }
              })
            )
          )
        }
        const insertPart = (s: PgSession, part: Rows): Effect.Effect<void, Stop> =>
          pool.bounded(s, s.conn.queryValues(insert, paramsOf(part))).pipe(
            Effect.matchEffect({
              onSuccess: (returned) => settle(s, part, returned),
              onFailure: (e): Effect.Effect<void, Stop> => {
                const c = classifyPgError(e)
                if (c.outcome === "failed") return Effect.fail(c)
                const n = part.positions.length
                if (n === 1) {
                  const i = part.positions[0] as number
                  outcomes[i] = MessageOutcome.Rejected
                  reasons.set(i, `refused by PostgreSQL: ${c.message}`)
                  return Effect.void
                }
                // a row is to blame: each half again, until the culprits are alone
                const mid = n >>> 1
                return Effect.andThen(insertPart(s, sliceRows(part, 0, mid)), insertPart(s, sliceRows(part, mid, n)))
              }
            })
          )

        const stopped = yield* pool.use((s) => insertPart(s, rows), dropOn).pipe(
          Effect.as(undefined),
          Effect.catch((e) => Effect.succeed(stopOf(e)))
        )
        if (stopped === undefined) {
          yield* observe({ ready: true })
          return { outcomes, reasons }
        }
        let decided = 0
        for (let i = 0; i < outcomes.length; i++) {
          if (outcomes[i] !== PENDING) {
            decided++
            continue
          }
          outcomes[i] = MessageOutcome.Unavailable
          reasons.set(i, stopped.message)
        }
        yield* observe({ ready: false, reason: stopped.failure, message: stopped.message })
        if (decided > 0) return { outcomes, reasons }
        return yield* new SinkError({
          sink: POSTGRES_SINK,
          reason: stopped.failure,
          message: `no message of the batch was taken: ${stopped.message}`
        })
      })

    const write = (batch: ReadonlyArray<Envelope>): Effect.Effect<BatchResult, SinkError> =>
      Effect.suspend(() => {
        if (batch.length === 0) return Effect.succeed(EMPTY)
        if (facts === undefined) {
          const p = problem
          return observe({ ready: false, reason: p.failure, message: p.message }).pipe(
            Effect.andThen(Effect.fail(new SinkError({ sink: POSTGRES_SINK, reason: p.failure, message: `table not checked yet: ${p.message}` })))
          )
        }
        return writeRows(batch)
      })

    // ---- health
    const probe = pool.useIfFree((s) => pool.bounded(s, s.conn.queryValues(PROBE_SQL, [quoted])), dropOn).pipe(
      Effect.flatMap(Option.match({
        onNone: () => Effect.void, // every connection is writing: the writes will say
        onSome: (rows) => {
          const r = rows[0] ?? []
          return observe(
            r[0] === true
              ? { ready: false, reason: "unavailable", message: "the server takes no writes: a standby (in recovery) or read-only sessions" }
              : r[1] !== true
              ? { ready: false, reason: "misconfigured", message: `the user may not INSERT into ${facts?.name ?? settings.table}` }
              : { ready: true }
          )
        }
      })),
      Effect.catch((e) => {
        const c = stopOf(e)
        return observe({ ready: false, reason: c.failure, message: c.message })
      }),
      Effect.ensuring(Effect.sync(() => {
        probing = false
      }))
    )

    const health: Effect.Effect<SinkHealth> = Effect.gen(function*() {
      if (facts === undefined) return { ready: false, reason: problem.failure, message: problem.message } satisfies SinkHealth
      const now = yield* Clock.currentTimeMillis
      const o = observed
      if (!probing && (lost || o === undefined || now - o.at >= HEALTH_TTL_MS)) {
        lost = false
        probing = true
        yield* Effect.forkIn(probe, scope)
      }
      return o?.health ?? { ready: true }
    })

    return {
      name: POSTGRES_SINK,
      write,
      health,
      table: () => facts
    } satisfies PostgresSink
  })
