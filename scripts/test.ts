// `npm test`: the static checks (scripts/checks.ts) and the Vitest suites, side by side; it fails
// if either does, once both have ended. Arguments go to `vitest run`.
//
// The checks run at the lowest CPU priority. On CI's 2-core machine they took the first 67 s of
// the run with both cores, before Vitest could start (ESLint alone its last half), and the suites
// then left about a third of the two cores idle while their tests waited on sockets, timers and
// the database. Niced, the checks take that idle time and almost none of the tests': a test's
// timing sees them as it sees nothing else.
import { spawn } from 'node:child_process';
import { join } from 'node:path';

const root = join(import.meta.dirname, '..');

function run(name: string, command: string, args: string[]): Promise<boolean> {
  return new Promise((resolve) => {
    const child = spawn(command, args, { cwd: root, stdio: 'inherit' });
    child.once('error', (error) => {
      process.stdout.write(`\n${name} could not start: ${error.message}\n`);
      resolve(false);
    });
    child.once('close', (code) => resolve(code === 0));
  });
}

const [checks, suites] = await Promise.all([
  run('the static checks', process.execPath, [join(root, 'scripts', 'checks.ts'), '--nice']),
  run('vitest', join(root, 'node_modules', '.bin', 'vitest'), ['run', ...process.argv.slice(2)]),
]);
if (!checks) process.stdout.write('\nnpm test: the static checks failed (see "failed:" above)\n');
if (!suites) process.stdout.write('\nnpm test: the test suites failed\n');
if (!checks || !suites) process.exit(1);
