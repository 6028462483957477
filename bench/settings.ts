// Command-line settings of `npm run bench`, with their defaults and checks.
import { parseArgs } from 'node:util';

import { TOPOLOGIES, type TopologyName } from '../scripts/topology.ts';

export type { TopologyName };

/**
 * How the load reaches the controller (or monolith): REST and Connect JSON over HTTP/1.1 (wrk),
 * gRPC and Connect JSON over cleartext HTTP/2 (h2load).
 */
export const PROTOCOLS = ['rest', 'connect', 'grpc', 'connect-h2c'] as const;
export type Protocol = (typeof PROTOCOLS)[number];

/** Login comes last: the bcrypt work it leaves queued would otherwise run into the next scenario. */
export const SCENARIOS = ['get-user', 'me', 'list-users', 'health', 'login'] as const;
export type ScenarioName = (typeof SCENARIOS)[number];

/**
 * Extra environment for every server process of a topology, measured as rows of their own
 * (`monolithic+metrics`), e.g. a feature switched on. The topology without overrides is always
 * measured too, as the variant `default`.
 */
export interface Variant {
  name: string;
  env: Record<string, string>;
}

export interface BenchSettings {
  /** Measured seconds per scenario (wrk takes whole seconds). */
  durationSeconds: number;
  /** Unmeasured load before each measurement. */
  warmupSeconds: number;
  loginDurationSeconds: number;
  /** Concurrent requests: HTTP/1.1 connections, or HTTP/2 streams over `h2Connections`. */
  connections: number;
  loginConnections: number;
  /** HTTP/2 connections h2load opens; the concurrent requests are spread over them as streams. */
  h2Connections: number;
  /** wrk threads; each is one event loop, and one is enough to outrun one Node process. */
  wrkThreads: number;
  /** A request unanswered this long is counted as a timeout. */
  timeoutSeconds: number;
  /** Requests per second of the /health probe that runs during every login measurement. */
  probeRate: number;
  topologies: TopologyName[];
  variants: Variant[];
  protocols: Protocol[];
  scenarios: ScenarioName[];
  /** Measure the bare node:http + pg ceilings. */
  bare: boolean;
  users: number;
  /** Restarts of every process of a topology, timed from spawn to ready; 0 skips them. */
  /** How many times the topologies' rows are measured, alternating topologies (each round in full). */
  rounds: number;
  startupRuns: number;
  /** Time a monolith on the embedded PGlite database too (first and second start). */
  pglite: boolean;
  /** How long the bcrypt ceiling is measured; 0 skips it. */
  bcryptSeconds: number;
  soak: boolean;
  soakSeconds: number;
  /** Fraction of the measured maximum rate of REST GET user by id that the soak holds. */
  soakLoad: number;
  soakSampleSeconds: number;
  quick: boolean;
  databaseUrl: string;
  /** Redis for every server process, or undefined to run them with in-process cache and counters. */
  redisUrl: string | undefined;
}

