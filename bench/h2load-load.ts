// HTTP/2 load with h2load over cleartext HTTP/2 (prior knowledge): `connections` connections, each
// keeping `streams` requests in flight, every request the same (h2load sends one body to one URL).
// h2load prints only the mean and spread of its request times, so percentiles, statuses and the
// measured window come from its per-request log (start, status, duration of every request).
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { runGenerator } from './generator-process.ts';
import { countOutcome, LatencyRecorder } from './latency-recorder.ts';
import type { Measurement } from './measurement.ts';

export interface H2loadJob {
  /** The full URL, e.g. http://127.0.0.1:41234/arcana.user.v1.UserService/GetUser */
  url: string;
  headers: Record<string, string>;
  /** POSTed when present. */
  body?: Uint8Array;
  connections: number;
  /** Concurrent streams per connection. */
  streams: number;
  durationSeconds: number;
  /**
   * Seconds at the start of the run that are load but not measurement: only requests that end
   * after it (and before the end) are counted. The run is continuous, so the measurement starts
   * on a busy server rather than behind the warm-up's leftover work.
   */
  warmupSeconds?: number;
  /** Called right after h2load is spawned, to time things against the run's start. */
  onSpawn?: () => void;
}

/** Runs `job` with h2load, using `workDir` for the body and the log, and returns what it measured. */
export async function runH2load(job: H2loadJob, workDir: string, label: string): Promise<Measurement> {
  const logFile = join(workDir, `${label}.h2load.log`);
  // h2load appends to its log file.
  await rm(logFile, { force: true });
  const bodyFile = join(workDir, `${label}.body`);
  if (job.body !== undefined) await writeFile(bodyFile, job.body);
  const warmup = job.warmupSeconds ?? 0;
  const total = warmup + job.durationSeconds;
  const headerArgs = Object.entries(job.headers).flatMap(([name, value]) => ['-H', `${name}: ${value}`]);
  const args = [
    '-t',
    '1',
    '-c',
    String(job.connections),
    '-m',
    String(job.streams),
    '-D',
    `${total}s`,
    '--log-file',
    logFile,
    ...(job.body === undefined ? [] : ['-d', bodyFile]),
    ...headerArgs,
    job.url,
  ];
  const run = await runGenerator('h2load', args, { timeoutMs: (total + 60) * 1000, ...(job.onSpawn === undefined ? {} : { onSpawn: job.onSpawn }) });
  const summary = parseSummary(run.stdout);
  if (summary === undefined) throw new Error(`h2load exited (${run.exitCode}) without a summary:\n${run.stderr}${run.stdout}`.trim());
  // Nothing sent means no connection; nothing answered (a slow login under load) is a measurement.
  if (summary.started === 0) throw new Error(`h2load sent no request:\n${run.stderr}${run.stdout}`.trim());

  // Columns: start (µs since the epoch), HTTP status, microseconds to the end of the answer.
  const entries = (await readFile(logFile, 'utf8'))
    .split('\n')
    .filter((line) => line !== '')
    .map((line) => line.split('\t').map(Number) as [number, number, number]);
  // The run's clock starts with its first request; it stops `total` seconds later, when h2load
  // abandons the requests still in flight (they are not logged).
  let first = entries[0]?.[0] ?? 0;
  for (const [start] of entries) first = Math.min(first, start);
  const windowStart = first + warmup * 1e6;
  const windowEnd = first + total * 1e6;
  const latencies = new LatencyRecorder();
  const statuses: Record<string, number> = {};
  let ok = 0;
  for (const [start, status, duration] of entries) {
    const end = start + duration;
    if (end < windowStart || end > windowEnd) continue;
    latencies.record(duration / 1000);
    countOutcome(statuses, String(status));
    if (status >= 200 && status < 300) ok += 1;
  }
  const durationSeconds = entries.length === 0 ? job.durationSeconds : (windowEnd - windowStart) / 1e6;
  return {
    tool: 'h2load',
    args: args.map((arg) => arg.replace(/^(authorization: Bearer ).+$/i, '$1<token>').replace(workDir, '<work dir>')),
    durationSeconds,
    requests: latencies.count,
    requestsWholeRun: entries.length,
    ok,
    requestsPerSecond: latencies.count / durationSeconds,
    okPerSecond: ok / durationSeconds,
    latencyMs: latencies.summarize(),
    latencyCovers: warmup > 0 ? 'measured window' : 'measured run',
    statuses,
    errors: { non2xx: latencies.count - ok, errored: summary.errored, timeout: summary.timeout },
    generatorCpuSeconds: run.cpuSeconds,
    generatorPid: run.pid,
    bodyBytes: summary.dataBytes,
    // Not the summary's 2xx count: h2load counts a status when the headers arrive, so it includes
    // requests cut off at the end after their headers and before their message.
    okWholeRun: entries.filter(([, status]) => status >= 200 && status < 300).length,
    inFlightAtEnd: summary.started - summary.done,
  };
}

interface H2loadSummary {
  started: number;
  done: number;
  errored: number;
  timeout: number;
  dataBytes: number;
}

/** The counters of h2load's closing report. */
function parseSummary(stdout: string): H2loadSummary | undefined {
  // requests: 7116 total, 7166 started, 7116 done, 7116 succeeded, 0 failed, 0 errored, 0 timeout
  const requests = /^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout$/m.exec(stdout);
  // traffic: 952.60KB (975463) total, 221.38KB (226690) headers (space savings 74.51%), 535.09KB (547932) data
  const traffic = /^traffic: .*\((\d+)\) data$/m.exec(stdout);
  if (requests === null || traffic === null) return undefined;
  return {
    started: Number(requests[2]),
    done: Number(requests[3]),
    errored: Number(requests[6]),
    timeout: Number(requests[7]),
    dataBytes: Number(traffic[1]),
  };
}
