// gen/ is committed; this fails when it no longer matches the schemas it is generated from.
import { execFileSync } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { describe, expect, it } from 'vitest';

const root = join(import.meta.dirname, '..', '..');

async function snapshot(dir: string): Promise<Map<string, string>> {
  const files = new Map<string, string>();
  for (const entry of await readdir(dir, { recursive: true, withFileTypes: true })) {
    if (!entry.isFile()) continue;
    const path = join(entry.parentPath, entry.name);
    files.set(relative(dir, path), await readFile(path, 'utf8'));
  }
  return files;
}

describe('generated code', () => {
  it('when regenerated from proto/, openapi.yaml and prisma/schema.prisma, then it equals the committed gen/ and prisma/mysql/schema.prisma', async () => {
    const out = await mkdtemp(join(tmpdir(), 'arcana-gen-'));
    try {
      execFileSync(process.execPath, [join(root, 'scripts', 'generate.ts'), '--out', out], { cwd: root, stdio: 'pipe' });
      const fresh = await snapshot(join(out, 'gen'));
      const committed = await snapshot(join(root, 'gen'));
      expect([...committed.keys()].sort()).toEqual([...fresh.keys()].sort());
      for (const [path, content] of fresh) expect(committed.get(path), path).toBe(content);
      // The MySQL schema is derived from the PostgreSQL one too, and committed beside its migrations.
      const mysqlSchema = join('prisma', 'mysql', 'schema.prisma');
      expect(await readFile(join(root, mysqlSchema), 'utf8'), mysqlSchema).toBe(await readFile(join(out, mysqlSchema), 'utf8'));
    } finally {
      await rm(out, { recursive: true, force: true });
    }
  }, 120_000);
});
