/**
 * The `messages` table in PostgreSQL (DESIGN.md, mirroring SQLite's, SqliteStore.ts): found
 * through the connection's search path, created at start when missing (the migration), and
 * checked: the columns `device text, epoch integer|bigint, seq bigint, kind text, device_ts
 * bigint, received_at bigint, gateway text, traceparent text, body jsonb, annotations jsonb`
 * (NULL allowed where a message may have none), a unique key on exactly `(device, epoch, seq)`
 * usable by `ON CONFLICT` (not partial, not deferrable), INSERT and SELECT allowed. A table made
 * before `annotations` existed gets the column (as SQLite's store does); any other difference
 * stops the start with one line naming `PG_TABLE` and what differs.
 *
 * Also the statements the sink runs on the table: the batch INSERT (one statement, the rows as
 * arrays unnested, `ON CONFLICT DO NOTHING RETURNING` the keys it inserted) and the probe.
 */
import type { PgConnection } from "@effect/sql-pg/PgConnection"
import { Data, Effect } from "effect"
import { classifyPgError } from "./PostgresClassifier.ts"
import { PostgresStartError } from "./PostgresStartError.ts"

/** What the sink knows of its table after the migration. */
export interface TableFacts {
  /** `schema.name` where the search path found (or created) it. */
  readonly name: string
  /** True when this start created it. */
  readonly created: boolean
  /** True when this start added the `annotations` column. */
  readonly annotationsAdded: boolean
}

/** The table could not be checked now (server away, a standby, a timeout): check again later. */
export class SchemaPending extends Data.TaggedError("SchemaPending")<{
  readonly failure: "unreachable" | "timeout" | "unavailable" | "unknown"
  readonly message: string
}> {}

const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_$]{0,62}$/

/** `PG_TABLE` quoted for SQL (`"name"` or `"schema"."name"`), or undefined when it is not one or two plain identifiers. */
export const quoteTable = (table: string): string | undefined => {
  const parts = table.split(".")
  if (parts.length > 2 || parts.some((p) => !IDENTIFIER.test(p))) return undefined
  return parts.map((p) => `"${p}"`).join(".")
}

/** The batch INSERT into `quoted`: parameters $1..$10 are the column arrays of PostgresRows.ts. */
export const insertSql = (quoted: string): string =>
  `INSERT INTO ${quoted} (device, epoch, seq, kind, device_ts, received_at, gateway, traceparent, body, annotations) ` +
  `SELECT d, e, s, k, dt, ra, g, tp, b::jsonb, a::jsonb FROM unnest($1::text[], $2::int8[], $3::int8[], $4::text[], ` +
  `$5::int8[], $6::int8[], $7::text[], $8::text[], $9::text[], $10::text[]) AS t(d, e, s, k, dt, ra, g, tp, b, a) ` +
  `ON CONFLICT (device, epoch, seq) DO NOTHING RETURNING device, epoch, seq`

/** Which of the keys ($1 devices, $2 epochs, $3 seqs) `quoted` holds: the check of the keys an INSERT did not return. */
export const existingSql = (quoted: string): string =>
  `SELECT device, epoch, seq FROM ${quoted} WHERE (device, epoch, seq) IN ` +
  `(SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[]))`

/**
 * The probe ($1: the quoted table): fails when the table is gone; answers whether the server is
 * a read-only standby, or its sessions read-only (`default_transaction_read_only`), and whether
 * the user may insert.
 */
export const PROBE_SQL =
  "SELECT pg_is_in_recovery() OR current_setting('transaction_read_only') = 'on', has_table_privilege($1::text, 'INSERT')"

const createSql = (quoted: string, bare: string): string =>
  `CREATE TABLE IF NOT EXISTS ${quoted} (device text NOT NULL, epoch bigint NOT NULL, seq bigint NOT NULL, ` +
  `kind text NOT NULL, device_ts bigint NOT NULL, received_at bigint NOT NULL, gateway text NOT NULL, ` +
  `traceparent text, body jsonb NOT NULL, annotations jsonb, CONSTRAINT "${bare.slice(0, 59)}_key" UNIQUE (device, epoch, seq))`

