// HTTP/1.1 load with wrk: keep-alive connections, one request in flight on each, requests taken
// round-robin from a list (bench/wrk-load.lua does the sending and counting inside wrk).
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { runGenerator } from './generator-process.ts';
import type { HttpRequestSpec } from './scenarios.ts';
import type { Measurement } from './measurement.ts';

const SCRIPT = join(import.meta.dirname, 'wrk-load.lua');

export interface WrkJob {
  /** e.g. http://127.0.0.1:41234 */
  baseUrl: string;
  requests: HttpRequestSpec[];
  connections: number;
  threads: number;
  /** Whole seconds: wrk takes no fractions. */
  durationSeconds: number;
  timeoutSeconds: number;
  /**
   * Seconds at the start of the run that are load but not measurement: answers are counted (and
   * the rate computed) over the rest only. Latency percentiles still cover the whole run, as
   * wrk's histogram cannot be split; runs that need clean percentiles warm up in a run of their own.
   */
  warmupSeconds?: number;
  /** Total requests per second to hold (paced); absent: closed loop, as fast as answers come. */
  ratePerSecond?: number;
  /** Called right after wrk is spawned, to time things against the run's start. */
  onSpawn?: () => void;
}

interface WrkResult {
  durationUs: number;
  requests: number;
  bytes: number;
  errors: { connect: number; read: number; write: number; status: number; timeout: number };
  latencyUs: { min: number; mean: number; stdev: number; max: number; p50: number; p90: number; p99: number; p999: number };
  statuses: Record<string, number>;
  windowStatuses: Record<string, number>;
  windowed: boolean;
  lostSlots: number;
}

/** Runs `job` with wrk, using `workDir` for the request list, and returns what it measured. */
export async function runWrk(job: WrkJob, workDir: string, label: string): Promise<Measurement> {
  const requestsFile = join(workDir, `${label}.requests.lua`);
  await writeFile(requestsFile, `return {\n${job.requests.map(luaRequest).join(',\n')}\n}\n`);
  const warmup = job.warmupSeconds ?? 0;
  const total = warmup + job.durationSeconds;
  const args = ['-t', String(job.threads), '-c', String(job.connections), '-d', `${total}s`, '--timeout', `${job.timeoutSeconds}s`, '-s', SCRIPT, job.baseUrl];
  const run = await runGenerator('wrk', args, {
    timeoutMs: (total + job.timeoutSeconds + 30) * 1000,
    ...(job.onSpawn === undefined ? {} : { onSpawn: job.onSpawn }),
    env: {
      BENCH_REQUESTS: requestsFile,
      BENCH_THREADS: String(job.threads),
      ...(job.ratePerSecond === undefined ? {} : { BENCH_RATE: String(job.ratePerSecond / job.threads) }),
      ...(warmup > 0 ? { BENCH_WINDOW_START: String(warmup), BENCH_WINDOW_LENGTH: String(job.durationSeconds) } : {}),
    },
  });
  const line = run.stdout.split('\n').find((candidate) => candidate.startsWith('BENCH_RESULT '));
  if (line === undefined) throw new Error(`wrk ${args.join(' ')} exited (${run.exitCode}) without a result:\n${run.stderr}${run.stdout}`.trim());
  const result = JSON.parse(line.slice('BENCH_RESULT '.length)) as WrkResult;

  const statuses = result.windowed ? result.windowStatuses : result.statuses;
  const answered = Object.values(statuses).reduce((sum, count) => sum + count, 0);
  const ok = Object.entries(statuses).reduce((sum, [status, count]) => sum + (status.startsWith('2') ? count : 0), 0);
  const durationSeconds = result.windowed ? job.durationSeconds : result.durationUs / 1e6;
  const ms = (us: number): number => us / 1000;
  return {
    tool: 'wrk',
    args: args.map((arg) => (arg === SCRIPT ? 'bench/wrk-load.lua' : arg)),
    durationSeconds,
    requests: answered,
    requestsWholeRun: Object.values(result.statuses).reduce((total, count) => total + count, 0),
    ok,
    requestsPerSecond: answered / durationSeconds,
    okPerSecond: ok / durationSeconds,
    latencyMs:
      result.requests === 0
        ? null
        : { mean: ms(result.latencyUs.mean), p50: ms(result.latencyUs.p50), p90: ms(result.latencyUs.p90), p99: ms(result.latencyUs.p99), max: ms(result.latencyUs.max) },
    latencyCovers: result.windowed ? 'whole run, warm-up included' : 'measured run',
    statuses,
    errors: {
      connect: result.errors.connect,
      read: result.errors.read,
      write: result.errors.write,
      timeout: result.errors.timeout,
      non2xx: answered - ok,
    },
    generatorCpuSeconds: run.cpuSeconds,
    generatorPid: run.pid,
    ...(job.ratePerSecond === undefined ? {} : { targetRate: job.ratePerSecond, lostSlots: result.lostSlots }),
  };
}

/** A Lua table constructor for one request. */
function luaRequest(request: HttpRequestSpec): string {
  const headers = Object.entries(request.headers).map(([name, value]) => `[${luaString(name)}]=${luaString(value)}`);
  return `{method=${luaString(request.method)},path=${luaString(request.path)},headers={${headers.join(',')}}${request.body === undefined ? '' : `,body=${luaString(request.body)}`}}`;
}

/** A Lua string literal; every byte outside printable ASCII, and quotes and backslashes, as a decimal escape. */
function luaString(value: string): string {
  let out = '"';
  for (const byte of Buffer.from(value, 'utf8')) {
    out += byte >= 0x20 && byte < 0x7f && byte !== 0x22 && byte !== 0x5c ? String.fromCharCode(byte) : `\\${String(byte).padStart(3, '0')}`;
  }
  return `${out}"`;
}
