// Where PostgreSQL and MySQL/MariaDB differ, in one place. The composition root picks the dialect
// with the database (database.ts); repositories receive it and never ask which one it is.
//
// What differs, and how each side does it:
// - Identifiers: "double quotes" against `backticks` (MySQL without ANSI_QUOTES).
// - Enum columns: PostgreSQL compares a parameter only once it is cast to the enum type; MySQL's
//   ENUM columns compare with text.
// - NULL ordering: PostgreSQL needs NULLS FIRST/LAST; MySQL already sorts NULLs first ascending
//   and last descending, which is exactly the order wanted, and has no such clause.
// - Case-insensitive prefix search: PostgreSQL matches lower(column) with text_pattern_ops
//   indexes; MySQL tables use Prisma's case-insensitive utf8mb4_unicode_ci collation, so a plain
//   LIKE on the column ignores case and can walk the column's ordinary index.
// - One-statement listing: PostgreSQL joins the page LATERAL to the count; MariaDB has no LATERAL
//   (and the page does not need it), so a plain derived table is joined.
// - UPDATE … RETURNING: PostgreSQL only; MySQL 8 and MariaDB have none, so the rows are read
//   first and then updated by id in one transaction (see updateTokensReturningHashes).
// - A conditional single-row UPDATE: Prisma's `update` with extra conditions is one UPDATE …
//   RETURNING on PostgreSQL, but on MySQL a SELECT of the id, an UPDATE, and a read-back that
//   does not notice the UPDATE matching nothing once a concurrent writer has changed the row: of
//   20 parallel verifications, several "succeeded". The MySQL form counts the UPDATE's rows.
// - DELETE by primary key: MySQL's optimizer scans a small table whole rather than look a list of
//   ids up, and a scanning DELETE takes next-key locks on every row it reads, so it waited for
//   (and held up) a refresh of a live session it was never going to delete (helper 219). The
//   MySQL form forces the primary key; PostgreSQL locks only the rows it deletes anyway.
import { Prisma, type PrismaClient, type User, type UserRole, type UserStatus } from '../../../gen/prisma/client.ts';

export type DialectName = 'postgresql' | 'mysql';

export interface SqlDialect {
  readonly name: DialectName;
  /** A quoted identifier (column or alias); only for names written in the code, never input. */
  identifier(name: string): string;
  /** `column = value` for an enum column. */
  enumEquals(column: string, enumType: string, value: string): Prisma.Sql;
  /** A UUID as a bound value that compares with a UUID column (PostgreSQL's uuid, MySQL's CHAR(36)). */
  uuid(value: string): Prisma.Sql;
  /** `column` in ascending order with NULLs first, or descending with NULLs last. */
  nullsLowest(column: string, direction: 'ASC' | 'DESC'): string;
  /** Whether `column` starts with `prefix` (LIKE syntax, its wildcards escaped), ignoring case. */
  startsWithIgnoringCase(column: string, prefix: string): Prisma.Sql;
  /** Joins a page of rows (a parenthesised SELECT) to a one-row count, keeping the count alone. */
  joinPageToCount(count: Prisma.Sql, page: Prisma.Sql): Prisma.Sql;
  /**
   * Sets `data` on the token pairs matching `where` and returns their access-token hashes, in
   * one transaction: a row that a concurrent writer has changed meanwhile may be listed although
   * this call did not change it, which only invalidates a cache entry more.
   */
  updateTokensReturningHashes(db: TransactionRunner, where: Prisma.OAuthTokenWhereInput, data: Prisma.OAuthTokenUpdateManyMutationInput): Promise<string[]>;
  /**
   * Applies `data` to user `id` only if the row also matches `conditions`, in one atomic check
   * and write; returns the row as written, or null when it did not match (or does not exist).
   */
  updateUserIf(db: TransactionRunner, id: number, conditions: UserConditions, data: Prisma.UserUpdateInput): Promise<User | null>;
  /**
   * DELETE of the rows of `table` (aliased `t` for `condition`) with these ids that still meet
   * `condition`, which looks up and locks those rows only.
   */
  deleteByIds(table: string, ids: readonly number[], condition: Prisma.Sql): Prisma.Sql;
}

/** What a conditional user write may require of the row besides its id. */
export interface UserConditions {
  version?: number;
  isVerified?: boolean;
  status?: UserStatus;
  role?: UserRole;
  passwordHash?: string;
}

