// What a run produced: the printed table and summary, and the JSON record with the machine.
import { execFileSync } from 'node:child_process';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import { join } from 'node:path';
import type { LoadSummary } from './load-job.ts';
import type { BenchSettings, Protocol, ScenarioName, TopologyName } from './settings.ts';

/** One line of the results: a measurement, or why there is none. */
export interface ResultRow {
  topology: TopologyName | 'baseline';
  protocol: Protocol;
  scenario: ScenarioName;
  /** Load settings of this row (login runs shorter and with fewer connections). */
  load?: { concurrency: number; warmupSeconds: number; durationSeconds: number };
  summary?: LoadSummary;
  /**
   * CPU each server process used over the whole load (warm-up and window), in % of one core.
   * Far below what the machine has while throughput is low means the servers were waiting.
   */
  serverCpuPercent?: Record<string, number>;
  /** The measurement failed (e.g. the preflight request was refused). */
  error?: string;
  /** The measurement was not attempted (e.g. the topology cannot be started yet). */
  skipped?: string;
}

export interface Ratio {
  name: string;
  value: number | null;
  target: number;
  met: boolean | null;
}

const fixed = (value: number | undefined, digits: number): string => (value === undefined || !Number.isFinite(value) ? '–' : value.toFixed(digits));

/**
 * The results as a Markdown table, the shape of spec §21, one row per topology × protocol ×
 * scenario. CPU columns are % of one core: the servers' summed over their processes, and the
 * load generator's.
 */
export function formatTable(rows: ResultRow[]): string {
  const header = ['topology', 'protocol', 'scenario', 'req/s', 'mean ms', 'p50 ms', 'p99 ms', 'errors', 'total', 'vs monolith', 'server CPU', 'client CPU'];
  const lines = rows.map((row) => {
    const s = row.summary;
    const reference = rows.find((other) => other.topology === 'monolithic' && other.protocol === row.protocol && other.scenario === row.scenario)?.summary;
    const relative = s !== undefined && reference !== undefined && row.topology !== 'monolithic' && row.topology !== 'baseline' ? `${(s.requestsPerSecond / reference.requestsPerSecond).toFixed(2)}×` : '';
    if (row.error !== undefined || row.skipped !== undefined) {
      return [row.topology, row.protocol, row.scenario, row.error !== undefined ? 'failed' : 'skipped', '', '', '', '', '', '', '', ''];
    }
    return [
      row.topology,
      row.protocol,
      row.scenario,
      fixed(s?.requestsPerSecond, 1),
      fixed(s?.latencyMs?.mean, 2),
      fixed(s?.latencyMs?.p50, 2),
      fixed(s?.latencyMs?.p99, 2),
      String(s?.errors ?? '–'),
      String(s?.total ?? '–'),
      relative,
      row.serverCpuPercent === undefined ? '' : `${Object.values(row.serverCpuPercent).reduce((sum, value) => sum + value, 0).toFixed(0)}%`,
      s?.generatorCpuPercent === null || s?.generatorCpuPercent === undefined ? '' : `${s.generatorCpuPercent.toFixed(0)}%`,
    ];
  });
  const widths = header.map((title, column) => Math.max(title.length, ...lines.map((line) => (line[column] ?? '').length)));
  const numeric = (column: number): boolean => column >= 3;
  const render = (cells: string[]): string =>
    `| ${cells.map((cell, column) => (numeric(column) ? cell.padStart(widths[column] ?? 0) : cell.padEnd(widths[column] ?? 0))).join(' | ')} |`;
  const rule = `|${widths.map((width, column) => (numeric(column) ? `${'-'.repeat(width + 1)}:` : `:${'-'.repeat(width + 1)}`)).join('|')}|`;
  // Reasons go under the table, once per distinct reason and topology, so the columns stay narrow.
  const notes = new Map<string, string[]>();
  for (const row of rows) {
    const reason = row.error !== undefined ? `failed: ${row.error.split('\n')[0]?.slice(0, 300)}` : row.skipped !== undefined ? `skipped: ${row.skipped}` : undefined;
    if (reason === undefined) continue;
    const key = `${row.topology}: ${reason}`;
    notes.set(key, [...(notes.get(key) ?? []), `${row.protocol} ${row.scenario}`]);
  }
  const footnotes = [...notes].map(([key, which]) => `- ${key} (${which.join(', ')})`);
  return [render(header), rule, ...lines.map(render), ...(footnotes.length > 0 ? ['', ...footnotes] : [])].join('\n');
}

/** The ratios the brief sets targets for: app vs bare baseline, and layered/gRPC vs monolith. */
export function computeRatios(rows: ResultRow[]): Ratio[] {
  const rate = (topology: ResultRow['topology'], protocol: Protocol, scenario: ScenarioName): number | undefined =>
    rows.find((row) => row.topology === topology && row.protocol === protocol && row.scenario === scenario)?.summary?.requestsPerSecond;
  const ratio = (name: string, numerator: number | undefined, denominator: number | undefined, target: number): Ratio => {
    const value = numerator === undefined || denominator === undefined || denominator === 0 ? null : numerator / denominator;
    return { name, value, target, met: value === null ? null : value >= target };
  };
  const ratios = [ratio('monolithic REST get-user / baseline', rate('monolithic', 'rest', 'get-user'), rate('baseline', 'rest', 'get-user'), 0.5)];
  for (const scenario of ['get-user', 'me', 'list-users'] as const) {
    for (const protocol of ['rest', 'connect', 'grpc'] as const) {
      const numerator = rate('layered-grpc', protocol, scenario);
      const denominator = rate('monolithic', protocol, scenario);
      if (numerator !== undefined && denominator !== undefined) {
        ratios.push(ratio(`layered-grpc / monolithic, ${protocol} ${scenario}`, numerator, denominator, 0.5));
      }
    }
  }
  return ratios;
}

export function formatRatios(ratios: Ratio[]): string {
  return ratios
    .map((r) => `${r.name}: ${r.value === null ? 'not measured' : `${r.value.toFixed(2)} (target ≥ ${r.target}: ${r.met === true ? 'met' : 'NOT met'})`}`)
    .join('\n');
}

/** The machine and software the numbers were taken on. */
export async function describeMachine(root: string, versions: { postgres: string; redis: string | undefined }) {
  const cpus = os.cpus();
  const packageVersion = async (name: string): Promise<string | undefined> => {
    try {
      const manifest = JSON.parse(await readFile(join(root, 'node_modules', name, 'package.json'), 'utf8')) as { version?: string };
      return manifest.version;
    } catch {
      return undefined;
    }
  };
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
      http1: { name: 'autocannon', version: await packageVersion('autocannon') },
      grpc: {
        name: 'bench/grpc-load.ts over @connectrpc/connect-node createGrpcTransport (h2c, one HTTP/2 connection)',
        version: await packageVersion('@connectrpc/connect-node'),
      },
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

/** Writes the record to `dir/<ISO time>.json` (colons replaced, which some file systems refuse) and returns the path. */
export async function writeResults(dir: string, startedAt: Date, record: {
  settings: BenchSettings;
  machine: Awaited<ReturnType<typeof describeMachine>>;
  [key: string]: unknown;
}): Promise<string> {
  await mkdir(dir, { recursive: true });
  const path = join(dir, `${startedAt.toISOString().replaceAll(':', '-')}.json`);
  await writeFile(path, `${JSON.stringify(record, null, 2)}\n`);
  return path;
}
