// The bcrypt ceiling: how many cost-12 password checks per second this machine does, which bounds
// what any login endpoint can reach here. Run as its own process (`node bench/bcrypt-ceiling.ts
// <seconds> <cost>`), it keeps the libuv threadpool full of bcrypt.compare calls, as the server's
// login does, and prints one JSON line; bench/run.ts starts it with measureBcryptCeiling().
import bcrypt from 'bcrypt';
import os from 'node:os';
import { runGenerator } from './generator-process.ts';

export interface BcryptCeiling {
  cost: number;
  seconds: number;
  /** Checks completed in the measured window. */
  hashes: number;
  hashesPerSecond: number;
  /** Checks kept in flight: twice the threadpool, so a thread never waits for the next one. */
  inFlight: number;
  threadpoolSize: number;
  cpuSecondsPerHash: number | null;
}

interface CeilingOutput {
  hashes: number;
  /** Every check the process made, ramp-up and tail included, and the one hash it checks against. */
  hashesInAll: number;
  seconds: number;
  inFlight: number;
  threadpoolSize: number;
}

/** Runs the ceiling in a child process for `seconds` and returns it. */
export async function measureBcryptCeiling(seconds: number, cost: number): Promise<BcryptCeiling> {
  const run = await runGenerator(process.execPath, [import.meta.filename, String(seconds), String(cost)], { timeoutMs: (seconds + 60) * 1000 });
  const line = run.stdout.trim().split('\n').at(-1);
  if (run.exitCode !== 0 || line === undefined) throw new Error(`the bcrypt ceiling exited (${run.exitCode}):\n${run.stderr}`);
  const output = JSON.parse(line) as CeilingOutput;
  // The child's CPU includes its start-up, a few milliseconds against seconds of hashing.
  return {
    cost,
    seconds: output.seconds,
    hashes: output.hashes,
    hashesPerSecond: output.hashes / output.seconds,
    inFlight: output.inFlight,
    threadpoolSize: output.threadpoolSize,
    cpuSecondsPerHash: run.cpuSeconds === null || output.hashes === 0 ? null : run.cpuSeconds / output.hashesInAll,
  };
}

async function measure(seconds: number, cost: number): Promise<CeilingOutput> {
  const threadpoolSize = Number(process.env.UV_THREADPOOL_SIZE ?? 4);
  const inFlight = 2 * threadpoolSize;
  const hash = await bcrypt.hash('Bench-Passw0rd!', cost);
  // Checks completing before the window opens are the ramp-up; after it closes, the tail.
  const opens = performance.now() + 1_000;
  const closes = opens + seconds * 1000;
  let hashes = 0;
  let hashesInAll = 1;
  const lane = async (): Promise<void> => {
    while (performance.now() < closes) {
      await bcrypt.compare('Bench-Passw0rd!', hash);
      hashesInAll += 1;
      const now = performance.now();
      if (now >= opens && now < closes) hashes += 1;
    }
  };
  await Promise.all(Array.from({ length: inFlight }, lane));
  return { hashes, hashesInAll, seconds, inFlight, threadpoolSize };
}

if (import.meta.main) {
  const seconds = Number(process.argv[2] ?? 5);
  const cost = Number(process.argv[3] ?? 12);
  const output = await measure(seconds, cost);
  process.stdout.write(`${JSON.stringify({ ...output, cores: os.availableParallelism() })}\n`);
}
