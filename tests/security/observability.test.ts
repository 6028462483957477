// Observability as an attack surface (helper 114): what a request leaves in the request log and in
// the metrics when its client goes away before the answer. A client that disconnects is still a
// client that asked for something, and the work may well have been done (an administrator's
// change committed, a password guessed at): the one log line per request and the request metrics
// are what an operator has to see it. Helper 154: an encoding the server does not take was
// refused with connect-es's message, which quotes the client's header: any client's bytes (C1
// controls, 60 KB over HTTP/2) went into the log line and the answer.
//
// Edge code, the same in every topology: runs in the monolithic project.
import http2 from 'node:http2';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { UNMETERED_LINES_PER_INTERVAL } from '../../src/infrastructure/logger.ts';
import { serveTestMetrics, type MetricsScrape } from '../helpers/metrics-scrape.ts';
import { bearer, capturingLogger, holdRows, loginAdmin, register, startTestServer, type TestServer } from '../helpers/test-app.ts';

let t: TestServer;
let admin: string;
let metrics: MetricsScrape;
const logs = capturingLogger('info');

beforeAll(async () => {
  t = await startTestServer({ METRICS_PORT: '9464' }, { logger: logs.logger });
  metrics = await serveTestMetrics(t);
  admin = await loginAdmin(t);
});

afterAll(async () => {
  await metrics.close();
  await t.close();
});

/** The sum of one metric's samples whose labels include `labels`. */
const sample = (name: string, labels: Record<string, string>) => metrics.sum(name, labels);

/** Sends one raw HTTP/1.1 request and returns the socket, for the test to drop it unanswered. */
async function sendAndHold(method: string, path: string, headers: Record<string, string>, body: string): Promise<net.Socket> {
  const socket = net.connect(t.port, '127.0.0.1');
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  socket.on('error', () => undefined);
  const head = Object.entries({ host: `127.0.0.1:${t.port}`, 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)), ...headers })
    .map(([name, value]) => `${name}: ${value}\r\n`)
    .join('');
  socket.write(`${method} ${path} HTTP/1.1\r\n${head}\r\n${body}`);
  return socket;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function until(condition: () => Promise<boolean>, ms = 3000): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await condition()) return true;
    await sleep(25);
  }
  return condition();
}

/**
 * An administrator's change whose client disconnects while it waits for the row: the change is
 * carried out (and audited) once the row is free, but the request leaves no log line at `info`
 * and no sample in the request metrics over REST, while the same over Connect is logged and
 * counted, as `unavailable`: an outage code for a client that merely left.
 */
describe('requests whose client disconnects before the answer', () => {
  it('when a REST PUT /users/{id} is abandoned while it waits, then the request log and arcana_http_requests_seconds still record it', async () => {
    const user = await register(t);
    const id = user.id;
    const requestId = `abandoned-rest-${id}`;
    const before = await sample('arcana_http_requests_seconds_count', { route: '/api/v1/users/{userId}', method: 'PUT' });
    const held = await holdRows(t, 'SELECT id FROM users WHERE id = $1 FOR UPDATE', [id]);
    try {
      const socket = await sendAndHold('PUT', `/api/v1/users/${id}`, { authorization: bearer(admin)[1], 'x-request-id': requestId }, JSON.stringify({ firstName: 'Renamed' }));
      // The request is in the server, waiting for the row: PUT ... ON users blocked by our lock.
      await sleep(400);
      socket.destroy();
      await sleep(100);
    } finally {
      await held.release();
    }
    // What the abandoned request did, as the database says.
    const changed = await until(async () => (await t.sql<{ first_name: string | null }>('SELECT first_name FROM users WHERE id = $1', [id]))[0]?.first_name === 'Renamed');
    await sleep(300);
    const lines = logs.lines.filter((line) => line.requestId === requestId);
    const after = await sample('arcana_http_requests_seconds_count', { route: '/api/v1/users/{userId}', method: 'PUT' });
    // The change was made (audited as USER_UPDATED) for a request nobody can find in the log.
    expect({ changed, infoLines: lines.map((line) => `${line.level} ${line.msg}`), counted: after - before }).toEqual({
      changed: true,
      infoLines: [expect.stringMatching(/^info /)],
      counted: 1,
    });
  });

  it('when a Connect Login is abandoned while it waits, then it is logged and counted as canceled, not as the outage code unavailable', async () => {
    const user = await register(t);
    const requestId = `abandoned-rpc-${user.id}`;
    const unavailableBefore = await sample('arcana_rpc_requests_seconds_count', { procedure: 'arcana.auth.v1.AuthService/Login', code: 'unavailable' });
    // Every read of users waits: the login is in the server, waiting for its lookup.
    const held = await holdRows(t, 'LOCK TABLE users IN ACCESS EXCLUSIVE MODE');
    try {
      const socket = await sendAndHold(
        'POST',
        '/arcana.auth.v1.AuthService/Login',
        { 'x-request-id': requestId, 'connect-protocol-version': '1' },
        JSON.stringify({ usernameOrEmail: user.username, password: 'Wrong-Passw0rd!' }),
      );
      await sleep(400);
      socket.destroy();
      await sleep(100);
    } finally {
      await held.release();
    }
    await until(async () => logs.lines.some((line) => line.requestId === requestId));
    const codes = logs.lines.filter((line) => line.requestId === requestId).map((line) => line.code);
    const unavailableAfter = await sample('arcana_rpc_requests_seconds_count', { procedure: 'arcana.auth.v1.AuthService/Login', code: 'unavailable' });
    expect({ codes, unavailableCounted: unavailableAfter - unavailableBefore }).toEqual({ codes: ['canceled'], unavailableCounted: 0 });
  });
});

