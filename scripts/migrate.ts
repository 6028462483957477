// Database migrations without Prisma's native schema engine (see src/infrastructure/database/migrations.ts).
//
//   node scripts/migrate.ts deploy        apply pending migrations to DATABASE_URL, or else to the
//                                         PGlite database in DATA_DIR (default ./.data)
//   node scripts/migrate.ts diff <name>   write prisma/migrations/<timestamp>_<name>/migration.sql
//                                         with the changes from the migrations to the schema
//   node scripts/migrate.ts check         exit 1, printing the SQL, when the schema has changes
//                                         that no migration contains
//
// `deploy` picks prisma/migrations or prisma/mysql/migrations by the scheme of DATABASE_URL.
// `diff` and `check` work on PostgreSQL's only: the WebAssembly schema engine has no MySQL
// connector, so MySQL migrations are written by hand (README, MySQL and MariaDB), and
// tests/integration/mysql-schema.test.ts checks them against prisma/mysql/schema.prisma.
import { join, relative } from 'node:path';
import { createDatabase } from '../src/infrastructure/database/database.ts';
import { applyMigrations, diffMigrationsToSchema, writeMigration } from '../src/infrastructure/database/migrations.ts';

const root = join(import.meta.dirname, '..');
const migrationsDir = join(root, 'prisma', 'migrations');
const schemaPath = join(root, 'prisma', 'schema.prisma');

const USAGE = 'Usage: node scripts/migrate.ts deploy | diff <name> | check';

async function deploy(): Promise<number> {
  // Empty strings mean "unset", as in src/config.ts.
  const databaseUrl = nonEmpty(process.env.DATABASE_URL);
  const dataDir = nonEmpty(process.env.DATA_DIR) ?? './.data';
  const database = await createDatabase({ databaseUrl, dataDir });
  try {
    const target =
      database.kind === 'pglite' ? `PGlite database in ${dataDir}` : database.kind === 'mysql' ? `MySQL database "${database.schema}"` : `PostgreSQL schema "${database.schema}"`;
    const applied = await applyMigrations(database, database.kind === 'mysql' ? join(root, 'prisma', 'mysql', 'migrations') : migrationsDir);
    if (applied.length === 0) {
      console.log(`No pending migrations for the ${target}.`);
    } else {
      console.log(`Applied ${applied.length} migration(s) to the ${target}:`);
      for (const name of applied) {
        console.log(`  ${name}`);
      }
    }
    return 0;
  } finally {
    await database.close();
  }
}

async function diff(name: string | undefined): Promise<number> {
  if (name === undefined || name.trim() === '') {
    console.error(`A migration name is required.\n${USAGE}`);
    return 2;
  }
  const sql = await diffMigrationsToSchema(migrationsDir, schemaPath);
  if (sql === '') {
    console.error(`${relative(root, schemaPath)} matches the migrations; no migration written.`);
    return 1;
  }
  const folder = await writeMigration(migrationsDir, name, sql);
  console.log(`Wrote ${relative(process.cwd(), join(migrationsDir, folder, 'migration.sql'))}`);
  return 0;
}

async function check(): Promise<number> {
  const sql = await diffMigrationsToSchema(migrationsDir, schemaPath);
  if (sql === '') {
    console.log(`${relative(root, schemaPath)} matches the migrations.`);
    return 0;
  }
  console.error(`${relative(root, schemaPath)} has changes no migration contains; \`node scripts/migrate.ts diff <name>\` would write:\n`);
  console.log(sql);
  return 1;
}

async function main(args: string[]): Promise<number> {
  const [command, ...rest] = args;
  switch (command) {
    case 'deploy':
      return deploy();
    case 'diff':
      return diff(rest[0]);
    case 'check':
      return check();
    default:
      console.error(USAGE);
      return 2;
  }
}

try {
  process.exitCode = await main(process.argv.slice(2));
} catch (error) {
  console.error(error instanceof Error ? error.message : error);
  process.exitCode = 1;
}

function nonEmpty(value: string | undefined): string | undefined {
  return value === '' ? undefined : value;
}
