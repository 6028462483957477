// `npm run bench`: throughput, latency, CPU per request and memory of the public API per deployment
// topology and protocol, against bare node:http + pg ceilings, with wrk (HTTP/1.1) and h2load
// (HTTP/2) as the load: native generators that leave the server the machine's CPU. One load runs
// at a time; the servers use a fresh PostgreSQL schema (and Redis key prefix) removed at the end.
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import mariadb from 'mariadb';
import pg from 'pg';
import { startTopology, type RunningTopology } from '../scripts/topology.ts';
import { measureBcryptCeiling, type BcryptCeiling } from './bcrypt-ceiling.ts';
import { checkCall, type CallCheck } from './check-call.ts';
import { runH2load } from './h2load-load.ts';
import { findLoadTools, MissingToolError } from './load-tools.ts';
import type { Measurement } from './measurement.ts';
import { cpuSnapshot, processRssBytes, waitForIdle, type NamedProcess } from './process-stats.ts';
import { computeTargets, describeMachine, formatRecord, RECORD_FORMAT, writeResults, type BenchRecord, type ProcessUse, type ResultRow, type StartupRecord } from './report.ts';
import { applies, BARE_CEILING, BARE_SCENARIOS, barePlan, h2Body, h2Headers, planFor, SCENARIO_TITLES, type LoadPlan } from './scenarios.ts';
import { BENCH_ADMIN, seed, type Fixtures } from './seed.ts';
import { startServerProcess, type ServerProcess } from './server-process.ts';
import { OTLP_SINK, parseSettings, USAGE, UsageError, type BenchSettings, type Protocol, type ScenarioName, type TopologyName } from './settings.ts';
import { startOtlpSink } from './otlp-sink.ts';
import { runSoak, type SoakResult } from './soak.ts';
import { timePgliteMonolith, timeRestart } from './startup-time.ts';
import { runWrk } from './wrk-load.ts';

const root = join(import.meta.dirname, '..');
const STARTUP_TIMEOUT_MS = 60_000;
/** How long a target is left idle after its last load before its RSS is read again (see idleRss). */
const IDLE_SECONDS = 3;

const began = performance.now();

/** Progress on stderr, stamped with the minutes and seconds since the start. */
function log(message: string): void {
  const seconds = Math.floor((performance.now() - began) / 1000);
  process.stderr.write(`[${String(Math.floor(seconds / 60)).padStart(2, '0')}:${String(seconds % 60).padStart(2, '0')}] ${message}\n`);
}

/** A topology as measured: on its own, or with a variant's extra environment. */
interface Target {
  name: string;
  topology: TopologyName;
  variant: string;
  env: Record<string, string>;
}

/** What a row measures against, and how its server side is watched. */
interface Subject {
  target: string;
  topology: TopologyName | 'bare';
  variant: string;
  baseUrl: string;
  /** Read when needed: a restarted layer has a new pid. */
  processes: () => NamedProcess[];
  /** Lines the servers write (they log at warn), collected while a row runs. */
  log: { lines: number; sample: string[] };
  /** Which of --rounds (1 to rounds); absent for the bare server and with one round. */
  round?: number;
}

function describe(row: ResultRow): string {
  const m = row.measurement;
  if (m === undefined) return `failed: ${row.error ?? ''}`;
  const latency = m.latencyMs === null ? 'no answers' : `p50 ${m.latencyMs.p50.toFixed(2)} ms, p99 ${m.latencyMs.p99.toFixed(2)} ms`;
  const errors = Object.entries(m.errors).filter(([, count]) => count > 0);
  const cpu = (row.processes ?? []).map((p) => `${p.name} ${p.cpuPercent === null ? '?' : p.cpuPercent.toFixed(0)} %`).join(', ');
  const probe = row.healthDuringLogin?.latencyMs;
  return (
    `${m.okPerSecond.toFixed(m.okPerSecond < 100 ? 2 : 0)} ok/s, ${latency}` +
    `${errors.length > 0 ? `, errors ${JSON.stringify(Object.fromEntries(errors))} statuses ${JSON.stringify(m.statuses)}` : ''}; CPU ${cpu}` +
    (probe === undefined || probe === null ? '' : `; /health meanwhile p99 ${probe.p99.toFixed(1)} ms`) +
    ((row.checks?.serverLogLines ?? 0) > 0 ? `; ${row.checks?.serverLogLines} server log lines` : '') +
    (row.checks?.before.ok === false ? `; the call before the load was refused: ${row.checks.before.outcome}` : '') +
    (row.checks?.after?.ok === false ? `; the call after the load failed: ${row.checks.after.outcome}` : '') +
    (row.checks?.grpc?.consistent === false
      ? `; ${row.checks.grpc.bodyBytes} gRPC response bytes do not fit ${row.checks.grpc.http200} answers of ${row.checks.grpc.answerBytes}`
      : '')
  );
}

