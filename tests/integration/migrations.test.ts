// Migrations against real databases: a PostgreSQL server (TEST_DATABASE_URL, by default the local
// `test` database, in a schema of its own per run) and embedded PGlite directories.
import { createHash, randomUUID } from 'node:crypto';
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDatabase } from '../../src/infrastructure/database/database.ts';
import type { Database } from '../../src/infrastructure/database/database.ts';
import { applyMigrations, diffMigrationsToSchema } from '../../src/infrastructure/database/migrations.ts';

const root = join(import.meta.dirname, '..', '..');
const migrationsDir = join(root, 'prisma', 'migrations');
const schemaPath = join(root, 'prisma', 'schema.prisma');
const testDatabaseUrl = process.env.TEST_DATABASE_URL ?? 'postgresql://postgres@127.0.0.1:5432/test';

// Starting PGlite runs initdb, which takes seconds; so does each diff, which replays the
// migrations on an in-memory PGlite.
const SLOW = 120_000;

interface MigrationRow {
  migration_name: string;
  checksum: string;
  finished_at: Date | null;
  rolled_back_at: Date | null;
  applied_steps_count: number;
}

const allMigrations = (await readdir(migrationsDir)).filter((name) => /^\d+_/.test(name)).sort();
const initMigration = allMigrations.find((name) => name.endsWith('_init'));
if (initMigration === undefined) {
  throw new Error(`No *_init migration in ${migrationsDir}`);
}
const initChecksum = createHash('sha256')
  .update(await readFile(join(migrationsDir, initMigration, 'migration.sql'), 'utf8'))
  .digest('hex');

function uniqueSchemaName(purpose: string): string {
  return `test_${purpose}_${randomUUID().replaceAll('-', '').slice(0, 12)}`;
}

async function openPostgres(schema: string): Promise<Database> {
  const url = new URL(testDatabaseUrl);
  url.searchParams.set('schema', schema);
  // dataDir only matters for PGlite.
  return createDatabase({ databaseUrl: url.toString(), dataDir: join(tmpdir(), 'unused') });
}

async function dropSchema(database: Database): Promise<void> {
  await database.prisma.$executeRawUnsafe(`DROP SCHEMA IF EXISTS "${database.schema}" CASCADE`);
}

async function migrationRows(database: Database): Promise<MigrationRow[]> {
  return database.prisma.$queryRawUnsafe<MigrationRow[]>('SELECT migration_name, checksum, finished_at, rolled_back_at, applied_steps_count FROM _prisma_migrations');
}

async function tableNames(database: Database): Promise<string[]> {
  // Cast to text: information_schema's own types are not among those the adapters map.
  const rows = await database.prisma.$queryRawUnsafe<{ name: string }[]>(`SELECT table_name::text AS name FROM information_schema.tables WHERE table_schema = current_schema()`);
  return rows.map((row) => row.name).sort();
}

/** Writes a migrations folder with one migration holding `sql`. */
async function writeMigrationsDir(sql: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'arcana-migrations-'));
  await mkdir(join(dir, '20250101000000_custom'));
  await writeFile(join(dir, '20250101000000_custom', 'migration.sql'), sql);
  await writeFile(join(dir, 'migration_lock.toml'), await readFile(join(migrationsDir, 'migration_lock.toml')));
  return dir;
}

async function expectMigrated(database: Database): Promise<void> {
  const rows = await migrationRows(database);
  expect(rows.map((row) => row.migration_name).sort()).toEqual(allMigrations);
  const init = rows.find((row) => row.migration_name === initMigration);
  expect(init).toMatchObject({ checksum: initChecksum, rolled_back_at: null, applied_steps_count: 1 });
  for (const row of rows) expect(row.finished_at).toBeInstanceOf(Date);
  expect(await tableNames(database)).toEqual(['_prisma_migrations', 'audit_events', 'idempotency_records', 'oauth_tokens', 'users']);
}

async function expectPrismaWorks(database: Database): Promise<void> {
  const user = await database.prisma.user.create({
    data: { username: 'migration-check', usernameKey: 'migration-check', email: 'migration-check@example.com', passwordHash: 'x' },
  });
  expect(user.role).toBe('USER');
  expect(await database.prisma.user.count()).toBe(1);
}

