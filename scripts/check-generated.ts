// gen/ and prisma/mysql/schema.prisma are committed; this fails when they no longer match what
// proto/, openapi.yaml and prisma/schema.prisma generate (`npm run generate` makes them again).
// One of the static checks of `npm test` (scripts/checks.ts): generating is CPU work for seconds
// and needs no database, so it runs beside the suites at their idle priority, where it was a
// test file that held one of their workers for 20–27 s on CI's 2-core machine.
import { execFileSync } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';

const root = join(import.meta.dirname, '..');

/** Every file below `dir`, by its path relative to it. */
async function snapshot(dir: string): Promise<Map<string, string>> {
  const files = new Map<string, string>();
  for (const entry of await readdir(dir, { recursive: true, withFileTypes: true })) {
    if (!entry.isFile()) continue;
    const path = join(entry.parentPath, entry.name);
    files.set(relative(dir, path), await readFile(path, 'utf8'));
  }
  return files;
}

const out = await mkdtemp(join(tmpdir(), 'arcana-gen-'));
const stale: string[] = [];
try {
  execFileSync(process.execPath, [join(root, 'scripts', 'generate.ts'), '--out', out], { cwd: root, stdio: 'pipe' });
  const fresh = await snapshot(join(out, 'gen'));
  const committed = await snapshot(join(root, 'gen'));
  for (const path of new Set([...fresh.keys(), ...committed.keys()])) {
    if (!fresh.has(path)) stale.push(`gen/${path}: committed, but no longer generated`);
    else if (!committed.has(path)) stale.push(`gen/${path}: generated, but not committed`);
    else if (fresh.get(path) !== committed.get(path)) stale.push(`gen/${path}: differs from what is generated`);
  }
  // The MySQL schema is derived from the PostgreSQL one too, and committed beside its migrations.
  const mysqlSchema = join('prisma', 'mysql', 'schema.prisma');
  if ((await readFile(join(root, mysqlSchema), 'utf8')) !== (await readFile(join(out, mysqlSchema), 'utf8'))) stale.push(`${mysqlSchema}: differs from what is generated`);
} finally {
  await rm(out, { recursive: true, force: true });
}
if (stale.length > 0) {
  process.stdout.write(`Generated code is stale; run \`npm run generate\` and commit the result:\n${stale.map((line) => `  ${line}\n`).join('')}`);
  process.exit(1);
}
process.stdout.write('gen/ and prisma/mysql/schema.prisma match what the schemas generate\n');