const SHAPE_SQL = `SELECT c.relkind::text, n.nspname::text || '.' || c.relname::text, pg_is_in_recovery(),
  has_table_privilege(c.oid, 'INSERT') AND has_table_privilege(c.oid, 'SELECT'),
  (SELECT coalesce(json_agg(json_build_array(a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
      a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '') ORDER BY a.attnum), '[]')::text
    FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
  (SELECT coalesce(json_agg((SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_attribute a
      WHERE a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey::int2[]))), '[]')::text
    FROM pg_index i WHERE i.indrelid = c.oid AND i.indisunique AND i.indimmediate AND i.indpred IS NULL
      AND i.indexprs IS NULL AND i.indnatts = 3)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass($1::text)`

/** The table as the catalog describes it. */
interface Shape {
  readonly relkind: string
  readonly name: string
  readonly standby: boolean
  readonly writable: boolean
  /** name, type, NOT NULL, has a default */
  readonly columns: ReadonlyArray<readonly [string, string, boolean, boolean]>
  /** The sorted columns of each usable unique index of three columns. */
  readonly keys: ReadonlyArray<ReadonlyArray<string>>
}

const TEXT = (t: string) => t === "text" || t.startsWith("character varying")
/** The columns the sink writes: name, accepted types (as `format_type` spells them), NULL needed. */
const EXPECTED: ReadonlyArray<readonly [string, (type: string) => boolean, string, boolean]> = [
  ["device", TEXT, "text", false],
  ["epoch", (t) => t === "bigint" || t === "integer", "integer or bigint", false],
  ["seq", (t) => t === "bigint", "bigint", false],
  ["kind", TEXT, "text", false],
  ["device_ts", (t) => t === "bigint", "bigint", false],
  ["received_at", (t) => t === "bigint", "bigint", false],
  ["gateway", TEXT, "text", false],
  ["traceparent", TEXT, "text", true],
  ["body", (t) => t === "jsonb", "jsonb", false],
  ["annotations", (t) => t === "jsonb", "jsonb", true]
]

/** What differs between `shape` and the table the sink needs (empty: none). */
const shapeProblems = (shape: Shape): Array<string> => {
  const problems: Array<string> = []
  if (shape.relkind !== "r" && shape.relkind !== "p") return [`${shape.name} is not a table (relkind ${shape.relkind})`]
  const byName = new Map(shape.columns.map((c) => [c[0], c]))
  for (const [name, accepts, expected, nullable] of EXPECTED) {
    const c = byName.get(name)
    if (c === undefined) problems.push(`no column ${name} (${expected})`)
    else if (!accepts(c[1])) problems.push(`column ${name} is ${c[1]} (expected ${expected})`)
    else if (nullable && c[2]) problems.push(`column ${name} is NOT NULL (it must take NULL)`)
  }
  const written = new Set(EXPECTED.map((e) => e[0]))
  for (const [name, type, notNull, hasDefault] of shape.columns) {
    if (!written.has(name) && notNull && !hasDefault) problems.push(`column ${name} (${type}) is NOT NULL without a default (the sink does not write it)`)
  }
  if (!shape.keys.some((k) => k.join(",") === "device,epoch,seq")) {
    problems.push("no unique key on exactly (device, epoch, seq) (a unique constraint or index, not partial, not deferrable)")
  }
  return problems
}

type Fail = PostgresStartError | SchemaPending

/** Maps a failure of a migration statement: what a retry cannot fix stops the start. */
const failureOf = (what: string, variable: string) => (error: unknown): Fail => {
  const c = classifyPgError(error)
  const message = `${what}: ${c.message}`
  if (c.outcome === "failed" && (c.failure === "misconfigured" || c.failure === "corrupt")) {
    const blame = c.code === "3F000" || c.code === "42P01" ? "PG_TABLE" : c.code === "42501" || c.code?.startsWith("28") || c.code === "3D000" ? "DATABASE_URL" : variable
    return new PostgresStartError({ variable: blame, reason: c.failure, message, cause: error })
  }
  if (c.outcome === "row") return new PostgresStartError({ variable, reason: "misconfigured", message, cause: error })
  return new SchemaPending({ failure: c.failure === "misconfigured" || c.failure === "corrupt" ? "unknown" : c.failure, message })
}

