// `npm run bench`: throughput and latency of the public API per deployment topology and protocol,
// against a bare node:http + pg baseline. One load runs at a time, each in its own process; the
// servers use a fresh PostgreSQL schema (and Redis key prefix) that is removed at the end.
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import pg from 'pg';
import { startTopology, type RunningTopology } from '../scripts/topology.ts';
import { measureCpu } from './process-cpu.ts';
import { computeRatios, describeMachine, formatRatios, formatTable, writeResults, type ResultRow } from './report.ts';
import type { LoadJob } from './load-job.ts';
import { runLoad } from './run-load.ts';
import { baselineJob, jobFor, SCENARIO_TITLES } from './scenarios.ts';
import { BENCH_ADMIN, seed, type Fixtures } from './seed.ts';
import { startServerProcess, type ServerProcess } from './server-process.ts';
import { parseSettings, USAGE, UsageError, type BenchSettings, type TopologyName } from './settings.ts';

const root = join(import.meta.dirname, '..');

function log(message: string): void {
  process.stderr.write(`${message}\n`);
}

function describe(row: ResultRow): string {
  const s = row.summary;
  if (s === undefined) return row.error ?? row.skipped ?? '';
  const latency = s.latencyMs === null ? 'no successful requests' : `mean ${s.latencyMs.mean.toFixed(2)} ms, p99 ${s.latencyMs.p99.toFixed(2)} ms`;
  const servers = Object.entries(row.serverCpuPercent ?? {}).map(([name, percent]) => `${name} ${percent.toFixed(0)} %`);
  const cpu = `; CPU: ${[...servers, ...(s.generatorCpuPercent === null ? [] : [`load generator ${s.generatorCpuPercent.toFixed(0)} %`])].join(', ')}`;
  return `${s.requestsPerSecond.toFixed(1)} req/s, ${latency}, ${s.errors} errors of ${s.total}${s.errors > 0 ? ` ${JSON.stringify(s.outcomes)}` : ''}${cpu}`;
}

function loadOf(job: LoadJob): NonNullable<ResultRow['load']> {
  return { concurrency: job.concurrency, warmupSeconds: job.warmupSeconds, durationSeconds: job.durationSeconds };
}

