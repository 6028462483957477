// Prometheus metrics as an operator scrapes them, and as an attacker would like them to be: on
// the public port (they are not), and growing a label value for every path it invents (they do
// not). Requests over REST and every RPC protocol, failed logins and cache use are counted.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { serveMetrics } from '../../src/infrastructure/metrics.ts';
import { apiClient, PROTOCOLS } from '../helpers/protocols.ts';
import { loginAdmin, register, startTestServer, type TestServer } from '../helpers/test-app.ts';

let t: TestServer;
let scrapeUrl: string;
let stopMetrics: () => Promise<void>;

beforeAll(async () => {
  // Any non-zero METRICS_PORT turns metrics on; the test serves them itself on a free port.
  t = await startTestServer({ METRICS_PORT: '9464', TRUST_PROXY: 'true' });
  if (t.app.metrics === undefined) throw new Error('metrics are not on');
  const served = await serveMetrics(t.app.metrics, 0, '127.0.0.1');
  scrapeUrl = `http://127.0.0.1:${served.port}/metrics`;
  stopMetrics = served.close;
});

afterAll(async () => {
  await stopMetrics();
  await t.close();
});

async function scrape(): Promise<string> {
  const res = await fetch(scrapeUrl);
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toContain('text/plain');
  return res.text();
}

/** The value of one sample, by metric name and exact labels (in the order prom-client writes them). */
function sample(text: string, name: string, labels: Record<string, string> = {}): number {
  const wanted = Object.entries(labels).map(([key, value]) => `${key}="${value}"`);
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    const labelText = line.slice(name.length).split(' ')[0] ?? '';
    if (wanted.every((pair) => labelText.includes(pair))) return Number(line.split(' ').at(-1));
  }
  return 0;
}