/** A client or an open transaction. */
export type TransactionRunner = Prisma.TransactionClient | PrismaClient;

export const postgresDialect: SqlDialect = {
  name: 'postgresql',
  identifier: (name) => `"${name}"`,
  enumEquals: (column, enumType, value) => Prisma.sql`${Prisma.raw(`"${column}"`)} = ${value}::${Prisma.raw(`"${enumType}"`)}`,
  uuid: (value) => Prisma.sql`${value}::uuid`,
  deleteByIds: (table, ids, condition) => Prisma.sql`DELETE FROM ${Prisma.raw(`"${table}"`)} AS t WHERE t.id IN (${Prisma.join(ids)}) AND (${condition})`,
  nullsLowest: (column, direction) => `"${column}" ${direction === 'ASC' ? 'NULLS FIRST' : 'DESC NULLS LAST'}`,
  // Both sides folded by the database: JavaScript's toLowerCase folds a word-final Σ to ς and
  // İ to i + U+0307, where PostgreSQL's lower() gives σ and the locale's i, so a prefix folded in
  // JavaScript missed names it should find.
  startsWithIgnoringCase: (column, prefix) => Prisma.sql`lower(${Prisma.raw(`"${column}"`)}) LIKE lower(${prefix})`,
  joinPageToCount: (count, page) => Prisma.sql`${count} LEFT JOIN LATERAL ${page} AS "page" ON true`,
  updateTokensReturningHashes: async (db, where, data) => {
    const rows = await db.oAuthToken.updateManyAndReturn({ where, data, select: { accessTokenHash: true } });
    return rows.map((row) => row.accessTokenHash);
  },
  updateUserIf: async (db, id, conditions, data) => {
    try {
      return await db.user.update({ where: { ...conditions, id }, data });
    } catch (error) {
      if (error instanceof Prisma.PrismaClientKnownRequestError && error.code === 'P2025') return null;
      throw error;
    }
  },
};

/** Runs `work` in a new transaction, or in the one `db` already is. */
function inTransaction<T>(db: TransactionRunner, work: (tx: Prisma.TransactionClient) => Promise<T>): Promise<T> {
  return '$transaction' in db && typeof db.$transaction === 'function' ? (db as PrismaClient).$transaction(work) : work(db);
}

export const mysqlDialect: SqlDialect = {
  name: 'mysql',
  identifier: (name) => `\`${name}\``,
  enumEquals: (column, _enumType, value) => Prisma.sql`${Prisma.raw(`\`${column}\``)} = ${value}`,
  uuid: (value) => Prisma.sql`${value}`,
  deleteByIds: (table, ids, condition) => Prisma.sql`DELETE t FROM ${Prisma.raw(`\`${table}\``)} AS t FORCE INDEX (PRIMARY) WHERE t.id IN (${Prisma.join(ids)}) AND (${condition})`,
  nullsLowest: (column, direction) => `\`${column}\`${direction === 'ASC' ? '' : ' DESC'}`,
  startsWithIgnoringCase: (column, prefix) => Prisma.sql`${Prisma.raw(`\`${column}\``)} LIKE ${prefix}`,
  joinPageToCount: (count, page) => Prisma.sql`${count} LEFT JOIN ${page} AS \`page\` ON 1 = 1`,
  updateTokensReturningHashes: async (db, where, data) => {
    const update = async (tx: Prisma.TransactionClient) => {
      // Both statements see the same rows as PostgreSQL's single statement would: those matching
      // when it starts. The update is confined to them and re-checks `where`, so a row that
      // stopped matching meanwhile is left alone.
      const rows = await tx.oAuthToken.findMany({ where, select: { id: true, accessTokenHash: true } });
      if (rows.length === 0) return [];
      await tx.oAuthToken.updateMany({ where: { AND: [where, { id: { in: rows.map((row) => row.id) } }] }, data });
      return rows.map((row) => row.accessTokenHash);
    };
    return inTransaction(db, update);
  },
  updateUserIf: (db, id, conditions, data) =>
    inTransaction(db, async (tx) => {
      // The UPDATE re-reads the row it writes (a locking read, whatever the snapshot), so its
      // count is the check; the read-back sees this transaction's own write, held locked.
      const { count } = await tx.user.updateMany({ where: { ...conditions, id }, data });
      return count === 0 ? null : tx.user.findUnique({ where: { id } });
    }),
};
