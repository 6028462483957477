import { gzipSync } from 'node:zlib';
import http from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Code, createClient } from '@connectrpc/connect';
import { createConnectTransport, createGrpcTransport } from '@connectrpc/connect-node';
import { AuthService } from '../../gen/proto/arcana/auth/v1/auth_service_pb.js';
import { Health, HealthCheckResponse_ServingStatus } from '../../gen/proto/grpc/health/v1/health_pb.js';
import { apiClient, closeAll } from '../helpers/protocols.ts';
import { bearer, capturingLogger, createTestApp, holdRows, loginAdmin, newUser, register, startTestServer, type TestApp } from '../helpers/test-app.ts';

let t: TestApp;

beforeAll(async () => {
  t = await createTestApp({ BODY_LIMIT: '10kb', CORS_ORIGINS: 'https://app.example.com' });
});

afterAll(async () => {
  await t.close();
});

describe('bad input never reaches a 500', () => {
  it('when the JSON is malformed, then 400 VALIDATION_ERROR', async () => {
    const res = await t.request.post('/api/v1/auth/login').set('content-type', 'application/json').send('{"usernameOrEmail": "x",');
    expect(res.status).toBe(400);
    expect(res.body).toMatchObject({ success: false, error: { code: 'VALIDATION_ERROR', message: 'Malformed JSON in request body' } });
  });

  it('when the body is too large, then 413 PAYLOAD_TOO_LARGE', async () => {
    const res = await t.request.post('/api/v1/auth/login').send({ usernameOrEmail: 'x'.repeat(20_000), password: 'y' });
    expect(res.status).toBe(413);
    expect(res.body.error.code).toBe('PAYLOAD_TOO_LARGE');
  });

  it('when an API request is refused (400, 404, 413, 415), then the answer carries Cache-Control: no-store too', async () => {
    // Only answers that reached the routes had it: a shared cache may keep a 404 by heuristics (helper 97).
    const answers = [
      await t.request.post('/api/v1/auth/refresh').send({ refreshToken: 'x', extra: 1 }),
      await t.request.get('/api/v1/whatever'),
      await t.request.get('/api/v1/users?zzz=1'),
      await t.request.post('/api/v1/auth/login').send({ usernameOrEmail: 'x'.repeat(20_000), password: 'y' }),
      await t.request.post('/api/v1/auth/login').set('content-type', 'text/plain').send('hello'),
    ];
    expect(answers.map((res) => res.status)).toEqual([400, 404, 400, 413, 415]);
    for (const res of answers) expect(res.headers['cache-control'], `${res.status}`).toBe('no-store');
  });

  it('when the body is not JSON, then 415', async () => {
    const res = await t.request.post('/api/v1/auth/login').set('content-type', 'text/plain').send('hello');
    expect(res.status).toBe(415);
    expect(res.body.error.code).toBe('UNSUPPORTED_MEDIA_TYPE');
  });

  it('when a field has the wrong type or an unknown field is sent, then 400 naming it', async () => {
    const wrongType = await t.request.post('/api/v1/auth/login').send({ usernameOrEmail: 42, password: 'x' });
    expect(wrongType.status).toBe(400);
    expect(wrongType.body.error.details).toHaveProperty('usernameOrEmail');
    const unknown = await t.request.post('/api/v1/auth/login').send({ usernameOrEmail: 'a', password: 'b', admin: true });
    expect(unknown.status).toBe(400);
  });

  it('when the body is a JSON array or null, then 400', async () => {
    for (const raw of ['[]', 'null', '"text"']) {
      const res = await t.request.post('/api/v1/auth/register').set('content-type', 'application/json').send(raw);
      expect(res.status, raw).toBe(400);
    }
  });

  it('when the user id overflows int32, then 400', async () => {
    const user = await register(t);
    const res = await t.request.get('/api/v1/users/99999999999').set(...bearer(user.accessToken));
    expect(res.status).toBe(400);
  });

  it('when an id, a page or a filter is a number no int32 holds but JavaScript reads as Infinity, then 400 naming it, not a 500', async () => {
    const admin = await loginAdmin(t);
    const cases: [method: 'get' | 'delete', path: string, field: string][] = [
      ['get', '/api/v1/users/1e400', 'userId'],
      ['get', '/api/v1/users/Infinity', 'userId'],
      ['delete', '/api/v1/users/1e400/sessions', 'userId'],
      ['delete', '/api/v1/users/1/sessions/1e400', 'sessionId'],
      ['get', '/api/v1/users?page=1e400', 'page'],
      ['get', '/api/v1/audit-events?userId=1e400', 'userId'],
      ['get', '/api/v1/audit-events?page=Infinity', 'page'],
    ];
    for (const [method, path, field] of cases) {
      const res = await t.request[method](path).set(...bearer(admin));
      expect(res.status, path).toBe(400);
      expect(res.body, path).toMatchObject({ success: false, error: { code: 'VALIDATION_ERROR', details: { [field]: expect.any(String) } } });
    }
  });

  it('when an id, a page or a filter is a number written other than in decimal, then 400 naming it; decimal still reads', async () => {
    const admin = await loginAdmin(t);
    // JavaScript's Number reads all of these as 1 (or 16, 10): /users/0x1 used to be user 1.
    const odd = ['0x1', '0b1', '0o1', '1e0', '+1', '%201', '1%0A', '%091', '1.0', '0x10'];
    const requests: [path: string, field: string][] = [
      ...odd.map((value): [string, string] => [`/api/v1/users/${value}`, 'userId']),
      ...odd.map((value): [string, string] => [`/api/v1/users?page=${value}`, 'page']),
      ...odd.map((value): [string, string] => [`/api/v1/users?perPage=${value}`, 'perPage']),
      ...odd.map((value): [string, string] => [`/api/v1/audit-events?userId=${value}`, 'userId']),
    ];
    const answers = await Promise.all(requests.map(([path]) => t.request.get(path).set(...bearer(admin))));
    answers.forEach((res, index) => {
      const [path, field] = requests[index]!;
      expect(res.status, path).toBe(400);
      expect(res.body, path).toMatchObject({ success: false, error: { code: 'VALIDATION_ERROR', details: { [field]: expect.any(String) } } });
    });
    for (const path of ['/api/v1/users/1', '/api/v1/users/01', '/api/v1/users?page=1&perPage=020', '/api/v1/audit-events?userId=1']) {
      expect((await t.request.get(path).set(...bearer(admin))).status, path).toBe(200);
    }
  });

  it('when a GET operation is asked for with HEAD, then it answers as GET would, without the body', async () => {
    const admin = await loginAdmin(t);
    for (const path of ['/health', '/ready', '/api/v1/users/1', '/api/v1/users?page=1&perPage=5', '/api/v1/auth/me', '/openapi.yaml']) {
      const [get, head] = [await t.request.get(path).set(...bearer(admin)), await t.request.head(path).set(...bearer(admin))];
      expect(head.status, path).toBe(get.status);
      expect(head.headers['content-type'], path).toBe(get.headers['content-type']);
      expect(head.headers.etag, path).toBe(get.headers.etag);
      expect(head.text, path).toBeFalsy();
    }
    // Still authenticated and validated as the GET is.
    expect((await t.request.head('/api/v1/users/1')).status).toBe(401);
    expect((await t.request.head('/api/v1/users?page=0').set(...bearer(admin))).status).toBe(400);
    // HEAD of an operation that has no GET is as unknown as any other method there.
    expect((await t.request.head('/api/v1/auth/login')).status).toBe(404);
  });

  it('when the route or method is unknown, then 404 in the envelope', async () => {
    for (const res of [await t.request.get('/api/v1/nope'), await t.request.get('/nowhere'), await t.request.patch('/api/v1/auth/login')]) {
      expect(res.status).toBe(404);
      expect(res.body).toMatchObject({ success: false, error: { code: 'NOT_FOUND' } });
    }
  });

  it('when a page, file or probe is asked for in another case or with a trailing slash, then it answers as Express routes it; near misses are 404', async () => {
    // Express matches routes without regard to case, and without strict routing a trailing slash
    // too; the console's router is strict. Each router is only entered for its own paths.
    for (const path of ['/HEALTH', '/health/', '/Ready', '/public/INFO', '/DOCS', '/docs/Proto/', '/OpenAPI.yaml', '/CONSOLE', '/console/', '/Console/Console.JS']) {
      expect((await t.request.get(path)).status, path).toBe(200);
    }
    for (const path of ['/healthz', '/docsx', '/openapi.yml', '/consoles', '/console/console.js/', '/public/info/x']) {
      const res = await t.request.get(path);
      expect(res.status, path).toBe(404);
      expect(res.body, path).toMatchObject({ success: false, error: { code: 'NOT_FOUND' } });
    }
  });

  it('when the authorization header is not a bearer token, then 401', async () => {
    const res = await t.request.get('/api/v1/auth/me').set('authorization', 'Basic dXNlcjpwYXNz');
    expect(res.status).toBe(401);
    expect(res.body.error.message).toBe('Missing or invalid authorization header');
  });
});

