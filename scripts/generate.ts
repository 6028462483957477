// Regenerates everything under gen/ from the schemas: protos (buf + protoc-gen-es), openapi.yaml
// (openapi-typescript) and prisma/schema.prisma (Prisma client). Run with `npm run generate`.
// `--out DIR` generates into DIR/gen instead, leaving the work tree alone (the staleness test).
import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { delimiter, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { toMysqlSchema } from './mysql-schema.ts';

const root = join(import.meta.dirname, '..');
const { values } = parseArgs({ options: { out: { type: 'string' } } });
const base = values.out === undefined ? root : resolve(values.out);

// Plugins such as protoc-gen-es are found on PATH, as they are under `npm run`.
const PATH = [join(root, 'node_modules', '.bin'), process.env.PATH ?? ''].join(delimiter);

function run(command: string, args: string[], env: NodeJS.ProcessEnv = {}): void {
  execFileSync(join(root, 'node_modules', '.bin', command), args, {
    cwd: root,
    stdio: 'inherit',
    env: { ...process.env, PATH, ...env },
  });
}

run('buf', ['generate', '--output', base]);

// Defaults are filled in by the validator but stay optional for clients: no default-non-nullable.
run('openapi-typescript', ['openapi.yaml', '--default-non-nullable', 'false', '--output', join(base, 'gen/openapi/schema.d.ts')]);

// The Prisma client's output is relative to the schema file, so a copy of the schema generates
// into the other tree.
let schema = join(root, 'prisma/schema.prisma');
if (base !== root) {
  mkdirSync(join(base, 'prisma'), { recursive: true });
  copyFileSync(schema, join(base, 'prisma/schema.prisma'));
  schema = join(base, 'prisma/schema.prisma');
}
// The MySQL/MariaDB schema is derived from the PostgreSQL one (scripts/mysql-schema.ts); it is
// written into the work tree only, and generates its own client into gen/prisma-mysql.
const mysqlSchemaText = toMysqlSchema(readFileSync(join(root, 'prisma/schema.prisma'), 'utf8'));
const mysqlSchema = join(base, 'prisma/mysql/schema.prisma');
mkdirSync(join(base, 'prisma/mysql'), { recursive: true });
writeFileSync(mysqlSchema, mysqlSchemaText);

// `prisma generate` needs no schema engine, but the CLI insists on finding one and would try to
// download it; pointing it at any existing file keeps generation offline.
const engine = process.env.PRISMA_SCHEMA_ENGINE_BINARY;
for (const each of [schema, mysqlSchema]) {
  run('prisma', ['generate', '--schema', each], {
    PRISMA_SCHEMA_ENGINE_BINARY: engine !== undefined && existsSync(engine) ? engine : process.execPath,
    PRISMA_HIDE_UPDATE_MESSAGE: '1',
  });
}

// The console's committed bundle embeds the generated service descriptors: rebuild it with them
// (tests/integration/console-bundle.test.ts checks it separately).
if (base === root) execFileSync(process.execPath, [join(root, 'scripts', 'build-console.ts'), '--quiet'], { cwd: root, stdio: 'inherit' });
