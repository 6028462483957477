// The database of a test app: a PostgreSQL schema per app, or, when TEST_DATABASE_URL is a
// mysql:// or mariadb:// URL (the `mariadb` test project), a MySQL database per app. Tests assert
// what was persisted with PostgreSQL's SQL; on MySQL the few PostgreSQL-isms they use are
// rewritten (see toMysql), and results come back as node-postgres would give them.
import { createHash, randomUUID } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import mariadb from 'mariadb';
import pg from 'pg';

export interface TestDatabase {
  /** The URL the app is given: the schema or database of its own. */
  url: string;
  sql<T>(text: string, values?: unknown[]): Promise<T[]>;
  /** Drops the schema or database when `owner`, and closes the connection. */
  close(): Promise<void>;
}

export function isMysqlUrl(url: string): boolean {
  return /^(mysql|mariadb):\/\//.test(url);
}

/** A new schema or database named `name` on the server of `serverUrl`, or, with `existingUrl`, that one. */
export async function openTestDatabase(serverUrl: string, name: string, existingUrl?: string): Promise<TestDatabase> {
  return isMysqlUrl(serverUrl) ? openMysql(serverUrl, name, existingUrl) : openPostgres(serverUrl, name, existingUrl);
}

async function openPostgres(serverUrl: string, name: string, existingUrl: string | undefined): Promise<TestDatabase> {
  const owner = existingUrl === undefined;
  const schema = owner ? name : (new URL(existingUrl).searchParams.get('schema') ?? '');
  const admin = new pg.Client({ connectionString: serverUrl });
  await admin.connect();
  if (owner) await createMigratedSchema(admin, schema);
  else await admin.query(`SET search_path TO "${schema}"`);
  const url = new URL(serverUrl);
  url.searchParams.set('schema', schema);
  return {
    url: url.toString(),
    sql: async <T>(text: string, values?: unknown[]) => (await admin.query(text, values)).rows as T[],
    close: async () => {
      if (owner) await admin.query(`DROP SCHEMA "${schema}" CASCADE`);
      await admin.end();
    },
  };
}

/**
 * Creates the PostgreSQL schema `schema` through `client`, migrated as `prisma migrate deploy`
 * leaves it (see migratedSchemaScript), and points the client's search_path at it. Also for the
 * server processes that tests spawn on a schema of their own: they then start as a restart does,
 * without the schema engine (0.6-1.4 s per start on this machine).
 */
export async function createMigratedSchema(client: pg.Client, schema: string): Promise<void> {
  await client.query(`CREATE SCHEMA "${schema}"`);
  await client.query(`SET search_path TO "${schema}"`);
  await client.query(migratedSchemaScript());
}

const MIGRATIONS_DIR = join(import.meta.dirname, '..', '..', 'prisma', 'migrations');
let migrationScript: string | undefined;

/**
 * What `prisma migrate deploy` leaves in a new PostgreSQL schema: every script of
 * prisma/migrations run in order, and each recorded in `_prisma_migrations` (Prisma's table, with
 * the checksum the app compares), as one statement run on the schema's connection. A test app
 * then starts on a schema whose history is complete, as a restarted app does, and does not load
 * the WebAssembly schema engine: that was ~0.2 s of CPU per test app, hundreds of them a run.
 * The migrations themselves, on new schemas, new PGlite directories and through the engine, are
 * what migrations, migration-recovery, pglite-smoke, server-process and user-listing test.
 */