describe('cross-cutting HTTP behaviour', () => {
  it('when no x-request-id is sent, then one is generated and echoed in header and body', async () => {
    const res = await t.request.post('/api/v1/auth/login').send({ usernameOrEmail: 'nobody', password: 'x' });
    expect(res.headers['x-request-id']).toMatch(/^[0-9a-f-]{36}$/);
    expect(res.body.requestId).toBe(res.headers['x-request-id']);
  });

  it('when an unacceptable x-request-id is sent, then it is replaced', async () => {
    const res = await t.request.get('/health').set('x-request-id', 'bad id with spaces');
    expect(res.headers['x-request-id']).not.toBe('bad id with spaces');
  });

  it('then security headers are set and no x-powered-by leaks', async () => {
    const res = await t.request.get('/health');
    expect(res.headers['x-content-type-options']).toBe('nosniff');
    expect(res.headers['x-powered-by']).toBeUndefined();
  });

  it('when an RPC is answered over HTTP/1.1, as browsers call it, then it carries the same security headers as REST (not framed, not sniffed, not read cross-origin without CORS)', async () => {
    const server = await startTestServer();
    // Over h2c they are left out on purpose (no browser speaks it; src/app.ts).
    const clients = (['rest', 'connect-json', 'grpc-web'] as const).map((protocol) => apiClient(protocol, server.baseUrl));
    try {
      for (const client of clients) {
        for (const outcome of [await client.me('not-a-token'), await client.login({ usernameOrEmail: 'nobody', password: 'Wrong-Passw0rd!' })]) {
          expect(outcome.headers.get('x-content-type-options'), client.protocol).toBe('nosniff');
          expect(outcome.headers.get('x-frame-options'), client.protocol).toBe('SAMEORIGIN');
          expect(outcome.headers.get('content-security-policy'), client.protocol).toContain("frame-ancestors 'self'");
          expect(outcome.headers.get('cross-origin-resource-policy'), client.protocol).toBe('same-origin');
        }
      }
    } finally {
      closeAll(clients);
      await server.close();
    }
  });

  it('when a browser on an allowed origin writes with If-Match or reads with If-None-Match, then CORS lets the headers through and exposes the ETag', async () => {
    const preflight = await t.request
      .options('/api/v1/users/1')
      .set('origin', 'https://app.example.com')
      .set('access-control-request-method', 'PUT')
      .set('access-control-request-headers', 'authorization,content-type,if-match,if-none-match');
    const allowed = String(preflight.headers['access-control-allow-headers'])
      .toLowerCase()
      .split(/\s*,\s*/);
    expect(allowed).toEqual(expect.arrayContaining(['if-match', 'if-none-match']));
    const admin = await loginAdmin(t);
    const read = await t.request
      .get('/api/v1/users/1')
      .set('origin', 'https://app.example.com')
      .set(...bearer(admin));
    expect(read.status).toBe(200);
    expect(read.headers.etag).toBeDefined();
    expect(
      String(read.headers['access-control-expose-headers'])
        .toLowerCase()
        .split(/\s*,\s*/),
    ).toContain('etag');
  });

  it('when a whitelisted origin asks, then CORS allows it; another origin, then not', async () => {
    const allowed = await t.request.options('/api/v1/auth/login').set('origin', 'https://app.example.com').set('access-control-request-method', 'POST');
    expect(allowed.headers['access-control-allow-origin']).toBe('https://app.example.com');
    const denied = await t.request.options('/api/v1/auth/login').set('origin', 'https://evil.example.com').set('access-control-request-method', 'POST');
    expect(denied.headers['access-control-allow-origin']).toBeUndefined();
  });
});

