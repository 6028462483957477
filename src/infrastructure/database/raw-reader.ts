// Reads for the one statement on the hot path that the repositories write themselves (a page of
// users with its count), sent to the driver adapter the Prisma client already holds, past the
// client's query engine. Measured on the page of 20 with PostgreSQL: `$queryRaw` cost 250–330 µs
// of CPU per call against 130–160 µs for the adapter's own `queryRaw` (README, Performance), a
// tenth of the whole request. The engine adds nothing a statement of our own needs: the adapter
// already binds the arguments and says each column's type, so the rows are decoded here into
// what `$queryRaw` would have returned for them.
//
// On PostgreSQL the statements are also named (prepared), so that each connection parses and
// plans each one once, not at every call (StatementNames below).
import { ColumnTypeEnum, isDriverAdapterError, type ArgType, type ColumnType, type SqlDriverAdapter, type SqlQuery } from '@prisma/driver-adapter-utils';
import type { Prisma } from '../../../gen/prisma/client.ts';

/** One read statement, its rows as objects keyed by column name. */
export type RawReader = <Row extends object>(query: Prisma.Sql) => Promise<Row[]>;

/** How the statement's parameters are written: `$1` (PostgreSQL, PGlite) or `?` (MySQL). */
export type Placeholders = 'numbered' | 'question';

/**
 * Names for the reader's statements, given to node-postgres through PrismaPg's
 * `statementNameGenerator`: a named statement is parsed and planned once per connection and then
 * only bound and executed. A call of the page of 20 took ~330 µs unnamed and ~190 µs prepared
 * (pgbench, one client, 100 users), and PostgreSQL's CPU per page request fell from 0.35–0.40 to
 * 0.15–0.16 ms, more than the whole of Prisma's share on the Node side. Only the reader's own statements are named: their texts are few (one per filter and sort
 * combination) and their result columns are listed, not `*` of a table, so a column added by a
 * later migration does not invalidate them. A migration that changes a listed column's type
 * does: PostgreSQL then refuses the prepared statement on every connection that holds it, so the
 * text is retired and named anew, and the read tried once more (see createRawReader). Prisma's
 * statements stay unnamed, as their texts are not bounded (lists of values are spelled out).
 * Past MAX_NAMED names, statements go unnamed.
 */
export class StatementNames {
  static readonly MAX_NAMED = 256;
  readonly #reads = new WeakSet<SqlQuery>();
  readonly #names = new Map<string, string>();
  #issued = 0;

  /** Marks a statement of the reader's, to be named. */
  mark(query: SqlQuery): SqlQuery {
    this.#reads.add(query);
    return query;
  }

  /** The statement's name, or '' (unnamed: node-postgres prepares only a non-empty name). */
  readonly nameOf = (query: SqlQuery): string => {
    if (!this.#reads.has(query)) return '';
    let name = this.#names.get(query.sql);
    if (name === undefined) {
      if (this.#issued >= StatementNames.MAX_NAMED) return '';
      this.#issued += 1;
      name = `arcana_read_${this.#issued}`;
      this.#names.set(query.sql, name);
    }
    return name;
  };

  /**
   * Forgets `name` for the text, so that its next use is prepared afresh under a new one; a
   * name that concurrent reads have already replaced stays.
   */
  retire(sql: string, name: string): void {
    if (this.#names.get(sql) === name) this.#names.delete(sql);
  }
}

/**
 * PostgreSQL's refusal of a prepared statement whose result columns a schema change has altered
 * (SQLSTATE 0A000, "cached plan must not change result type"), as the adapter reports it.
 */
function isStalePreparedStatement(error: unknown): boolean {
  if (!(error instanceof Error) || !isDriverAdapterError(error)) return false;
  const cause = error.cause as { kind: string; code?: unknown; message?: unknown };
  return cause.kind === 'postgres' && cause.code === '0A000' && typeof cause.message === 'string' && cause.message.includes('cached plan');
}

/**
 * A reader over the adapter `adapter()` resolves to. `onQuery` is told of each statement sent,
 * so the database's query count includes these; with `names`, its statements are named.
 */
export function createRawReader(adapter: () => Promise<SqlDriverAdapter>, placeholders: Placeholders, onQuery: () => void, names?: StatementNames): RawReader {
  return async <Row extends object>(query: Prisma.Sql): Promise<Row[]> => {
    const connection = await adapter();
    onQuery();
    const statement = (): SqlQuery => ({
      sql: placeholders === 'numbered' ? query.text : query.sql,
      args: query.values,
      argTypes: query.values.map(argTypeOf),
    });
    let result;
    if (names === undefined) {
      result = await connection.queryRaw(statement());
    } else {
      const first = names.mark(statement());
      // The name the adapter asks for as it sends the statement, which it does before its first await.
      const name = names.nameOf(first);
      try {
        result = await connection.queryRaw(first);
      } catch (error) {
        if (!isStalePreparedStatement(error)) throw error;
        names.retire(first.sql, name);
        onQuery();
        result = await connection.queryRaw(names.mark(statement()));
      }
    }
    const { columnNames, columnTypes } = result;
    const decoders = columnTypes.map(decoderFor);
    return result.rows.map((values) => {
      const row: Record<string, unknown> = {};
      for (let i = 0; i < columnNames.length; i += 1) {
        const value = values[i];
        row[columnNames[i]!] = value === null || value === undefined ? null : decoders[i]!(value);
      }
      return row as Row;
    });
  };
}

/** What the adapters need to bind a value: its scalar kind (they convert dates and bytes by it). */
function argTypeOf(value: unknown): ArgType {
  const scalar = (scalarType: ArgType['scalarType']): ArgType => ({ scalarType, arity: 'scalar' });
  switch (typeof value) {
    case 'number':
      return scalar(Number.isInteger(value) ? 'int' : 'float');
    case 'bigint':
      return scalar('bigint');
    case 'boolean':
      return scalar('boolean');
    case 'string':
      return scalar('string');
    default:
      if (value instanceof Date) return scalar('datetime');
      if (value instanceof Uint8Array) return scalar('bytes');
      return scalar('unknown');
  }
}

type Decoder = (value: unknown) => unknown;

const asIs: Decoder = (value) => value;

/**
 * The adapters' wire forms, decoded as Prisma decodes a raw query's columns: 64-bit integers
 * arrive as decimal text and become bigints; date-times arrive as ISO text in UTC (PostgreSQL
 * and MariaDB adapters append `+00:00`) and become Dates; JSON arrives as text and is parsed.
 * Everything else (numbers, text, enums, booleans, and MySQL's TINYINT booleans as 0/1) is
 * passed on as the adapter gives it.
 */
function decoderFor(type: ColumnType): Decoder {
  switch (type) {
    case ColumnTypeEnum.Int64:
      return (value) => (typeof value === 'bigint' ? value : BigInt(value as string | number));
    case ColumnTypeEnum.DateTime:
    case ColumnTypeEnum.Date:
      return (value) => (value instanceof Date ? value : new Date(withZone(String(value))));
    case ColumnTypeEnum.Json:
      return (value) => (typeof value === 'string' ? (JSON.parse(value) as unknown) : value);
    default:
      return asIs;
  }
}

/** A date-time without a zone designator is UTC here, as the adapters write it. */
function withZone(text: string): string {
  if (text.endsWith('+00:00') || text.endsWith('Z')) return text;
  return ZONED_OR_DATE_ONLY.test(text) ? text : `${text.replace(' ', 'T')}Z`;
}

const ZONED_OR_DATE_ONLY = /(?:[+-]\d{2}(?::?\d{2})?|^\d{4,}-\d{2}-\d{2})$/;