/**
 * The run's own PostgreSQL schema, or, with a mysql:// or mariadb:// --database-url, its own
 * MySQL database on that server (the servers then run on MySQL: the client, dialect and
 * migrations a mysql:// DATABASE_URL selects).
 */
async function openBenchDatabase(serverUrl: string, name: string) {
  const url = new URL(serverUrl);
  if (url.protocol === 'mysql:' || url.protocol === 'mariadb:') {
    const connectionUrl = new URL(url);
    connectionUrl.protocol = 'mariadb:';
    // The driver wants a database in its URL; the server's own `mysql` one serves for the admin work.
    if (connectionUrl.pathname.length <= 1) connectionUrl.pathname = '/mysql';
    const connection = await mariadb.createConnection(connectionUrl.toString());
    const [row] = await connection.query<{ version: string }[]>('SELECT VERSION() AS version');
    url.pathname = `/${name}`;
    return {
      mysql: true,
      version: `MySQL/MariaDB ${row?.version ?? '?'}`,
      url: url.toString(),
      create: async () => {
        await connection.query(`CREATE DATABASE \`${name}\``);
      },
      drop: async () => {
        await connection.query(`DROP DATABASE IF EXISTS \`${name}\``);
      },
      end: () => connection.end(),
    };
  }
  const client = new pg.Client({ connectionString: serverUrl });
  await client.connect();
  url.searchParams.set('schema', name);
  return {
    mysql: false,
    version: String((await client.query<{ server_version: string }>('SHOW server_version')).rows[0]?.server_version),
    url: url.toString(),
    create: async () => {
      await client.query(`CREATE SCHEMA "${name}"`);
    },
    drop: async () => {
      await client.query(`DROP SCHEMA IF EXISTS "${name}" CASCADE`);
    },
    end: () => client.end(),
  };
}

