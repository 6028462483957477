// What a run produced: the record written to bench/results/, the targets it is judged against,
// and the tables printed at the end (and pasted into the README).
import { execFileSync } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import os from 'node:os';
import { join } from 'node:path';
import type { BcryptCeiling } from './bcrypt-ceiling.ts';
import type { CallCheck } from './check-call.ts';
import type { LoadTools } from './load-tools.ts';
import type { Measurement } from './measurement.ts';
import type { BenchSettings, Protocol, ScenarioName, TopologyName } from './settings.ts';
import type { SoakResult } from './soak.ts';
import type { StartupTiming } from './startup-time.ts';

/** One process's share of a measurement. */
export interface ProcessUse {
  /** The layer (DEPLOYMENT_LAYER), `bare`, `wrk`/`h2load` (the load) or `health probe`. */
  name: string;
  role: 'server' | 'load generator' | 'probe';
  pid: number | null;
  /** CPU seconds over the measured run (for the generators: their whole life). */
  cpuSeconds: number | null;
  /** cpuSeconds over the run's length, in % of one core. */
  cpuPercent: number | null;
  /** cpuSeconds per answered request of the measured run. */
  cpuSecondsPerRequest: number | null;
  /** VmRSS right after the run. */
  rssBytesAfter: number | null;
}

/** One line of the results: a measurement, or why there is none. */
export interface ResultRow {
  /** `bare`, the topology, or `<topology>+<variant>`. */
  target: string;
  topology: TopologyName | 'bare';
  variant: string;
  /** With --rounds: which round (1 to rounds) the row was measured in. */
  round?: number;
  protocol: Protocol;
  scenario: ScenarioName;
  load?: {
    connections: number;
    /** HTTP/2 rows: the connections the streams share. */
    h2Connections?: number;
    warmupSeconds: number;
    durationSeconds: number;
    /** 'separate run': a warm-up run, a pause until the servers are idle, then the measured run. 'same run': one run whose start is not counted. */
    warmup: 'separate run' | 'same run';
  };
  measurement?: Measurement;
  processes?: ProcessUse[];
  /** Against the bare server's ceiling for the same kind of request (BARE_CEILING). */
  vsBare?: { ceiling: ScenarioName; requestsPerSecond: number | null; p99: number | null };
  checks?: {
    before: CallCheck;
    after?: CallCheck;
    /**
     * gRPC rows: failed calls are HTTP 200s with no message, so calls that returned a message are
     * counted from the response bytes h2load received (answerBytes each, known from the check
     * before) and compared with the 200s.
     */
    grpc?: { answerBytes: number; bodyBytes: number; http200: number; inFlightAtEnd: number; callsWithMessage: number; consistent: boolean };
    /** Lines the server processes logged during the row (they run at LOG_LEVEL=warn), and the first few. */
    serverLogLines: number;
    serverLogSample: string[];
  };
  /**
   * The machine's 1-minute load average when the measured run ended. Above the core count, other
   * work was competing with the servers, and the row says more about the machine than the code.
   */
  loadAverage?: number;
  /** Login rows: /health of the same process, measured by a light paced load during the measured window. */
  healthDuringLogin?: Measurement;
  error?: string;
}

export interface TargetCheck {
  name: string;
  value: number | null;
  /** e.g. "≥ 0.6"; empty when the issue sets none yet and the figure is reported for later. */
  target: string;
  met: boolean | null;
}

export interface StartupRecord {
  /** Target name → timings of each process, restarted in place with the rest of the topology up. */
  restarts: Record<string, StartupTiming[]>;
  pglite: StartupTiming[];
  /** Why the PGlite timings are missing, when they are. */
  pgliteError?: string;
  bare: number | null;
}

/** Written into every record, so that --report can tell a record of this shape from older ones. */
export const RECORD_FORMAT = 'arcana-bench/2 (wrk, h2load)';

