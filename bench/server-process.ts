// Starting and stopping the one server process the benchmark drives itself: the bare server
// (the topologies are started by scripts/topology.ts).
import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

export interface ServerProcess {
  name: string;
  /** e.g. http://127.0.0.1:41234 */
  url: string;
  pid: number | undefined;
  /** Milliseconds from spawn to the first 200 on GET /health. */
  startupMs: number;
  /** SIGTERM, then SIGKILL if the process has not exited within the grace period. */
  stop(): Promise<void>;
}

/** A TCP port that was free a moment ago on 127.0.0.1. */
export function findFreePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const address = probe.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      probe.close(() => resolve(port));
    });
  });
}

/**
 * Spawns `node <script>` on a free port with exactly `env` (plus PORT and HOST) and resolves once
 * GET /health answers 200. Readiness is polled rather than read from the log because the
 * benchmark runs servers at LOG_LEVEL=warn, which hides the 'listening' line.
 */
export async function startServerProcess(options: { name: string; script: string; cwd: string; env: Record<string, string>; startupTimeoutMs?: number }): Promise<ServerProcess> {
  const port = await findFreePort();
  const url = `http://127.0.0.1:${port}`;
  const spawnedAt = performance.now();
  const child = spawn(process.execPath, [options.script], {
    cwd: options.cwd,
    env: { ...options.env, PORT: String(port), HOST: '127.0.0.1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  // The output is drained (a full pipe would block the server) and its tail kept for errors.
  const tail: string[] = [];
  const keep = (chunk: Buffer): void => {
    tail.push(
      ...chunk
        .toString()
        .split('\n')
        .filter((line) => line !== ''),
    );
    tail.splice(0, Math.max(0, tail.length - 40));
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));

  const stop = async (): Promise<void> => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGTERM');
    const graceful = await Promise.race([exited.then(() => true), sleep(15_000).then(() => false)]);
    if (!graceful) {
      child.kill('SIGKILL');
      await exited;
    }
  };

  const deadline = Date.now() + (options.startupTimeoutMs ?? 120_000);
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`${options.name} exited during start-up (${child.signalCode ?? child.exitCode}):\n${tail.join('\n')}`);
    }
    try {
      const response = await fetch(`${url}/health`, { signal: AbortSignal.timeout(2_000) });
      await response.body?.cancel();
      if (response.ok) return { name: options.name, url, pid: child.pid, startupMs: performance.now() - spawnedAt, stop };
    } catch {
      // Not listening yet.
    }
    await sleep(10);
  }
  await stop();
  throw new Error(`${options.name} did not answer GET /health within the start-up timeout:\n${tail.join('\n')}`);
}
