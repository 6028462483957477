// The runner's side of a load worker: one child process per job, bounded by a deadline.
import { fork } from 'node:child_process';
import { join } from 'node:path';
import type { LoadJob, LoadSummary, WorkerReply } from './load-job.ts';

const WORKER = join(import.meta.dirname, 'load-worker.ts');

/** Runs `job` in a fresh load worker process and resolves with its measured summary. */
export function runLoad(job: LoadJob): Promise<LoadSummary> {
  // Preflight, warm-up, measurement, the last requests' timeouts, and start-up with slack.
  const limitMs = (job.warmupSeconds + job.durationSeconds + 3 * job.timeoutSeconds + 30) * 1000;
  return new Promise<LoadSummary>((resolve, reject) => {
    const child = fork(WORKER, [], { execPath: process.execPath, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    let settled = false;
    const settle = (outcome: () => void): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      outcome();
    };
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      settle(() => reject(new Error(`load worker did not finish within ${limitMs / 1000} s`)));
    }, limitMs);
    child.once('message', (message: unknown) => {
      const reply = message as WorkerReply;
      settle(() => (reply.ok ? resolve(reply.summary) : reject(new Error(reply.error))));
    });
    child.once('error', (error) => settle(() => reject(error)));
    // 'close' comes after the IPC channel has closed, so a reply sent just before exiting is seen first.
    child.once('close', (code, signal) => settle(() => reject(new Error(`load worker exited (${signal ?? code}) without a reply`))));
    child.send(job);
  });
}
