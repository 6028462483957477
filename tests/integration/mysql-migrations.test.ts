// The MySQL/MariaDB migrations (prisma/mysql/migrations) against a real server (TEST_MARIADB_URL,
// by default the local MariaDB, a database of its own per case).
//
// The WebAssembly schema engine has no MySQL connector, so `migrate check` cannot compare these
// hand-written migrations with prisma/mysql/schema.prisma. This test does instead: it applies
// them to an empty database and compares what information_schema shows with the schema file,
// column by column (type, length, nullability, enum values) and index by index (name, columns,
// uniqueness), the way Prisma names and types them on MySQL. A model change without a matching
// MySQL migration fails here.
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { cp, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mariadb from 'mariadb';
import { describe, expect, it } from 'vitest';
import { createDatabase, type Database } from '../../src/infrastructure/database/database.ts';
import { applyMigrations, MYSQL_DEPLOY_LOCK_NAME } from '../../src/infrastructure/database/migrations.ts';
import { UnavailableError } from '../../src/domain/errors.ts';
import { PrismaUserRepository } from '../../src/repositories/user-repository.ts';

const root = join(import.meta.dirname, '..', '..');
const migrationsDir = join(root, 'prisma', 'mysql', 'migrations');
const serverUrl = process.env.TEST_MARIADB_URL ?? 'mysql://root@127.0.0.1:3306/mysql';

/**
 * Indexes the migrations add beyond the schema's: the search's prefix indexes (Prisma's schema
 * language has no reason to know them) and nothing else.
 */
const EXTRA_INDEXES = new Set(['users.users_username_prefix_idx', 'users.users_first_name_prefix_idx', 'users.users_last_name_prefix_idx']);

async function withDatabase<T>(work: (database: Database) => Promise<T>): Promise<T> {
  const admin = await createDatabase({ databaseUrl: serverUrl, dataDir: 'memory://' });
  const name = `test_migrations_${randomUUID().replaceAll('-', '').slice(0, 12)}`;
  await admin.prisma.$executeRawUnsafe(`CREATE DATABASE \`${name}\``);
  const url = new URL(serverUrl);
  url.pathname = `/${name}`;
  const database = await createDatabase({ databaseUrl: url.toString(), dataDir: 'memory://' });
  try {
    return await work(database);
  } finally {
    await database.close();
    await admin.prisma.$executeRawUnsafe(`DROP DATABASE IF EXISTS \`${name}\``);
    await admin.close();
  }
}

function databaseUrl(database: Database): string {
  const url = new URL(serverUrl);
  url.pathname = `/${database.schema}`;
  return url.toString();
}

/** A connection whose open transaction has read `table`: DDL on it waits for the transaction. */
async function holdTable(database: Database, table: string): Promise<mariadb.Connection> {
  const connection = await mariadb.createConnection(databaseUrl(database).replace(/^mysql:/, 'mariadb:'));
  await connection.query('START TRANSACTION');
  await connection.query(`SELECT COUNT(*) FROM \`${table}\``);
  return connection;
}

/** Waits until the server's process list has a statement of this database matching `where` (or, with `present` false, none). */
async function waitFor(database: Database, what: string, where: string, present = true): Promise<void> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const rows = await database.prisma.$queryRawUnsafe<unknown[]>(`SELECT 1 FROM information_schema.PROCESSLIST WHERE DB = DATABASE() AND ID <> CONNECTION_ID() AND ${where}`);
    if (rows.length > 0 === present) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

// ---- what prisma/mysql/schema.prisma declares, read with a parser just big enough for it.

interface Column {
  name: string;
  type: string;
  nullable: boolean;
}
interface Index {
  name: string;
  columns: string[];
  unique: boolean;
}
interface Table {
  columns: Column[];
  indexes: Index[];
}

function snake(field: string, fields: Map<string, string>): string {
  return fields.get(field) ?? field;
}

function declaredTables(schema: string): Map<string, Table> {
  const enums = new Map<string, string[]>();
  for (const [, name, body] of schema.matchAll(/^enum (\w+) \{([^}]*)\}/gm)) {
    enums.set(
      name!,
      body!
        .split('\n')
        .map((line) => line.replace(/\/\/.*$/, '').trim())
        .filter((line) => /^\w+$/.test(line)),
    );
  }
  const tables = new Map<string, Table>();
  for (const [, model, body] of schema.matchAll(/^model (\w+) \{([^}]*)\}/gm)) {
    const lines = body!
      .split('\n')
      .map((line) => line.replace(/\/\/.*$/, '').trim())
      .filter((line) => line !== '');
    const table = /@@map\("(\w+)"\)/.exec(body!)?.[1] ?? model!;
    const dbNames = new Map<string, string>();
    const columns: Column[] = [];
    const indexes: Index[] = [];
    for (const line of lines) {
      const field = /^(\w+)\s+(\w+)(\?|\[\])?\s*(.*)$/.exec(line);
      if (field === null || line.startsWith('@@')) continue;
      const [, name, type, modifier, attributes] = field as unknown as [string, string, string, string | undefined, string];
      if (modifier === '[]' || attributes.includes('@relation') || (!enums.has(type) && !SCALARS.has(type))) continue;
      const column = /@map\("(\w+)"\)/.exec(attributes)?.[1] ?? name;
      dbNames.set(name, column);
      columns.push({ name: column, type: columnType(type, /@db\.(\w+(\(\d+\))?)/.exec(attributes)?.[1], enums), nullable: modifier === '?' });
      if (/@id\b/.test(attributes)) indexes.push({ name: 'PRIMARY', columns: [column], unique: true });
      if (/@unique\b/.test(attributes)) indexes.push({ name: `${table}_${column}_key`, columns: [column], unique: true });
    }
    for (const [, kind, list] of body!.matchAll(/@@(index|unique)\(\[([^\]]*)\]/g)) {
      const cols = list!.split(',').map((each) => snake(each.trim(), dbNames));
      indexes.push({ name: `${table}_${cols.join('_')}_${kind === 'unique' ? 'key' : 'idx'}`, columns: cols, unique: kind === 'unique' });
    }
    // A relation's foreign key is backed by an index; Prisma adds none when one already leads with it.
    for (const [, fields] of body!.matchAll(/@relation\(fields: \[([^\]]*)\]/g)) {
      const cols = fields!.split(',').map((each) => snake(each.trim(), dbNames));
      if (!indexes.some((index) => cols.every((col, i) => index.columns[i] === col))) {
        indexes.push({ name: `${table}_${cols.join('_')}_fkey`, columns: cols, unique: false });
      }
    }
    tables.set(table, { columns, indexes });
  }
  return tables;
}