export interface BenchRecord {
  format: typeof RECORD_FORMAT;
  startedAt: string;
  finishedAt: string;
  complete: boolean;
  runId: string;
  /** Wall-clock seconds of the whole run. */
  totalSeconds: number;
  settings: BenchSettings;
  machine: Awaited<ReturnType<typeof describeMachine>>;
  serverEnvironment: Record<string, string | undefined>;
  deployments: Record<string, string[]>;
  seed: { users: number; seconds: number | undefined; via: string | undefined };
  scenarios: Record<string, string>;
  /** os.loadavg() when the run ended; the machine's load at the start is in `machine`. */
  loadAverageAtEnd: number[];
  bcryptCeiling: BcryptCeiling | null;
  startup: StartupRecord;
  results: ResultRow[];
  soak: (SoakResult & { target: string }) | null;
  /** Target name → its servers' RSS summed, a few seconds after its last load (absent in older records). */
  idleRss?: Record<string, number | null>;
  targets: TargetCheck[];
}

const MB = 1024 * 1024;
const fixed = (value: number | null | undefined, digits: number): string => (value === null || value === undefined || !Number.isFinite(value) ? '–' : value.toFixed(digits));
const sum = (values: (number | null)[]): number | null => (values.some((value) => value === null) ? null : values.reduce<number>((total, value) => total + (value ?? 0), 0));

/** Server processes' CPU per request, in milliseconds, summed over the topology's processes. */
function serverCpuMs(row: ResultRow): number | null {
  const servers = (row.processes ?? []).filter((p) => p.role === 'server');
  const total = sum(servers.map((p) => p.cpuSecondsPerRequest));
  return servers.length === 0 || total === null ? null : total * 1000;
}

function generatorCpuMs(row: ResultRow): number | null {
  const generator = row.processes?.find((p) => p.role === 'load generator');
  return generator?.cpuSecondsPerRequest === null || generator?.cpuSecondsPerRequest === undefined ? null : generator.cpuSecondsPerRequest * 1000;
}

function serverRssMb(row: ResultRow): number | null {
  const servers = (row.processes ?? []).filter((p) => p.role === 'server');
  const total = sum(servers.map((p) => p.rssBytesAfter));
  return servers.length === 0 || total === null ? null : total / MB;
}

function errorCount(measurement: Measurement | undefined): number | null {
  return measurement === undefined ? null : Object.values(measurement.errors).reduce((total, count) => total + count, 0);
}

function markdown(header: string[], lines: string[][], numericFrom: number): string {
  const widths = header.map((title, column) => Math.max(title.length, ...lines.map((line) => (line[column] ?? '').length)));
  const numeric = (column: number): boolean => column >= numericFrom;
  const render = (cells: string[]): string =>
    `| ${cells.map((cell, column) => (numeric(column) ? cell.padStart(widths[column] ?? 0) : cell.padEnd(widths[column] ?? 0))).join(' | ')} |`;
  const rule = `|${widths.map((width, column) => (numeric(column) ? `${'-'.repeat(width + 1)}:` : `:${'-'.repeat(width + 1)}`)).join('|')}|`;
  return [render(header), rule, ...lines.map(render)].join('\n');
}

/**
 * Every row: rate, latency, errors, the ratios to the bare ceiling, CPU milliseconds per request
 * (servers summed; the load generator's own), the servers' RSS after the run, and the machine's
 * load average then.
 */
