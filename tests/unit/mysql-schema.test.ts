// scripts/mysql-schema.ts: the MySQL schema derived from prisma/schema.prisma.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { toMysqlSchema } from '../../scripts/mysql-schema.ts';

const postgres = readFileSync(join(import.meta.dirname, '..', '..', 'prisma', 'schema.prisma'), 'utf8');

describe('toMysqlSchema', () => {
  it('when given prisma/schema.prisma, then it changes the provider, the output and the UUID type, and nothing else', () => {
    const mysql = toMysqlSchema(postgres);
    expect(mysql).toMatch(/datasource db \{\s*provider = "mysql"/);
    expect(mysql).toContain('output                 = "../../gen/prisma-mysql"');
    expect(mysql).not.toMatch(/@db\.Uuid/);
    expect(mysql).toContain('@db.Char(36)');
    // Everything else is the PostgreSQL schema, line for line.
    const body = mysql.slice(mysql.indexOf('// Arcana Cloud'));
    const normalise = (text: string) => text.replace('"postgresql"', '"mysql"').replace('"../gen/prisma"', '"../../gen/prisma-mysql"').replaceAll('@db.Uuid', '@db.Char(36)');
    expect(body).toBe(normalise(postgres));
  });

  it('when the schema uses a PostgreSQL native type without a MySQL mapping, then it fails naming it', () => {
    expect(() => toMysqlSchema(postgres.replace('@db.VarChar(45)', '@db.Inet'))).toThrow(/no MySQL mapping for the native type @db\.Inet/);
  });

  it('when the datasource is not PostgreSQL, then it fails rather than guess', () => {
    expect(() => toMysqlSchema(postgres.replace('provider = "postgresql"', 'provider = "sqlite"'))).toThrow(/provider = "postgresql"/);
  });
});
