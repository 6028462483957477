// `npm test`: the static checks (scripts/checks.ts) and the vitest suites at the same time. The
// suites spend much of their run waiting (on sockets, timers, bcrypt in the thread pool), and
// the checks, started first, kept both cores for most of a minute while no test ran. Here the
// checks run at the lowest priority (nice 19), so they take what the suites leave idle and slow
// no test's timing; vitest's output streams as it comes, the checks' once the suites are done.
// Either failing fails the run.
//
// node scripts/test.ts [vitest arguments]
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';

const root = join(import.meta.dirname, '..');

const exitOf = (child: ChildProcess) =>
  new Promise<number>((resolve) => {
    child.once('error', () => resolve(1));
    child.once('close', (code, signal) => resolve(code ?? (signal === null ? 1 : 128)));
  });

const checks = spawn(process.execPath, [join(root, 'scripts', 'checks.ts'), '--nice'], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
const checksOutput: Buffer[] = [];
checks.stdout.on('data', (chunk: Buffer) => checksOutput.push(chunk));
checks.stderr.on('data', (chunk: Buffer) => checksOutput.push(chunk));
const checksDone = exitOf(checks);

const vitest = spawn(join(root, 'node_modules', '.bin', 'vitest'), ['run', ...process.argv.slice(2)], { cwd: root, stdio: 'inherit' });
const suites = await exitOf(vitest);
const checked = await checksDone;
process.stdout.write(`\n── static checks (scripts/checks.ts)\n${Buffer.concat(checksOutput).toString()}`);
if (checked !== 0) process.stdout.write('\nthe static checks failed (above)\n');
process.exit(suites !== 0 ? suites : checked);