export const USAGE = `Usage: npm run bench -- [options]

  --quick                  short smoke run (2 s per scenario, 30 users, one start-up run)
  --duration <s>           measured seconds per scenario (default 10; --quick: 2)
  --warmup <s>             unmeasured load before each measurement (default 2; --quick: 1)
  --login-duration <s>     measured seconds of login (default 30; --quick: 2)
  --connections <n>        concurrent requests: HTTP/1.1 connections, or HTTP/2 streams (default 50)
  --login-connections <n>  concurrent logins (default 50)
  --h2-connections <n>     HTTP/2 connections the streams are spread over (default 1, as a gRPC
                           client multiplexes its calls)
  --wrk-threads <n>        wrk threads (default 1)
  --timeout <s>            a request unanswered this long is a timeout (default 30)
  --probe-rate <n>         /health requests per second during login (default 20)
  --topologies <a,b>       ${TOPOLOGIES.join(', ')} (default: all)
  --variant <name:K=V,…>   also measure every topology with this extra environment, as rows
                           <topology>+<name>; repeatable (e.g. --variant cache:CACHE_TTL_SECONDS=1)
  --metrics                also measure every topology with Prometheus metrics on (rows <topology>+metrics)
  --tracing                also measure every topology with OpenTelemetry tracing on, every span exported
                           to an OTLP/HTTP sink in the bench process (rows <topology>+tracing)
  --protocols <a,b>        ${PROTOCOLS.join(', ')} (default: all)
  --scenarios <a,b>        ${SCENARIOS.join(', ')} (default: all; health is REST only)
  --users <n>              users to register before measuring (default 100; --quick: 30; at least 21)
  --no-bare                skip the bare node:http + pg ceilings
  --rounds <n>             measure the topologies' rows this many times, alternating them (monolithic,
                           layered-grpc, monolithic, layered-grpc, …), and compare each round's
                           rows with the same round's: the host's speed drifts between minutes
                           (default 1)
  --startup-runs <n>       restarts per process timed from spawn to ready (default 2; --quick: 1; 0: none)
  --no-pglite              skip timing a monolith on PGlite
  --bcrypt-seconds <s>     how long to measure the bcrypt ceiling (default 15; --quick: 2; 0: skip)
  --soak                   after the first topology's scenarios, hold a fraction of its maximum REST
                           GET user by id rate and record RSS over time
  --soak-duration <s>      (default 300; --quick: 20)
  --soak-load <fraction>   (default 0.8)
  --soak-sample <s>        RSS sampling interval (default 5; --quick: 2)
  --database-url <url>     PostgreSQL server (default postgresql://postgres@127.0.0.1:5432/test);
                           a fresh schema is created in it and dropped at the end. A mysql:// or
                           mariadb:// server runs the servers on MySQL/MariaDB instead, in a fresh
                           database (no bare ceilings there: they speak PostgreSQL)
  --redis-url <url|off>    Redis for the servers (default redis://127.0.0.1:6379); off = in-process
  --report <file>          print the tables of a results file instead of measuring
  --help                   this text
`;

/** Stands for the URL of the bench's own OTLP sink in a variant's environment, until it listens. */
export const OTLP_SINK = 'http://bench-otlp-sink.invalid';

export class UsageError extends Error {
  override readonly name = 'UsageError';
}

