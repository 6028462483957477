// Which statements node-postgres prepares: only the raw reader's, each text under one name for
// the life of the process, and no more than a bounded number of texts.
import type { SqlQuery } from '@prisma/driver-adapter-utils';
import { describe, expect, it } from 'vitest';
import { StatementNames } from '../../src/infrastructure/database/raw-reader.ts';

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

  it('when more texts than the bound arrive, then the rest go unnamed and the named keep their names', () => {
    const names = new StatementNames();
    const named = Array.from({ length: StatementNames.MAX_NAMED }, (_, i) => names.nameOf(names.mark(statement(`SELECT ${i}`))));
    expect(new Set(named).size).toBe(StatementNames.MAX_NAMED);
    expect(names.nameOf(names.mark(statement('SELECT too_many')))).toBe('');
    expect(names.nameOf(names.mark(statement('SELECT 0')))).toBe(named[0]);
  });
});