const readShape = (conn: PgConnection, quoted: string, table: string): Effect.Effect<Shape | undefined, Fail> =>
  conn.queryValues(SHAPE_SQL, [quoted]).pipe(
    Effect.mapError(failureOf(`table ${table} cannot be read`, "PG_TABLE")),
    Effect.map((rows) => {
      const r = rows[0]
      if (r === undefined) return undefined
      return {
        relkind: String(r[0]),
        name: String(r[1]),
        standby: r[2] === true,
        writable: r[3] === true,
        columns: JSON.parse(String(r[4])) as Shape["columns"],
        keys: JSON.parse(String(r[5])) as Shape["keys"]
      }
    })
  )

/**
 * The migration: finds the table `PG_TABLE` (quoted: {@link quoteTable}) through the search path,
 * creates it when missing, adds `annotations` when only that is missing, and checks it. Fails with
 * a {@link PostgresStartError} when a retry cannot help, {@link SchemaPending} when it can. Each
 * statement runs through `run`, which bounds it in time.
 */
export const migrate = (
  conn: PgConnection,
  table: string,
  quoted: string,
  run: <A>(statement: Effect.Effect<A, unknown>) => Effect.Effect<A, unknown> = (s) => s
): Effect.Effect<TableFacts, Fail> =>
  Effect.gen(function*() {
    const read = run(readShape(conn, quoted, table)).pipe(
      Effect.mapError((e) => e instanceof PostgresStartError || e instanceof SchemaPending ? e : failureOf(`table ${table} cannot be read`, "PG_TABLE")(e))
    )
    const exec = (sql: string, what: string) =>
      run(conn.queryValues(sql)).pipe(Effect.mapError(failureOf(what, "PG_TABLE")))
    let shape = yield* read
    let created = false
    if (shape === undefined) {
      const bare = table.split(".").pop() ?? table
      // two gateways starting at once: the loser of the race finds the winner's table
      yield* run(conn.queryValues(createSql(quoted, bare))).pipe(
        Effect.catch((e) => {
          const code = classifyPgError(e).code
          return code === "42P07" || code === "23505" ? Effect.void : Effect.fail(failureOf(`table ${table} cannot be created`, "PG_TABLE")(e))
        })
      )
      created = true
      shape = yield* read
      if (shape === undefined) {
        return yield* new PostgresStartError({ variable: "PG_TABLE", reason: "misconfigured", message: `table ${table} was created but is not found through the search path` })
      }
    }
    if (shape.standby) return yield* new SchemaPending({ failure: "unavailable", message: "the server is a read-only standby (in recovery)" })
    let annotationsAdded = false
    if (!shape.columns.some((c) => c[0] === "annotations") && shapeProblems(shape).length === 1) {
      yield* exec(`ALTER TABLE ${quoted} ADD COLUMN IF NOT EXISTS annotations jsonb`, `column annotations cannot be added to ${table}`)
      annotationsAdded = true
      shape = (yield* read) ?? shape
    }
    const problems = shapeProblems(shape)
    if (problems.length > 0) {
      return yield* new PostgresStartError({
        variable: "PG_TABLE",
        reason: "misconfigured",
        message: `table ${shape.name} exists with another shape: ${problems.join("; ")}`
      })
    }
    if (!shape.writable) {
      return yield* new PostgresStartError({
        variable: "DATABASE_URL",
        reason: "misconfigured",
        message: `the user may not INSERT into and SELECT from table ${shape.name} (GRANT INSERT, SELECT ON ${shape.name} TO ...)`
      })
    }
    return { name: shape.name, created, annotationsAdded }
  })
