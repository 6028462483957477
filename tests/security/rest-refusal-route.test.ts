// A REST request refused before the OpenAPI validator matched its route (the per-client rate
// limit's 429, a body the parser refuses) is labelled with its operation's path template, as
// README (Metrics) says. Found by an attacking helper (133): it was `unmatched`, the label of
// paths no operation has, and a login flood past the limit showed as noise there, not as 429s on
// /api/v1/auth/login.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { serveTestMetrics, type MetricsScrape } from '../helpers/metrics-scrape.ts';
import { startTestServer, type TestServer } from '../helpers/test-app.ts';

let t: TestServer;
let metrics: MetricsScrape;

beforeAll(async () => {
  t = await startTestServer({ METRICS_PORT: '9464', RATE_LIMIT_MAX: '2', TRUST_PROXY: 'true' }, { topology: 'monolithic' });
  metrics = await serveTestMetrics(t);
});

afterAll(async () => {
  await metrics.close();
  await t.close();
});

/** The statuses counted for POST on `route`, as `status=count` texts. */
async function countedFor(route: string): Promise<string[]> {
  const text = await metrics.scrape();
  return text
    .split('\n')
    .filter((line) => line.startsWith('arcana_http_requests_seconds_count{') && line.includes(`route="${route}"`) && line.includes('method="POST"'))
    .map((line) => `${/status="(\d+)"/.exec(line)?.[1] ?? '?'}=${line.split(' ').at(-1) ?? ''}`)
    .sort();
}

describe('the route label of refused REST requests', () => {
  it('when logins from one client go past the rate limit, then the 429s are counted under /api/v1/auth/login, not `unmatched`', async () => {
    const statuses: number[] = [];
    for (let i = 0; i < 4; i += 1) {
      const res = await fetch(`${t.baseUrl}/api/v1/auth/login`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'x-forwarded-for': '198.51.100.200' },
        body: JSON.stringify({ usernameOrEmail: 'nobody-h133', password: 'Wrong-Passw0rd-1!' }),
      });
      statuses.push(res.status);
    }
    expect(statuses).toEqual([401, 401, 429, 429]);
    expect(await countedFor('/api/v1/auth/login')).toEqual(['401=2', '429=2']);
  });

  it('when a login body is not JSON, then the 400 is counted under /api/v1/auth/login, not `unmatched`', async () => {
    const res = await fetch(`${t.baseUrl}/api/v1/auth/login`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-forwarded-for': '198.51.100.201' },
      body: '{"usernameOrEmail": ',
    });
    expect(res.status).toBe(400);
    expect(await countedFor('/api/v1/auth/login')).toContain('400=1');
  });
});