export function formatTable(rows: ResultRow[]): string {
  const header = [
    'target',
    'protocol',
    'scenario',
    'req/s',
    'p50 ms',
    'p99 ms',
    'errors',
    '× bare',
    'p99 × bare',
    'server CPU ms/req',
    'per process',
    'load gen CPU ms/req',
    'RSS MB',
    'load avg',
  ];
  const lines = rows.map((row) => {
    const m = row.measurement;
    const target = row.round === undefined ? row.target : `${row.target} #${row.round}`;
    if (m === undefined) return [target, row.protocol, row.scenario, 'failed', '', '', '', '', '', '', '', '', '', ''];
    const servers = (row.processes ?? []).filter((p) => p.role === 'server');
    return [
      target,
      row.protocol,
      row.scenario,
      fixed(m.okPerSecond, m.okPerSecond < 100 ? 1 : 0),
      fixed(m.latencyMs?.p50, 2),
      fixed(m.latencyMs?.p99, 2),
      String(errorCount(m) ?? '–'),
      row.vsBare === undefined ? '' : fixed(row.vsBare.requestsPerSecond, 2),
      row.vsBare === undefined ? '' : fixed(row.vsBare.p99, 2),
      fixed(serverCpuMs(row), 3),
      servers.length < 2 ? '' : servers.map((p) => `${p.name} ${fixed(p.cpuSecondsPerRequest === null ? null : p.cpuSecondsPerRequest * 1000, 3)}`).join(', '),
      fixed(generatorCpuMs(row), 3),
      fixed(serverRssMb(row), 0),
      fixed(row.loadAverage, 1),
    ];
  });
  const notes = rows.filter((row) => row.error !== undefined).map((row) => `- ${row.target} ${row.protocol} ${row.scenario}: ${row.error?.split('\n')[0]?.slice(0, 300)}`);
  const warnings = rows
    .filter((row) => (row.checks?.serverLogLines ?? 0) > 0 || row.checks?.before.ok === false || row.checks?.after?.ok === false || row.checks?.grpc?.consistent === false)
    .map((row) => {
      const c = row.checks;
      const parts = [
        (c?.serverLogLines ?? 0) > 0 ? `${c?.serverLogLines} server log lines, e.g. ${c?.serverLogSample[0]?.slice(0, 200)}` : undefined,
        c?.before.ok === false ? `the call before the load was refused: ${c.before.outcome} ${c.before.detail ?? ''}` : undefined,
        c?.after?.ok === false ? `the call after the load failed: ${c.after.outcome} ${c.after.detail ?? ''}` : undefined,
        c?.grpc?.consistent === false
          ? `${c.grpc.bodyBytes} response bytes do not fit ${c.grpc.http200} answers of ${c.grpc.answerBytes} (+ ${c.grpc.inFlightAtEnd} cut off)`
          : undefined,
      ].filter((part) => part !== undefined);
      return `- ${row.target} ${row.protocol} ${row.scenario}: ${parts.join('; ')}`;
    });
  return [markdown(header, lines, 3), ...(notes.length > 0 ? ['', 'Failed:', ...notes] : []), ...(warnings.length > 0 ? ['', 'Warnings:', ...warnings] : [])].join('\n');
}

/**
 * The README's shape: one line per protocol and scenario, one column per target, "req/s (p99 ms)";
 * with --rounds, the median of the rounds' rates and of their p99s.
 */
export function formatMatrix(rows: ResultRow[]): string {
  const targets = [...new Set(rows.map((row) => row.target))];
  const keys = [...new Set(rows.map((row) => `${row.protocol} ${row.scenario}`))];
  const lines = keys.map((key) => [
    key,
    ...targets.map((target) => {
      const measured = rows.flatMap((row) => (row.target === target && `${row.protocol} ${row.scenario}` === key && row.measurement !== undefined ? [row.measurement] : []));
      const rate = median(measured.map((m) => m.okPerSecond));
      const p99 = median(measured.flatMap((m) => (m.latencyMs === null ? [] : [m.latencyMs.p99])));
      if (rate === null) return '';
      return `${fixed(rate, rate < 100 ? 1 : 0)} (${fixed(p99, p99 !== null && p99 >= 100 ? 0 : 1)})`;
    }),
  ]);
  return markdown(['protocol, scenario', ...targets], lines, 1);
}

