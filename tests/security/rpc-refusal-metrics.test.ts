// RPCs the gate in front of the interceptors refuses (the per-client rate limit, a body that does
// not decode) are counted in arcana_rpc_requests_seconds, as REST's refusals are. Found by an
// attacking helper (133): they were logged but never reached the interceptor that counts, so a
// flood refused over gRPC, gRPC-Web or Connect was invisible on the dashboard where the same flood
// over REST showed as 429s. Helper 154: a deadline header that does not parse was refused by
// connect-es after the gate and before the interceptors, so such calls were neither logged nor
// counted.
import http2 from 'node:http2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { apiClient, PROTOCOLS } from '../helpers/protocols.ts';
import { serveTestMetrics, type MetricsScrape } from '../helpers/metrics-scrape.ts';
import { capturingLogger, startTestServer, type TestServer } from '../helpers/test-app.ts';

const LIMIT = 3;
let t: TestServer;
let metrics: MetricsScrape;
const logs = capturingLogger('info');

beforeAll(async () => {
  t = await startTestServer({ METRICS_PORT: '9464', RATE_LIMIT_MAX: String(LIMIT), TRUST_PROXY: 'true' }, { logger: logs.logger, topology: 'monolithic' });
  metrics = await serveTestMetrics(t);
});

afterAll(async () => {
  await metrics.close();
  await t.close();
});

/** The sum of one metric's samples whose labels include `labels`. */
const sample = (name: string, labels: Record<string, string>) => metrics.sum(name, labels);

describe('RPCs refused before the interceptors', () => {
  it('when a client over each protocol goes past the rate limit, then its refused requests are counted in the request metrics, over RPC as over REST', async () => {
    const refusedSeen: Record<string, { answered: number; counted: number }> = {};
    for (const [index, protocol] of PROTOCOLS.entries()) {
      const address = `198.51.100.${10 + index}`;
      const client = apiClient(protocol, t.baseUrl);
      let refused = 0;
      for (let i = 0; i < LIMIT + 4; i += 1) {
        const outcome = await client.getUser('not-a-token', 1, { headers: { 'x-forwarded-for': address } });
        if (outcome.code === 'resource_exhausted') refused += 1;
      }
      client.close();
      const counted =
        protocol === 'rest'
          ? // Counted as 429 (under route "unmatched": the limit runs before the route is matched).
            await sample('arcana_http_requests_seconds_count', { method: 'GET', status: '429' })
          : await sample('arcana_rpc_requests_seconds_count', {
              procedure: 'arcana.user.v1.UserService/GetUser',
              protocol: protocol.startsWith('connect') ? 'connect' : protocol,
              code: 'resourceexhausted',
            });
      refusedSeen[protocol] = { answered: refused, counted: protocol === 'connect-binary' ? counted - (refusedSeen['connect-json']?.counted ?? 0) : counted };
    }
    // Every refusal the clients saw, counted; they are logged (one line each) already.
    expect(refusedSeen).toEqual({
      rest: { answered: 4, counted: 4 },
      'connect-json': { answered: 4, counted: 4 },
      'connect-binary': { answered: 4, counted: 4 },
      'grpc-web': { answered: 4, counted: 4 },
      grpc: { answered: 4, counted: 4 },
    });
    expect(logs.lines.filter((line) => line.code === 'resource_exhausted' || line.code === 'resourceexhausted').length).toBeGreaterThanOrEqual(16);
  });

  it('when Connect requests carry a body that does not decode, then they are counted as invalid_argument, as a request the validator refuses is', async () => {
    const labels = { procedure: 'arcana.user.v1.UserService/GetUser', protocol: 'connect', code: 'invalidargument' };
    const before = await sample('arcana_rpc_requests_seconds_count', labels);
    const codes: string[] = [];
    for (let i = 0; i < 3; i += 1) {
      const res = await fetch(`${t.baseUrl}/arcana.user.v1.UserService/GetUser`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'connect-protocol-version': '1', 'x-forwarded-for': `203.0.113.${50 + i}` },
        body: JSON.stringify({ userId: 1, notAField: true }),
      });
      codes.push(((await res.json()) as { code: string }).code);
    }
    const after = await sample('arcana_rpc_requests_seconds_count', labels);
    expect({ codes, counted: after - before }).toEqual({ codes: ['invalid_argument', 'invalid_argument', 'invalid_argument'], counted: 3 });
  });

  it('when calls over every protocol carry a deadline header that does not parse, then each is refused as invalid_argument, logged and counted', async () => {
    const procedure = 'arcana.user.v1.UserService/GetUser';
    const before = await sample('arcana_rpc_requests_seconds_count', { procedure, code: 'invalidargument' });
    /** A gRPC or gRPC-Web GetUser over h2c; resolves to its grpc-status (headers, trailers, or gRPC-Web's trailer frame). */
    const h2Call = async (contentType: string, headers: Record<string, string>): Promise<string | undefined> => {
      const session = http2.connect(t.baseUrl);
      try {
        return await new Promise((resolve, reject) => {
          const stream = session.request({ ':method': 'POST', ':path': `/${procedure}`, 'content-type': contentType, te: 'trailers', ...headers });
          let status: string | undefined;
          const chunks: Buffer[] = [];
          stream.on('response', (h) => (status ??= h['grpc-status'] as string | undefined));
          stream.on('trailers', (h) => (status ??= h['grpc-status'] as string | undefined));
          stream.on('data', (chunk: Buffer) => chunks.push(chunk));
          stream.on('error', reject);
          stream.on('close', () => resolve(status ?? /grpc-status:\s*(\d+)/.exec(Buffer.concat(chunks).toString('latin1'))?.[1]));
          stream.end(Buffer.from([0, 0, 0, 0, 2, 0x08, 0x01]));
        });
      } finally {
        session.close();
      }
    };
    const post = await fetch(`${t.baseUrl}/${procedure}`, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        'connect-protocol-version': '1',
        'connect-timeout-ms': 'abc',
        'x-request-id': 'deadline-connect-post',
        'x-forwarded-for': '203.0.113.60',
      },
      body: JSON.stringify({ userId: 1 }),
    });
    const get = await fetch(`${t.baseUrl}/${procedure}?connect=v1&encoding=json&message=${encodeURIComponent('{"userId":1}')}`, {
      headers: { 'connect-timeout-ms': '-1', 'x-request-id': 'deadline-connect-get', 'x-forwarded-for': '203.0.113.61' },
    });
    const answers = {
      'connect-post': post.status,
      'connect-get': get.status,
      grpc: await h2Call('application/grpc', { 'grpc-timeout': '1ZZZ', 'x-request-id': 'deadline-grpc', 'x-forwarded-for': '203.0.113.62' }),
      'grpc-web': await h2Call('application/grpc-web+proto', { 'grpc-timeout': '123456789S', 'x-request-id': 'deadline-grpc-web', 'x-forwarded-for': '203.0.113.63' }),
    };
    expect(answers).toEqual({ 'connect-post': 400, 'connect-get': 400, grpc: '3', 'grpc-web': '3' });
    const ids = ['deadline-connect-post', 'deadline-connect-get', 'deadline-grpc', 'deadline-grpc-web'];
    const logged = ids.filter((id) => logs.lines.some((line) => line.requestId === id));
    const counted = (await sample('arcana_rpc_requests_seconds_count', { procedure, code: 'invalidargument' })) - before;
    expect({ logged, counted }).toEqual({ logged: ids, counted: 4 });
  });
});