describe('metrics', () => {
  it('when requests arrive over REST and every RPC protocol, then /metrics on its own port counts them by route template, procedure, protocol and code', async () => {
    const admin = await loginAdmin(t);
    const user = await register(t);
    for (const protocol of PROTOCOLS) {
      const client = apiClient(protocol, t.baseUrl);
      expect((await client.getUser(admin, user.id)).code).toBe('ok');
      expect((await client.login({ usernameOrEmail: user.username, password: 'Wrong-Passw0rd-1!' }, { headers: { 'x-forwarded-for': '203.0.113.9' } })).code).toBe(
        'unauthenticated',
      );
      client.close();
    }
    const text = await scrape();
    expect(sample(text, 'arcana_http_requests_seconds_count', { route: '/api/v1/users/{userId}', method: 'GET', status: '200' })).toBeGreaterThanOrEqual(1);
    expect(sample(text, 'arcana_http_requests_seconds_count', { route: '/api/v1/auth/login', method: 'POST', status: '401' })).toBeGreaterThanOrEqual(1);
    for (const protocol of ['grpc', 'grpc-web', 'connect']) {
      expect(sample(text, 'arcana_rpc_requests_seconds_count', { procedure: 'arcana.user.v1.UserService/GetUser', protocol, code: 'ok' })).toBeGreaterThanOrEqual(1);
    }
    expect(sample(text, 'arcana_rpc_requests_seconds_count', { procedure: 'arcana.auth.v1.AuthService/Login', protocol: 'grpc', code: 'unauthenticated' })).toBeGreaterThanOrEqual(
      1,
    );
    expect(sample(text, 'arcana_security_events_total', { type: 'LOGIN_FAILED', reason: 'wrong_password' })).toBeGreaterThanOrEqual(PROTOCOLS.length);
    expect(sample(text, 'arcana_cache_lookups_total', { result: 'hit' })).toBeGreaterThan(0);
    expect(sample(text, 'arcana_db_queries_total')).toBeGreaterThan(0);
    expect(text).toContain('arcana_password_hashes_waiting');
    expect(text).toContain('arcana_list_queries_waiting');
    expect(text).toContain('process_resident_memory_bytes');
    // Latency histograms, not only counts.
    expect(text).toMatch(/arcana_http_requests_seconds_bucket\{le="0\.005",route="\/api\/v1\/users\/\{userId\}"/);
  });

  it('when logins succeed, fail, hit a lockout and a rotated refresh token is replayed, then each has its own series', async () => {
    const before = await scrape();
    const user = await register(t);
    const address = { headers: { 'x-forwarded-for': '198.51.100.77' } };
    const rest = apiClient('rest', t.baseUrl);
    expect((await rest.login({ usernameOrEmail: user.username, password: user.password }, address)).code).toBe('ok');
    // LOGIN_MAX_FAILURES (5) wrong passwords from one address, then a refusal by the lockout.
    for (let i = 0; i < 5; i += 1) expect((await rest.login({ usernameOrEmail: user.username, password: 'Wrong-Passw0rd-1!' }, address)).code).toBe('unauthenticated');
    expect((await rest.login({ usernameOrEmail: user.username, password: user.password }, address)).code).toBe('unauthenticated');
    rest.close();
    // A refresh token used twice: the second use is reuse of a rotated token.
    expect((await t.request.post('/api/v1/auth/refresh').send({ refreshToken: user.refreshToken })).status).toBe(200);
    expect((await t.request.post('/api/v1/auth/refresh').send({ refreshToken: user.refreshToken })).status).toBe(401);

    const after = await scrape();
    const delta = (name: string, labels: Record<string, string> = {}) => sample(after, name, labels) - sample(before, name, labels);
    expect(delta('arcana_logins_total', { outcome: 'succeeded' })).toBe(1);
    expect(delta('arcana_logins_total', { outcome: 'wrong_password' })).toBe(5);
    expect(delta('arcana_logins_total', { outcome: 'locked_out' })).toBe(1);
    expect(delta('arcana_login_lockout_refusals_total')).toBe(1);
    expect(delta('arcana_token_reuse_detections_total')).toBe(1);
    expect(delta('arcana_security_events_total', { type: 'TOKEN_REUSE_DETECTED', reason: '' })).toBe(1);
    // Outcomes that have not happened are exported as 0 from the start.
    expect(after).toMatch(/^arcana_logins_total\{outcome="inactive"\} \d+$/m);
  });

  it('when a request reads a user the cache does not hold, then a miss is counted; the database pool and the job queue are reported', async () => {
    const before = await scrape();
    const admin = await loginAdmin(t);
    const user = await register(t);
    // Registration does not fill the profile cache: the first read misses, the second hits.
    expect((await t.request.get(`/api/v1/users/${user.id}`).set('authorization', `Bearer ${admin}`)).status).toBe(200);
    const after = await scrape();
    expect(sample(after, 'arcana_cache_lookups_total', { result: 'miss' })).toBeGreaterThan(sample(before, 'arcana_cache_lookups_total', { result: 'miss' }));
    // node-postgres's pool, as Prisma's adapter made it: bounded, and used.
    expect(sample(after, 'arcana_db_pool_connections_max')).toBe(10);
    expect(sample(after, 'arcana_db_pool_connections_idle') + sample(after, 'arcana_db_pool_connections_in_use')).toBeGreaterThan(0);
    expect(after).toMatch(/^arcana_db_pool_waiting \d+$/m);
    // Without Redis, the audit backlog of this process is the queue.
    expect(after).toMatch(/^arcana_job_queue_depth\{queue="audit",state="waiting"\} \d+$/m);
    expect(after).toMatch(/^arcana_job_failures_total\{queue="audit"\} 0$/m);
  });

  it('when a client requests hundreds of invented paths, then no label value is made from them', async () => {
    const routesBefore = new Set((await scrape()).match(/route="[^"]*"/g));
    await Promise.all(
      Array.from({ length: 300 }, async (_, i) => {
        const res = await fetch(`${t.baseUrl}/api/v1/invented-${i}-${Math.random().toString(36).slice(2)}`);
        expect(res.status).toBe(404);
      }),
    );
    const routesAfter = new Set((await scrape()).match(/route="[^"]*"/g));
    const added = [...routesAfter].filter((route) => !routesBefore.has(route));
    expect(added.filter((route) => route !== 'route="unmatched"')).toEqual([]);
    expect(routesAfter.has('route="unmatched"')).toBe(true);
  });

  it('when the Grafana dashboard in the repo is read, then every arcana metric it queries is one the server exports', async () => {
    const dashboard = await readFile(join(import.meta.dirname, '..', '..', 'monitoring', 'grafana-dashboard.json'), 'utf8');
    const queried = new Set(dashboard.match(/arcana_[a-z_]+/g));
    expect(queried.size).toBeGreaterThan(5);
    const exported = await scrape();
    for (const name of queried) expect(exported, name).toMatch(new RegExp(`^# TYPE ${name.replace(/_(count|bucket|sum)$/, '')} `, 'm'));
  });

  it('when /metrics is asked of the public port, then it is not there', async () => {
    const res = await fetch(`${t.baseUrl}/metrics`);
    expect(res.status).toBe(404);
    expect(await res.text()).not.toContain('arcana_');
  });

  it('when an audit event cannot be written, then the job failure is counted (last: it breaks the audit table)', async () => {
    const before = sample(await scrape(), 'arcana_job_failures_total', { queue: 'audit' });
    await t.sql('ALTER TABLE audit_events RENAME TO audit_events_away');
    try {
      const user = await register(t);
      expect((await t.request.post('/api/v1/auth/login').send({ usernameOrEmail: user.username, password: 'Wrong-Passw0rd-1!' })).status).toBe(401);
      const deadline = Date.now() + 5_000;
      while (sample(await scrape(), 'arcana_job_failures_total', { queue: 'audit' }) === before && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50));
      expect(sample(await scrape(), 'arcana_job_failures_total', { queue: 'audit' })).toBeGreaterThan(before);
    } finally {
      await t.sql('ALTER TABLE audit_events_away RENAME TO audit_events');
    }
  });

  it('when anything but GET /metrics is asked of the metrics port, then 404', async () => {
    expect((await fetch(scrapeUrl.replace('/metrics', '/'))).status).toBe(404);
    expect((await fetch(scrapeUrl, { method: 'POST' })).status).toBe(404);
  });
});

describe('metrics of a split deployment and of BullMQ', () => {
  it('when the controller calls the service layer, then its internal calls are counted by target layer, procedure and outcome', async () => {
    const split = await startTestServer({ METRICS_PORT: '9464' }, { topology: 'layered-grpc' });
    try {
      const metrics = split.app.metrics;
      if (metrics === undefined) throw new Error('metrics are not on');
      const admin = await loginAdmin(split);
      expect((await split.request.get('/api/v1/users/987654321').set('authorization', `Bearer ${admin}`)).status).toBe(404);
      const text = await metrics.registry.metrics();
      expect(sample(text, 'arcana_internal_calls_seconds_count', { target: 'service', procedure: 'arcana.auth.v1.AuthService/Login', outcome: 'ok' })).toBe(1);
      expect(sample(text, 'arcana_internal_calls_seconds_count', { target: 'service', procedure: 'arcana.user.v1.UserService/GetUser', outcome: 'NOT_FOUND' })).toBe(1);
      expect(text).toMatch(/arcana_internal_calls_seconds_bucket\{le="0\.005",target="service"/);
      // The controller holds no database and no jobs: their series are not made up.
      expect(text).not.toContain('arcana_db_pool_');
      expect(text).not.toContain('arcana_job_queue_depth');
    } finally {
      await split.close();
    }
  });

  it('when jobs go through BullMQ, then the depth of both queues is read from Redis by state', async () => {
    const withRedis = await startTestServer({ METRICS_PORT: '9464', REDIS_URL: 'redis://127.0.0.1:6379', REDIS_KEY_PREFIX: `metrics-test-${process.pid}-${Date.now()}:` });
    try {
      const metrics = withRedis.app.metrics;
      if (metrics === undefined) throw new Error('metrics are not on');
      await loginAdmin(withRedis);
      const text = await metrics.registry.metrics();
      for (const queue of ['audit', 'maintenance']) {
        for (const state of ['waiting', 'active', 'delayed', 'failed'])
          expect(text).toMatch(new RegExp(`^arcana_job_queue_depth\\{queue="${queue}",state="${state}"\\} \\d+$`, 'm'));
      }
      // The purge is scheduled: one delayed job waits for its time.
      expect(
        sample(text, 'arcana_job_queue_depth', { queue: 'maintenance', state: 'delayed' }) + sample(text, 'arcana_job_queue_depth', { queue: 'maintenance', state: 'waiting' }),
      ).toBeGreaterThanOrEqual(1);
    } finally {
      await withRedis.close();
    }
  });
});
