// `npm test`: the static checks (scripts/checks.ts) and the Vitest suites, side by side; it fails
// if either does, once both have ended. Arguments go to `vitest run`.
//
// On CI's 2-core machine the checks took the run's first 67 s with both cores before Vitest could
// start (ESLint alone the last half of it), and the suites then left about a third of the cores
// idle while their tests waited on sockets, timers and the database. Beside the suites, the checks
// fill that idle time. They run at the lowest CPU priority: SCHED_IDLE where Linux's chrt is
// there (they run only on a core nothing else wants, and a test that wakes takes the core from
// them at once), else nice 19. At nice 19 alone, the files that ran beside them took 5 % longer
// in one CI run, and two timing tests among them failed in another.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
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

const CHRT = '/usr/bin/chrt';
const checksCommand = [process.execPath, join(root, 'scripts', 'checks.ts'), '--nice'];
const [checks, suites] = await Promise.all([
  process.platform === 'linux' && existsSync(CHRT)
    ? run('the static checks', CHRT, ['--idle', '0', ...checksCommand])
    : run('the static checks', checksCommand[0] ?? process.execPath, checksCommand.slice(1)),
  run('vitest', join(root, 'node_modules', '.bin', 'vitest'), ['run', ...process.argv.slice(2)]),
]);
if (!checks) process.stdout.write('\nnpm test: the static checks failed (see "failed:" above)\n');
if (!suites) process.stdout.write('\nnpm test: the test suites failed\n');
if (!checks || !suites) process.exit(1);
