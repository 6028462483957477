// Running a load generator (wrk, h2load, the bcrypt ceiling) as a child process: its output, its
// exit, and the CPU it used, charged from this process's exited-children counters.
import { spawn } from 'node:child_process';
import { exitedChildrenCpuSeconds } from './process-stats.ts';

export interface GeneratorRun {
  stdout: string;
  stderr: string;
  exitCode: number | null;
  /** User plus system CPU seconds of the whole child process, or null where /proc is missing. */
  cpuSeconds: number | null;
  pid: number | undefined;
}

// The exited-children counters at the last exit of a generator. When two generators overlap (the
// /health probe inside a login run), the one that ends later is charged only what was added
// after the other had ended. Other children exiting meanwhile would be charged to it too, so the
// runner starts and stops no server while a generator runs.
let counterAtLastExit = 0;

/** Spawns `command args`, waits for it to exit (killing it after `timeoutMs`), and returns its output and CPU. */
export function runGenerator(command: string, args: string[], options: { env?: Record<string, string>; timeoutMs: number; onSpawn?: () => void }): Promise<GeneratorRun> {
  return new Promise((resolve, reject) => {
    const counterAtSpawn = exitedChildrenCpuSeconds();
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...options.env } });
    options.onSpawn?.();
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    child.stdout.on('data', (chunk: Buffer) => stdout.push(chunk));
    child.stderr.on('data', (chunk: Buffer) => stderr.push(chunk));
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs);
    child.once('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    let cpuSeconds: number | null = null;
    // 'exit' comes once the child has been waited for, so the counters include it.
    child.once('exit', () => {
      const counterNow = exitedChildrenCpuSeconds();
      if (counterAtSpawn !== undefined && counterNow !== undefined) {
        cpuSeconds = counterNow - Math.max(counterAtSpawn, counterAtLastExit);
        counterAtLastExit = counterNow;
      }
    });
    // 'close' comes after 'exit' and after the output has been read to its end.
    child.once('close', (exitCode) => {
      clearTimeout(timer);
      resolve({ stdout: Buffer.concat(stdout).toString(), stderr: Buffer.concat(stderr).toString(), exitCode, cpuSeconds, pid: child.pid });
    });
  });
}
