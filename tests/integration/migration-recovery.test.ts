// A start that meets a lock in its migration, or is killed while it waits (a startup probe, a
// rollout). On PostgreSQL the migration's DDL runs in one transaction and is rolled back, but the
// engine's `_prisma_migrations` row (started, never finished) stayed, and every later start of
// every replica and release refused ("migrate found failed migrations") until someone ran
// `prisma migrate resolve` by hand (helper 164). The next start now applies the migration.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { cp, mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { createDatabase, type Database } from '../../src/infrastructure/database/database.ts';
import { applyMigrations } from '../../src/infrastructure/database/migrations.ts';
import { TEST_DATABASE_URL } from '../helpers/test-app.ts';

const root = join(import.meta.dirname, '..', '..');
const migrationsDir = join(root, 'prisma', 'migrations');
const schemas: string[] = [];

const opened: Database[] = [];
const temporary: string[] = [];
afterAll(async () => {
  const admin = new pg.Client({ connectionString: TEST_DATABASE_URL });
  await admin.connect();
  for (const schema of schemas) await admin.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
  await admin.end();
  await Promise.allSettled(opened.map((database) => database.close()));
  await Promise.allSettled(temporary.map((dir) => rm(dir, { recursive: true, force: true })));
});

function schemaUrl(): URL {
  const schema = `migration_recovery_${randomUUID().replaceAll('-', '').slice(0, 12)}`;
  schemas.push(schema);
  const url = new URL(TEST_DATABASE_URL);
  url.searchParams.set('schema', schema);
  return url;
}

async function open(url: URL): Promise<Database> {
  const database = await createDatabase({ databaseUrl: url.toString(), dataDir: join(tmpdir(), 'unused') });
  opened.push(database);
  return database;
}

/**
 * Brings a new schema to the release before the newest migration, then starts the new release
 * (src/main.js, as a replica would) while a transaction holds a read lock on audit_events, which
 * the newest migration alters; `whileWaiting` decides what happens to that start. Then the lock is
 * released and the next start must apply the migration.
 */
async function startDuringLock(
  env: Record<string, string>,
  whileWaiting: (child: ChildProcess, exited: Promise<number | null>, reader: pg.Client) => Promise<void>,
): Promise<void> {
  const url = schemaUrl();
  const schema = url.searchParams.get('schema') ?? '';
  const all = (await readdir(migrationsDir)).filter((name) => /^\d+_/.test(name)).sort();
  const newest = all.at(-1) ?? '';
  const previous = await mkdtemp(join(tmpdir(), 'migration-recovery-'));
  temporary.push(previous);
  await cp(migrationsDir, previous, { recursive: true, filter: (source) => !source.includes(newest) });
  const old = await open(url);
  expect(await applyMigrations(old, previous)).toHaveLength(all.length - 1);

  // A transaction reading audit_events (a report, pg_dump): the migration's ALTER TABLE waits for it.
  const reader = new pg.Client({ connectionString: TEST_DATABASE_URL });
  await reader.connect();
  await reader.query(`SET search_path TO "${schema}"`);
  await reader.query('BEGIN');
  await reader.query('SELECT count(*) FROM audit_events');

  const child = spawn(process.execPath, [join(root, 'src', 'main.js')], {
    cwd: root,
    env: { ...process.env, DATABASE_URL: url.toString(), PORT: '0', REDIS_URL: '', JWT_SECRET: 'migration-recovery-'.padEnd(64, 'x'), LOG_LEVEL: 'fatal', ...env },
    stdio: 'ignore',
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  try {
    await whileWaiting(child, exited, reader);
  } finally {
    child.kill('SIGKILL');
    await exited;
    // The report holding the lock ends a moment later.
    await new Promise((resolve) => setTimeout(resolve, 2_500));
    await reader.query('COMMIT');
    await reader.end();
  }

  // A backend whose client was killed while it waited does not notice until it next writes to
  // the client: it runs the ALTER once the lock is gone. Let it finish before the next start.
  for (let tries = 0; tries < 100; tries += 1) {
    const running = await old.prisma.$queryRawUnsafe<unknown[]>("SELECT 1 FROM pg_stat_activity WHERE query ILIKE '%ALTER TABLE \"audit_events\"%' AND state = 'active'");
    if (running.length === 0) break;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }

  // The lock is gone: the next start (any replica, the same release) must be able to apply it.
  const restarted = await open(url);
  await expect(applyMigrations(restarted, migrationsDir)).resolves.toEqual([newest]);
  const rows = await restarted.prisma.$queryRawUnsafe<{ migration_name: string }[]>(
    'SELECT migration_name FROM _prisma_migrations WHERE rolled_back_at IS NULL AND finished_at IS NOT NULL ORDER BY migration_name',
  );
  expect(rows.map((row) => row.migration_name)).toEqual(all);
}

describe.skipIf(TEST_DATABASE_URL.startsWith('mysql'))('a start whose migration meets a lock', () => {
  it('when the lock outlasts DATABASE_LOCK_TIMEOUT_MS and the start fails, then a start after the lock is gone applies the migration instead of refusing for ever', async () => {
    await startDuringLock({ DATABASE_LOCK_TIMEOUT_MS: '1000' }, async (_child, exited) => {
      // The start gives up by itself (lock_timeout on the engine's connections too).
      const code = await Promise.race([exited, new Promise((resolve) => setTimeout(() => resolve('running'), 30_000))]);
      expect(code).toBe(1);
    });
  }, 60_000);

  it('when the start is killed while its migration waits (a startupProbe, a rollout), then the next start applies the migration instead of refusing for ever', async () => {
    await startDuringLock({ DATABASE_LOCK_TIMEOUT_MS: '60000' }, async () => {
      // Another session: inside the reader's transaction, pg_stat_activity is a snapshot.
      const watcher = new pg.Client({ connectionString: TEST_DATABASE_URL });
      await watcher.connect();
      const deadline = Date.now() + 30_000;
      for (;;) {
        const waiting = await watcher.query("SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query ILIKE '%ALTER TABLE \"audit_events\"%'");
        if (waiting.rowCount !== null && waiting.rowCount > 0) break;
        if (Date.now() > deadline) throw new Error('the migration never waited on the lock');
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      await watcher.end();
    });
  }, 60_000);
});
