// Start-up time to ready: from spawning a server process to its first 200 on /health (it serves)
// and on /ready (what it depends on answers too), polled every 10 ms with a fresh connection each
// time, as an orchestrator's probe would.
import { request } from 'node:http';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { startTopology, type LayerProcess } from '../scripts/topology.ts';
import { processRssBytes } from './process-stats.ts';
import { findFreePort } from './server-process.ts';

const POLL_INTERVAL_MS = 10;

export interface StartupTiming {
  process: string;
  /** first: the process had never run on this database; restart: it had (the schema was migrated). */
  kind: 'first' | 'restart';
  /** Milliseconds from spawn to the first 200, or null if none came within the time limit. */
  healthMs: number | null;
  readyMs: number | null;
  rssBytesAtReady: number | null;
}

/** The status of GET `url`, or 0 when nothing answered. */
function status(url: string): Promise<number> {
  return new Promise((resolve) => {
    const req = request(url, { agent: false, timeout: 1_000 }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.once('timeout', () => req.destroy());
    req.once('error', () => resolve(0));
    req.end();
  });
}

async function firstOk(url: string, spawnedAt: number, signal: AbortSignal): Promise<number | null> {
  while (!signal.aborted) {
    if ((await status(url)) === 200) return performance.now() - spawnedAt;
    await sleep(POLL_INTERVAL_MS);
  }
  return null;
}

/**
 * Calls `start` (which must spawn the process synchronously, before its first await) and times
 * the process at `url` to /health and /ready.
 */
export async function timeStart(name: string, kind: StartupTiming['kind'], url: string, start: () => Promise<number | undefined>, timeoutMs: number): Promise<StartupTiming> {
  const give = new AbortController();
  const timer = setTimeout(() => give.abort(), timeoutMs);
  const spawnedAt = performance.now();
  const started = start();
  // A process that dies while starting would otherwise leave the probes polling until the limit.
  started.catch(() => give.abort());
  try {
    const [healthMs, readyMs] = await Promise.all([firstOk(`${url}/health`, spawnedAt, give.signal), firstOk(`${url}/ready`, spawnedAt, give.signal)]);
    const pid = await started;
    return { process: name, kind, healthMs, readyMs, rssBytesAtReady: processRssBytes(pid) ?? null };
  } finally {
    clearTimeout(timer);
  }
}

/** Stops `layer` and starts it again, timed; the layers around it keep running. */
export async function timeRestart(layer: LayerProcess, timeoutMs: number): Promise<StartupTiming> {
  await layer.stop();
  return timeStart(
    layer.name,
    'restart',
    layer.url,
    async () => {
      await layer.start();
      return layer.pid;
    },
    timeoutMs,
  );
}

/**
 * A monolith on the embedded PGlite database in a fresh temporary DATA_DIR: its first start
 * (creating and migrating the database), then `restarts` starts on that database. It runs
 * without Redis, as the single-process set-up does.
 */
export async function timePgliteMonolith(env: Record<string, string | undefined>, restarts: number, timeoutMs: number): Promise<StartupTiming[]> {
  const dataDir = await mkdtemp(join(tmpdir(), 'arcana-bench-pglite-'));
  const port = await findFreePort();
  const url = `http://127.0.0.1:${port}`;
  const timings: StartupTiming[] = [];
  let layer: LayerProcess | undefined;
  let stop: (() => Promise<void>) | undefined;
  try {
    const processEnv = { ...env, DATABASE_URL: undefined, REDIS_URL: undefined, REDIS_KEY_PREFIX: undefined, DATA_DIR: dataDir };
    timings.push(
      await timeStart(
        'monolithic (PGlite)',
        'first',
        url,
        async () => {
          const topology = await startTopology({ name: 'monolithic', env: processEnv, ports: { monolithic: port }, startTimeoutMs: timeoutMs });
          stop = topology.stop;
          layer = topology.layers[0];
          return layer?.pid;
        },
        timeoutMs,
      ),
    );
    for (let run = 0; run < restarts && layer !== undefined; run += 1) {
      timings.push({ ...(await timeRestart(layer, timeoutMs)), process: 'monolithic (PGlite)' });
    }
  } finally {
    await stop?.();
    await rm(dataDir, { recursive: true, force: true });
  }
  return timings;
}