/**
 * The request log line of a path the client chose: spans cut it at 1 KiB (README, Traces), the
 * log line takes it whole. A 16 KB path (within Node's 16 KiB of request head) makes a log line
 * over 16 KiB, the length at which Docker's json-file driver and containerd's CRI logs split a
 * line into partial records, which collectors without partial-line reassembly read as two broken
 * JSON records, the second beginning with the client's bytes.
 */
describe('the request log line of a long path', () => {
  it('when a REST request has a 16 KB path, then its log line stays small, as its span does', async () => {
    const requestId = 'long-path-1';
    const path = `/x${'A'.repeat(16_200)}`;
    const res = await fetch(`${t.baseUrl}${path}`, { headers: { 'x-request-id': requestId } });
    expect(res.status).toBe(404);
    await until(async () => logs.lines.some((line) => line.requestId === requestId));
    const line = logs.lines.find((candidate) => candidate.requestId === requestId);
    expect(line).toBeDefined();
    expect(JSON.stringify(line).length).toBeLessThan(2048);
  });
  it('when one connection to the metrics port pipelines 200 scrapes and reads nothing, then one is rendered and answered, and the connection ends', async () => {
    // Each was rendered and its answer buffered for a client that read none: 250 MB of RSS for
    // 2 000 of them, not given back (helper 147).
    const socket = net.connect(metrics.port, '127.0.0.1');
    const chunks: Buffer[] = [];
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.on('error', () => undefined);
    await new Promise<void>((resolve) => socket.once('connect', resolve));
    socket.write('GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n'.repeat(200));
    await new Promise<void>((resolve) => socket.once('close', resolve));
    const statuses =
      Buffer.concat(chunks)
        .toString('latin1')
        .match(/HTTP\/1\.1 \d{3}/g) ?? [];
    expect(statuses[0]).toBe('HTTP/1.1 200');
    expect(statuses.filter((status) => status === 'HTTP/1.1 200')).toHaveLength(1);
  });

  it('when one client holds every place on the metrics port with connections that send nothing, and opens them again as they close, then a scrape is still answered', async () => {
    // With Node's maxConnections, 32 idle connections kept every scrape out for as long as
    // their client liked (helper 151).
    const held = new Set<net.Socket>();
    let holding = true;
    const hold = () => {
      if (!holding) return;
      const socket = net.connect(metrics.port, '127.0.0.1');
      socket.on('error', () => undefined);
      socket.once('close', () => {
        held.delete(socket);
        hold();
      });
      held.add(socket);
    };
    for (let index = 0; index < 40; index += 1) hold();
    await new Promise((resolve) => setTimeout(resolve, 200));
    try {
      expect(await metrics.scrape()).toContain('# TYPE arcana_http_requests_seconds histogram');
    } finally {
      holding = false;
      for (const socket of held) socket.destroy();
    }
  });

  it('when a scrape is left half-sent on the metrics port, then closing the port does not wait for it', async () => {
    // The shutdown waited for it until its timeout, and the process exited 1 with the database
    // and the queues never closed (helper 147).
    const second = await serveTestMetrics(t);
    const socket = net.connect(second.port, '127.0.0.1');
    socket.on('error', () => undefined);
    await new Promise<void>((resolve) => socket.once('connect', resolve));
    socket.write('GET /metrics HTTP/1.1\r\nHost: a\r\n');
    await new Promise((resolve) => setTimeout(resolve, 50));
    const started = Date.now();
    await second.close();
    expect(Date.now() - started).toBeLessThan(1_000);
    expect(socket.destroyed || socket.readableEnded || (await new Promise((resolve) => socket.once('close', () => resolve(true))))).toBe(true);
  });
});

