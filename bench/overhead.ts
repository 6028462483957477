// `node bench/overhead.ts`: what metrics and tracing cost a monolith, measured so that a busy,
// shared machine cancels out. Three monoliths run side by side on one schema (plain, with
// METRICS_PORT, with OTEL_EXPORTER_OTLP_ENDPOINT to a sink here that reads every export), and
// are loaded in turn, round after round, in a rotating order, with the same authenticated read
// (wrk, GET /api/v1/users/{id}), after one unmeasured warm-up run each. Whatever else the machine does then falls on all three alike.
// Reported per variant: requests per second and server CPU per request (from /proc), median over
// the rounds, and the ratio to the plain monolith.
//
//   node bench/overhead.ts [--rounds 6] [--seconds 4] [--connections 20]
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { parseArgs, promisify } from 'node:util';
import pg from 'pg';
import { startOtlpSink } from './otlp-sink.ts';
import { processCpuSeconds } from './process-stats.ts';
import { startServerProcess, type ServerProcess } from './server-process.ts';

const run = promisify(execFile);
const root = join(import.meta.dirname, '..');
const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '6' },
    seconds: { type: 'string', default: '4' },
    connections: { type: 'string', default: '20' },
    'database-url': { type: 'string', default: 'postgresql://postgres@127.0.0.1:5432/test' },
  },
});
const rounds = Number(values.rounds);
const seconds = Number(values.seconds);
const connections = Number(values.connections);

const admin = { username: 'bench_admin', email: 'bench_admin@example.com', password: 'Bench-Admin-Passw0rd!' };
const schema = `bench_overhead_${Date.now()}_${randomBytes(3).toString('hex')}`;
const db = new pg.Client({ connectionString: values['database-url'] });
await db.connect();
await db.query(`CREATE SCHEMA "${schema}"`);
const url = new URL(values['database-url']);
url.searchParams.set('schema', schema);
const sink = await startOtlpSink();
const common = {
  PATH: process.env.PATH ?? '',
  NODE_ENV: 'production',
  LOG_LEVEL: 'warn',
  DATABASE_URL: url.toString(),
  JWT_SECRET: randomBytes(32).toString('hex'),
  RATE_LIMIT_MAX: '1000000',
  ADMIN_USERNAME: admin.username,
  ADMIN_EMAIL: admin.email,
  ADMIN_PASSWORD: admin.password,
};
const variants: { name: string; env: Record<string, string> }[] = [
  { name: 'plain', env: {} },
  { name: 'metrics', env: { METRICS_PORT: String(20_000 + Math.floor(Math.random() * 20_000)), METRICS_HOST: '127.0.0.1' } },
  { name: 'tracing', env: { OTEL_EXPORTER_OTLP_ENDPOINT: sink.url } },
];
const servers: ServerProcess[] = [];
try {
  // One after the other: the first one migrates the schema and creates the administrator.
  for (const variant of variants) {
    servers.push(await startServerProcess({ name: variant.name, script: join(root, 'src', 'main.js'), cwd: root, env: { ...common, ...variant.env } }));
  }
  const login = await fetch(`${servers[0]?.url}/api/v1/auth/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ usernameOrEmail: admin.username, password: admin.password }),
  });
  const session = (await login.json()) as { data: { user: { id: number }; tokens: { accessToken: string } } };
  const path = `/api/v1/users/${session.data.user.id}`;
  const samples = new Map<string, { rps: number; cpuMsPerRequest: number }[]>(variants.map((v) => [v.name, []]));
  // Unmeasured first: until V8 has compiled the hot path, CPU per request is higher by half.
  for (const server of servers)
    await run('wrk', ['-t1', `-c${connections}`, `-d${seconds}s`, '-H', `Authorization: Bearer ${session.data.tokens.accessToken}`, `${server.url}${path}`]);
  for (let round = 0; round < rounds; round += 1) {
    // A different variant goes first each round.
    const order = variants.map((_, i) => (i + round) % variants.length);
    for (const index of order) {
      const server = servers[index] as ServerProcess;
      const name = variants[index]?.name ?? '';
      const before = processCpuSeconds(server.pid) ?? 0;
      const { stdout } = await run('wrk', ['-t1', `-c${connections}`, `-d${seconds}s`, '-H', `Authorization: Bearer ${session.data.tokens.accessToken}`, `${server.url}${path}`]);
      const cpu = (processCpuSeconds(server.pid) ?? 0) - before;
      const requests = Number(/(\d+) requests in/.exec(stdout)?.[1] ?? 0);
      const non2xx = Number(/Non-2xx or 3xx responses: (\d+)/.exec(stdout)?.[1] ?? 0);
      if (non2xx > 0) throw new Error(`${name}: ${non2xx} answers were not 2xx`);
      samples.get(name)?.push({ rps: requests / seconds, cpuMsPerRequest: (cpu * 1000) / requests });
      process.stderr.write(`round ${round + 1} ${name}: ${(requests / seconds).toFixed(0)} req/s, ${((cpu * 1000) / requests).toFixed(3)} ms CPU/request\n`);
    }
  }
  const median = (list: number[]) => {
    const sorted = [...list].sort((a, b) => a - b);
    const mid = Math.floor(sorted.length / 2);
    return sorted.length % 2 === 1 ? (sorted[mid] as number) : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
  };
  const plain = samples.get('plain') ?? [];
  const basis = { rps: median(plain.map((s) => s.rps)), cpu: median(plain.map((s) => s.cpuMsPerRequest)) };
  process.stdout.write(`\nGET /api/v1/users/{id} on the monolith, wrk -c${connections}, ${rounds} rounds of ${seconds} s, medians:\n\n`);
  process.stdout.write('| variant | req/s | × plain | CPU ms/request | × plain |\n|:--|--:|--:|--:|--:|\n');
  for (const variant of variants) {
    const list = samples.get(variant.name) ?? [];
    const rps = median(list.map((s) => s.rps));
    const cpu = median(list.map((s) => s.cpuMsPerRequest));
    process.stdout.write(`| ${variant.name} | ${rps.toFixed(0)} | ${(rps / basis.rps).toFixed(3)} | ${cpu.toFixed(3)} | ${(cpu / basis.cpu).toFixed(3)} |\n`);
  }
  const received = sink.received();
  process.stdout.write(`\nOTLP sink: ${received.exports} exports, ${(received.bytes / 1e6).toFixed(1)} MB\n`);
} finally {
  for (const server of servers) await server.stop();
  await sink.close();
  await db.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
  await db.end();
}