/** CPU milliseconds per request of the servers (summed) and of the load generator, per target (with --rounds, medians). */
export function formatCpuMatrix(rows: ResultRow[]): string {
  const targets = [...new Set(rows.map((row) => row.target))];
  const keys = [...new Set(rows.map((row) => `${row.protocol} ${row.scenario}`))];
  const lines = keys.map((key) => [
    key,
    ...targets.map((target) => {
      const measured = rows.filter((candidate) => candidate.target === target && `${candidate.protocol} ${candidate.scenario}` === key && candidate.measurement !== undefined);
      const each = (of: (row: ResultRow) => number | null): number | null => median(measured.flatMap((row) => of(row) ?? []));
      return measured.length === 0 ? '' : `${fixed(each(serverCpuMs), 2)} / ${fixed(each(generatorCpuMs), 3)}`;
    }),
  ]);
  return markdown(['protocol, scenario', ...targets], lines, 1);
}

const median = (values: number[]): number | null => {
  if (values.length === 0) return null;
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? (sorted[middle] ?? null) : ((sorted[middle - 1] ?? 0) + (sorted[middle] ?? 0)) / 2;
};

function startupLines(target: string, timings: StartupTiming[]): string[][] {
  const byProcess = new Map<string, StartupTiming[]>();
  for (const timing of timings) byProcess.set(`${timing.process} ${timing.kind}`, [...(byProcess.get(`${timing.process} ${timing.kind}`) ?? []), timing]);
  return [...byProcess.values()].map((runs) => {
    const ready = runs.map((run) => run.readyMs).filter((value): value is number => value !== null);
    const health = runs.map((run) => run.healthMs).filter((value): value is number => value !== null);
    const rss = median(runs.map((run) => run.rssBytesAtReady).filter((value): value is number => value !== null));
    const first = runs[0] as StartupTiming;
    return [
      target,
      first.process,
      first.kind,
      String(runs.length),
      fixed(median(health), 0),
      fixed(median(ready), 0),
      ready.length === 0 ? '–' : fixed(Math.max(...ready), 0),
      rss === null ? '–' : fixed(rss / MB, 0),
    ];
  });
}

/** Spawn to first 200 on /health and /ready, per process: median (and worst) of the runs. */
export function formatStartup(startup: StartupRecord): string {
  const lines = [
    ...Object.entries(startup.restarts).flatMap(([target, timings]) => startupLines(target, timings)),
    ...startupLines('monolithic on PGlite', startup.pglite),
    ...(startup.bare === null ? [] : [['bare', 'bare', 'first', '1', fixed(startup.bare, 0), '–', '–', '–']]),
  ];
  const table = markdown(['target', 'process', 'start', 'runs', '/health ms', '/ready ms', 'worst /ready ms', 'RSS MB at ready'], lines, 3);
  return startup.pgliteError === undefined ? table : `${table}\n\nmonolithic on PGlite failed: ${startup.pgliteError.split('\n')[0]}`;
}

/** Login against the bcrypt ceiling, its refusals, and /health latency meanwhile. */
export function formatLogin(rows: ResultRow[], ceiling: BcryptCeiling | null): string {
  const lines = rows
    .filter((row) => row.scenario === 'login' && row.measurement !== undefined)
    .map((row) => {
      const m = row.measurement as Measurement;
      const refused = Object.entries(m.statuses)
        .filter(([status]) => !status.startsWith('2'))
        .map(([status, count]) => `${count}× ${status}`)
        .join(', ');
      const probe = row.healthDuringLogin;
      return [
        row.target,
        row.protocol,
        fixed(m.okPerSecond, 2),
        ceiling === null ? '–' : fixed(m.okPerSecond / ceiling.hashesPerSecond, 2),
        refused === '' ? '0' : refused,
        fixed(probe?.latencyMs?.p50, 1),
        fixed(probe?.latencyMs?.p99, 1),
        probe === undefined ? '–' : `${probe.ok}/${probe.requests}`,
      ];
    });
  const head =
    ceiling === null
      ? 'bcrypt ceiling: not measured'
      : `bcrypt ceiling: ${ceiling.hashesPerSecond.toFixed(2)} checks/s at cost ${ceiling.cost} (${ceiling.hashes} in ${ceiling.seconds} s, ${ceiling.inFlight} in flight on a threadpool of ${ceiling.threadpoolSize})`;
  return `${head}\n\n${markdown(['target', 'protocol', 'logins/s', '× bcrypt ceiling', 'non-2xx', '/health p50 ms', '/health p99 ms', '/health 2xx'], lines, 2)}`;
}

