// The request validator's module settles Node's once-only url.parse() deprecation warning at
// import (see src/controllers/rest/openapi-validation.ts): until that warning has been given,
// Node captures a stack trace on every url.parse() call from node_modules, which the validator
// makes once per request. These run in a child process, where the warning is still unspent.
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = join(import.meta.dirname, '..', '..');
const MODULE = join(ROOT, 'src', 'controllers', 'rest', 'openapi-validation.ts');

/** Runs `script` as an ES module in a fresh Node and returns what it printed (stdout and stderr). */
function run(script: string): string {
  return execFileSync(process.execPath, ['--input-type=module', '-e', script], { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

// A url.parse() call from this script (outside node_modules) after the import: if the module has
// spent the warning, nothing is emitted; if not, DEP0169 is.
const probe = (importFirst: boolean) => `
  const warnings = [];
  process.on('warning', (warning) => warnings.push(warning.code ?? warning.name));
  ${importFirst ? `await import(${JSON.stringify(MODULE)});` : ''}
  const emittedByImport = [...warnings];
  const { parse } = await import('node:url');
  parse('/api/v1/users/1');
  await new Promise((resolve) => setImmediate(resolve));
  console.log(JSON.stringify({ emittedByImport, afterCall: warnings }));
`;

describe('openapi-validation module: url.parse deprecation check', () => {
  it('spends the once-only warning at import, silently, so later calls skip the per-call stack capture', () => {
    const output = JSON.parse(run(probe(true)).trim().split('\n').at(-1) ?? '{}') as { emittedByImport: string[]; afterCall: string[] };
    expect(output.emittedByImport).toEqual([]);
    expect(output.afterCall).toEqual([]);
  }, 30_000);

  it('control: without the import, the same call emits DEP0169 (the probe can see the difference)', () => {
    const output = JSON.parse(run(probe(false)).trim().split('\n').at(-1) ?? '{}') as { afterCall: string[] };
    expect(output.afterCall).toEqual(['DEP0169']);
  }, 30_000);
});