describe('client text in an RPC refusal', () => {
  /** One raw HTTP/1.1 request, header bytes as given (Node reads them as Latin-1), answered in full. */
  const rawRequest = async (head: Buffer, body: string): Promise<string> => {
    const socket = net.connect(t.port, '127.0.0.1');
    await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
    const chunks: Buffer[] = [];
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.write(Buffer.concat([head, Buffer.from(`content-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`)]));
    await new Promise<void>((resolve) => socket.once('close', () => resolve()));
    return Buffer.concat(chunks).toString('latin1');
  };

  it('when a Connect call names an unknown content-encoding holding C1 controls, then neither its log line nor its answer carries the client’s bytes', async () => {
    const head = Buffer.concat([
      Buffer.from(
        'POST /arcana.auth.v1.AuthService/Login HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\nx-request-id: c1-encoding\r\ncontent-encoding: evilmark',
      ),
      // CSI and NEL once read as Latin-1.
      Buffer.from([0x9b, 0x33, 0x31, 0x6d, 0x85]),
      Buffer.from('\r\n'),
    ]);
    const answer = await rawRequest(head, '{}');
    expect(answer.split('\r\n')[0]).toBe('HTTP/1.1 501 Not Implemented');
    expect(answer).toContain('supported encodings are gzip');
    await until(async () => logs.lines.some((line) => line.requestId === 'c1-encoding'));
    const text = JSON.stringify(logs.lines.find((line) => line.requestId === 'c1-encoding'));
    expect({ inLog: text.includes('evilmark') || /[\u0080-\u009f]/.test(text), inAnswer: answer.includes('evilmark') }).toEqual({ inLog: false, inAnswer: false });
  });

  it('when a gRPC call names a 60 KB grpc-encoding, then it is refused as unimplemented and its log line stays short without the value', async () => {
    const session = http2.connect(t.baseUrl, { maxSendHeaderBlockLength: 1 << 20 });
    try {
      const status = await new Promise<string | undefined>((resolve, reject) => {
        const stream = session.request({
          ':method': 'POST',
          ':path': '/arcana.auth.v1.AuthService/Login',
          'content-type': 'application/grpc',
          te: 'trailers',
          'grpc-encoding': `longmark${'x'.repeat(60_000)}`,
          'x-request-id': 'long-encoding',
        });
        let grpcStatus: string | undefined;
        stream.on('response', (h) => (grpcStatus ??= h['grpc-status'] as string | undefined));
        stream.on('trailers', (h) => (grpcStatus ??= h['grpc-status'] as string | undefined));
        stream.on('error', reject);
        stream.on('close', () => resolve(grpcStatus));
        stream.resume();
        stream.end(Buffer.from([0, 0, 0, 0, 0]));
      });
      expect(status).toBe('12');
    } finally {
      session.close();
    }
    await until(async () => logs.lines.some((line) => line.requestId === 'long-encoding'));
    const line = JSON.stringify(logs.lines.find((candidate) => candidate.requestId === 'long-encoding'));
    expect({ carriesValue: logs.lines.some((candidate) => JSON.stringify(candidate).includes('longmark')), longerThan2KB: line.length > 2048 }).toEqual({
      carriesValue: false,
      longerThan2KB: false,
    });
  });
});

describe('the request log under a flood of requests no rate limit charges (helper 207)', () => {
  it('when one address floods over its limit (REST and Connect), and probes /health, the console and gRPC health, in parallel, then at most the budget of such lines is logged, while its charged requests each have theirs; malformed health checks too', async () => {
    // Each refused or exempt request had a line of its own: one address made the server log
    // 2.5-5 MB a second, 9-18 GB an hour, whatever its limit.
    const flood = capturingLogger('info');
    const limited = await startTestServer({ RATE_LIMIT_ENABLED: 'true', RATE_LIMIT_MAX: '5' }, { logger: flood.logger });
    try {
      const charged = await Promise.all(Array.from({ length: 5 }, () => limited.request.get('/api/v1/auth/me')));
      expect(charged.map((answer) => answer.status)).toEqual(Array(5).fill(401));
      const login = () =>
        fetch(`${limited.baseUrl}/arcana.auth.v1.AuthService/Login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' }).then(
          (answer) => answer.status,
        );
      const statuses = await Promise.all([
        ...Array.from({ length: 150 }, () => limited.request.get('/api/v1/auth/me').then((answer) => answer.status)),
        ...Array.from({ length: 100 }, login),
        ...Array.from({ length: 100 }, () => limited.request.get('/health').then((answer) => answer.status)),
        ...Array.from({ length: 50 }, () => limited.request.get('/console/').then((answer) => answer.status)),
      ]);
      expect(new Set(statuses)).toEqual(new Set([429, 200]));
      // Health checks are never charged, malformed ones neither (helper 211: a line each).
      for (let i = 0; i < 50; i += 1) {
        const answer = await fetch(`${limited.baseUrl}/grpc.health.v1.Health/Check`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{' });
        expect(answer.status).toBe(400);
      }
      // A probe takes no query: one with a query is charged like any request (helper 209).
      expect([(await limited.request.get('/health')).status, (await limited.request.get('/health?x=1')).status]).toEqual([200, 429]);
      await sleep(200);
      const requestLines = flood.lines.filter((line) => line.msg === 'request completed' || line.msg === 'rpc completed');
      // The five charged requests, then no more than the budget of the 400 others.
      expect(requestLines.filter((line) => line.status === 401)).toHaveLength(5);
      expect(requestLines.length).toBeGreaterThan(5);
      expect(requestLines.length).toBeLessThanOrEqual(5 + UNMETERED_LINES_PER_INTERVAL);
    } finally {
      await limited.close();
    }
  });
});
