// The raw reader (src/infrastructure/database/raw-reader.ts) on its own: which statements
// node-postgres prepares (only the reader's, each text under one name for the life of the
// process, no more than a bounded number of texts), and how it decodes the wire forms adapters
// write. tests/integration/user-listing.test.ts reads through it on the real databases.
import { ColumnTypeEnum, type SqlDriverAdapter, type SqlQuery, type SqlResultSet } from '@prisma/driver-adapter-utils';
import { describe, expect, it } from 'vitest';
import { Prisma } from '../../gen/prisma/client.ts';
import { createRawReader, StatementNames } from '../../src/infrastructure/database/raw-reader.ts';

const statement = (sql: string): SqlQuery => ({ sql, args: [20, 0], argTypes: [] });

describe('StatementNames', () => {
  it('when a statement was not marked by the reader (one of Prisma’s), then it stays unnamed', () => {
    expect(new StatementNames().nameOf(statement('SELECT 1'))).toBe('');
  });

  it('when the reader sends the same text again, then it has the same name; another text has another', () => {
    const names = new StatementNames();
    const first = names.nameOf(names.mark(statement('SELECT a LIMIT $1 OFFSET $2')));
    expect(first).toMatch(/^arcana_read_\d+$/);
    expect(names.nameOf(names.mark(statement('SELECT a LIMIT $1 OFFSET $2')))).toBe(first);
    const second = names.nameOf(names.mark(statement('SELECT b LIMIT $1 OFFSET $2')));
    expect(second).toMatch(/^arcana_read_\d+$/);
    expect(second).not.toBe(first);
    // The mark is on the statement object, not its text: Prisma's own copy of a text stays unnamed.
    expect(names.nameOf(statement('SELECT a LIMIT $1 OFFSET $2'))).toBe('');
  });

  it('when a name is retired (its prepared statement went stale), then the text gets a new one; a stale retirement leaves the newer name', () => {
    const names = new StatementNames();
    const text = 'SELECT a LIMIT $1 OFFSET $2';
    const old = names.nameOf(names.mark(statement(text)));
    names.retire(text, old);
    const renamed = names.nameOf(names.mark(statement(text)));
    expect(renamed).toMatch(/^arcana_read_\d+$/);
    expect(renamed).not.toBe(old);
    // A second read that failed under the old name, retiring it late.
    names.retire(text, old);
    expect(names.nameOf(names.mark(statement(text)))).toBe(renamed);
  });

  it('when more texts than the bound arrive, then the rest go unnamed and the named keep their names', () => {
    const names = new StatementNames();
    const named = Array.from({ length: StatementNames.MAX_NAMED }, (_, i) => names.nameOf(names.mark(statement(`SELECT ${i}`))));
    expect(new Set(named).size).toBe(StatementNames.MAX_NAMED);
    expect(names.nameOf(names.mark(statement('SELECT too_many')))).toBe('');
    expect(names.nameOf(names.mark(statement('SELECT 0')))).toBe(named[0]);
  });
});

describe('createRawReader', () => {
  /** An adapter that answers every statement with `result`, recording what it was sent. */
  const answering =
    (result: Pick<SqlResultSet, 'columnNames' | 'columnTypes' | 'rows'>, sent: SqlQuery[] = []) =>
    async () =>
      ({
        queryRaw: async (query: SqlQuery) => {
          sent.push(query);
          return result;
        },
      }) as unknown as SqlDriverAdapter;

  it('when an adapter writes values its own way, then they are decoded as $queryRaw decodes them', async () => {
    const read = createRawReader(
      answering({
        columnNames: ['n', 'pg', 'zoneless', 'zulu', 'offset', 'day', 'json', 'flag', 'tiny', 'name', 'none'],
        columnTypes: [
          ColumnTypeEnum.Int64,
          ColumnTypeEnum.DateTime,
          ColumnTypeEnum.DateTime,
          ColumnTypeEnum.DateTime,
          ColumnTypeEnum.DateTime,
          ColumnTypeEnum.Date,
          ColumnTypeEnum.Json,
          ColumnTypeEnum.Boolean,
          ColumnTypeEnum.Int32,
          ColumnTypeEnum.Enum,
          ColumnTypeEnum.DateTime,
        ],
        rows: [
          [
            '9007199254740993',
            '2026-01-02T03:04:05.678+00:00',
            '2026-01-02 03:04:05.678',
            '1969-07-20T20:17:40.123Z',
            '2026-01-02T05:04:05+02:00',
            '2026-01-02',
            '{"a":[1]}',
            true,
            1,
            'ADMIN',
            null,
          ],
        ],
      }),
      'numbered',
      () => undefined,
    );
    expect(await read(Prisma.sql`SELECT 1`)).toStrictEqual([
      {
        n: 9007199254740993n,
        pg: new Date('2026-01-02T03:04:05.678Z'),
        // No zone written: UTC, as every adapter means it.
        zoneless: new Date('2026-01-02T03:04:05.678Z'),
        zulu: new Date('1969-07-20T20:17:40.123Z'),
        offset: new Date('2026-01-02T03:04:05Z'),
        day: new Date('2026-01-02T00:00:00Z'),
        json: { a: [1] },
        flag: true,
        tiny: 1,
        name: 'ADMIN',
        none: null,
      },
    ]);
  });

  it('when a statement is read, then its placeholders are the dialect’s, its values bound with their kinds, and it is counted', async () => {
    const sent: SqlQuery[] = [];
    let counted = 0;
    const result = { columnNames: [], columnTypes: [], rows: [] };
    const query = Prisma.sql`SELECT * FROM users WHERE role = ${'ADMIN'} LIMIT ${20} OFFSET ${0.5}`;
    await createRawReader(answering(result, sent), 'numbered', () => (counted += 1))(query);
    await createRawReader(answering(result, sent), 'question', () => (counted += 1))(query);
    expect(sent.map((each) => each.sql)).toStrictEqual(['SELECT * FROM users WHERE role = $1 LIMIT $2 OFFSET $3', 'SELECT * FROM users WHERE role = ? LIMIT ? OFFSET ?']);
    expect(sent[0]?.args).toStrictEqual(['ADMIN', 20, 0.5]);
    expect(sent[0]?.argTypes.map((type) => type.scalarType)).toStrictEqual(['string', 'int', 'float']);
    expect(counted).toBe(2);
  });
});