/** Parses the command line; throws UsageError with a message naming the bad option. */
export function parseSettings(argv: string[]): BenchSettings | { report: string } | 'help' {
  const { values } = parseArgs({
    args: argv,
    allowNegative: true,
    strict: true,
    options: {
      duration: { type: 'string' },
      warmup: { type: 'string' },
      'login-duration': { type: 'string' },
      connections: { type: 'string' },
      'login-connections': { type: 'string' },
      'h2-connections': { type: 'string' },
      'wrk-threads': { type: 'string' },
      timeout: { type: 'string' },
      'probe-rate': { type: 'string' },
      topologies: { type: 'string' },
      variant: { type: 'string', multiple: true },
      metrics: { type: 'boolean', default: false },
      tracing: { type: 'boolean', default: false },
      protocols: { type: 'string' },
      scenarios: { type: 'string' },
      users: { type: 'string' },
      bare: { type: 'boolean', default: true },
      'startup-runs': { type: 'string' },
      rounds: { type: 'string' },
      pglite: { type: 'boolean', default: true },
      'bcrypt-seconds': { type: 'string' },
      soak: { type: 'boolean', default: false },
      'soak-duration': { type: 'string' },
      'soak-load': { type: 'string' },
      'soak-sample': { type: 'string' },
      quick: { type: 'boolean', default: false },
      'database-url': { type: 'string', default: 'postgresql://postgres@127.0.0.1:5432/test' },
      'redis-url': { type: 'string', default: 'redis://127.0.0.1:6379' },
      report: { type: 'string' },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) return 'help';
  if (values.report !== undefined) return { report: values.report };
  const quick = values.quick;
  const connections = integer('connections', values.connections, 50, 1, 1000);
  const h2Connections = integer('h2-connections', values['h2-connections'], 1, 1, connections);
  if (connections % h2Connections !== 0) throw new UsageError(`--connections (${connections}) must be a multiple of --h2-connections (${h2Connections})`);
  const loginConnections = integer('login-connections', values['login-connections'], 50, 1, 1000);
  if (loginConnections % h2Connections !== 0) throw new UsageError(`--login-connections (${loginConnections}) must be a multiple of --h2-connections (${h2Connections})`);
  const redis = values['redis-url'];
  return {
    durationSeconds: integer('duration', values.duration, quick ? 2 : 10, 1, 3600),
    warmupSeconds: integer('warmup', values.warmup, quick ? 1 : 2, 0, 600),
    loginDurationSeconds: integer('login-duration', values['login-duration'], quick ? 2 : 30, 2, 3600),
    connections,
    loginConnections,
    h2Connections,
    wrkThreads: integer('wrk-threads', values['wrk-threads'], 1, 1, 64),
    timeoutSeconds: integer('timeout', values.timeout, 30, 1, 600),
    probeRate: number('probe-rate', values['probe-rate'], 20, 1, 1000),
    topologies: list('topologies', values.topologies, TOPOLOGIES),
    variants: [
      ...(values.variant ?? []).map(variant),
      // Metrics served on a port per process (scripts/topology.ts picks free ones from this).
      ...(values.metrics ? [{ name: 'metrics', env: { METRICS_PORT: '9464' } }] : []),
      // Spans exported to an OTLP/HTTP sink the bench runs (bench/run.ts puts its URL in).
      ...(values.tracing ? [{ name: 'tracing', env: { OTEL_EXPORTER_OTLP_ENDPOINT: OTLP_SINK } }] : []),
    ],
    protocols: list('protocols', values.protocols, PROTOCOLS),
    scenarios: list('scenarios', values.scenarios, SCENARIOS),
    bare: values.bare,
    users: integer('users', values.users, quick ? 30 : 100, 21, 10_000),
    rounds: integer('rounds', values.rounds, 1, 1, 20),
    startupRuns: integer('startup-runs', values['startup-runs'], quick ? 1 : 2, 0, 100),
    pglite: values.pglite,
    bcryptSeconds: integer('bcrypt-seconds', values['bcrypt-seconds'], quick ? 2 : 15, 0, 600),
    soak: values.soak,
    soakSeconds: integer('soak-duration', values['soak-duration'], quick ? 20 : 300, 5, 24 * 3600),
    soakLoad: number('soak-load', values['soak-load'], 0.8, 0.01, 1),
    soakSampleSeconds: number('soak-sample', values['soak-sample'], quick ? 2 : 5, 0.5, 600),
    quick,
    databaseUrl: values['database-url'],
    redisUrl: redis === 'off' ? undefined : redis,
  };
}

function number(name: string, raw: string | undefined, fallback: number, min: number, max: number): number {
  if (raw === undefined) return fallback;
  const value = Number(raw);
  if (!Number.isFinite(value) || value < min || value > max) throw new UsageError(`--${name} must be a number from ${min} to ${max}, not "${raw}"`);
  return value;
}

function integer(name: string, raw: string | undefined, fallback: number, min: number, max: number): number {
  const value = number(name, raw, fallback, min, max);
  if (!Number.isInteger(value)) throw new UsageError(`--${name} must be a whole number, not "${raw}"`);
  return value;
}

/** A comma-separated subset of `allowed`, kept in the order of `allowed`; all of it when absent. */
function list<T extends string>(name: string, raw: string | undefined, allowed: readonly T[]): T[] {
  if (raw === undefined) return [...allowed];
  const wanted = raw
    .split(',')
    .map((item) => item.trim())
    .filter((item) => item !== '');
  const unknown = wanted.filter((item) => !(allowed as readonly string[]).includes(item));
  if (unknown.length > 0 || wanted.length === 0) {
    throw new UsageError(`--${name} takes a comma-separated list of ${allowed.join(', ')}; unknown: ${unknown.join(', ') || '(empty)'}`);
  }
  return allowed.filter((item) => wanted.includes(item));
}

/** `name:KEY=VALUE,KEY=VALUE` → a Variant. */
function variant(raw: string): Variant {
  const colon = raw.indexOf(':');
  const name = colon < 0 ? raw : raw.slice(0, colon);
  if (!/^[a-z0-9][a-z0-9-]{0,30}$/.test(name) || name === 'default') {
    throw new UsageError(`--variant needs a name of lower-case letters, digits and dashes other than "default", not "${name}"`);
  }
  const env: Record<string, string> = {};
  for (const pair of colon < 0 ? [] : raw.slice(colon + 1).split(',')) {
    const match = /^([A-Z_][A-Z0-9_]*)=(.*)$/.exec(pair.trim());
    if (match === null) throw new UsageError(`--variant ${name}: "${pair}" is not KEY=VALUE`);
    env[match[1] as string] = match[2] as string;
  }
  if (Object.keys(env).length === 0) throw new UsageError(`--variant ${name} sets no variables: use name:KEY=VALUE[,KEY=VALUE]`);
  return { name, env };
}