function migratedSchemaScript(): string {
  if (migrationScript !== undefined) return migrationScript;
  const literal = (text: string) => `'${text.replaceAll("'", "''")}'`;
  const parts = [
    `CREATE TABLE "_prisma_migrations" (
      "id" VARCHAR(36) PRIMARY KEY NOT NULL,
      "checksum" VARCHAR(64) NOT NULL,
      "finished_at" TIMESTAMPTZ,
      "migration_name" VARCHAR(255) NOT NULL,
      "logs" TEXT,
      "rolled_back_at" TIMESTAMPTZ,
      "started_at" TIMESTAMPTZ NOT NULL DEFAULT now(),
      "applied_steps_count" INTEGER NOT NULL DEFAULT 0
    );`,
  ];
  const names = readdirSync(MIGRATIONS_DIR, { withFileTypes: true })
    .filter((entry) => entry.isDirectory())
    .map((entry) => entry.name)
    .sort();
  for (const name of names) {
    const script = readFileSync(join(MIGRATIONS_DIR, name, 'migration.sql'), 'utf8');
    const checksum = createHash('sha256').update(script).digest('hex');
    parts.push(
      script,
      `;\nINSERT INTO "_prisma_migrations" (id, checksum, finished_at, migration_name, started_at, applied_steps_count) VALUES (${literal(randomUUID())}, ${literal(checksum)}, now(), ${literal(name)}, now(), 1);`,
    );
  }
  migrationScript = parts.join('\n');
  return migrationScript;
}

async function openMysql(serverUrl: string, name: string, existingUrl: string | undefined): Promise<TestDatabase> {
  const owner = existingUrl === undefined;
  const url = new URL(existingUrl ?? serverUrl);
  if (owner) url.pathname = `/${name}`;
  const database = url.pathname.slice(1);
  const connectionUrl = new URL(url);
  connectionUrl.protocol = 'mariadb:';
  const connection = await mariadb.createConnection({
    ...parseMysqlUrl(connectionUrl),
    database: undefined,
    timezone: 'Z',
    // As node-postgres: BOOLEAN (TINYINT(1)) as booleans, JSON as objects, counts as strings.
    typeCast: (field, next) => {
      // Types is a const enum, which type stripping cannot read: compared by its string value.
      const type: string = field.type;
      if (type === 'TINY' && field.columnLength === 1) {
        const value = field.string();
        return value === null ? null : value === '1';
      }
      if (type === 'BIGINT') return field.string();
      return next();
    },
  });
  if (owner) await connection.query(`CREATE DATABASE \`${database}\``);
  await connection.query(`USE \`${database}\``);
  return {
    url: url.toString(),
    sql: async <T>(text: string, values: unknown[] = []) => {
      const { sql, args, integers } = toMysql(text, values);
      const result: unknown = await connection.query(sql, args);
      const rows = (Array.isArray(result) ? result : []) as Record<string, unknown>[];
      for (const row of rows) for (const column of integers) if (typeof row[column] === 'string') row[column] = Number(row[column]);
      return rows as T[];
    },
    close: async () => {
      if (owner) await connection.query(`DROP DATABASE IF EXISTS \`${database}\``);
      await connection.end();
    },
  };
}

function parseMysqlUrl(url: URL): mariadb.ConnectionConfig {
  return {
    host: url.hostname,
    port: url.port === '' ? 3306 : Number(url.port),
    user: decodeURIComponent(url.username),
    password: decodeURIComponent(url.password),
    allowPublicKeyRetrieval: true,
  };
}

/**
 * PostgreSQL's SQL as the tests write it, in MySQL's: `$n` placeholders become `?` (arguments
 * reordered to match), casts (`::int`, `::text`) go, `->>'key'` becomes JSON_EXTRACT (MariaDB has
 * no arrow operators) and `interval '1 second'` loses its quotes. `integers` names the columns
 * cast to int (`… ::int AS name`), which node-postgres returns as numbers, not strings.
 */
export function toMysql(text: string, values: unknown[]): { sql: string; args: unknown[]; integers: string[] } {
  const args: unknown[] = [];
  const integers = [...text.matchAll(/::int\s+AS\s+"?(\w+)"?/gi)].map((match) => match[1] ?? '');
  const sql = text
    .replace(/\$(\d+)/g, (_, index: string) => {
      args.push(values[Number(index) - 1]);
      return '?';
    })
    .replace(/::"?\w+"?/g, '')
    .replace(/(\w+)->>'(\w+)'/g, "JSON_UNQUOTE(JSON_EXTRACT($1, '$.$2'))")
    .replace(/interval '(\d+) (\w+?)s?'/gi, (_, amount: string, unit: string) => `INTERVAL ${amount} ${unit.toUpperCase()}`);
  return { sql, args, integers };
}