const SCALARS = new Set(['Int', 'String', 'Boolean', 'DateTime', 'Json', 'Bytes']);

/** The column type information_schema reports for a Prisma type on MySQL/MariaDB. */
function columnType(type: string, native: string | undefined, enums: Map<string, string[]>): string {
  const values = enums.get(type);
  if (values !== undefined) return `enum(${values.map((value) => `'${value}'`).join(',')})`;
  if (native !== undefined) return native.toLowerCase();
  const types: Record<string, string> = {
    Int: 'int',
    String: 'varchar(191)',
    Boolean: 'tinyint(1)',
    DateTime: 'datetime(3)',
    // MariaDB's JSON is LONGTEXT with a JSON_VALID check; MySQL's is JSON.
    Json: 'json|longtext',
    Bytes: 'longblob',
  };
  return types[type] ?? `unknown ${type}`;
}

// ---- what the migrated database has.

async function actualTables(database: Database): Promise<Map<string, Table>> {
  const columns = await database.prisma.$queryRawUnsafe<{ t: string; c: string; type: string; nullable: string }[]>(
    `SELECT CAST(TABLE_NAME AS CHAR) AS t, CAST(COLUMN_NAME AS CHAR) AS c, CAST(COLUMN_TYPE AS CHAR) AS type, CAST(IS_NULLABLE AS CHAR) AS nullable
     FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME <> '_prisma_migrations' ORDER BY TABLE_NAME, ORDINAL_POSITION`,
  );
  const indexes = await database.prisma.$queryRawUnsafe<{ t: string; i: string; c: string; nonUnique: string }[]>(
    `SELECT CAST(TABLE_NAME AS CHAR) AS t, CAST(INDEX_NAME AS CHAR) AS i, CAST(COLUMN_NAME AS CHAR) AS c, CAST(NON_UNIQUE AS CHAR) AS nonUnique
     FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME <> '_prisma_migrations' ORDER BY TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX`,
  );
  const tables = new Map<string, Table>();
  const table = (name: string) => tables.get(name) ?? tables.set(name, { columns: [], indexes: [] }).get(name)!;
  for (const row of columns) {
    // MySQL 8 reports `int`, MariaDB `int(11)`: the display width means nothing.
    table(row.t).columns.push({ name: row.c, type: row.type.replace(/^int\(\d+\)/, 'int'), nullable: row.nullable === 'YES' });
  }
  for (const row of indexes) {
    if (EXTRA_INDEXES.has(`${row.t}.${row.i}`)) continue;
    const { indexes: list } = table(row.t);
    const existing = list.find((index) => index.name === row.i);
    if (existing === undefined) list.push({ name: row.i, columns: [row.c], unique: row.nonUnique === '0' });
    else existing.columns.push(row.c);
  }
  return tables;
}