describe('rate limiting', () => {
  it('when a client exceeds the limit, then 429 RATE_LIMITED with RateLimit headers; probes stay exempt', async () => {
    const limited = await startTestServer({ RATE_LIMIT_MAX: '3', RATE_LIMIT_WINDOW_MS: '60000' });
    try {
      const statuses: number[] = [];
      let last;
      for (let i = 0; i < 5; i += 1) {
        last = await limited.request.post('/api/v1/auth/login').send({ usernameOrEmail: newUser().username, password: 'x' });
        statuses.push(last.status);
      }
      expect(statuses).toEqual([401, 401, 401, 429, 429]);
      expect(last?.body.error.code).toBe('RATE_LIMITED');
      expect(last?.headers['ratelimit-limit']).toBe('3');
      expect(last?.headers['ratelimit-remaining']).toBe('0');
      expect(Number(last?.headers['retry-after'])).toBeGreaterThan(0);
      expect((await limited.request.get('/health')).status).toBe(200);
      // In every form the probes answer to (any case, a trailing slash), and over gRPC health
      // checking, which Kubernetes and load balancers poll: a probe every 10 s is 360 an hour.
      for (const path of ['/HEALTH', '/Health/', '/ready', '/READY/']) expect((await limited.request.get(path)).status, path).toBe(200);
      const baseUrl = `http://127.0.0.1:${limited.port}`;
      for (const transport of [createGrpcTransport({ baseUrl }), createConnectTransport({ baseUrl, httpVersion: '1.1' })]) {
        const checks = await Promise.all(Array.from({ length: 5 }, () => createClient(Health, transport).check({})));
        for (const check of checks) expect(check.status).toBe(HealthCheckResponse_ServingStatus.SERVING);
      }
      // A request with a body at a probe's path is no probe: it is charged like any other, before
      // its body is parsed (helper 203: 137 bytes of gzip inflating to 102 KB of nested arrays,
      // POSTed to /health, cost 64-78 ms of parsing each with no limit at all).
      const nested = gzipSync(`${'['.repeat(50_000)}${']'.repeat(50_000)}`);
      const posted = await limited.request.post('/health').set('content-type', 'application/json').set('content-encoding', 'gzip').send(nested);
      expect({ status: posted.status, code: posted.body.error?.code as unknown }).toEqual({ status: 429, code: 'RATE_LIMITED' });
      // The API itself stays limited over RPC too.
      await expect(createClient(AuthService, createGrpcTransport({ baseUrl })).getCurrentUser({}, { headers: { authorization: 'Bearer x' } })).rejects.toMatchObject({
        code: Code.ResourceExhausted,
      });
    } finally {
      await limited.close();
    }
  });
});