async function main(settings: BenchSettings): Promise<void> {
  const tools = findLoadTools();
  const startedAt = new Date();
  // Unique per run, and a valid PostgreSQL identifier, Redis prefix and username part.
  const runId = `${startedAt.toISOString().replace(/\D/g, '').slice(0, 14)}_${randomBytes(2).toString('hex')}`;
  const schema = `bench_${runId}`;
  const redisPrefix = `bench_${runId}_`;
  const workDir = await mkdtemp(join(tmpdir(), 'arcana-bench-'));

  const adminDb = await openBenchDatabase(settings.databaseUrl, schema);
  const postgresVersion = adminDb.version;
  const redis = settings.redisUrl === undefined ? undefined : new Redis(settings.redisUrl, { lazyConnect: true, maxRetriesPerRequest: 1 });
  let redisVersion: string | undefined;
  if (redis !== undefined) {
    await redis.connect().catch((error: unknown) => {
      throw new Error(`Redis at ${settings.redisUrl} is not reachable (${String(error)}); start it or pass --redis-url off`);
    });
    redisVersion = /redis_version:(\S+)/.exec(await redis.info('server'))?.[1];
  }
  const machine = describeMachine(root, { postgres: postgresVersion, redis: redisVersion, tools });

  const databaseUrl = new URL(adminDb.url);
  const jwtSecret = randomBytes(48).toString('base64url');
  const internalSecret = randomBytes(32).toString('base64url');
  /** What every server process gets; the launcher adds each layer's own variables. */
  const serverEnv = (target: string, extra: Record<string, string> = {}): Record<string, string> => ({
    PATH: process.env.PATH ?? '',
    // Production mode as deployed; it requires a JWT secret of ≥ 64 characters, which this is.
    NODE_ENV: 'production',
    // Logging every request would measure the logger; whatever is logged at warn is counted per row.
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
    // The largest values the configuration accepts. Login load would exhaust the strangers'
    // budget per account (default 30), and every password compared holds a slot per account and
    // client address until it is answered (default 5): h2load logs one user in from one address,
    // 50 at a time, which would be measured as lockouts instead of logins.
    LOGIN_ACCOUNT_RATE_LIMIT_MAX: '1000000',
    LOGIN_MAX_FAILURES: '1000',
    ADMIN_USERNAME: BENCH_ADMIN.username,
    ADMIN_EMAIL: BENCH_ADMIN.email,
    ADMIN_PASSWORD: BENCH_ADMIN.password,
    SHUTDOWN_TIMEOUT_MS: '10000',
    // A prefix per target, so audit jobs queued under one are not worked off while the next one
    // is being measured.
    ...(settings.redisUrl === undefined ? {} : { REDIS_URL: settings.redisUrl, REDIS_KEY_PREFIX: `${redisPrefix}${target}:` }),
    ...extra,
  });
  // The tracing variant exports to a sink here that reads and answers each export, as a collector would.
  const sink = settings.variants.some((variant) => variant.env.OTEL_EXPORTER_OTLP_ENDPOINT === OTLP_SINK) ? await startOtlpSink() : undefined;
  const variantEnv = (env: Record<string, string>) =>
    sink !== undefined && env.OTEL_EXPORTER_OTLP_ENDPOINT === OTLP_SINK ? { ...env, OTEL_EXPORTER_OTLP_ENDPOINT: sink.url } : env;
  const targets: Target[] = settings.topologies.flatMap((topology) => [
    { name: topology, topology, variant: 'default', env: {} },
    ...settings.variants.map((variant) => ({ name: `${topology}+${variant.name}`, topology, variant: variant.name, env: variantEnv(variant.env) })),
  ]);

  const rows: ResultRow[] = [];
  const deployments: Record<string, string[]> = {};
  const startup: StartupRecord = { restarts: {}, pglite: [], bare: null };
  let bcryptCeiling: BcryptCeiling | null = null;
  let soak: (SoakResult & { target: string }) | null = null;
  const idleRss: Record<string, number | null> = {};
  /** The servers' RSS summed, IDLE_SECONDS after the target's last load: what it keeps once the load stops. */
  const recordIdleRss = async (target: string, processes: NamedProcess[]): Promise<void> => {
    if (interrupted()) return;
    await new Promise((resolve) => setTimeout(resolve, IDLE_SECONDS * 1000));
    const each = processes.map((p) => processRssBytes(p.pid) ?? null);
    idleRss[target] = each.some((value) => value === null) ? null : each.reduce<number>((total, value) => total + (value ?? 0), 0);
  };
  let fixtures: Fixtures | undefined;
  let seedSeconds: number | undefined;
  // The bare ceilings speak PostgreSQL (node-postgres): on MySQL there is none to compare with.
  let bareDone = !settings.bare || adminDb.mysql;
  let running: RunningTopology | ServerProcess | undefined;
  // Set by the signal handler and read through a call: a plain variable would stay narrowed to
  // its first check across the awaits in between, where the handler may have run.
  let interruptedBySignal = false;
  const interrupted = (): boolean => interruptedBySignal;
  const onSignal = (signal: NodeJS.Signals): void => {
    log(`${signal}: stopping after the current step and cleaning up`);
    interruptedBySignal = true;
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  /** Measures one protocol × scenario against `subject` and records the row. */
  const measureRow = async (subject: Subject, protocol: Protocol, scenario: ScenarioName, plan: LoadPlan): Promise<ResultRow> => {
    const login = scenario === 'login';
    const connections = login ? settings.loginConnections : settings.connections;
    const durationSeconds = login ? settings.loginDurationSeconds : settings.durationSeconds;
    const row: ResultRow = {
      target: subject.target,
      topology: subject.topology,
      variant: subject.variant,
      ...(subject.round === undefined ? {} : { round: subject.round }),
      protocol,
      scenario,
      load: {
        connections,
        ...(plan.generator === 'h2load' ? { h2Connections: settings.h2Connections } : {}),
        warmupSeconds: settings.warmupSeconds,
        durationSeconds,
        // Login warms up inside its measured run: a warm-up of its own would leave dozens of
        // abandoned bcrypt hashes queued, seconds of work the measurement would start behind.
        warmup: login ? 'same run' : 'separate run',
      },
    };
    rows.push(row);
    const timeoutMs = settings.timeoutSeconds * 1000;
    const before = await checkCall(plan, subject.baseUrl, timeoutMs);
    // A server that sheds load (503, unavailable) is measured doing so; any other failure means
    // the plan is wrong (a token, a route) and fast errors would be measured instead of the API.
    if (!before.ok && before.outcome !== '503' && before.outcome !== 'unavailable') {
      row.error = `the call before the load failed: ${before.outcome} ${before.detail ?? ''}`;
      log(`  ${subject.target} ${protocol} ${scenario}: ${row.error}`);
      return row;
    }
    const run = (seconds: number, warmupInside: number, onSpawn?: () => void): Promise<Measurement> =>
      plan.generator === 'wrk'
        ? runWrk(
            {
              baseUrl: subject.baseUrl,
              requests: plan.requests,
              connections,
              threads: settings.wrkThreads,
              durationSeconds: seconds,
              timeoutSeconds: settings.timeoutSeconds,
              warmupSeconds: warmupInside,
              ...(onSpawn === undefined ? {} : { onSpawn }),
            },
            workDir,
            `${subject.target}-${protocol}-${scenario}`,
          )
        : runH2load(
            {
              url: new URL(plan.rpc.path, subject.baseUrl).toString(),
              headers: h2Headers(plan.rpc, plan.format),
              body: h2Body(plan.rpc, plan.format),
              connections: settings.h2Connections,
              streams: connections / settings.h2Connections,
              durationSeconds: seconds,
              warmupSeconds: warmupInside,
              ...(onSpawn === undefined ? {} : { onSpawn }),
            },
            workDir,
            `${subject.target}-${protocol}-${scenario}`,
          );
    // Whatever the servers log from here to the check after the load belongs to this row.
    subject.log.lines = 0;
    subject.log.sample = [];
    try {
      if (!login && settings.warmupSeconds > 0) {
        await run(settings.warmupSeconds, 0);
        await waitForIdle(subject.processes(), { maxSeconds: 5 });
      }
      const servers = subject.processes();
      // CPU is read when the measured part starts and ends: for login, timers inside the run.
      const warmupInside = login ? settings.warmupSeconds : 0;
      let cpuBefore: Record<string, number | undefined> = {};
      let cpuAfter: Record<string, number | undefined> | undefined;
      let windowStart = 0;
      const timers: NodeJS.Timeout[] = [];
      let probe: Promise<Measurement> | undefined;
      const onSpawn = (): void => {
        const spawnedAt = performance.now();
        timers.push(
          setTimeout(() => {
            cpuBefore = cpuSnapshot(servers);
            windowStart = performance.now();
          }, warmupInside * 1000),
        );
        if (login) {
          timers.push(setTimeout(() => (cpuAfter = cpuSnapshot(servers)), (warmupInside + durationSeconds) * 1000));
          // The probe starts after the warm-up and ends before the login run, inside its window.
          const started = sleep(warmupInside * 1000 + 500 - (performance.now() - spawnedAt)).then(() =>
            runWrk(
              {
                baseUrl: subject.baseUrl,
                requests: [{ method: 'GET', path: '/health', headers: {} }],
                connections: 2,
                threads: 1,
                durationSeconds: Math.max(1, durationSeconds - 1),
                timeoutSeconds: settings.timeoutSeconds,
                ratePerSecond: settings.probeRate,
              },
              workDir,
              `${subject.target}-health-probe`,
            ),
          );
          // Awaited after the login run; if that run fails first, the probe's outcome is moot.
          started.catch(() => undefined);
          probe = started;
        }
      };
      const measurement = await run(durationSeconds, warmupInside, onSpawn);
      row.loadAverage = loadavg()[0];
      for (const timer of timers) clearTimeout(timer);
      cpuAfter ??= cpuSnapshot(servers);
      const windowSeconds = (performance.now() - windowStart) / 1000;
      const probed = probe === undefined ? undefined : await probe;
      row.measurement = measurement;
      row.checks = { before, serverLogLines: 0, serverLogSample: [] };
      if (probed !== undefined) row.healthDuringLogin = probed;
      const processes: ProcessUse[] = servers.map((server) => {
        const used = cpuAfter?.[server.name] === undefined || cpuBefore[server.name] === undefined ? null : (cpuAfter[server.name] as number) - (cpuBefore[server.name] as number);
        const seconds = login ? durationSeconds : windowSeconds;
        return {
          name: server.name,
          role: 'server',
          pid: server.pid ?? null,
          cpuSeconds: used,
          cpuPercent: used === null ? null : (used / seconds) * 100,
          cpuSecondsPerRequest: used === null || measurement.requests === 0 ? null : used / measurement.requests,
          rssBytesAfter: processRssBytes(server.pid) ?? null,
        };
      });
      const generatorSeconds = warmupInside + durationSeconds;
      const generator = (name: string, role: ProcessUse['role'], m: Measurement, seconds: number): ProcessUse => ({
        name,
        role,
        pid: m.generatorPid ?? null,
        cpuSeconds: m.generatorCpuSeconds,
        cpuPercent: m.generatorCpuSeconds === null ? null : (m.generatorCpuSeconds / seconds) * 100,
        cpuSecondsPerRequest: m.generatorCpuSeconds === null || m.requestsWholeRun === 0 ? null : m.generatorCpuSeconds / m.requestsWholeRun,
        rssBytesAfter: null,
      });
      processes.push(generator(measurement.tool, 'load generator', measurement, generatorSeconds));
      if (probed !== undefined) processes.push(generator('health probe', 'probe', probed, Math.max(1, durationSeconds - 1)));
      row.processes = processes;
    } catch (error) {
      row.error = error instanceof Error ? error.message : String(error);
    }
    // Login leaves bcrypt work of abandoned requests (and audit jobs) behind; wait it out, before
    // the call after the load too, which would otherwise queue behind it.
    await waitForIdle(subject.processes(), { maxSeconds: login ? 30 : 5 });
    if (row.checks !== undefined) {
      row.checks.after = await checkCall(plan, subject.baseUrl, timeoutMs);
      row.checks.serverLogLines = subject.log.lines;
      row.checks.serverLogSample = [...subject.log.sample];
      if (plan.generator === 'h2load' && plan.format === 'grpc') checkGrpcAnswers(row, before, row.checks.after);
    }
    log(`  ${subject.target} ${protocol} ${scenario}: ${describe(row)}`);
    return row;
  };

  const measureBare = async (seeded: Fixtures): Promise<void> => {
    bareDone = true;
    const wanted = BARE_SCENARIOS.filter((scenario) => settings.scenarios.some((selected) => BARE_CEILING[selected] === scenario));
    log('starting the bare server (node:http + pg)');
    let server: ServerProcess;
    try {
      server = await startServerProcess({ name: 'bare', script: join(import.meta.dirname, 'bare-server.ts'), cwd: root, env: serverEnv('bare') });
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      for (const scenario of wanted) rows.push({ target: 'bare', topology: 'bare', variant: 'default', protocol: 'rest', scenario, error: message });
      return;
    }
    running = server;
    startup.bare = server.startupMs;
    const subject: Subject = {
      target: 'bare',
      topology: 'bare',
      variant: 'default',
      baseUrl: server.url,
      processes: () => [{ name: 'bare', pid: server.pid }],
      log: { lines: 0, sample: [] },
    };
    try {
      for (const scenario of wanted) {
        if (interrupted()) break;
        await measureRow(subject, 'rest', scenario, barePlan(scenario, seeded));
      }
      await recordIdleRss('bare', subject.processes());
    } finally {
      await server.stop();
      running = undefined;
    }
  };

  try {
    await adminDb.create();
    log(
      `schema ${schema}; wrk ${tools.wrk.version}, h2load ${tools.h2load.version}; ${settings.connections} connections, ${settings.warmupSeconds} s warm-up, ` +
        `${settings.durationSeconds} s per scenario (login: ${settings.loginConnections} connections, ${settings.loginDurationSeconds} s)`,
    );

    // First, while nothing of the bench runs: what the machine's cores can hash.
    if (settings.bcryptSeconds > 0 && settings.scenarios.includes('login')) {
      log(`measuring the bcrypt ceiling (cost 12, ${settings.bcryptSeconds} s)`);
      bcryptCeiling = await measureBcryptCeiling(settings.bcryptSeconds, 12);
      log(`  ${bcryptCeiling.hashesPerSecond.toFixed(2)} checks/s`);
    }

    // With --rounds, each round starts every target afresh, in the same order: a split row is
    // compared with the monolith's row of its own round, a few minutes apart, not the first's.
    const rounds = Array.from({ length: settings.rounds }, (_, index) => index + 1);
    for (const [round, target] of rounds.flatMap((round) => targets.map((target) => [round, target] as const))) {
      const first = round === 1;
      if (interrupted()) break;
      // Reads over every protocol first, then logins: a login changes the user's lastLoginAt, and
      // reads must see the same record throughout (gRPC answers are checked by their size).
      // Each scenario is measured over every protocol back to back: the RPC targets compare rows
      // of one scenario, and this machine's speed drifts by a quarter over the minute that
      // protocol-by-protocol order put between them.
      const pending = [false, true].flatMap((logins) =>
        settings.scenarios
          .filter((scenario) => (scenario === 'login') === logins)
          .flatMap((scenario) => settings.protocols.filter((protocol) => applies(protocol, scenario)).map((protocol) => ({ protocol, scenario }))),
      );
      const subjectLog = { lines: 0, sample: [] as string[] };
      let deployment: RunningTopology | undefined;
      try {
        log(`starting ${target.name}${settings.rounds > 1 ? ` (round ${round} of ${settings.rounds})` : ''}`);
        deployment = await startTopology({
          name: target.topology,
          env: serverEnv(target.name, target.env),
          startTimeoutMs: STARTUP_TIMEOUT_MS,
          onLine: (layer, line) => {
            subjectLog.lines += 1;
            if (subjectLog.sample.length < 5) subjectLog.sample.push(`[${layer}] ${line}`);
          },
        });
        running = deployment;
        const layers = deployment.layers;
        deployments[target.name] = layers.map((layer) => layer.name);
        log(`  ${target.name} at ${deployment.baseUrl} (${layers.map((layer) => layer.name).join(' → ')})`);
        if (fixtures === undefined) {
          const seedStart = performance.now();
          log(`  seeding ${settings.users} users through ${target.name} (bcrypt cost 12)`);
          fixtures = await seed(deployment.baseUrl, settings.users, runId);
          seedSeconds = (performance.now() - seedStart) / 1000;
          log(`  seeded in ${seedSeconds.toFixed(1)} s`);
        }
        const timings = [];
        for (let run = 0; first && run < settings.startupRuns && !interrupted(); run += 1) {
          for (const layer of layers) timings.push(await timeRestart(layer, STARTUP_TIMEOUT_MS));
        }
        if (first) startup.restarts[target.name] = timings;
        if (timings.length > 0) log(`  restarts to /ready: ${timings.map((t) => `${t.process} ${t.readyMs === null ? 'never' : `${t.readyMs.toFixed(0)} ms`}`).join(', ')}`);
        const subject: Subject = {
          target: target.name,
          topology: target.topology,
          variant: target.variant,
          ...(settings.rounds > 1 ? { round } : {}),
          baseUrl: deployment.baseUrl,
          processes: () => layers.map((layer) => ({ name: layer.name, pid: layer.pid })),
          log: subjectLog,
        };
        const seeded = fixtures;
        for (const { protocol, scenario } of pending) {
          if (interrupted()) break;
          await measureRow(subject, protocol, scenario, planFor(protocol, scenario, seeded));
        }
        if (settings.soak && soak === null && !interrupted()) {
          let getUser = rows.find((row) => row.target === target.name && row.protocol === 'rest' && row.scenario === 'get-user')?.measurement;
          getUser ??= (await measureRow(subject, 'rest', 'get-user', planFor('rest', 'get-user', seeded))).measurement;
          if (getUser !== undefined) {
            log(`  soak: ${settings.soakSeconds} s at ${settings.soakLoad} × ${getUser.okPerSecond.toFixed(0)} req/s of REST get-user`);
            const plan = planFor('rest', 'get-user', seeded);
            soak = {
              target: target.name,
              ...(await runSoak({
                baseUrl: deployment.baseUrl,
                requests: plan.generator === 'wrk' ? plan.requests : [],
                processes: subject.processes(),
                maxRate: getUser.okPerSecond,
                load: settings.soakLoad,
                connections: settings.connections,
                threads: settings.wrkThreads,
                seconds: settings.soakSeconds,
                sampleSeconds: settings.soakSampleSeconds,
                timeoutSeconds: settings.timeoutSeconds,
                workDir,
              })),
            };
            const trend = Object.values(soak.rss)[0];
            log(
              `  soak: ${soak.measurement.requestsPerSecond.toFixed(0)} req/s achieved; RSS growth ${trend === null || trend === undefined ? '?' : `${(trend.growth * 100).toFixed(1)} %`}`,
            );
          }
        }
        await recordIdleRss(target.name, subject.processes());
      } catch (error) {
        const message = error instanceof Error ? error.message : String(error);
        log(`  ${target.name} failed: ${message}`);
        const ofRound = settings.rounds > 1 ? { round } : {};
        const measured = new Set(rows.filter((row) => row.target === target.name && row.round === ofRound.round).map((row) => `${row.protocol} ${row.scenario}`));
        rows.push(
          ...pending
            .filter((row) => !measured.has(`${row.protocol} ${row.scenario}`))
            .map((row) => ({ target: target.name, topology: target.topology, variant: target.variant, ...ofRound, ...row, error: message })),
        );
      } finally {
        await deployment?.stop();
        running = undefined;
      }
      // The bare server runs right after the first target that seeded the data, so the numbers
      // the headline ratios compare are taken close together.
      if (!bareDone && fixtures !== undefined && !interrupted()) await measureBare(fixtures);
    }

    if (settings.pglite && !interrupted()) {
      log('timing a monolith on PGlite (first start, then restarts)');
      try {
        // The first start creates the database in WebAssembly: far slower than a restart.
        startup.pglite = await timePgliteMonolith(serverEnv('pglite'), Math.max(1, settings.startupRuns), 4 * STARTUP_TIMEOUT_MS);
        log(`  ${startup.pglite.map((t) => `${t.kind} ${t.readyMs === null ? 'never' : `${t.readyMs.toFixed(0)} ms`}`).join(', ')}`);
      } catch (error) {
        startup.pgliteError = error instanceof Error ? error.message : String(error);
        log(`  failed: ${startup.pgliteError}`);
      }
    }

    addBareRatios(rows);
    const finishedAt = new Date();
    const record: BenchRecord = {
      format: RECORD_FORMAT,
      startedAt: startedAt.toISOString(),
      finishedAt: finishedAt.toISOString(),
      complete: !interrupted(),
      runId,
      totalSeconds: (finishedAt.getTime() - startedAt.getTime()) / 1000,
      settings,
      machine,
      serverEnvironment: {
        ...serverEnv('<target>'),
        JWT_SECRET: '(random, 64 characters)',
        INTERNAL_API_SECRET: '(random, 43 characters)',
        PATH: undefined,
        REDIS_KEY_PREFIX: settings.redisUrl === undefined ? undefined : `${redisPrefix}<target>:`,
      },
      deployments,
      seed: { users: settings.users, seconds: seedSeconds, via: targets[0]?.name },
      scenarios: Object.fromEntries(settings.scenarios.map((scenario) => [scenario, SCENARIO_TITLES[scenario]])),
      loadAverageAtEnd: loadavg(),
      bcryptCeiling,
      startup,
      results: rows,
      soak,
      idleRss,
      targets: [],
    };
    record.targets = computeTargets(record);
    process.stdout.write(`\n${formatRecord(record)}\n`);
    const path = await writeResults(join(import.meta.dirname, 'results'), startedAt, record);
    process.stdout.write(`\nresults written to ${path} (${(record.totalSeconds / 60).toFixed(1)} minutes)\n`);
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await running?.stop();
    if (sink !== undefined) {
      const { exports, bytes } = sink.received();
      log(`OTLP sink: ${exports} exports, ${(bytes / 1e6).toFixed(1)} MB of spans received`);
      await sink.close();
    }
    await rm(workDir, { recursive: true, force: true });
    await adminDb.drop().catch((error: unknown) => log(`could not drop schema ${schema}: ${String(error)}`));
    await adminDb.end();
    if (redis !== undefined) {
      await deleteKeys(redis, `${redisPrefix}*`).catch((error: unknown) => log(`could not delete Redis keys ${redisPrefix}*: ${String(error)}`));
      redis.disconnect();
    }
  }
}

/**
 * A failed gRPC call is an HTTP 200 with no message, so h2load's 2xx count alone overstates
 * success. Every successful answer in a run has the same size (the same call, answered the same
 * way), known from the real client's calls before and after the load; the body bytes h2load
 * received divided by it is the number of calls that returned a message. That must be at least
 * the completed 200s, and at most those plus the requests cut off at the end (whose message may
 * have arrived before their trailers). Answers may differ by a few bytes (a token, a timestamp's
 * nanoseconds, a record changed meanwhile), hence the tolerance and the range of two sizes.
 */
function checkGrpcAnswers(row: ResultRow, before: CallCheck, after: CallCheck | undefined): void {
  const m = row.measurement;
  const sizes = [before.answerBytes, after?.answerBytes].filter((size) => size !== undefined);
  if (m === undefined || row.checks === undefined || sizes.length === 0 || m.bodyBytes === undefined || m.okWholeRun === undefined) return;
  const fewest = m.bodyBytes / Math.max(...sizes);
  const most = m.bodyBytes / Math.min(...sizes);
  const tolerance = Math.max(1, 0.005 * m.okWholeRun);
  const consistent = most >= m.okWholeRun - tolerance && fewest <= m.okWholeRun + (m.inFlightAtEnd ?? 0) + tolerance;
  row.checks.grpc = {
    answerBytes: sizes[0] as number,
    bodyBytes: m.bodyBytes,
    http200: m.okWholeRun,
    inFlightAtEnd: m.inFlightAtEnd ?? 0,
    callsWithMessage: Math.round(Math.min(m.okWholeRun, most)),
    consistent,
  };
  if (most < m.okWholeRun - tolerance && m.okWholeRun > 0) {
    // Spread the failures seen over the whole run evenly over the window.
    const failed = Math.round(m.ok * (1 - most / m.okWholeRun));
    m.errors.grpc = failed;
    m.ok -= failed;
    m.okPerSecond = m.ok / m.durationSeconds;
  }
}

/** Each row's rate and p99 against the bare ceiling for the same kind of request. */
function addBareRatios(rows: ResultRow[]): void {
  for (const row of rows) {
    if (row.topology === 'bare' || row.measurement === undefined) continue;
    const ceiling = BARE_CEILING[row.scenario];
    const bare = rows.find((candidate) => candidate.topology === 'bare' && candidate.scenario === ceiling)?.measurement;
    if (bare === undefined) continue;
    const p99 = row.measurement.latencyMs?.p99;
    const bareP99 = bare.latencyMs?.p99;
    row.vsBare = {
      ceiling,
      requestsPerSecond: bare.okPerSecond > 0 ? row.measurement.okPerSecond / bare.okPerSecond : null,
      p99: p99 === undefined || bareP99 === undefined || bareP99 === 0 ? null : p99 / bareP99,
    };
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

let settings: ReturnType<typeof parseSettings>;
try {
  settings = parseSettings(process.argv.slice(2));
} catch (error) {
  process.stderr.write(`${error instanceof UsageError || error instanceof TypeError ? error.message : String(error)}\n\n${USAGE}`);
  process.exit(2);
}
if (settings === 'help') {
  process.stdout.write(USAGE);
} else if ('report' in settings) {
  const record = JSON.parse(await readFile(settings.report, 'utf8')) as Partial<BenchRecord>;
  if (record.format !== RECORD_FORMAT) {
    process.stderr.write(`${settings.report} is not a record of this bench (format ${JSON.stringify(record.format)}, expected ${JSON.stringify(RECORD_FORMAT)})\n`);
    process.exit(2);
  }
  process.stdout.write(`${formatRecord(record as BenchRecord)}\n`);
} else {
  main(settings).then(
    () => process.exit(0),
    (error: unknown) => {
      if (error instanceof MissingToolError) {
        process.stderr.write(`${error.message}\n`);
        process.exit(3);
      }
      process.stderr.write(`bench failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
      process.exit(1);
    },
  );
}
