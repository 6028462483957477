// The soak: a steady fraction of the measured maximum rate for minutes, with every server
// process's RSS sampled on the way, to show whether memory stays flat under sustained load.
// wrk paces the requests itself (see the schedule in bench/wrk-load.lua). h2load's --rps was
// not used: it paces each connection on a timer of its own, and the connections' requests go out
// in clumps (50 connections at 1,000 requests/s: groups of about 20 within 2 ms, every ~20 ms),
// a different load from an even stream at the same average.
import type { Measurement } from './measurement.ts';
import { processCpuSeconds, processRssBytes, type NamedProcess } from './process-stats.ts';
import type { HttpRequestSpec } from './scenarios.ts';
import { runWrk } from './wrk-load.ts';

export interface SoakSample {
  atSeconds: number;
  rssBytes: Record<string, number | null>;
  /** CPU each process used since the previous sample, in % of one core. */
  cpuPercent: Record<string, number | null>;
}

export interface RssTrend {
  first: number;
  last: number;
  min: number;
  max: number;
  /** last / first − 1 */
  growth: number;
  /** max / min − 1 */
  spread: number;
}

export interface SoakResult {
  seconds: number;
  connections: number;
  targetRate: number;
  /** The rate the target is a fraction of, and that fraction. */
  maxRate: number;
  load: number;
  measurement: Measurement;
  samples: SoakSample[];
  rss: Record<string, RssTrend | null>;
}

/** Holds `load` × `maxRate` requests per second of `requests` for `seconds`, sampling `processes`. */
export async function runSoak(options: {
  baseUrl: string;
  requests: HttpRequestSpec[];
  processes: NamedProcess[];
  maxRate: number;
  load: number;
  connections: number;
  threads: number;
  seconds: number;
  sampleSeconds: number;
  timeoutSeconds: number;
  workDir: string;
}): Promise<SoakResult> {
  const samples: SoakSample[] = [];
  const started = performance.now();
  let lastCpu = options.processes.map((p) => processCpuSeconds(p.pid));
  let lastAt = started;
  const sample = (): void => {
    const now = performance.now();
    const cpu = options.processes.map((p) => processCpuSeconds(p.pid));
    const elapsed = (now - lastAt) / 1000;
    samples.push({
      atSeconds: (now - started) / 1000,
      rssBytes: Object.fromEntries(options.processes.map((p) => [p.name, processRssBytes(p.pid) ?? null])),
      cpuPercent: Object.fromEntries(
        options.processes.map((p, index) => {
          const before = lastCpu[index];
          const after = cpu[index];
          return [p.name, before === undefined || after === undefined || elapsed <= 0 ? null : ((after - before) / elapsed) * 100];
        }),
      ),
    });
    lastCpu = cpu;
    lastAt = now;
  };
  sample();
  const timer = setInterval(sample, options.sampleSeconds * 1000);
  const targetRate = options.maxRate * options.load;
  let measurement: Measurement;
  try {
    measurement = await runWrk(
      {
        baseUrl: options.baseUrl,
        requests: options.requests,
        connections: options.connections,
        threads: options.threads,
        durationSeconds: options.seconds,
        timeoutSeconds: options.timeoutSeconds,
        ratePerSecond: targetRate,
      },
      options.workDir,
      'soak',
    );
  } finally {
    clearInterval(timer);
  }
  sample();
  return {
    seconds: options.seconds,
    connections: options.connections,
    targetRate,
    maxRate: options.maxRate,
    load: options.load,
    measurement,
    samples,
    rss: Object.fromEntries(options.processes.map((p) => [p.name, trend(samples.map((s) => s.rssBytes[p.name] ?? null))])),
  };
}

function trend(values: (number | null)[]): RssTrend | null {
  const known = values.filter((value): value is number => value !== null);
  const first = known[0];
  const last = known.at(-1);
  if (first === undefined || last === undefined) return null;
  const min = Math.min(...known);
  const max = Math.max(...known);
  return { first, last, min, max, growth: last / first - 1, spread: max / min - 1 };
}