describe('503 answers in the log', () => {
  it('when the process sheds load itself (its bcrypt gate is full), then the refusals are not logged as a dependency failing', async () => {
    const { logger, lines } = capturingLogger('debug');
    const crowded = await startTestServer({ PASSWORD_HASH_CONCURRENCY: '1', PASSWORD_HASH_QUEUE_MAX: '0', BCRYPT_ROUNDS: '12' }, { logger, topology: 'monolithic' });
    try {
      const user = await register(crowded);
      const logins = await Promise.all(
        Array.from({ length: 6 }, () => crowded.request.post('/api/v1/auth/login').send({ usernameOrEmail: user.username, password: user.password })),
      );
      const refused = logins.filter((res) => res.status === 503);
      expect(refused.length).toBeGreaterThan(0);
      expect(lines.filter(({ msg }) => msg === 'request refused: dependency unavailable')).toEqual([]);
      expect(lines.filter(({ msg }) => msg === 'request refused: over capacity')).toHaveLength(refused.length);
      expect(lines.filter(({ msg }) => msg === 'request refused: over capacity').every(({ level }) => level === 'debug')).toBe(true);
    } finally {
      await crowded.close();
    }
  });

  it('when the database is busy for a client still waiting, then the refusal is logged as a warning with its cause; for a client that left, as abandoned', async () => {
    // On Node 24 a request whose body has been read counts as destroyed, so every 503 to a POST
    // was logged at debug as "abandoned by its client", unseen at the default level.
    const { logger, lines } = capturingLogger('debug');
    const busy = await startTestServer({ DATABASE_LOCK_TIMEOUT_MS: '1000' }, { logger, topology: 'monolithic' });
    const user = await register(busy);
    const held = await holdRows(busy, 'SELECT id FROM users WHERE id = $1 FOR UPDATE', [user.id]);
    try {
      const login = (body: object) => busy.request.post('/api/v1/auth/login').send(body);
      const waited = await login({ usernameOrEmail: user.username, password: user.password });
      expect(waited.status).toBe(503);
      expect(waited.body.error.code).toBe('SERVICE_UNAVAILABLE');
      expect(lines.filter(({ msg }) => msg === 'request refused: dependency unavailable')).toEqual([
        expect.objectContaining({ level: 'warn', method: 'POST', path: '/api/v1/auth/login', cause: expect.any(String) }),
      ]);
      expect(lines.filter(({ msg }) => msg === 'request abandoned by its client')).toEqual([]);

      // A client that leaves while the lock is held: nobody reads its answer, no warning.
      const left = http.request(`${busy.baseUrl}/api/v1/auth/login`, { method: 'POST', headers: { 'content-type': 'application/json' } });
      left.on('error', () => undefined);
      left.end(JSON.stringify({ usernameOrEmail: user.username, password: user.password }));
      await sleep(300);
      left.destroy();
      const deadline = Date.now() + 5_000;
      while (Date.now() < deadline && !lines.some(({ msg }) => msg === 'request abandoned by its client')) await sleep(50);
      // Its one line says so (status 499, as nginx logs it), at info since the 499 lines (helper 114).
      expect(lines.filter(({ msg }) => msg === 'request abandoned by its client')).toEqual([expect.objectContaining({ level: 'info', path: '/api/v1/auth/login', status: 499 })]);
      expect(lines.filter(({ msg }) => msg === 'request refused: dependency unavailable')).toHaveLength(1);
    } finally {
      await held.release();
      await busy.close();
    }
  });
});