export function formatSoak(soak: (SoakResult & { target: string }) | null): string {
  if (soak === null) return 'soak: not run (--soak)';
  const m = soak.measurement;
  const rss = Object.entries(soak.rss).map(
    ([name, trend]) =>
      `${name} ${trend === null ? 'unknown' : `${fixed(trend.first / MB, 0)} → ${fixed(trend.last / MB, 0)} MB (min ${fixed(trend.min / MB, 0)}, max ${fixed(trend.max / MB, 0)}; growth ${fixed(trend.growth * 100, 1)} %)`}`,
  );
  return [
    `soak on ${soak.target}: ${soak.seconds} s at ${fixed(soak.targetRate, 0)} req/s (${soak.load} × ${fixed(soak.maxRate, 0)}), achieved ${fixed(m.requestsPerSecond, 0)} req/s` +
      ` (${fixed((m.requestsPerSecond / soak.targetRate) * 100, 1)} %), p50 ${fixed(m.latencyMs?.p50, 2)} ms, p99 ${fixed(m.latencyMs?.p99, 2)} ms, errors ${errorCount(m)}, ${m.lostSlots ?? 0} slots given up`,
    `RSS: ${rss.join('; ')}`,
  ].join('\n');
}

export function formatTargets(targets: TargetCheck[]): string {
  return targets
    .map(
      (t) =>
        `${t.name}: ${t.value === null ? 'not measured' : fixed(t.value, 2)}${t.target === '' ? '' : ` (target ${t.target}: ${t.met === null ? '–' : t.met ? 'met' : 'NOT met'})`}`,
    )
    .join('\n');
}

