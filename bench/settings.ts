// Command-line settings of `npm run bench`, with their defaults and checks.
import { parseArgs } from 'node:util';

import { TOPOLOGIES, type TopologyName } from '../scripts/topology.ts';

export type { TopologyName };

/** How the load reaches the controller (or monolith): REST, Connect JSON over HTTP/1.1, or gRPC over h2c. */
export const PROTOCOLS = ['rest', 'connect', 'grpc'] as const;
export type Protocol = (typeof PROTOCOLS)[number];

export const SCENARIOS = ['get-user', 'me', 'list-users', 'login'] as const;
export type ScenarioName = (typeof SCENARIOS)[number];

export interface BenchSettings {
  durationSeconds: number;
  loginDurationSeconds: number;
  warmupSeconds: number;
  connections: number;
  loginConnections: number;
  timeoutSeconds: number;
  /** Cap on requests in one measured run, so every run is bounded in count as well as time. */
  maxRequests: number;
  /** Pause between runs, so background work one run caused (audit jobs, GC) does not land in the next. */
  settleSeconds: number;
  topologies: TopologyName[];
  protocols: Protocol[];
  scenarios: ScenarioName[];
  baseline: boolean;
  users: number;
  quick: boolean;
  databaseUrl: string;
  /** Redis for every server process, or undefined to run them with in-process cache and counters. */
  redisUrl: string | undefined;
}

export const USAGE = `Usage: npm run bench -- [options]

  --duration <s>           measured seconds per scenario (default 10; --quick: 2)
  --login-duration <s>     measured seconds for login, which bcrypt makes slow (default 5; --quick: 2)
  --warmup <s>             unmeasured load before each measurement (default 2; --quick: 1)
  --connections <n>        concurrent requests: HTTP/1.1 connections or in-flight gRPC calls (default 50)
  --login-connections <n>  concurrency for login (default 8: bcrypt saturates the cores long before)
  --timeout <s>            a request unanswered this long is an error (default 10)
  --topologies <a,b>       ${TOPOLOGIES.join(', ')} (default: all)
  --protocols <a,b>        ${PROTOCOLS.join(', ')} (default: all)
  --scenarios <a,b>        ${SCENARIOS.join(', ')} (default: all)
  --users <n>              users to register before measuring (default 100, at least 21)
  --no-baseline            skip the bare node:http + pg baseline
  --quick                  short smoke run
  --database-url <url>     PostgreSQL server (default postgresql://postgres@127.0.0.1:5432/test);
                           a fresh schema is created in it and dropped at the end
  --redis-url <url|off>    Redis for the servers (default redis://127.0.0.1:6379); off = in-process
  --help                   this text
`;

export class UsageError extends Error {
  override readonly name = 'UsageError';
}

/** Parses the command line; throws UsageError with a message naming the bad option. */
export function parseSettings(argv: string[]): BenchSettings | 'help' {
  const { values } = parseArgs({
    args: argv,
    allowNegative: true,
    strict: true,
    options: {
      duration: { type: 'string' },
      'login-duration': { type: 'string' },
      warmup: { type: 'string' },
      connections: { type: 'string' },
      'login-connections': { type: 'string' },
      timeout: { type: 'string' },
      topologies: { type: 'string' },
      protocols: { type: 'string' },
      scenarios: { type: 'string' },
      users: { type: 'string' },
      baseline: { type: 'boolean', default: true },
      quick: { type: 'boolean', default: false },
      'database-url': { type: 'string', default: 'postgresql://postgres@127.0.0.1:5432/test' },
      'redis-url': { type: 'string', default: 'redis://127.0.0.1:6379' },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) return 'help';
  const quick = values.quick;
  const connections = integer('connections', values.connections, 50, 1, 1000);
  const redis = values['redis-url'];
  return {
    durationSeconds: number('duration', values.duration, quick ? 2 : 10, 0.5, 600),
    loginDurationSeconds: number('login-duration', values['login-duration'], quick ? 2 : 5, 0.5, 600),
    warmupSeconds: number('warmup', values.warmup, quick ? 1 : 2, 0, 60),
    connections,
    loginConnections: integer('login-connections', values['login-connections'], Math.min(8, connections), 1, 1000),
    timeoutSeconds: number('timeout', values.timeout, 10, 1, 120),
    maxRequests: 5_000_000,
    settleSeconds: quick ? 0.5 : 1,
    topologies: list('topologies', values.topologies, TOPOLOGIES),
    protocols: list('protocols', values.protocols, PROTOCOLS),
    scenarios: list('scenarios', values.scenarios, SCENARIOS),
    baseline: values.baseline,
    users: integer('users', values.users, 100, 21, 10_000),
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
  const wanted = raw.split(',').map((item) => item.trim()).filter((item) => item !== '');
  const unknown = wanted.filter((item) => !(allowed as readonly string[]).includes(item));
  if (unknown.length > 0 || wanted.length === 0) {
    throw new UsageError(`--${name} takes a comma-separated list of ${allowed.join(', ')}; unknown: ${unknown.join(', ') || '(empty)'}`);
  }
  return allowed.filter((item) => wanted.includes(item));
}