async function main(settings: BenchSettings): Promise<void> {
  const startedAt = new Date();
  // Unique per run, and a valid PostgreSQL identifier, Redis prefix and username part.
  const runId = `${startedAt.toISOString().replace(/\D/g, '').slice(0, 14)}_${randomBytes(2).toString('hex')}`;
  const schema = `bench_${runId}`;
  const redisPrefix = `bench_${runId}_`;

  const adminDb = new pg.Client({ connectionString: settings.databaseUrl });
  await adminDb.connect();
  const postgresVersion = String((await adminDb.query<{ server_version: string }>('SHOW server_version')).rows[0]?.server_version);
  const redis = settings.redisUrl === undefined ? undefined : new Redis(settings.redisUrl, { lazyConnect: true, maxRetriesPerRequest: 1 });
  let redisVersion: string | undefined;
  if (redis !== undefined) {
    await redis.connect().catch((error: unknown) => {
      throw new Error(`Redis at ${settings.redisUrl} is not reachable (${String(error)}); start it or pass --redis-url off`);
    });
    redisVersion = /redis_version:(\S+)/.exec(await redis.info('server'))?.[1];
  }
  const machine = await describeMachine(root, { postgres: postgresVersion, redis: redisVersion });

  const databaseUrl = new URL(settings.databaseUrl);
  databaseUrl.searchParams.set('schema', schema);
  const jwtSecret = randomBytes(48).toString('base64url');
  const internalSecret = randomBytes(32).toString('base64url');
  /** What every server process gets; the launcher adds each layer's own variables. */
  const serverEnv = (topology: TopologyName | 'baseline'): Record<string, string> => ({
    PATH: process.env.PATH ?? '',
    // Production mode as deployed; it requires a JWT secret of ≥ 64 characters, which this is.
    NODE_ENV: 'production',
    // Logging every request would measure the logger.
    LOG_LEVEL: 'warn',
    DATABASE_URL: databaseUrl.toString(),
    JWT_SECRET: jwtSecret,
    // Split topologies in production require it; the internal calls pay for checking it.
    INTERNAL_API_SECRET: internalSecret,
    // Tokens issued while seeding must outlive the whole run.
    JWT_ACCESS_EXPIRES_IN_SECONDS: '86400',
    BCRYPT_ROUNDS: '12',
    // Throttles would turn the load into 429s; the limits' own cost is still paid per request.
    RATE_LIMIT_ENABLED: 'false',
    // The largest value the configuration accepts; login load would exhaust the default of 30.
    LOGIN_ACCOUNT_RATE_LIMIT_MAX: '1000000',
    ADMIN_USERNAME: BENCH_ADMIN.username,
    ADMIN_EMAIL: BENCH_ADMIN.email,
    ADMIN_PASSWORD: BENCH_ADMIN.password,
    SHUTDOWN_TIMEOUT_MS: '10000',
    // A prefix per topology, so audit jobs queued under one topology are not worked off while
    // the next one is being measured.
    ...(settings.redisUrl === undefined ? {} : { REDIS_URL: settings.redisUrl, REDIS_KEY_PREFIX: `${redisPrefix}${topology}:` }),
  });

  const rows: ResultRow[] = [];
  const deployments: Record<string, string[]> = {};
  let fixtures: Fixtures | undefined;
  let seedSeconds: number | undefined;
  let baselineDone = !settings.baseline;
  let running: RunningTopology | ServerProcess | undefined;
  let interrupted = false;
  const onSignal = (signal: NodeJS.Signals): void => {
    log(`${signal}: stopping after the current step and cleaning up`);
    interrupted = true;
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  const measureBaseline = async (seeded: Fixtures): Promise<void> => {
    baselineDone = true;
    const row: ResultRow = { topology: 'baseline', protocol: 'rest', scenario: 'get-user' };
    try {
      log('starting baseline (node:http + pg)');
      const server = await startServerProcess({ name: 'baseline', script: join(import.meta.dirname, 'bare-server.ts'), cwd: root, env: serverEnv('baseline') });
      running = server;
      const job = baselineJob(server.url, seeded, settings);
      row.load = loadOf(job);
      const cpu = measureCpu([{ name: 'baseline', pid: server.pid }]);
      row.summary = await runLoad(job);
      row.serverCpuPercent = cpu();
    } catch (error) {
      row.error = error instanceof Error ? error.message : String(error);
    } finally {
      await running?.stop();
      running = undefined;
    }
    rows.push(row);
    log(`  baseline rest get-user: ${describe(row)}`);
  };

  try {
    await adminDb.query(`CREATE SCHEMA "${schema}"`);
    log(`schema ${schema}; ${settings.connections} connections, ${settings.durationSeconds} s per scenario (login ${settings.loginDurationSeconds} s, ${settings.loginConnections} connections), ${settings.warmupSeconds} s warm-up`);

    for (const topology of settings.topologies) {
      if (interrupted) break;
      const pending = settings.protocols.flatMap((protocol) => settings.scenarios.map((scenario) => ({ topology, protocol, scenario })));
      try {
        log(`starting ${topology}`);
        const deployment = await startTopology({ name: topology, env: serverEnv(topology) });
        running = deployment;
        deployments[topology] = deployment.layers.map((layer) => layer.name);
        log(`  ${topology} at ${deployment.baseUrl} (${deployment.layers.map((layer) => layer.name).join(' → ')})`);
        if (fixtures === undefined) {
          const seedStart = performance.now();
          log(`  seeding ${settings.users} users through ${topology} (bcrypt cost 12)`);
          fixtures = await seed(deployment.baseUrl, settings.users, runId);
          seedSeconds = (performance.now() - seedStart) / 1000;
          log(`  seeded in ${seedSeconds.toFixed(1)} s`);
        }
        for (const { protocol, scenario } of pending) {
          if (interrupted) break;
          const job = jobFor(protocol, scenario, deployment.baseUrl, fixtures, settings);
          const row: ResultRow = { topology, protocol, scenario, load: loadOf(job) };
          try {
            const cpu = measureCpu(deployment.layers);
            row.summary = await runLoad(job);
            row.serverCpuPercent = cpu();
          } catch (error) {
            row.error = error instanceof Error ? error.message : String(error);
          }
          rows.push(row);
          log(`  ${topology} ${protocol} ${scenario}: ${describe(row)}`);
          // Login leaves the most behind: the last bcrypt hashes of abandoned requests and audit jobs.
          await sleep((scenario === 'login' ? 3 : 1) * settings.settleSeconds * 1000);
        }
      } catch (error) {
        const message = error instanceof Error ? error.message : String(error);
        log(`  ${topology} failed: ${message}`);
        const measured = new Set(rows.filter((row) => row.topology === topology).map((row) => `${row.protocol} ${row.scenario}`));
        rows.push(...pending.filter((row) => !measured.has(`${row.protocol} ${row.scenario}`)).map((row) => ({ ...row, error: message })));
      } finally {
        await running?.stop();
        running = undefined;
      }
      // The baseline runs right after the first topology that seeded the data, so the two
      // numbers the headline ratio compares are taken close together.
      if (!baselineDone && fixtures !== undefined && !interrupted) await measureBaseline(fixtures);
    }
    if (!baselineDone) rows.push({ topology: 'baseline', protocol: 'rest', scenario: 'get-user', skipped: 'no topology started, so there was no data to read' });

    const finishedAt = new Date();
    const ratios = computeRatios(rows);
    process.stdout.write(`\n${formatTable(rows)}\n\n${formatRatios(ratios)}\n`);
    const path = await writeResults(join(import.meta.dirname, 'results'), startedAt, {
      startedAt: startedAt.toISOString(),
      finishedAt: finishedAt.toISOString(),
      complete: !interrupted,
      runId,
      deployments,
      settings,
      machine,
      serverEnvironment: { ...serverEnv('monolithic'), JWT_SECRET: '(random, 64 characters)', INTERNAL_API_SECRET: '(random, 43 characters)', PATH: undefined, REDIS_KEY_PREFIX: settings.redisUrl === undefined ? undefined : `${redisPrefix}<topology>:` },
      seed: { users: settings.users, seconds: seedSeconds, via: settings.topologies[0] },
      scenarios: Object.fromEntries(settings.scenarios.map((scenario) => [scenario, SCENARIO_TITLES[scenario]])),
      results: rows,
      ratios,
    });
    process.stdout.write(`\nresults written to ${path}\n`);
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await running?.stop();
    await adminDb.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`).catch((error: unknown) => log(`could not drop schema ${schema}: ${String(error)}`));
    await adminDb.end();
    if (redis !== undefined) {
      await deleteKeys(redis, `${redisPrefix}*`).catch((error: unknown) => log(`could not delete Redis keys ${redisPrefix}*: ${String(error)}`));
      redis.disconnect();
    }
  }
}

/** Deletes the keys matching `pattern` with SCAN, in a bounded number of rounds. */
async function deleteKeys(redis: Redis, pattern: string): Promise<void> {
  let cursor = '0';
  for (let round = 0; round < 100_000; round += 1) {
    const [nextCursor, keys] = await redis.scan(cursor, 'MATCH', pattern, 'COUNT', 1000);
    if (keys.length > 0) await redis.unlink(...keys);
    cursor = nextCursor;
    if (cursor === '0') return;
  }
}

let settings: BenchSettings | 'help';
try {
  settings = parseSettings(process.argv.slice(2));
} catch (error) {
  process.stderr.write(`${error instanceof UsageError || error instanceof TypeError ? error.message : String(error)}\n\n${USAGE}`);
  process.exit(2);
}
if (settings === 'help') {
  process.stdout.write(USAGE);
} else {
  main(settings).then(
    () => process.exit(0),
    (error: unknown) => {
      process.stderr.write(`bench failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
      process.exit(1);
    },
  );
}