/** The figures the project's performance targets are stated in, from one run. */
export function computeTargets(record: Pick<BenchRecord, 'results' | 'startup' | 'bcryptCeiling' | 'soak' | 'idleRss'>): TargetCheck[] {
  const rows = record.results;
  const row = (target: string, protocol: Protocol, scenario: ScenarioName): ResultRow | undefined => measuredRows(rows, target, protocol, scenario)[0];
  // With --rounds, a figure is the median over the rounds, and a ratio of two targets the median
  // of each round's ratio (each round's rows against the same round's; the bare server, measured
  // once, against every round).
  const okRate = (m: Measurement): number | undefined => m.okPerSecond;
  const p99Of = (m: Measurement): number | undefined => m.latencyMs?.p99;
  const p99 = (target: string, protocol: Protocol, scenario: ScenarioName): number | null =>
    median(measuredRows(rows, target, protocol, scenario).flatMap((r) => (r.measurement?.latencyMs?.p99 === undefined ? [] : [r.measurement.latencyMs.p99])));
  type Key = [target: string, protocol: Protocol, scenario: ScenarioName];
  const paired = (a: Key, b: Key, pick: (m: Measurement) => number | undefined): number | null => {
    const under = measuredRows(rows, ...b);
    return median(
      measuredRows(rows, ...a).flatMap((over) => {
        const base = under.find((r) => r.round === over.round) ?? under.find((r) => r.round === undefined);
        const x = over.measurement === undefined ? undefined : pick(over.measurement);
        const y = base?.measurement === undefined ? undefined : pick(base.measurement);
        return x === undefined || y === undefined || y === 0 ? [] : [x / y];
      }),
    );
  };
  const check = (name: string, value: number | null | undefined, target: string, met: (value: number) => boolean): TargetCheck => ({
    name,
    value: value ?? null,
    target,
    met: value === null || value === undefined || target === '' ? null : met(value),
  });
  const ratio = (a: number | undefined, b: number | undefined): number | null => (a === undefined || b === undefined || b === 0 ? null : a / b);

  const checks: TargetCheck[] = [];
  for (const scenario of ['get-user', 'me'] as const) {
    checks.push(
      check(`monolithic REST ${scenario} req/s ÷ bare point read`, paired(['monolithic', 'rest', scenario], ['bare', 'rest', 'get-user'], okRate), '≥ 0.6', (v) => v >= 0.6),
    );
    checks.push(
      check(`monolithic REST ${scenario} p99 ÷ bare point read p99`, paired(['monolithic', 'rest', scenario], ['bare', 'rest', 'get-user'], p99Of), '≤ 2', (v) => v <= 2),
    );
  }
  checks.push(
    check('monolithic REST list-users req/s ÷ bare one-query page', paired(['monolithic', 'rest', 'list-users'], ['bare', 'rest', 'list-users'], okRate), '≥ 0.5', (v) => v >= 0.5),
  );
  for (const protocol of ['grpc', 'connect', 'connect-h2c'] as const) {
    checks.push(
      check(`monolithic ${protocol} get-user ÷ REST get-user`, paired(['monolithic', protocol, 'get-user'], ['monolithic', 'rest', 'get-user'], okRate), '≥ 1', (v) => v >= 1),
    );
  }
  const lastServerRss = (target: string): number | undefined => {
    const last = rows.filter((r) => r.target === target && r.processes !== undefined).at(-1);
    return sum((last?.processes ?? []).filter((p) => p.role === 'server').map((p) => p.rssBytesAfter)) ?? undefined;
  };
  checks.push(check('monolith RSS at its end ÷ bare server RSS at its end', ratio(lastServerRss('monolithic'), lastServerRss('bare')), '≤ 1.3', (v) => v <= 1.3));
  // Not the issue's target (that is read as the load ends): what each keeps once its load has stopped.
  const idle = (target: string): number | undefined => record.idleRss?.[target] ?? undefined;
  checks.push(check('monolith RSS 3 s after its last load ÷ bare server RSS, the same', ratio(idle('monolithic'), idle('bare')), '', () => true));

  const readies = Object.values(record.startup.restarts)
    .flat()
    .map((t) => t.readyMs);
  checks.push(check('slowest process restart to /ready on PostgreSQL, median of runs (s)', worstMedian(Object.values(record.startup.restarts).flat()), '≤ 1.5', (v) => v <= 1.5));
  if (readies.length > 0 && readies.some((value) => value === null)) checks.push({ name: 'a process never became ready', value: null, target: '', met: false });
  checks.push(check('monolith on PGlite, second start to /ready, median (s)', worstMedian(record.startup.pglite.filter((t) => t.kind === 'restart')), '≤ 3', (v) => v <= 3));

  const ceiling = record.bcryptCeiling?.hashesPerSecond;
  checks.push(check('monolithic REST logins/s ÷ bcrypt ceiling', ratio(row('monolithic', 'rest', 'login')?.measurement?.okPerSecond, ceiling), '≥ 0.9', (v) => v >= 0.9));
  const probe = row('monolithic', 'rest', 'login')?.healthDuringLogin?.latencyMs?.p99;
  checks.push(check('monolithic /health p99 during REST login (ms)', probe, '≤ 50', (v) => v <= 50));

  if (record.soak !== null) {
    // The worst process of the topology.
    const trends = Object.values(record.soak.rss).filter((trend) => trend !== null);
    const growth = trends.length === 0 ? null : Math.max(...trends.map((trend) => Math.abs(trend.growth)));
    const spread = trends.length === 0 ? null : Math.max(...trends.map((trend) => trend.spread));
    checks.push(check(`soak: ${record.soak.target} RSS growth over ${record.soak.seconds} s, |last ÷ first − 1|`, growth, '≤ 0.1', (v) => v <= 0.1));
    checks.push(check(`soak: ${record.soak.target} RSS spread, max ÷ min − 1`, spread, '≤ 0.1', (v) => v <= 0.1));
  }

  // Layer boundaries (issue 11): half the monolith's rate, and a p99 of at most 50 ms.
  for (const target of ['layered-http', 'layered-grpc', 'microservices-grpc']) {
    for (const scenario of ['get-user', 'list-users'] as const) {
      checks.push(check(`${target} ÷ monolithic, REST ${scenario} req/s`, paired([target, 'rest', scenario], ['monolithic', 'rest', scenario], okRate), '≥ 0.5', (v) => v >= 0.5));
      checks.push(check(`${target} REST ${scenario} p99 (ms)`, p99(target, 'rest', scenario), '≤ 50', (v) => v <= 50));
    }
  }
  return checks;
}

