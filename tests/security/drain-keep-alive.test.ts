// What HTTP/1.1 keep-alive clients (REST, Connect over HTTP/1.1, gRPC-Web) see while a process
// drains after SIGTERM (found by an attacking helper, 153): answers kept the connection alive, the
// drain closed it as soon as it went idle, and the client's next request on it met a reset, a
// registration or a refresh the client could not tell done or not. Real processes (src/main.js),
// as the signal is what is tested; the same edge code in every topology: monolithic project.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import http2 from 'node:http2';
import net from 'node:net';
import { once } from 'node:events';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { newUser, TEST_DATABASE_URL, TEST_ENV } from '../helpers/test-app.ts';
import { createMigratedSchema } from '../helpers/test-database.ts';

const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function spawnMonolith(extra: Record<string, string>) {
  const schema = `drain_${Date.now()}_${randomBytes(3).toString('hex')}`;
  const admin = new pg.Client({ connectionString: TEST_DATABASE_URL });
  await admin.connect();
  await createMigratedSchema(admin, schema);
  cleanups.push(async () => {
    await admin.query(`DROP SCHEMA "${schema}" CASCADE`);
    await admin.end();
  });
  const url = new URL(TEST_DATABASE_URL);
  url.searchParams.set('schema', schema);
  const child: ChildProcess = spawn(process.execPath, [join(import.meta.dirname, '..', '..', 'src', 'main.js')], {
    env: {
      ...TEST_ENV,
      PATH: process.env.PATH ?? '',
      PORT: '0',
      HOST: '127.0.0.1',
      LOG_LEVEL: 'info',
      DATABASE_URL: url.toString(),
      REDIS_KEY_PREFIX: `drain-${schema}:`,
      ...extra,
    },
  });
  cleanups.push(() => child.kill('SIGKILL'));
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
  const baseUrl = await new Promise<string>((resolve, reject) => {
    createInterface({ input: child.stdout! }).on('line', (line) => {
      const entry = JSON.parse(line) as { msg?: string; address?: string };
      if (entry.msg === 'arcana-cloud listening') resolve(`http://${entry.address ?? ''}`);
    });
    void exited.then((code) => reject(new Error(`server exited with ${code}`)));
  });
  return { child, exited, baseUrl };
}

/**
 * A process with one connection it has accepted (a connection made after it was answered) on
 * which nothing has been sent, and a wait for its "shutting down" line, the server's close.
 */
async function silentConnectionTo(extra: Record<string, string>) {
  const { child, exited, baseUrl } = await spawnMonolith(extra);
  const { hostname, port } = new URL(baseUrl);
  const socket = net.connect(Number(port), hostname);
  cleanups.push(() => socket.destroy());
  await once(socket, 'connect');
  expect((await fetch(`${baseUrl}/health`)).status).toBe(200);
  const shuttingDown = new Promise<void>((resolve) => {
    child.stdout?.on('data', (chunk: Buffer) => {
      if (chunk.toString().includes('shutting down')) resolve();
    });
  });
  return { child, exited, baseUrl, socket, shuttingDown };
}

function send(agent: http.Agent, baseUrl: string, method: string, path: string, body?: unknown, token?: string) {
  return new Promise<{ status: number; connection: string | undefined; json: unknown }>((resolve, reject) => {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const req = http.request(new URL(path, baseUrl), {
      method,
      agent,
      headers: { ...(payload === undefined ? {} : { 'content-type': 'application/json' }), ...(token === undefined ? {} : { authorization: `Bearer ${token}` }) },
    });
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, connection: res.headers.connection, json: JSON.parse(Buffer.concat(chunks).toString() || 'null') }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(payload);
  });
}

