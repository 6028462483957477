// The static checks of `npm test`, run side by side: type-checking, ESLint, Prettier, buf lint,
// Redocly, the contract check and the generated code's freshness. Each is one single-threaded process and none depends on
// another's output, so on CI's 2-core machine running them one after the other left a core idle
// for the whole of ESLint's minute or more. Each check's output is printed in one block when it
// ends (not interleaved), and the script fails if any check failed, after all have ended.
//
// node scripts/checks.ts            all of them
// node scripts/checks.ts lint tsc   only those whose name contains one of the words
// node scripts/checks.ts --nice     at the lowest CPU priority (how `npm test` runs them beside
//                                   the suites, see scripts/test.ts)
import { spawn } from 'node:child_process';
import { setPriority } from 'node:os';
import { join } from 'node:path';

const root = join(import.meta.dirname, '..');
const bin = (name: string) => join(root, 'node_modules', '.bin', name);

/** The longest first, so that it is never the one started last. */
const CHECKS: { name: string; command: string; args: string[] }[] = [
  { name: 'eslint', command: bin('eslint'), args: ['.'] },
  { name: 'tsc (tsconfig.json)', command: bin('tsc'), args: ['--noEmit', '-p', 'tsconfig.json'] },
  { name: 'prettier --check', command: bin('prettier'), args: ['--check', '.'] },
  { name: 'tsc (console/tsconfig.json)', command: bin('tsc'), args: ['--noEmit', '-p', 'console/tsconfig.json'] },
  { name: 'buf lint', command: bin('buf'), args: ['lint'] },
  { name: 'redocly lint', command: bin('redocly'), args: ['lint', 'openapi.yaml'] },
  { name: 'check-contracts', command: process.execPath, args: [join(root, 'scripts', 'check-contracts.ts')] },
  { name: 'check-generated', command: process.execPath, args: [join(root, 'scripts', 'check-generated.ts')] },
];

function run(check: (typeof CHECKS)[number]): Promise<boolean> {
  const startedAt = performance.now();
  return new Promise((resolve) => {
    const child = spawn(check.command, check.args, { cwd: root, env: { ...process.env, FORCE_COLOR: process.stdout.isTTY ? '1' : '0' } });
    const output: Buffer[] = [];
    child.stdout.on('data', (chunk: Buffer) => output.push(chunk));
    child.stderr.on('data', (chunk: Buffer) => output.push(chunk));
    const report = (ok: boolean, why: string) => {
      const seconds = ((performance.now() - startedAt) / 1000).toFixed(1);
      process.stdout.write(`\n── ${check.name}: ${why} (${seconds} s)\n${Buffer.concat(output).toString()}`);
      resolve(ok);
    };
    child.once('error', (error) => report(false, `could not start: ${error.message}`));
    child.once('close', (code, signal) => report(code === 0, code === 0 ? 'ok' : `failed (${signal ?? `exit ${code ?? '?'}`})`));
  });
}

const args = process.argv.slice(2);
// Set before any check starts: each inherits it.
if (args.includes('--nice')) setPriority(19);
const only = args.filter((arg) => arg !== '--nice');
const selected = only.length === 0 ? CHECKS : CHECKS.filter((check) => only.some((word) => check.name.includes(word)));
const results = await Promise.all(selected.map(run));
const failed = selected.filter((_, index) => results[index] !== true).map((check) => check.name);
if (failed.length > 0) {
  process.stdout.write(`\nfailed: ${failed.join(', ')}\n`);
  process.exit(1);
}