describe('migrations on PostgreSQL', { timeout: SLOW }, () => {
  let database: Database;

  beforeAll(async () => {
    database = await openPostgres(uniqueSchemaName('migrations'));
  });

  afterAll(async () => {
    await dropSchema(database);
    await database.close();
  });

  it('applies the init migration to a fresh schema and records it as prisma migrate deploy does', async () => {
    expect(await applyMigrations(database, migrationsDir)).toEqual(allMigrations);
    await expectMigrated(database);
  });

  it('applies nothing when run again', async () => {
    expect(await applyMigrations(database, migrationsDir)).toEqual([]);
    await expectMigrated(database);
  });

  it('serves Prisma Client queries from the migrated schema', async () => {
    await expectPrismaWorks(database);
  });

  it('lets exactly one of several concurrent deploys apply a migration', async () => {
    const schema = uniqueSchemaName('concurrent');
    // Separate Database objects have separate connection pools, like separate processes.
    const databases = await Promise.all([openPostgres(schema), openPostgres(schema), openPostgres(schema)]);
    try {
      const applied = await Promise.all(databases.map((each) => applyMigrations(each, migrationsDir)));
      expect(applied.flat()).toEqual(allMigrations);
      await expectMigrated(databases[0]);
    } finally {
      await dropSchema(databases[0]);
      await Promise.all(databases.map((each) => each.close()));
    }
  });

  it('runs a script whole, semicolons in literals included, and rolls a failing one back', async () => {
    const good = await writeMigrationsDir(`CREATE TABLE "notes" ("body" TEXT NOT NULL DEFAULT 'a;b');`);
    const bad = await writeMigrationsDir('CREATE TABLE "half" ("id" INT);\nCREATE TABLE "half" ("id" INT);\n');
    const first = await openPostgres(uniqueSchemaName('script'));
    const second = await openPostgres(uniqueSchemaName('failing'));
    try {
      expect(await applyMigrations(first, good)).toEqual(['20250101000000_custom']);
      expect(await tableNames(first)).toContain('notes');

      await expect(applyMigrations(second, bad)).rejects.toThrow(/relation "half" already exists/);
      const [row] = await migrationRows(second);
      expect(row?.finished_at).toBeNull();
      expect(await tableNames(second)).not.toContain('half');
    } finally {
      await Promise.all([dropSchema(first), dropSchema(second)]);
      await Promise.all([first.close(), second.close()]);
      await Promise.all([rm(good, { recursive: true }), rm(bad, { recursive: true })]);
    }
  });
});

describe('migrations on PGlite', { timeout: SLOW }, () => {
  let dir: string;
  let database: Database;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'arcana-pglite-'));
    database = await createDatabase({ dataDir: join(dir, 'data') });
  }, SLOW);

  afterAll(async () => {
    await database.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('applies the init migration to a new data directory', async () => {
    expect(database.kind).toBe('pglite');
    expect(await applyMigrations(database, migrationsDir)).toEqual(allMigrations);
    await expectMigrated(database);
    await expectPrismaWorks(database);
  });

  it('applies nothing once the directory is reopened', async () => {
    await database.close();
    database = await createDatabase({ dataDir: join(dir, 'data') });
    expect(await applyMigrations(database, migrationsDir)).toEqual([]);
    await expectMigrated(database);
    expect(await database.prisma.user.count()).toBe(1);
  });

  it('reports a failing migration instead of recording it as applied', async () => {
    const bad = await writeMigrationsDir('CREATE TABLE "half" ("id" INT);\nCREATE TABLE "half" ("id" INT);\n');
    const scratch = await createDatabase({ dataDir: 'memory://' });
    try {
      await expect(applyMigrations(scratch, bad)).rejects.toThrow(/relation "half" already exists/);
      const [row] = await migrationRows(scratch);
      expect(row?.finished_at).toBeNull();
      expect(await tableNames(scratch)).not.toContain('half');
    } finally {
      await scratch.close();
      await rm(bad, { recursive: true });
    }
  });
});

describe('schema drift check', { timeout: SLOW }, () => {
  it('finds prisma/schema.prisma in sync with prisma/migrations', async () => {
    expect(await diffMigrationsToSchema(migrationsDir, schemaPath)).toBe('');
  });

  it('returns the SQL for a schema change that no migration contains', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'arcana-schema-'));
    try {
      const schema = await readFile(schemaPath, 'utf8');
      const changed = schema.replace('lastLoginAt  DateTime?', 'nickname     String?\n  lastLoginAt  DateTime?');
      expect(changed).not.toBe(schema);
      await writeFile(join(dir, 'schema.prisma'), changed);
      const sql = await diffMigrationsToSchema(migrationsDir, join(dir, 'schema.prisma'));
      expect(sql).toMatch(/ALTER TABLE "users" ADD COLUMN\s+"nickname" TEXT/);
    } finally {
      await rm(dir, { recursive: true });
    }
  });
});