describe('HTTP/1.1 keep-alive clients during a graceful shutdown', () => {
  it('when SIGTERM comes while a request is in flight on a keep-alive connection, then its answer says Connection: close, so the client does not send its next request on a connection the server is about to close', async () => {
    // A slow hash holds the login across the signal (about 250 ms at cost 12).
    const { child, exited, baseUrl } = await spawnMonolith({ SHUTDOWN_TIMEOUT_MS: '10000', BCRYPT_ROUNDS: '12' });
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    cleanups.push(() => agent.destroy());
    const user = newUser('drain_login');
    expect((await send(agent, baseUrl, 'POST', '/api/v1/auth/register', user)).status).toBe(201);
    const login = send(agent, baseUrl, 'POST', '/api/v1/auth/login', { usernameOrEmail: user.username, password: user.password });
    await sleep(60);
    child.kill('SIGTERM');
    const answer = await login;
    expect(answer.status).toBe(200);
    // The server closes this connection once it goes idle (every 50 ms while draining): a
    // keep-alive client not told so reuses it for its next request, which then meets a reset.
    expect(answer.connection).toBe('close');
    expect(await exited).toBe(0);
  });

  it('when keep-alive clients keep sending through a SIGTERM, then every request they send gets an answer (200, or 503 once refused), none a reset connection', async () => {
    const { child, exited, baseUrl } = await spawnMonolith({ SHUTDOWN_TIMEOUT_MS: '5000' });
    const setup = new http.Agent({ keepAlive: false });
    const user = newUser('drain_me');
    const registered = await send(setup, baseUrl, 'POST', '/api/v1/auth/register', user);
    const token = (registered.json as { data: { tokens: { accessToken: string } } }).data.tokens.accessToken;
    let stopping = false;
    let signalled = false;
    const transportErrors: string[] = [];
    const statuses = new Map<number, number>();
    let answeredClients = 0;
    const client = async () => {
      const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
      cleanups.push(() => agent.destroy());
      let answered = false;
      while (!stopping) {
        try {
          const { status } = await send(agent, baseUrl, 'GET', '/api/v1/auth/me', undefined, token);
          statuses.set(status, (statuses.get(status) ?? 0) + 1);
          if (!answered) {
            answered = true;
            answeredClients += 1;
          }
        } catch (error) {
          const code = (error as NodeJS.ErrnoException).code ?? (error as Error).message;
          // Refused connections after the listener closed are fine: nothing was sent.
          if (code === 'ECONNREFUSED') await sleep(20);
          // Collected, not thrown: the clients are awaited only after the shutdown.
          else transportErrors.push(signalled ? code : `before the signal: ${code}`);
        }
      }
    };
    const clients = Array.from({ length: 12 }, client);
    // Every client answered once, so on a kept-alive connection, before the signal: on a busy
    // machine a fresh server had not yet accepted some of the twelve connections 500 ms in, and
    // closing the listener reset them: first requests on new connections, not the reuse this test
    // is about (helper 183).
    await vi.waitFor(() => expect(answeredClients).toBe(12), { timeout: 20_000, interval: 20 });
    await sleep(200);
    signalled = true;
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    stopping = true;
    await Promise.all(clients);
    expect(statuses.get(200)).toBeGreaterThan(0);
    // Observed: ECONNRESET, EPIPE and "socket hang up" on requests sent on connections the
    // draining server closed without having said `Connection: close` on their last answer.
    expect(transportErrors).toEqual([]);
  });

  it('when a connection accepted before SIGTERM sends its first request just after it, then the request is answered with Connection: close, not met with a reset', async () => {
    // A busy process may not have read a request its newest connections already carry when the
    // signal comes; such connections, not yet known to speak HTTP/1.1 or HTTP/2, were destroyed
    // at once (helper 183).
    // The grace for such connections is 300 ms by default; a CI run's loaded test process read the
    // "shutting down" line later than that once, and its request met a destroyed connection.
    const { child, exited, socket, shuttingDown } = await silentConnectionTo({ SHUTDOWN_TIMEOUT_MS: '8000', SHUTDOWN_IDLE_GRACE_MS: '3000' });
    const received: Buffer[] = [];
    socket.on('data', (chunk: Buffer) => received.push(chunk));
    const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
    socket.on('error', () => undefined);
    child.kill('SIGTERM');
    // Logged just before the server closes; the request follows at once.
    await shuttingDown;
    socket.write('GET /api/v1/auth/me HTTP/1.1\r\nHost: localhost\r\n\r\n');
    await Promise.race([closed, sleep(5_000)]);
    const answer = Buffer.concat(received).toString('latin1');
    expect(answer.split('\r\n')[0]).toBe('HTTP/1.1 401 Unauthorized');
    expect(answer).toMatch(/\r\nconnection: close\r\n/i);
    expect(await exited).toBe(0);
  });

  it('when such a connection speaks HTTP/2 instead, then it is told GOAWAY at once and the process still exits 0 promptly', async () => {
    const { child, exited, baseUrl, socket, shuttingDown } = await silentConnectionTo({ SHUTDOWN_TIMEOUT_MS: '10000' });
    const signalledAt = performance.now();
    child.kill('SIGTERM');
    await shuttingDown;
    const session = http2.connect(baseUrl, { createConnection: () => socket });
    session.on('error', () => undefined);
    const goaway = new Promise<number>((resolve) => session.once('goaway', (code: number) => resolve(code)));
    const stream = session.request({ ':path': '/health' });
    stream.on('error', () => undefined);
    expect(await Promise.race([goaway, sleep(3_000).then(() => 'no GOAWAY')])).toBe(http2.constants.NGHTTP2_NO_ERROR);
    session.destroy();
    expect(await exited).toBe(0);
    // Not held to the shutdown timeout (10 s) by a session no one closed.
    expect(performance.now() - signalledAt).toBeLessThan(5_000);
  });
});

describe('a drain bounded by SHUTDOWN_TIMEOUT_MS', () => {
  it('when the idle grace is longer than the shutdown timeout, and clients hold idle keep-alive connections and HTTP/2 connections they never read, then the drain ends at the cut and the process exits 0', async () => {
    // Helper 196: the grace held the close past the timeout (the cut closed the connections but
    // not the grace), and a raw HTTP/2 socket whose session the cut destroyed lingered for its
    // client, which never closed it: "shutdown timed out", exit 1.
    const { child, exited, baseUrl } = await spawnMonolith({ SHUTDOWN_TIMEOUT_MS: '2500', SHUTDOWN_IDLE_GRACE_MS: '10000' });
    const { hostname, port } = new URL(baseUrl);
    const agent = new http.Agent({ keepAlive: true, maxSockets: 3 });
    cleanups.push(() => agent.destroy());
    await Promise.all([0, 1, 2].map(async () => expect((await send(agent, baseUrl, 'GET', '/health')).status).toBe(200)));
    // The client preface and nothing else, and no reading: not even the server's SETTINGS.
    for (let index = 0; index < 3; index += 1) {
      const socket = net.connect(Number(port), hostname);
      cleanups.push(() => socket.destroy());
      await once(socket, 'connect');
      socket.pause();
      socket.write('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');
    }
    // Past the server's protocol detection, which hands each socket to its HTTP/2 server.
    await sleep(500);
    const signalledAt = performance.now();
    child.kill('SIGTERM');
    expect(await Promise.race([exited, sleep(10_000).then(() => 'still running')])).toBe(0);
    // The cut is at 80 % of the timeout (2 s); the process was forced out at 2.5 s.
    expect(performance.now() - signalledAt).toBeLessThan(2_500);
  });
});