/** The rows of one target, protocol and scenario that hold a measurement: one per round. */
function measuredRows(rows: ResultRow[], target: string, protocol: Protocol, scenario: ScenarioName): ResultRow[] {
  return rows.filter((r) => r.target === target && r.protocol === protocol && r.scenario === scenario && r.measurement !== undefined);
}

/** The largest, over processes, of each process's median time to /ready, in seconds. */
function worstMedian(timings: StartupTiming[]): number | null {
  const byProcess = new Map<string, number[]>();
  for (const timing of timings) {
    if (timing.readyMs !== null) byProcess.set(timing.process, [...(byProcess.get(timing.process) ?? []), timing.readyMs]);
  }
  const medians = [...byProcess.values()].map(median).filter((value): value is number => value !== null);
  return medians.length === 0 ? null : Math.max(...medians) / 1000;
}

/** The machine and software the numbers were taken on. */
export function describeMachine(root: string, versions: { postgres: string; redis: string | undefined; tools: LoadTools }) {
  const cpus = os.cpus();
  return {
    os: { type: os.type(), platform: os.platform(), release: os.release(), arch: os.arch() },
    cpu: { model: cpus[0]?.model ?? 'unknown', count: cpus.length, availableParallelism: os.availableParallelism() },
    totalMemoryBytes: os.totalmem(),
    // Other work on the machine skews every number; this shows whether there was any at the start.
    loadAverageAtStart: os.loadavg(),
    node: process.version,
    postgres: versions.postgres,
    redis: versions.redis ?? null,
    loadGenerators: {
      http1: { name: 'wrk', version: versions.tools.wrk.version, path: versions.tools.wrk.path },
      http2: { name: 'h2load', version: versions.tools.h2load.version, path: versions.tools.h2load.path },
    },
    git: gitState(root),
  };
}

function gitState(root: string): { commit: string; dirty: boolean } | null {
  try {
    const commit = execFileSync('git', ['rev-parse', 'HEAD'], { cwd: root, encoding: 'utf8' }).trim();
    const dirty = execFileSync('git', ['status', '--porcelain'], { cwd: root, encoding: 'utf8' }).trim() !== '';
    return { commit, dirty };
  } catch {
    return null;
  }
}

/** Every table of a record, as printed at the end of a run and by --report. */
export function formatRecord(record: BenchRecord): string {
  return [
    formatTable(record.results),
    `req/s of successful answers (p99 ms):\n\n${formatMatrix(record.results)}`,
    `CPU ms per request, servers summed / load generator:\n\n${formatCpuMatrix(record.results)}`,
    formatLogin(record.results, record.bcryptCeiling),
    `start-up to ready:\n\n${formatStartup(record.startup)}`,
    formatSoak(record.soak),
    formatTargets(record.targets),
  ].join('\n\n');
}

/** Writes the record to `dir/<ISO time>.json` (colons replaced, which some file systems refuse) and returns the path. */
export async function writeResults(dir: string, startedAt: Date, record: BenchRecord): Promise<string> {
  await mkdir(dir, { recursive: true });
  const path = join(dir, `${startedAt.toISOString().replaceAll(':', '-')}.json`);
  await writeFile(path, `${JSON.stringify(record, null, 2)}\n`);
  return path;
}
