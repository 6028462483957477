// A dedicated redis-server for tests that stop and restart Redis, so the shared one on 6379 is
// never disturbed.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { freePort } from '../../scripts/topology.ts';

export interface TestRedisServer {
  url: string;
  /** `args` are added to redis-server's command line for this start only. */
  start(args?: string[]): Promise<void>;
  stop(): Promise<void>;
  /** Freezes the server (SIGSTOP) with its connections open, as a stalled host would; resume() thaws it. */
  pause(): void;
  resume(): void;
}

/**
 * Starts redis-server on a free loopback port (below the ephemeral range, so no client socket takes
 * it between the pick and the bind); stop() and start() keep that port. With `keepData`,
 * stop() saves the data first and start() loads it, as a Redis with persistence would come back.
 */
export async function startRedisServer(options: { keepData?: boolean } = {}): Promise<TestRedisServer> {
  const port = await freePort();
  let child: ChildProcess | undefined;
  const url = `redis://127.0.0.1:${port}`;
  const dir = mkdtempSync(join(tmpdir(), 'arcana-redis-'));

  const start = async (args: string[] = []) => {
    child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', '', '--appendonly', 'no', ...args], { stdio: 'ignore' });
    const probe = new Redis(url, { lazyConnect: true, retryStrategy: () => null, maxRetriesPerRequest: 0 });
    // Refused connections while the server starts are expected; the loop below retries.
    probe.on('error', () => {
      // Expected while the server starts (see above).
    });
    const deadline = Date.now() + 10_000;
    for (;;) {
      try {
        await probe.connect();
        await probe.ping();
        break;
      } catch (error) {
        if (Date.now() > deadline) throw error;
        probe.disconnect();
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    }
    probe.disconnect();
  };
  const stop = async () => {
    const running = child;
    if (running?.exitCode !== null) return;
    if (options.keepData === true) {
      const saver = new Redis(url, { retryStrategy: () => null, maxRetriesPerRequest: 0 });
      await saver.save();
      saver.disconnect();
    }
    await new Promise<void>((resolve) => {
      running.once('exit', () => resolve());
      running.kill('SIGKILL');
    });
  };
  await start();
  return { url, start, stop, pause: () => child?.kill('SIGSTOP'), resume: () => child?.kill('SIGCONT') };
}
