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
      expect((await client.login({ usernameOrEmail: user.username, password: 'Wrong-Passw0rd-1!' }, { headers: { 'x-forwarded-for': '203.0.113.9' } })).code).toBe('unauthenticated');
      client.close();
    }
    const text = await scrape();
    expect(sample(text, 'arcana_http_requests_seconds_count', { route: '/api/v1/users/{userId}', method: 'GET', status: '200' })).toBeGreaterThanOrEqual(1);
    expect(sample(text, 'arcana_http_requests_seconds_count', { route: '/api/v1/auth/login', method: 'POST', status: '401' })).toBeGreaterThanOrEqual(1);
    for (const protocol of ['grpc', 'grpc-web', 'connect']) {
      expect(sample(text, 'arcana_rpc_requests_seconds_count', { procedure: 'arcana.user.v1.UserService/GetUser', protocol, code: 'ok' })).toBeGreaterThanOrEqual(1);
    }
    expect(sample(text, 'arcana_rpc_requests_seconds_count', { procedure: 'arcana.auth.v1.AuthService/Login', protocol: 'grpc', code: 'unauthenticated' })).toBeGreaterThanOrEqual(1);
    expect(sample(text, 'arcana_security_events_total', { type: 'LOGIN_FAILED', reason: 'wrong_password' })).toBeGreaterThanOrEqual(PROTOCOLS.length);
    expect(sample(text, 'arcana_cache_lookups_total', { result: 'hit' })).toBeGreaterThan(0);
    expect(sample(text, 'arcana_db_queries_total')).toBeGreaterThan(0);
    expect(text).toContain('arcana_password_hashes_waiting');
    expect(text).toContain('process_resident_memory_bytes');
    // Latency histograms, not only counts.
    expect(text).toMatch(/arcana_http_requests_seconds_bucket\{le="0\.005",route="\/api\/v1\/users\/\{userId\}"/);
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

  it('when anything but GET /metrics is asked of the metrics port, then 404', async () => {
    expect((await fetch(scrapeUrl.replace('/metrics', '/'))).status).toBe(404);
    expect((await fetch(scrapeUrl, { method: 'POST' })).status).toBe(404);
  });
});
