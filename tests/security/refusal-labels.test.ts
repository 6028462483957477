// What a client can make of the request metrics and of a refusal's headers with requests it is
// refused. Found by an attacking helper (138):
// - The REST route label was given from the path alone (routeMatcher, for requests refused before
//   the validator matched them), whatever the method: with the `method` label taking any of the
//   ~34 methods Node's parser accepts, one unauthenticated client made methods × templates ×
//   statuses series (3,300 series, a 5.7 MB `/metrics` taking 0.9 s to scrape after 5,000
//   requests in 15 s). A method no operation of the path takes is `unmatched` again.
// - A REST body in a content coding the server does not take was a 415 without Accept-Encoding
//   (RFC 9110 §15.5.16), where the RPC refusals name the encodings taken.
import http from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { serveMetrics } from '../../src/infrastructure/metrics.ts';
import { startTestServer, type TestServer } from '../helpers/test-app.ts';
import { RawClient } from './raw-protocols.ts';

let t: TestServer;
let raw: RawClient;
let scrapeUrl: string;
let stopMetrics: () => Promise<void>;

beforeAll(async () => {
  t = await startTestServer({ METRICS_PORT: '9464' }, { topology: 'monolithic' });
  if (t.app.metrics === undefined) throw new Error('metrics are not on');
  const served = await serveMetrics(t.app.metrics, 0, '127.0.0.1');
  scrapeUrl = `http://127.0.0.1:${served.port}/metrics`;
  stopMetrics = served.close;
  raw = new RawClient(t.baseUrl);
}, 60_000);

afterAll(async () => {
  raw.close();
  await stopMetrics();
  await t.close();
});

const series = async () => (await (await fetch(scrapeUrl)).text()).split('\n').filter((line) => line.startsWith('arcana_http_requests_seconds_count{'));

const PATHS = ['/api/v1/auth/register', '/api/v1/auth/login', '/api/v1/auth/me', '/api/v1/auth/tokens', '/api/v1/users', '/api/v1/users/1', '/api/v1/users/1/role', '/health'];

describe('the REST request metrics against one unauthenticated client', () => {
  it('when a client sends every method Node parses to contract paths, then a method no operation of the path takes is labelled unmatched, and the series stay few', async () => {
    const agent = new http.Agent({ keepAlive: true, maxSockets: 16 });
    const send = (method: string, path: string, headers: Record<string, string>) =>
      new Promise<number>((resolve) => {
        const req = http.request(new URL(path, t.baseUrl), { method, headers, agent }, (res) => {
          res.resume();
          res.on('end', () => resolve(res.statusCode ?? 0));
        });
        req.on('error', () => resolve(-1));
        req.end();
      });
    const before = (await series()).length;
    const methods = http.METHODS.filter((method) => method !== 'CONNECT');
    for (const method of methods) {
      // As sent, and declaring a body over the limit (a 413 before the route is matched).
      await Promise.all(PATHS.flatMap((path) => [send(method, path, {}), send(method, path, { 'content-type': 'application/json', 'content-length': '99999999' })]));
    }
    agent.destroy();
    const after = await series();
    expect(after.filter((line) => line.includes('route="/api/v1/auth/login"') && line.includes('method="PROPFIND"'))).toEqual([]);
    // The login route keeps its own refusals (helper 133), under its own method.
    expect(after.some((line) => line.includes('route="/api/v1/auth/login"') && line.includes('method="POST"') && line.includes('status="413"'))).toBe(true);
    // The operations' own statuses, and `unmatched` by method and status: 98 new series here,
    // where the same requests made 528 (the label's values grew with every path × method).
    expect(after.length - before).toBeLessThanOrEqual(200);
  }, 120_000);
});

describe('a refused content coding', () => {
  it('when a REST body comes in a content coding the server does not take, then the 415 names those it takes in Accept-Encoding', async () => {
    const answer = await raw.rest('POST', '/api/v1/auth/login', { body: { usernameOrEmail: 'nobody', password: 'Wrong-Passw0rd-1!' }, headers: { 'content-encoding': 'snappy' } });
    expect(answer.status).toBe(415);
    expect(
      (answer.headers.get('accept-encoding') ?? '')
        .split(',')
        .map((name) => name.trim())
        .sort(),
    ).toEqual(['br', 'deflate', 'gzip', 'zstd']);
  });
});