const byName = <T extends { name: string }>(items: T[]) => items.toSorted((a, b) => a.name.localeCompare(b.name));

describe('MySQL/MariaDB migrations', () => {
  it('when applied to an empty database, then its tables are exactly prisma/mysql/schema.prisma', async () => {
    const declared = declaredTables(await readFile(join(root, 'prisma', 'mysql', 'schema.prisma'), 'utf8'));
    expect(declared.size).toBeGreaterThan(0);
    await withDatabase(async (database) => {
      await applyMigrations(database, migrationsDir);
      const actual = await actualTables(database);
      expect([...actual.keys()].sort()).toEqual([...declared.keys()].sort());
      for (const [name, table] of declared) {
        const columns = actual.get(name)?.columns ?? [];
        expect(
          byName(columns).map((column) => column.name),
          name,
        ).toEqual(byName(table.columns).map((column) => column.name));
        for (const column of table.columns) {
          const found = columns.find((each) => each.name === column.name);
          expect(found?.type, `${name}.${column.name}`).toMatch(new RegExp(`^(${column.type.replace(/[()']/g, '\\$&')})$`));
          expect(found?.nullable, `${name}.${column.name} nullable`).toBe(column.nullable);
        }
        expect(byName(actual.get(name)?.indexes ?? []), `${name} indexes`).toEqual(byName(table.indexes));
      }
    });
  }, 60_000);

  it('when deployed twice, or by three processes at once, then each migration is applied once and recorded as Prisma records it', async () => {
    await withDatabase(async (database) => {
      const url = new URL(serverUrl);
      url.pathname = `/${database.schema}`;
      const others = await Promise.all([1, 2].map(() => createDatabase({ databaseUrl: url.toString(), dataDir: 'memory://' })));
      try {
        const applied = await Promise.all([database, ...others].map((each) => applyMigrations(each, migrationsDir)));
        const names = applied.flat().sort();
        expect(names.length).toBeGreaterThan(0);
        expect(new Set(names).size).toBe(names.length);
        expect(await applyMigrations(database, migrationsDir)).toEqual([]);
        const rows = await database.prisma.$queryRawUnsafe<{ migration_name: string; finished: number | bigint; applied_steps_count: number | bigint }[]>(
          'SELECT migration_name, finished_at IS NOT NULL AS finished, applied_steps_count FROM _prisma_migrations ORDER BY migration_name',
        );
        expect(rows.map((row) => [row.migration_name, Number(row.finished), Number(row.applied_steps_count)])).toEqual(names.map((name) => [name, 1, 1]));
      } finally {
        await Promise.all(others.map((each) => each.close()));
      }
    });
  }, 60_000);

  it('when a migration fails, then it is recorded unfinished with its error, and later deploys refuse until it is resolved', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'arcana-mysql-migrations-'));
    try {
      await mkdir(join(dir, '20250101000000_bad'));
      await writeFile(join(dir, '20250101000000_bad', 'migration.sql'), 'CREATE TABLE half (id INT);\nCREATE TABLE half (id INT);\n');
      await withDatabase(async (database) => {
        await expect(applyMigrations(database, dir)).rejects.toThrow(/20250101000000_bad failed: .*already exists/);
        const [row] = await database.prisma.$queryRawUnsafe<{ finished_at: Date | null; logs: string | null }[]>('SELECT finished_at, logs FROM _prisma_migrations');
        expect(row?.finished_at).toBeNull();
        expect(row?.logs).toMatch(/already exists/);
        await expect(applyMigrations(database, dir)).rejects.toThrow(/20250101000000_bad failed on this database before; resolve it/);
      });
    } finally {
      await rm(dir, { recursive: true });
    }
  }, 60_000);

  it('when a statement waits for a lock longer than DATABASE_LOCK_TIMEOUT_MS, then the deploy gives up in that time, and the next one carries on after the statements it did', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'arcana-mysql-migrations-'));
    try {
      await mkdir(join(dir, '20250101000000_held'));
      await writeFile(join(dir, '20250101000000_held', 'migration.sql'), 'CREATE TABLE held (id INT);\n');
      await withDatabase(async (database) => {
        expect(await applyMigrations(database, dir)).toEqual(['20250101000000_held']);
        await mkdir(join(dir, '20250101000100_more'));
        await writeFile(join(dir, '20250101000100_more', 'migration.sql'), '-- made, then a wait\nCREATE TABLE made_first (id INT);\nALTER TABLE held ADD COLUMN later INT;\n');
        const bounded = await createDatabase({ databaseUrl: databaseUrl(database), dataDir: 'memory://', lockTimeoutMs: 1_000 });
        // A report's transaction has read the table: the ALTER waits for its metadata lock.
        const report = await holdTable(database, 'held');
        try {
          const started = Date.now();
          await expect(applyMigrations(bounded, dir)).rejects.toThrow(/20250101000100_more failed: .*Lock wait timeout/);
          expect(Date.now() - started).toBeLessThan(10_000);
          const [attempt] = await database.prisma.$queryRawUnsafe<{ rolled_back: number | bigint; steps: number | bigint }[]>(
            "SELECT rolled_back_at IS NOT NULL AS rolled_back, applied_steps_count AS steps FROM _prisma_migrations WHERE migration_name = '20250101000100_more'",
          );
          expect([Number(attempt?.rolled_back), Number(attempt?.steps)]).toEqual([1, 1]);
          await report.query('COMMIT');
          // Not "failed before; resolve it", and not CREATE TABLE made_first again ("already exists").
          expect(await applyMigrations(bounded, dir)).toEqual(['20250101000100_more']);
          const columns = await database.prisma.$queryRawUnsafe<{ name: string }[]>(
            "SELECT COLUMN_NAME AS name FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'held' ORDER BY ORDINAL_POSITION",
          );
          expect(columns.map((column) => column.name)).toEqual(['id', 'later']);
          expect(await applyMigrations(bounded, dir)).toEqual([]);
        } finally {
          await report.end();
          await bounded.close();
        }
      });
    } finally {
      await rm(dir, { recursive: true });
    }
  }, 60_000);

  it('when a start is killed while its migration waits for a lock (a startup probe, a rollout), then the next start applies the migration instead of refusing for ever', async () => {
    const names = (await readdir(migrationsDir)).filter((name) => /^\d+_/.test(name)).sort();
    const newest = names.at(-1) ?? '';
    const previous = await mkdtemp(join(tmpdir(), 'arcana-mysql-migrations-'));
    try {
      await cp(migrationsDir, previous, { recursive: true, filter: (source) => !source.includes(newest) });
      await withDatabase(async (database) => {
        expect(await applyMigrations(database, previous)).toHaveLength(names.length - 1);
        // The newest migration alters audit_events, which a report's transaction has read.
        const report = await holdTable(database, 'audit_events');
        const child = spawn(process.execPath, [join(root, 'src', 'main.js')], {
          cwd: root,
          env: {
            ...process.env,
            DATABASE_URL: databaseUrl(database),
            DATABASE_LOCK_TIMEOUT_MS: '60000',
            PORT: '0',
            REDIS_URL: '',
            JWT_SECRET: 'mysql-migration-recovery-'.padEnd(64, 'x'),
            LOG_LEVEL: 'fatal',
          },
          stdio: 'ignore',
        });
        const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
        try {
          await waitFor(database, 'the migration to wait for the lock', "STATE LIKE '%metadata lock%' AND INFO LIKE '%ALTER TABLE%audit_events%'");
        } finally {
          child.kill('SIGKILL');
          await exited;
          await report.query('COMMIT');
          await report.end();
        }
        // The server runs the dead start's ALTER now that the report is over: the next start,
        // right away, waits for it rather than run it a second time ("Duplicate column name").
        const abandoned: string[][] = [];
        expect(await applyMigrations(database, migrationsDir, (each) => abandoned.push(each))).toEqual([newest]);
        expect(abandoned).toEqual([[newest]]);
        expect(await applyMigrations(database, migrationsDir)).toEqual([]);
      });
    } finally {
      await rm(previous, { recursive: true });
    }
  }, 90_000);

  it('when a start is killed while a statement of its migration runs, then the next start waits for that statement and does not make its change twice', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'arcana-mysql-migrations-'));
    try {
      await mkdir(join(dir, '20250101000000_backfill'));
      // A backfill that takes two seconds: an INSERT run twice would leave two rows.
      await writeFile(
        join(dir, '20250101000000_backfill', 'migration.sql'),
        'CREATE TABLE made (n INT);\nINSERT INTO made SELECT SLEEP(2) + 1;\nCREATE INDEX made_n ON made(n);\n',
      );
      await withDatabase(async (database) => {
        const starter = join(dir, 'start.ts');
        await writeFile(
          starter,
          `import { createDatabase } from ${JSON.stringify(join(root, 'src', 'infrastructure', 'database', 'database.ts'))};\n` +
            `import { applyMigrations } from ${JSON.stringify(join(root, 'src', 'infrastructure', 'database', 'migrations.ts'))};\n` +
            `await applyMigrations(await createDatabase({ databaseUrl: process.argv[2], dataDir: 'memory://' }), process.argv[3]);\n`,
        );
        const child = spawn(process.execPath, [starter, databaseUrl(database), dir], { stdio: 'ignore' });
        const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
        try {
          await waitFor(database, 'the backfill to run', "STATE = 'User sleep'");
        } finally {
          child.kill('SIGKILL');
          await exited;
        }
        const abandoned: string[][] = [];
        expect(await applyMigrations(database, dir, (each) => abandoned.push(each))).toEqual(['20250101000000_backfill']);
        expect(abandoned).toEqual([['20250101000000_backfill']]);
        const [made] = await database.prisma.$queryRawUnsafe<{ rows: number | bigint }[]>('SELECT COUNT(*) AS `rows` FROM made');
        expect(Number(made?.rows)).toBe(1);
        expect(await applyMigrations(database, dir)).toEqual([]);
      });
    } finally {
      await rm(dir, { recursive: true });
    }
  }, 60_000);

  it('when an operator kills a migration statement that waits for a lock, then that start fails, and the next one applies the migration instead of refusing for ever', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'arcana-mysql-migrations-'));
    try {
      await mkdir(join(dir, '20250101000000_held'));
      await writeFile(join(dir, '20250101000000_held', 'migration.sql'), 'CREATE TABLE held (id INT);\n');
      await withDatabase(async (database) => {
        expect(await applyMigrations(database, dir)).toEqual(['20250101000000_held']);
        await mkdir(join(dir, '20250101000100_alter'));
        await writeFile(join(dir, '20250101000100_alter', 'migration.sql'), 'ALTER TABLE held ADD COLUMN later INT;\n');
        const report = await holdTable(database, 'held');
        const patient = await createDatabase({ databaseUrl: databaseUrl(database), dataDir: 'memory://', lockTimeoutMs: 30_000 });
        try {
          const deploy = applyMigrations(patient, dir);
          await waitFor(database, 'the ALTER to wait for the lock', "STATE LIKE '%metadata lock%' AND INFO LIKE '%ALTER TABLE held%'");
          // What an operator does when the ALTER holds everyone's logins up behind it.
          const [waiting] = await database.prisma.$queryRawUnsafe<{ id: number | bigint }[]>(
            "SELECT ID AS id FROM information_schema.PROCESSLIST WHERE DB = DATABASE() AND STATE LIKE '%metadata lock%' AND INFO LIKE '%ALTER TABLE held%'",
          );
          await database.prisma.$executeRawUnsafe(`KILL QUERY ${Number(waiting?.id)}`);
          await expect(deploy).rejects.toThrow(/20250101000100_alter failed: .*interrupted/i);
          await report.query('COMMIT');
          expect(await applyMigrations(patient, dir)).toEqual(['20250101000100_alter']);
        } finally {
          await report.end();
          await patient.close();
        }
      });
    } finally {
      await rm(dir, { recursive: true });
    }
  }, 60_000);

  it("when the database's name is long, then the deploy lock's name still fits MySQL's 64 characters and names that database alone", async () => {
    const admin = await createDatabase({ databaseUrl: serverUrl, dataDir: 'memory://' });
    try {
      const lockName = async (database: string) => {
        const [row] = await admin.prisma.$queryRawUnsafe<{ name: string }[]>(
          `SELECT ${MYSQL_DEPLOY_LOCK_NAME.replaceAll('DATABASE()', '?')} AS name`,
          database,
          database,
          database,
        );
        return row?.name ?? '';
      };
      expect(await lockName('shop')).toBe('shop.arcana_migrate_deploy');
      const longest = ['a', 'b'].map((last) => `${'x'.repeat(63)}${last}`);
      const names = await Promise.all(longest.map(lockName));
      for (const name of names) expect(name.length).toBeLessThanOrEqual(64);
      expect(names[0]).not.toBe(names[1]);
      expect((await lockName('y'.repeat(41))).length).toBe(63);
      expect((await lockName('y'.repeat(42))).length).toBeLessThanOrEqual(64);
    } finally {
      await admin.close();
    }
  });

  it('when the server is out of reach, then a repository call fails as unavailable (503), not as an unknown error', async () => {
    // Port 9 (discard) has no MySQL server; short timeouts keep the test quick.
    const database = await createDatabase({ databaseUrl: 'mysql://root@127.0.0.1:9/nowhere?connectTimeout=300&acquireTimeout=600', dataDir: 'memory://' });
    try {
      await expect(new PrismaUserRepository(database).findById(1)).rejects.toBeInstanceOf(UnavailableError);
    } finally {
      await database.close();
    }
  }, 30_000);

  it('when the URL names no database or an unusable one, then opening it fails with a clear error', async () => {
    await expect(createDatabase({ databaseUrl: 'mysql://root@127.0.0.1:3306/', dataDir: 'memory://' })).rejects.toThrow(/names no database/);
    await expect(createDatabase({ databaseUrl: 'mysql://root@127.0.0.1:3306/a-b', dataDir: 'memory://' })).rejects.toThrow(/Invalid database name "a-b"/);
    await expect(createDatabase({ databaseUrl: 'sqlite://x', dataDir: 'memory://' })).rejects.toThrow(/expected postgresql:\/\/, mysql:\/\/ or mariadb:\/\//);
  });
});
