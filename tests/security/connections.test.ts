// Attacks on the connection layer, against the real server on a real loopback port: clients that
// connect and say nothing, trickle bytes, never finish a request, idle on a session, open more
// streams or connections than they may, or hold health watches open. What is asserted is what the
// attacker sees: the socket closed by a deadline, a 408, GOAWAY and RST_STREAM codes, the
// advertised SETTINGS, resource_exhausted. The bounds are set small so the deadlines pass quickly;
// each expected close is given generous slack, since a loaded two-core machine delays timers.
import { Code, ConnectError, createClient } from '@connectrpc/connect';
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport, Http2SessionManager } from '@connectrpc/connect-node';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { gzipSync } from 'node:zlib';
import { once } from 'node:events';
import http from 'node:http';
import http2 from 'node:http2';
import { readdirSync, readlinkSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { pino, type Logger } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { AuthService } from '../../gen/proto/arcana/auth/v1/auth_service_pb.js';
import { UserService } from '../../gen/proto/arcana/user/v1/user_service_pb.js';
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from '../../gen/proto/grpc/health/v1/health_pb.js';
import { presentsSecret } from '../../src/communication/layer-server.ts';
import { createDualProtocolServer } from '../../src/server.ts';
import { apiClients, closeAll } from '../helpers/protocols.ts';
import { ADMIN, monolithOf, newUser, register, startTestServer, TEST_DATABASE_URL, TEST_ENV, type TestServer } from '../helpers/test-app.ts';
import { createMigratedSchema } from '../helpers/test-database.ts';
import { compress, RawClient as ProtocolClient } from './raw-protocols.ts';

/** Slack for a deadline to be seen by the client on a loaded machine. */
const SLACK_MS = 5_000;
/** A timer never fires early, but the client's clock starts a little before the server's. */
const EARLY_MS = 100;

const DETECTION_MS = 1_000;
const HEADERS_MS = 1_000;
const REQUEST_MS = 1_500;
const KEEP_ALIVE_MS = 1_000;
/** Node keeps a keep-alive socket this much longer than keepAliveTimeout (keepAliveTimeoutBuffer). */
const KEEP_ALIVE_BUFFER_MS = 1_000;
const IDLE_MS = 1_000;
/** How long the server waits for a peer to close its side after GOAWAY (LINGER_MS in server.ts). */
const LINGER_MS = 5_000;
const MAX_STREAMS = 10;
const WATCH_MAX = 30;
const WATCH_INTERVAL_MS = 250;

const NGHTTP2_NO_ERROR = 0;
const NGHTTP2_PROTOCOL_ERROR = 1;
const NGHTTP2_REFUSED_STREAM = 7;
const NGHTTP2_CANCEL = 8;
const SETTINGS_MAX_CONCURRENT_STREAMS = 3;

let server: TestServer;
const cleanups: (() => void)[] = [];

beforeAll(async () => {
  server = await startTestServer({
    PROTOCOL_DETECTION_TIMEOUT_MS: String(DETECTION_MS),
    HTTP_HEADERS_TIMEOUT_MS: String(HEADERS_MS),
    HTTP_REQUEST_TIMEOUT_MS: String(REQUEST_MS),
    HTTP_KEEP_ALIVE_TIMEOUT_MS: String(KEEP_ALIVE_MS),
    HTTP2_IDLE_TIMEOUT_MS: String(IDLE_MS),
    HTTP2_MAX_CONCURRENT_STREAMS: String(MAX_STREAMS),
    HEALTH_WATCH_MAX: String(WATCH_MAX),
    HEALTH_WATCH_INTERVAL_MS: String(WATCH_INTERVAL_MS),
  });
});

afterAll(async () => {
  await server.close();
});

afterEach(() => {
  for (const cleanup of cleanups.splice(0)) cleanup();
});

// ---- raw clients

interface RawClient {
  socket: net.Socket;
  connected: Promise<void>;
  /** Milliseconds from connect() until the server closed the connection. */
  closed: Promise<number>;
  received(): Buffer;
}

function rawClient(port: number, options: { localAddress?: string; allowHalfOpen?: boolean } = {}): RawClient {
  const startedAt = performance.now();
  const socket = net.connect({ port, host: '127.0.0.1', ...options });
  cleanups.push(() => socket.destroy());
  let received = Buffer.alloc(0);
  socket.on('data', (chunk: Buffer) => (received = Buffer.concat([received, chunk])));
  socket.on('error', () => undefined);
  return {
    socket,
    connected: new Promise((resolve) => socket.once('connect', () => resolve())),
    closed: new Promise((resolve) => socket.once('close', () => resolve(performance.now() - startedAt))),
    received: () => received,
  };
}

/** A reflection stream on `session`, and `count` file_containing_symbol questions for UserService as its request body. */
function reflectionStream(session: http2.ClientHttp2Session, count: number): { stream: http2.ClientHttp2Stream; questions: Buffer } {
  const stream = session.request({ ':method': 'POST', ':path': '/grpc.reflection.v1.ServerReflection/ServerReflectionInfo', 'content-type': 'application/grpc', te: 'trailers' });
  stream.on('error', () => undefined);
  const symbol = Buffer.from(UserService.typeName);
  // file_containing_symbol (field 4), framed as a gRPC message.
  const question = Buffer.concat([Buffer.from([0, 0, 0, 0, symbol.length + 2, 0x22, symbol.length]), symbol]);
  return { stream, questions: Buffer.concat(Array.from({ length: count }, () => question)) };
}

/** When `closed` resolved (ms), or Infinity if it had not after `limitMs`. */
function closedWithin(closed: Promise<number>, limitMs: number): Promise<number> {
  return Promise.race([closed, sleep(limitMs).then(() => Number.POSITIVE_INFINITY)]);
}

/** The status lines in what an HTTP/1.1 server sent; pipelined answers follow each other without a line break. */
function statusLines(received: Buffer): string[] {
  return received.toString('latin1').match(/HTTP\/1\.1 \d{3}/g) ?? [];
}

/**
 * A client that writes `text` and reads nothing until told to: the answers stay in the kernel's
 * buffers and in the server. `readToClose` then reads all the server sent and says whether the
 * connection ended within `limitMs`.
 */
function pausedClient(port: number, text: string): { readToClose: (limitMs: number) => Promise<{ closed: boolean; statuses: string[] }> } {
  const socket = net.connect({ port, host: '127.0.0.1' });
  cleanups.push(() => socket.destroy());
  socket.on('error', () => undefined);
  socket.pause();
  socket.write(text);
  return {
    readToClose: async (limitMs) => {
      const chunks: Buffer[] = [];
      const closed = new Promise<boolean>((resolve) => socket.once('close', () => resolve(true)));
      socket.on('data', (chunk: Buffer) => chunks.push(chunk));
      socket.resume();
      const ended = await Promise.race([closed, sleep(limitMs).then(() => false)]);
      return { closed: ended, statuses: statusLines(Buffer.concat(chunks)) };
    },
  };
}

/** Writes `text` one byte every `everyMs` until the socket closes. */
function trickle(socket: net.Socket, text: string, everyMs: number): void {
  let index = 0;
  const timer = setInterval(() => {
    if (socket.destroyed || index >= text.length) return clearInterval(timer);
    socket.write(text.charAt(index));
    index += 1;
  }, everyMs);
  cleanups.push(() => clearInterval(timer));
}

const PREFACE = 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n';

interface Frame {
  type: number;
  flags: number;
  streamId: number;
  payload: Buffer;
}

function frame(type: number, flags: number, streamId: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const head = Buffer.alloc(9);
  head.writeUIntBE(payload.length, 0, 3);
  head[3] = type;
  head[4] = flags;
  head.writeUInt32BE(streamId, 5);
  return Buffer.concat([head, payload]);
}

const FRAME = { data: 0, headers: 1, rstStream: 3, settings: 4, ping: 6, goaway: 7, windowUpdate: 8 } as const;
const FLAG = { endStream: 1, endHeaders: 4, ack: 1 } as const;
const SETTINGS_INITIAL_WINDOW_SIZE = 4;

/** A request's HEADERS block, HPACK literals without indexing: no table state to keep. */
function requestHeaders(path: string, extra: [string, string][] = []): Buffer {
  const literal = (name: string, value: string) => Buffer.concat([Buffer.from([0, name.length]), Buffer.from(name), Buffer.from([value.length]), Buffer.from(value)]);
  return Buffer.concat([
    literal(':method', 'POST'),
    literal(':scheme', 'http'),
    literal(':path', path),
    literal(':authority', 'attacker'),
    literal('content-type', 'application/grpc'),
    ...extra.map(([name, value]) => literal(name, value)),
  ]);
}

/** A raw HTTP/2 client whose streams' receive window is `bytes`, once the server's SETTINGS have come. */
async function windowedClient(port: number, bytes: number): Promise<RawClient> {
  const client = rawClient(port);
  const window = Buffer.alloc(6);
  window.writeUInt16BE(SETTINGS_INITIAL_WINDOW_SIZE, 0);
  window.writeUInt32BE(bytes, 2);
  client.socket.write(Buffer.concat([Buffer.from(PREFACE), frame(FRAME.settings, 0, 0, window)]));
  await until('SETTINGS', () => settingsOf(framesOf(client)));
  return client;
}

/** `count` complete gRPC health checks on streams 1, 3, 5…: HEADERS, then the empty message ending the stream. */
function healthChecks(count: number): Buffer[] {
  return Array.from({ length: count }, (_, i) => [
    frame(FRAME.headers, FLAG.endHeaders, 1 + 2 * i, requestHeaders(`/${Health.typeName}/Check`)),
    frame(FRAME.data, FLAG.endStream, 1 + 2 * i, Buffer.from([0, 0, 0, 0, 0])),
  ]).flat();
}

/** A HEADERS block of literals without indexing, of any length (HPACK integers, RFC 7541 §5.1). */
function headerBlock(fields: [string, string][]): Buffer {
  const length = (n: number): Buffer => {
    if (n < 127) return Buffer.from([n]);
    const bytes = [127];
    let rest = n - 127;
    while (rest >= 128) {
      bytes.push((rest % 128) + 128);
      rest = Math.floor(rest / 128);
    }
    bytes.push(rest);
    return Buffer.from(bytes);
  };
  return Buffer.concat(fields.flatMap(([name, value]) => [Buffer.from([0]), length(name.length), Buffer.from(name), length(value.length), Buffer.from(value)]));
}

/** The frames the server has sent so far on a raw HTTP/2 connection. */
function framesOf(client: RawClient): Frame[] {
  const frames: Frame[] = [];
  let bytes = client.received();
  while (bytes.length >= 9) {
    const length = bytes.readUIntBE(0, 3);
    if (bytes.length < 9 + length) break;
    frames.push({ type: bytes[3] ?? 0, flags: bytes[4] ?? 0, streamId: bytes.readUInt32BE(5) & 0x7fffffff, payload: bytes.subarray(9, 9 + length) });
    bytes = bytes.subarray(9 + length);
  }
  return frames;
}

async function until<T>(what: string, read: () => T | undefined, timeoutMs = SLACK_MS): Promise<T> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const value = read();
    if (value !== undefined) return value;
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

function settingsOf(frames: Frame[]): Map<number, number> | undefined {
  const settings = frames.find((f) => f.type === FRAME.settings && (f.flags & FLAG.ack) === 0);
  if (settings === undefined) return undefined;
  const values = new Map<number, number>();
  for (let offset = 0; offset + 6 <= settings.payload.length; offset += 6) values.set(settings.payload.readUInt16BE(offset), settings.payload.readUInt32BE(offset + 2));
  return values;
}

const rstCodes = (frames: Frame[]) => frames.filter((f) => f.type === FRAME.rstStream).map((f) => f.payload.readUInt32BE(0));

/** An HTTP/2 client session to the server, optionally from another loopback address. */
function h2Session(port: number, localAddress?: string): http2.ClientHttp2Session {
  const session = http2.connect(`http://127.0.0.1:${port}`, {
    // The server's SETTINGS set the real limit; Node would otherwise assume 100 until then.
    peerMaxConcurrentStreams: 1_000,
    ...(localAddress === undefined ? {} : { createConnection: () => net.connect({ port, host: '127.0.0.1', localAddress }) }),
  });
  session.on('error', () => undefined);
  cleanups.push(() => session.destroy());
  return session;
}

/** A gRPC call whose request body never comes: the headers and five bytes of a frame header. */
function stalledStream(session: http2.ClientHttp2Session): { stream: http2.ClientHttp2Stream; closed: Promise<{ afterMs: number; rstCode: number }> } {
  const startedAt = performance.now();
  const stream = session.request({ ':method': 'POST', ':path': `/${AuthService.typeName}/Login`, 'content-type': 'application/grpc', te: 'trailers' }, { endStream: false });
  stream.on('error', () => undefined);
  stream.write(Buffer.from([0, 0, 0, 0, 64]));
  return { stream, closed: new Promise((resolve) => stream.once('close', () => resolve({ afterMs: performance.now() - startedAt, rstCode: stream.rstCode }))) };
}

/** The bare dual-protocol server of src/server.ts with `handler` behind it, on a free loopback port. */
async function bareServer(
  handler: (req: unknown, res: { end(): void }) => void,
  limits: { http2MaxConcurrentStreams: number; connectionsPerAddress: number; http2StreamsPerAddress: number },
  logger?: Logger,
  vouch?: (authorization: string | undefined) => boolean,
): Promise<{ port: number; close: () => Promise<void> }> {
  const { server: bare, close } = createDualProtocolServer(
    { http1: handler, http2: handler },
    {
      limits: { protocolDetectionTimeoutMs: 10_000, headersTimeoutMs: 10_000, requestTimeoutMs: 10_000, keepAliveTimeoutMs: 10_000, http2IdleTimeoutMs: 10_000, ...limits },
      logger,
      vouch,
    },
  );
  await new Promise<void>((resolve) => bare.listen(0, '127.0.0.1', resolve));
  return { port: (bare.address() as net.AddressInfo).port, close };
}

// ---- the attacks

describe('a connection that has not yet said which protocol it speaks', () => {
  it('when many clients connect in parallel and send nothing, then each is closed at the protocol-detection deadline', async () => {
    const clients = Array.from({ length: 30 }, () => rawClient(server.port));
    const closedAfter = await Promise.all(clients.map((client) => closedWithin(client.closed, DETECTION_MS + SLACK_MS)));
    for (const ms of closedAfter) {
      expect(ms).toBeGreaterThanOrEqual(DETECTION_MS - EARLY_MS);
      expect(ms).toBeLessThan(DETECTION_MS + SLACK_MS);
    }
  });

  it('when clients trickle the HTTP/2 preface a byte at a time, then they are closed at the same deadline, unanswered', async () => {
    const clients = Array.from({ length: 10 }, () => rawClient(server.port));
    for (const client of clients) {
      await client.connected;
      // 24 bytes at one every 100 ms would take 2.4 s: longer than the deadline.
      trickle(client.socket, PREFACE, 100);
    }
    const closedAfter = await Promise.all(clients.map((client) => closedWithin(client.closed, DETECTION_MS + SLACK_MS)));
    for (const [index, ms] of closedAfter.entries()) {
      expect(ms).toBeGreaterThanOrEqual(DETECTION_MS - EARLY_MS);
      expect(ms).toBeLessThan(DETECTION_MS + SLACK_MS);
      expect(clients[index]?.received().length).toBe(0);
    }
  });
});

describe('HTTP/1.1', () => {
  it('when clients trickle request headers byte by byte (slowloris), then each gets 408 and is closed at the headers deadline', async () => {
    const clients = Array.from({ length: 10 }, () => rawClient(server.port));
    for (const client of clients) {
      await client.connected;
      client.socket.write('GET /health HTTP/1.1\r\n');
      trickle(client.socket, 'X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n', 100);
    }
    const closedAfter = await Promise.all(clients.map((client) => closedWithin(client.closed, HEADERS_MS + SLACK_MS)));
    for (const [index, ms] of closedAfter.entries()) {
      expect(ms).toBeGreaterThanOrEqual(HEADERS_MS - EARLY_MS);
      expect(ms).toBeLessThan(HEADERS_MS + SLACK_MS);
      expect(clients[index]?.received().toString('latin1')).toMatch(/^HTTP\/1\.1 408 /);
    }
  });

  it('when REST and Connect requests send part of their body and stop, then each gets 408 and is closed at the request deadline', async () => {
    const requests = [
      'POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"usernameOrEmail"',
      `POST /${AuthService.typeName}/Login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"usernameOrEmail"`,
    ];
    const clients = requests.flatMap((request) =>
      Array.from({ length: 5 }, () => {
        const client = rawClient(server.port);
        client.socket.write(request);
        return client;
      }),
    );
    const closedAfter = await Promise.all(clients.map((client) => closedWithin(client.closed, REQUEST_MS + SLACK_MS)));
    for (const [index, ms] of closedAfter.entries()) {
      expect(ms).toBeGreaterThanOrEqual(REQUEST_MS - EARLY_MS);
      expect(ms).toBeLessThan(REQUEST_MS + SLACK_MS);
      expect(clients[index]?.received().toString('latin1')).toMatch(/^HTTP\/1\.1 408 /);
    }
  });

  it('when clients pipeline thousands of requests without reading the answers, then each connection is closed after at most 128 answers, and others are served meanwhile', async () => {
    // Each unanswered request used to be held by the process: gigabytes within seconds, then a
    // crash with V8 out of heap. Requests with a token take the slow path (rate limit,
    // authentication), which kept them in flight longest.
    const count = 2_000;
    const flood = 'GET /api/v1/auth/me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer abc\r\n\r\n'.repeat(count);
    const attackers = Array.from({ length: 4 }, () => pausedClient(server.port, flood));
    await sleep(1_000);
    const meanwhile = await fetch(`${server.baseUrl}/health`);
    expect(meanwhile.status).toBe(200);
    // Now read what the server sent: the connection has been closed, and the answers stop short.
    const outcomes = await Promise.all(attackers.map((attacker) => attacker.readToClose(SLACK_MS)));
    for (const { closed, statuses } of outcomes) {
      expect(closed).toBe(true);
      expect(statuses.length).toBeLessThanOrEqual(128);
    }
  });

  it('when clients pipeline file and compressed answers and close their connections, then nothing of the answers queued behind is kept', async () => {
    // Answers queued behind the one being written were never released when the connection
    // closed: each kept the file it was to send open (20,000 descriptors from one address
    // exhausted the process), or the Brotli compressor it was to write through (gigabytes).
    const fileHandles = () =>
      readdirSync('/proc/self/fd').filter((fd) => {
        try {
          return readlinkSync(`/proc/self/fd/${fd}`).endsWith('redoc.standalone.js');
        } catch {
          return false;
        }
      }).length;
    const before = fileHandles();
    const requests = ['GET /docs/assets/redoc.standalone.js HTTP/1.1\r\nHost: x\r\n\r\n', 'GET /console/console.js HTTP/1.1\r\nHost: x\r\nAccept-Encoding: br\r\n\r\n'];
    const sockets = requests.flatMap((request) =>
      Array.from({ length: 5 }, () => {
        const socket = net.connect({ port: server.port, host: '127.0.0.1' });
        cleanups.push(() => socket.destroy());
        socket.on('error', () => undefined);
        socket.pause();
        socket.write(request.repeat(20));
        return socket;
      }),
    );
    await sleep(1_000);
    for (const socket of sockets) socket.destroy();
    expect(await until('the files to be closed', () => (fileHandles() <= before ? true : undefined))).toBe(true);
    expect((await fetch(`${server.baseUrl}/health`)).status).toBe(200);
  });

  it('when a client pipelines a hundred requests in one write and reads the answers, then every one is answered, in order, on the same connection', async () => {
    const client = rawClient(server.port);
    const count = 100;
    client.socket.write('GET /health HTTP/1.1\r\nHost: x\r\n\r\n'.repeat(count));
    const answers = await until('every answer', () => {
      const statuses = statusLines(client.received());
      return statuses.length >= count ? statuses : undefined;
    });
    expect(answers).toEqual(Array.from({ length: count }, () => 'HTTP/1.1 200'));
    expect(client.socket.destroyed).toBe(false);
  });

  it('when a client pipelines large answers and stops reading, then the connection is closed once no answer has gone out for the request deadline', async () => {
    // ~6 MB of answers: more than the kernel's socket buffers hold for a peer that reads nothing.
    const count = 100;
    const attacker = pausedClient(server.port, 'GET /openapi.yaml HTTP/1.1\r\nHost: x\r\n\r\n'.repeat(count));
    await sleep(REQUEST_MS + SLACK_MS);
    const { closed, statuses } = await attacker.readToClose(SLACK_MS);
    expect(closed).toBe(true);
    expect(statuses.length).toBeLessThan(count);
  });

  it("when a malformed request follows a sound one in the same write, then the refusal is not sent as the sound one's answer, and the sound one can be sent again", async () => {
    // The refusal used to go out before the first request's answer had begun: the client read
    // "400 Malformed HTTP request" as the answer to its registration, which had not run, and did
    // not retry it (helper 58). Closing with nothing written is what RFC 9112 §9.3.2 has a client retry.
    const user = newUser('piped');
    const body = JSON.stringify({ username: user.username, email: user.email, password: user.password });
    const sound = `POST /api/v1/auth/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;
    for (const first of ['GET /health HTTP/1.1\r\nHost: x\r\n\r\n', sound]) {
      const client = rawClient(server.port);
      client.socket.write(`${first}GET /health HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n`);
      await closedWithin(client.closed, 5_000);
      // Either the sound request's own answer comes first, or none at all.
      expect(statusLines(client.received())[0] ?? 'nothing').toMatch(/^(nothing|HTTP\/1\.1 2\d\d)$/);
    }
    const again = await fetch(`${server.baseUrl}/api/v1/auth/register`, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
    expect(again.status).toBe(201);
  });

  it('when an answer closes the connection with requests pipelined behind it, then none of those is started (RFC 9112 §9.6)', async () => {
    // Found by an attacker (helper 184): the request behind an answer the drain had marked
    // `Connection: close` was started all the same, and its own answer, which no socket would
    // carry, was lost: a refresh rotated its token, and the client's retry of the token it still
    // held was taken for a replay, which ended the session (drain-keep-alive has that case).
    // Node's parser already stops at a client's own `Connection: close`; an answer the server
    // closes (the drain's, a refusal's) comes after the requests behind it were read.
    const started: string[] = [];
    const handler = (req: unknown, res: { end(): void; setHeader?: (name: string, value: string) => void }) => {
      const { url } = req as { url?: string };
      started.push(url ?? '');
      if (url !== '/first') {
        res.end();
        return;
      }
      res.setHeader?.('connection', 'close');
      setTimeout(() => res.end(), 50);
    };
    const { port, close } = await bareServer(handler, { http2MaxConcurrentStreams: 10, connectionsPerAddress: 10, http2StreamsPerAddress: 10 });
    try {
      const client = rawClient(port);
      client.socket.write(['/first', '/second', '/third'].map((path) => `GET ${path} HTTP/1.1\r\nHost: x\r\n\r\n`).join(''));
      expect(await closedWithin(client.closed, 5_000)).toBeLessThan(Number.POSITIVE_INFINITY);
      await sleep(200);
      expect({ started, answers: statusLines(client.received()) }).toEqual({ started: ['/first'], answers: ['HTTP/1.1 200'] });
    } finally {
      await close();
    }
  });

  it('when an HTTP/1.1 request has no Host or two, then 400 in the error envelope and the connection is closed; HTTP/1.0 may omit it', async () => {
    // RFC 9112 §3.2. Node answered a missing Host with a bare 400 and took the first of two,
    // which a proxy in front may route by the other (helper 58).
    // Node's parser also takes an `HTTP/2.0` request line over HTTP/1.1, which skipped the check (helper 65).
    const heads = [
      'GET /health HTTP/1.1\r\n\r\n',
      'GET /health HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n',
      'GET /health HTTP/1.1\r\nhost: x\r\nHOST: x\r\n\r\n',
      'GET /health HTTP/2.0\r\nHost: x\r\nHost: y\r\n\r\n',
      'GET /health HTTP/2.0\r\n\r\n',
    ];
    for (const head of heads) {
      const client = rawClient(server.port);
      client.socket.write(head);
      expect(await closedWithin(client.closed, 5_000), JSON.stringify(head)).toBeLessThan(Number.POSITIVE_INFINITY);
      const text = client.received().toString('latin1');
      expect(text, JSON.stringify(head)).toMatch(/^HTTP\/1\.1 400 /);
      expect(JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4))).toMatchObject({ success: false, error: { code: 'VALIDATION_ERROR' } });
    }
    const old = rawClient(server.port);
    old.socket.write('GET /health HTTP/1.0\r\n\r\n');
    await closedWithin(old.closed, 5_000);
    expect(old.received().toString('latin1')).toMatch(/^HTTP\/1\.1 200 /);
  });

  it('when an HTTP/1.0 request carries Transfer-Encoding, or a coding other than chunked alone is given, then 400 and the connection is closed; nothing after it is read', async () => {
    // RFC 9112 §6.1. Node read a chunked HTTP/1.0 body on a connection it kept open, and
    // `identity, chunked` (helper 97): framing a proxy in front may read otherwise (smuggling).
    const body = '{"usernameOrEmail":"x","password":"y"}';
    const chunked = `${body.length.toString(16)}\r\n${body}\r\n0\r\n\r\n`;
    const heads = [
      `POST /api/v1/auth/login HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n${chunked}`,
      `POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: identity, chunked\r\n\r\n${chunked}`,
    ];
    for (const head of heads) {
      const client = rawClient(server.port);
      client.socket.write(`${head}GET /public/info HTTP/1.1\r\nHost: x\r\n\r\n`);
      expect(await closedWithin(client.closed, 5_000), JSON.stringify(head)).toBeLessThan(Number.POSITIVE_INFINITY);
      expect(statusLines(client.received()), JSON.stringify(head)).toEqual(['HTTP/1.1 400']);
    }
  });

  it('when a body larger than the limit is declared, then 413 at once, with no 100 Continue, before a byte of it is sent, and the connection is closed', async () => {
    // Body-parser read all 99 MB before its 413, and Node invited them with 100 Continue (helper 97).
    for (const expect100 of ['', 'Expect: 100-continue\r\n']) {
      const client = rawClient(server.port);
      const started = performance.now();
      client.socket.write(`POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 99999999\r\n${expect100}\r\n`);
      const closedAfter = await closedWithin(client.closed, 5_000);
      expect(closedAfter, JSON.stringify(expect100)).toBeLessThan(Number.POSITIVE_INFINITY);
      expect(performance.now() - started).toBeLessThan(5_000);
      const text = client.received().toString('latin1');
      expect(text, JSON.stringify(expect100)).not.toMatch(/100 Continue/);
      expect(statusLines(client.received())).toEqual(['HTTP/1.1 413']);
      expect(text).toMatch(/cache-control: no-store/i);
    }
    // A body within the limit is still invited.
    const small = rawClient(server.port);
    small.socket.write('POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n');
    await until('100 Continue', () => (small.received().toString('latin1').includes('100 Continue') ? true : undefined));
    small.socket.write('{}');
    await closedWithin(small.closed, 5_000);
    expect(statusLines(small.received())).toEqual(['HTTP/1.1 100', 'HTTP/1.1 400']);
  });

  it('when a gRPC-Web or Connect call declares a body larger than the limit, then it is refused at once in its own protocol (resource_exhausted), not after the body or the request deadline', async () => {
    // Found by an attacker (helper 180): gRPC-Web waited for the whole declared body and answered
    // 408 in REST's envelope at the request deadline.
    for (const [type, refused] of [
      ['application/grpc-web+proto', /grpc-status: 8/i],
      ['application/proto', /^HTTP\/1\.1 429 /],
    ] as const) {
      const client = rawClient(server.port);
      const started = performance.now();
      client.socket.write(`POST /${AuthService.typeName}/Login HTTP/1.1\r\nHost: x\r\nContent-Type: ${type}\r\nContent-Length: 1000000000\r\n\r\n`);
      client.socket.write(Buffer.from([0, 0, 0, 0, 5, 0x0a, 3, 0x61, 0x62, 0x63]));
      await until(`the refusal of ${type}`, () => (client.received().length > 0 ? true : undefined));
      expect(client.received().toString('latin1'), type).toMatch(refused);
      expect(performance.now() - started, type).toBeLessThan(REQUEST_MS);
    }
  });

  it('when a body of no declared length (chunked) keeps coming past the limit, plain or gzip, then 413 in the envelope as soon as it passes, and the connection is closed', async () => {
    // body-parser stopped parsing at the limit but read the rest to its end before its 413: a
    // client that kept sending was read at full line rate until the request timeout, then got
    // 408 after 60 s (helper 169). An RPC path refused the same at once.
    // Larger than the kernels' buffers on both sides take before the server reads: a server that
    // reads a body to its end takes all of it before it answers.
    const spaces = Buffer.alloc(16 * 1024 * 1024, 0x20);
    // Random bytes do not compress: under gzip as many are sent as are inflated.
    const gzipped = gzipSync(randomBytes(16 * 1024 * 1024), { level: 1 });
    for (const coding of ['', 'Content-Encoding: gzip\r\n']) {
      const body = coding === '' ? spaces : gzipped;
      const client = rawClient(server.port);
      await client.connected;
      const started = performance.now();
      client.socket.write(`POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n${coding}\r\n`);
      let sent = 0;
      const connection = { open: true };
      void client.closed.then(() => (connection.open = false));
      // 64 KB chunks, as fast as the connection takes them, until the answer comes, for 5 s at most.
      // (Written on without waiting for the kernel to take them, a busy CI machine's slower server
      // found the whole body queued in this process before its answer came.)
      while (connection.open && client.received().length === 0 && sent < body.length && performance.now() - started < 5_000) {
        const piece = body.subarray(sent, sent + 0x10000);
        if (!client.socket.write(Buffer.concat([Buffer.from(`${piece.length.toString(16)}\r\n`), piece, Buffer.from('\r\n')]))) {
          await Promise.race([once(client.socket, 'drain'), client.closed, sleep(100)]);
        }
        sent += piece.length;
        await new Promise((resolve) => setImmediate(resolve));
      }
      // What the kernel took, not what still waits in this process's buffer.
      const taken = sent - client.socket.writableLength;
      expect(await closedWithin(client.closed, 5_000), JSON.stringify(coding)).toBeLessThan(Number.POSITIVE_INFINITY);
      expect(statusLines(client.received()), JSON.stringify(coding)).toEqual(['HTTP/1.1 413']);
      expect(client.received().toString('latin1')).toMatch(/"PAYLOAD_TOO_LARGE"/);
      expect(performance.now() - started, JSON.stringify(coding)).toBeLessThan(3_000);
      expect(taken, JSON.stringify(coding)).toBeLessThan(8 * 1024 * 1024);
    }
  });

  it.each([
    // One byte of body a chunk, each size line carrying a 1,000-byte extension.
    ['chunk extensions', Buffer.from(`1;x=${'a'.repeat(1_000)}\r\n \r\n`.repeat(60))],
    // One byte of body a chunk, each size written with 60,000 leading zeros.
    ['leading zeros', Buffer.from(`${'0'.repeat(60_000)}1\r\n \r\n`)],
  ])(
    'when a chunked body is padded in its framing (%s), then REST refuses it with 413 and Connect ends it once a bounded number of bytes has been read',
    async (_padding, piece) => {
      // Found by an attacker (helper 180): the limit counted the body's own bytes, which the parser
      // hands over with the framing stripped: 1.6 GB read before a 413 with extensions, and with
      // leading zeros until the request deadline (408), never refused.
      for (const [path, expected] of [
        ['/api/v1/auth/login', /^HTTP\/1\.1 413$/],
        ['/arcana.auth.v1.AuthService/Login', /^(HTTP\/1\.1 429|no answer)$/],
      ] as const) {
        const client = rawClient(server.port);
        await client.connected;
        const connection = { open: true };
        void client.closed.then(() => (connection.open = false));
        const started = performance.now();
        client.socket.write(`POST ${path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n`);
        while (connection.open && client.received().length === 0 && performance.now() - started < 5_000) {
          if (!client.socket.write(piece)) await Promise.race([once(client.socket, 'drain'), sleep(50)]);
          await new Promise((resolve) => setImmediate(resolve));
        }
        await closedWithin(client.closed, 8_000);
        const status = statusLines(client.received())[0] ?? 'no answer';
        expect({ path, status }).toEqual({ path, status: expect.stringMatching(expected) });
        // The body limit is 100 KB; the kernels' buffers on both sides hold several MB more.
        expect(client.socket.bytesWritten, path).toBeLessThan(16 * 1024 * 1024);
      }
    },
    30_000,
  );

  it('when answers are pipelined ahead of a chunked body over the limit and the client reads them slowly, then every answer arrives, then the 413, then the end of the connection', async () => {
    // Found by an attacker (helper 176): the refused connection was destroyed a second after its
    // end was asked for, whether or not the answers ahead of the 413 had left; a slow reader lost
    // them (and the 413) to the reset.
    const pipelined = 20;
    const body = Buffer.alloc(2_000_000, 0x78);
    const chunks: Buffer[] = [];
    for (let at = 0; at < body.length; at += 16_384) {
      const part = body.subarray(at, at + 16_384);
      chunks.push(Buffer.from(`${part.length.toString(16)}\r\n`), part, Buffer.from('\r\n'));
    }
    // An address of its own: forty answers would spend much of another's rate limit.
    const client = rawClient(server.port, { localAddress: '127.0.0.93' });
    client.socket.write(
      Buffer.concat([
        Buffer.from('GET /openapi.yaml HTTP/1.1\r\nHost: x\r\nAccept-Encoding: identity\r\n\r\n'.repeat(pipelined)),
        Buffer.from('POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n6\r\n{"a":"\r\n'),
        ...chunks,
        Buffer.from('0\r\n\r\n'),
      ]),
    );
    // A read, then 10 ms before the next (about 6 MB/s, slower on a loaded machine).
    client.socket.on('data', () => {
      client.socket.pause();
      setTimeout(() => client.socket.resume(), 10);
    });
    expect(await closedWithin(client.closed, 30_000)).toBeLessThan(Number.POSITIVE_INFINITY);
    const statuses = statusLines(client.received());
    expect(statuses.filter((status) => status === 'HTTP/1.1 200')).toHaveLength(pipelined);
    expect(statuses.at(-1)).toBe('HTTP/1.1 413');
  }, 60_000);

  it('when a request carries two Authorization headers, whichever comes first, then 400 in the error envelope over REST, invalid_argument over Connect; one is served', async () => {
    // Node kept the first and dropped the other unseen, where a proxy in front may have authorized
    // the request by the other (helper 76).
    const user = await register(server);
    const token = `Bearer ${user.accessToken}`;
    const requests = [
      (authorizations: string) => `GET /api/v1/auth/me HTTP/1.1\r\nHost: x\r\n${authorizations}connection: close\r\n\r\n`,
      (authorizations: string) =>
        `POST /${AuthService.typeName}/GetCurrentUser HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 2\r\n${authorizations}connection: close\r\n\r\n{}`,
    ];
    for (const request of requests) {
      for (const [authorizations, status] of [
        [`Authorization: ${token}\r\nauthorization: Bearer forged\r\n`, 400],
        [`authorization: Bearer forged\r\nAUTHORIZATION: ${token}\r\n`, 400],
        [`Authorization: ${token}\r\n`, 200],
      ] as const) {
        const client = rawClient(server.port);
        client.socket.write(request(authorizations));
        await closedWithin(client.closed, 5_000);
        const text = client.received().toString('latin1');
        expect(text, authorizations).toMatch(new RegExp(`^HTTP/1\\.1 ${status} `));
        // Each in its own protocol's words: a REST envelope read by a Connect client was `internal` (helper 86).
        const refusal = request === requests[0] ? { success: false, error: { code: 'VALIDATION_ERROR' } } : { code: 'invalid_argument' };
        if (status === 400) expect(JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4))).toMatchObject(refusal);
      }
    }
  });

  it('when a registration carries two Idempotency-Key headers, then 400 over REST and invalid_argument over gRPC, and no account is made', async () => {
    // Node joined them into one key, `a, b`: neither the key the client meant nor the one a proxy
    // in front may have kept.
    const rest = newUser('twokeys_rest');
    const body = JSON.stringify(rest);
    const client = rawClient(server.port);
    client.socket.write(
      `POST /api/v1/auth/register HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nIdempotency-Key: key-a\r\nidempotency-key: key-b\r\nconnection: close\r\n\r\n${body}`,
    );
    await closedWithin(client.closed, 5_000);
    const text = client.received().toString('latin1');
    expect(text).toMatch(/^HTTP\/1\.1 400 /);
    expect(JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4))).toMatchObject({
      success: false,
      error: { code: 'VALIDATION_ERROR', message: 'A request must carry one Idempotency-Key header, not several' },
    });

    const grpcUser = newUser('twokeys_grpc');
    const session = h2Session(server.port);
    const grpcStatus = await new Promise<unknown>((resolve, reject) => {
      const stream = session.request({
        ':method': 'POST',
        ':path': `/${AuthService.typeName}/Register`,
        'content-type': 'application/grpc+json',
        te: 'trailers',
        'idempotency-key': ['key-a', 'key-b'],
      });
      let status: unknown;
      stream.on('response', (head) => (status ??= head['grpc-status']));
      stream.on('trailers', (head: http2.IncomingHttpHeaders) => (status ??= head['grpc-status']));
      stream.on('error', reject);
      stream.on('close', () => resolve(status));
      stream.resume();
      const message = Buffer.from(JSON.stringify(grpcUser));
      const envelope = Buffer.alloc(5);
      envelope.writeUInt32BE(message.length, 1);
      stream.end(Buffer.concat([envelope, message]));
    });
    expect(grpcStatus).toBe('3');
    const made = await server.sql<{ username: string }>('SELECT username FROM users WHERE username IN ($1, $2)', [rest.username, grpcUser.username]);
    expect(made).toEqual([]);
  });

  it('when a Host is not a host name or address, then 400 in the error envelope on every REST path, invalid_argument on RPC paths; IPv6 literals and ports are served', async () => {
    // connect-node builds each call's URL from it: `[` was a bare 400 there, unlogged (helper 69).
    for (const host of ['[', '[::1', 'a b', 'user@host', 'host:port', 'ho%zzst', 'localhost:99999', '999.1.1.1', '1.2.3.4.5', '4294967296']) {
      for (const path of ['/health', `/${Health.typeName}/Check`]) {
        const client = rawClient(server.port);
        client.socket.write(`POST ${path} HTTP/1.1\r\nHost: ${host}\r\ncontent-type: application/grpc-web+proto\r\ncontent-length: 5\r\n\r\n\0\0\0\0\0`);
        expect(await closedWithin(client.closed, 5_000), host).toBeLessThan(Number.POSITIVE_INFINITY);
        const text = client.received().toString('latin1');
        if (path === '/health') {
          expect(text, `${host} ${path}`).toMatch(/^HTTP\/1\.1 400 /);
          expect(JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4))).toMatchObject({ success: false, error: { code: 'VALIDATION_ERROR' } });
        } else {
          // gRPC-Web's trailers-only answer: a REST 400 read as `internal` by its clients (helper 86).
          expect(text, `${host} ${path}`).toMatch(/^HTTP\/1\.1 200 /);
          expect(text, `${host} ${path}`).toMatch(/\r\ngrpc-status: 3\r\n/);
          expect(text, `${host} ${path}`).toMatch(/\r\ngrpc-message: The%20Host%20header%20/);
        }
      }
    }
    for (const host of ['[::1]:8080', 'api.example.com', '127.0.0.1:1', 'xn--bcher-kva.example', 'my_service:50051', 'Example.COM.', 'localhost:']) {
      const client = rawClient(server.port);
      client.socket.write(`GET /health HTTP/1.1\r\nHost: ${host}\r\nconnection: close\r\n\r\n`);
      await closedWithin(client.closed, 5_000);
      expect(client.received().toString('latin1'), host).toMatch(/^HTTP\/1\.1 200 /);
    }
  });

  it('when a keep-alive connection idles after its response, then it is closed at the keep-alive deadline', async () => {
    const client = rawClient(server.port);
    client.socket.write('GET /health HTTP/1.1\r\nHost: x\r\n\r\n');
    await until('the response', () => (client.received().includes('{"status":"ok"}') ? true : undefined));
    const answeredAt = performance.now();
    const closedAt = await closedWithin(
      client.closed.then(() => performance.now()),
      KEEP_ALIVE_MS + KEEP_ALIVE_BUFFER_MS + SLACK_MS,
    );
    expect(client.received().toString('latin1')).toMatch(/^HTTP\/1\.1 200 /);
    expect(closedAt - answeredAt).toBeGreaterThanOrEqual(KEEP_ALIVE_MS - EARLY_MS);
    expect(closedAt - answeredAt).toBeLessThan(KEEP_ALIVE_MS + KEEP_ALIVE_BUFFER_MS + SLACK_MS);
  });
});

describe('HTTP/2 (h2c)', () => {
  it('when a client asks a reflection stream many questions, ends its half and never opens its receive window, then the stream is reset with CANCEL within a few request deadlines, as an untaken unary answer is', async () => {
    // Found by an attacker (helper 179): the streaming handler waits for its first write to
    // drain, so it never ended its answer, and only ended answers were swept: the stream, and
    // its session (no idle timer while a stream is open), stayed for ever; 2 000 of them held 400 MB.
    const session = http2.connect(`http://127.0.0.1:${server.port}`, { settings: { initialWindowSize: 0 } });
    session.on('error', () => undefined);
    cleanups.push(() => session.destroy());
    const outcomes = Array.from(
      { length: 3 },
      () =>
        new Promise<number>((resolve) => {
          const { stream, questions } = reflectionStream(session, 200);
          stream.once('close', () => resolve(stream.rstCode));
          stream.end(questions);
        }),
    );
    const giveUp = sleep(6 * REQUEST_MS + SLACK_MS).then(() => 'still open' as const);
    const codes = await Promise.all(outcomes.map((outcome) => Promise.race([outcome, giveUp])));
    expect(codes).toEqual([http2.constants.NGHTTP2_CANCEL, http2.constants.NGHTTP2_CANCEL, http2.constants.NGHTTP2_CANCEL]);
  }, 30_000);

  it('when sessions open no stream and only send PINGs, then each gets GOAWAY NO_ERROR and is closed at the idle deadline', async () => {
    const results = await Promise.all(
      Array.from({ length: 5 }, async () => {
        const startedAt = performance.now();
        const session = h2Session(server.port);
        // gRPC keepalive: PINGs are not activity.
        const pings = setInterval(() => {
          if (!session.closed && !session.destroyed) session.ping(() => undefined);
        }, 200);
        cleanups.push(() => clearInterval(pings));
        const goaway = new Promise<number>((resolve) => session.once('goaway', (code: number) => resolve(code)));
        const closed = new Promise<number>((resolve) => session.once('close', () => resolve(performance.now() - startedAt)));
        const closedAfter = await closedWithin(closed, IDLE_MS + SLACK_MS);
        return { closedAfter, goaway: await Promise.race([goaway, Promise.resolve(-1)]) };
      }),
    );
    for (const { closedAfter, goaway } of results) {
      expect(closedAfter).toBeGreaterThanOrEqual(IDLE_MS - EARLY_MS);
      expect(closedAfter).toBeLessThan(IDLE_MS + SLACK_MS);
      expect(goaway).toBe(NGHTTP2_NO_ERROR);
    }
  });

  it('when a raw client ignores the GOAWAY and the FIN after it and keeps writing, then its socket is closed anyway', async () => {
    // allowHalfOpen: the client does not close its side when the server's FIN arrives.
    const client = rawClient(server.port, { allowHalfOpen: true });
    client.socket.write(Buffer.concat([Buffer.from(PREFACE), frame(FRAME.settings, 0, 0)]));
    await until('GOAWAY', () => framesOf(client).find((f) => f.type === FRAME.goaway), IDLE_MS + SLACK_MS);
    const ping = frame(6, 0, 0, Buffer.alloc(8));
    const pings = setInterval(() => {
      if (!client.socket.destroyed) client.socket.write(ping);
    }, 250);
    cleanups.push(() => clearInterval(pings));
    const closedAfter = await closedWithin(client.closed, IDLE_MS + LINGER_MS + SLACK_MS);
    expect(
      framesOf(client)
        .find((f) => f.type === FRAME.goaway)
        ?.payload.readUInt32BE(4),
    ).toBe(NGHTTP2_NO_ERROR);
    expect(closedAfter).toBeLessThan(IDLE_MS + LINGER_MS + SLACK_MS);
  });

  it('when streams never send their request body, then each is reset with CANCEL at the request deadline', async () => {
    const session = h2Session(server.port);
    await new Promise((resolve) => session.once('remoteSettings', resolve));
    const stalled = Array.from({ length: MAX_STREAMS }, () => stalledStream(session));
    const results = await Promise.all(
      stalled.map(({ closed }) =>
        closedWithin(
          closed.then((r) => r.afterMs),
          REQUEST_MS + SLACK_MS,
        ),
      ),
    );
    for (const ms of results) {
      expect(ms).toBeGreaterThanOrEqual(REQUEST_MS - EARLY_MS);
      expect(ms).toBeLessThan(REQUEST_MS + SLACK_MS);
    }
    expect(stalled.map(({ stream }) => stream.rstCode)).toEqual(Array(MAX_STREAMS).fill(NGHTTP2_CANCEL));
  });

  it('when a stream is answered before its body has been sent (an unknown path, a path of an unknown method), then the answer arrives and the stream is closed with NO_ERROR at once, not held to the request deadline', async () => {
    const session = h2Session(server.port);
    await new Promise((resolve) => session.once('remoteSettings', resolve));
    // More than the stream's initial window (64 KiB): the rest of it waits for the server to read.
    const body = Buffer.alloc(200_000, 1);
    const answers = await Promise.all(
      ['/nope/x', `/${AuthService.typeName}/NoSuchMethod`, '/'].map(
        (path) =>
          new Promise<{ path: string; status: number | undefined; rstCode: number; afterMs: number }>((resolve) => {
            const startedAt = performance.now();
            const stream = session.request({ ':method': 'POST', ':path': path, 'content-type': 'application/grpc' }, { endStream: false });
            let status: number | undefined;
            stream.on('response', (headers) => (status = headers[':status']));
            stream.on('error', () => undefined);
            stream.resume();
            stream.end(body);
            stream.once('close', () => resolve({ path, status, rstCode: stream.rstCode, afterMs: performance.now() - startedAt }));
          }),
      ),
    );
    for (const answer of answers) {
      expect(answer).toEqual({ ...answer, status: 404, rstCode: NGHTTP2_NO_ERROR });
      expect(answer.afterMs).toBeLessThan(REQUEST_MS / 2);
    }
  });

  it('when a health check is refused for its size while its client still has most of the body to send, and the client then closes, then the server closes at once, not at the shutdown cut', async () => {
    // The server answered resource_exhausted and reset the stream, but Node never ended a stream
    // whose request side had not arrived, so neither it nor its session ever closed: the socket
    // sat in CLOSE-WAIT, the client's GOAWAY unread, held for good, and a shutdown waited for its
    // cut (a test server's close outlived its hook's minute). A health check takes 4 KiB; this
    // one sends 90 KB of gzip frames (Brotli is refused for its encoding before the body is read).
    const own = await startTestServer({ SHUTDOWN_TIMEOUT_MS: '30000' });
    const raw = new ProtocolClient(own.baseUrl);
    let closed = false;
    try {
      const zeros = compress(new Uint8Array(64 * 1024), 'gzip');
      const envelope = Buffer.alloc(5 + zeros.length);
      envelope[0] = 1;
      envelope.writeUInt32BE(zeros.length, 1);
      envelope.set(zeros, 5);
      const body = Buffer.concat(Array.from({ length: Math.floor(90_000 / envelope.length) }, () => envelope));
      const answer = await raw.rpc('grpc', `${Health.typeName}/Check`, new Uint8Array(), { headers: { 'grpc-encoding': 'gzip' }, frame: () => body });
      expect(answer.code).toBe('resource_exhausted');
      raw.close();
      const started = performance.now();
      await own.close();
      closed = true;
      expect(performance.now() - started).toBeLessThan(REQUEST_MS + 1_000 + SLACK_MS);
    } finally {
      raw.close();
      if (!closed) await own.close();
    }
  });

  it('when a client advertises a zero receive window and never reads, then each answered stream is reset with CANCEL within two request deadlines', async () => {
    const client = await windowedClient(server.port, 0);
    const sentAt = performance.now();
    // Complete health checks: the answers' HEADERS go out, their DATA never can.
    client.socket.write(Buffer.concat([frame(FRAME.settings, FLAG.ack, 0), ...healthChecks(MAX_STREAMS)]));
    const answered = await until("the answers' HEADERS", () => (framesOf(client).filter((f) => f.type === FRAME.headers).length >= MAX_STREAMS ? true : undefined));
    expect(answered).toBe(true);
    const reset = await until('every stream reset', () => (rstCodes(framesOf(client)).length >= MAX_STREAMS ? rstCodes(framesOf(client)) : undefined), 2 * REQUEST_MS + SLACK_MS);
    expect(performance.now() - sentAt).toBeGreaterThanOrEqual(REQUEST_MS - EARLY_MS);
    expect(reset).toEqual(Array(MAX_STREAMS).fill(NGHTTP2_CANCEL));
  });

  it('when a zero-window client keeps its connection moving with PINGs, then its untaken answers are still reset, after at most five request deadlines', async () => {
    const client = await windowedClient(server.port, 0);
    client.socket.write(Buffer.concat([frame(FRAME.settings, FLAG.ack, 0), ...healthChecks(3)]));
    // Each PING is answered with an acknowledgement: the connection moves, no answer does.
    const pings = setInterval(() => client.socket.write(frame(FRAME.ping, 0, 0, Buffer.alloc(8))), REQUEST_MS / 3);
    cleanups.push(() => clearInterval(pings));
    const reset = await until('every stream reset', () => (rstCodes(framesOf(client)).length >= 3 ? rstCodes(framesOf(client)) : undefined), 6 * REQUEST_MS + SLACK_MS);
    clearInterval(pings);
    expect(reset).toEqual(Array(3).fill(NGHTTP2_CANCEL));
  });

  it('when a client takes an answer slowly, a little at each request deadline and beyond two of them, then it gets all of it', async () => {
    await Promise.all(Array.from({ length: 10 }, (_, i) => register(server, newUser(`slow${i}`))));
    const login = await fetch(`${server.baseUrl}/api/v1/auth/login`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ usernameOrEmail: ADMIN.username, password: ADMIN.password }),
    });
    const { data } = (await login.json()) as { data: { tokens: { accessToken: string } } };
    // A raw client, as Node's own takes in whatever arrives: a 256-byte window, and 256 bytes
    // more every REQUEST_MS / 3, for a page of users (several KB): many request deadlines.
    const client = await windowedClient(server.port, 256);
    const headers = headerBlock([
      [':method', 'POST'],
      [':scheme', 'http'],
      [':path', `/${UserService.typeName}/ListUsers`],
      [':authority', 'slow-reader'],
      ['content-type', 'application/json'],
      ['authorization', `Bearer ${data.tokens.accessToken}`],
    ]);
    const startedAt = performance.now();
    client.socket.write(
      Buffer.concat([frame(FRAME.settings, FLAG.ack, 0), frame(FRAME.headers, FLAG.endHeaders, 1, headers), frame(FRAME.data, FLAG.endStream, 1, Buffer.from('{"perPage":100}'))]),
    );
    const more = Buffer.alloc(4);
    more.writeUInt32BE(256);
    const reader = setInterval(() => client.socket.write(frame(FRAME.windowUpdate, 0, 1, more)), REQUEST_MS / 3);
    cleanups.push(() => clearInterval(reader));
    const answer = await until(
      'the end of the answer or a reset',
      () => framesOf(client).find((f) => f.streamId === 1 && ((f.type === FRAME.data && (f.flags & FLAG.endStream) !== 0) || f.type === FRAME.rstStream)),
      20 * REQUEST_MS,
    );
    clearInterval(reader);
    expect(answer.type).toBe(FRAME.data);
    expect(performance.now() - startedAt).toBeGreaterThan(2 * REQUEST_MS);
    const body = Buffer.concat(
      framesOf(client)
        .filter((f) => f.streamId === 1 && f.type === FRAME.data)
        .map((f) => f.payload),
    );
    expect((JSON.parse(body.toString('utf8')) as { users: unknown[] }).users.length).toBeGreaterThanOrEqual(10);
  });

  it("when a 4 KB header put once into HPACK's table is referred to 120 times per request, then those streams are reset before any handler starts", async () => {
    // Found by an attacker (helper 203): Node enforces its 64 KB header-list default only when the
    // setting is given, so each such stream handed 480 KB of header pairs to the application and
    // held them until the request deadline (three addresses took the monolith to 1.09 GB).
    let started = 0;
    const handler = (_req: unknown, res: { end(): void }) => {
      started += 1;
      res.end();
    };
    const { port, close } = await bareServer(handler, { http2MaxConcurrentStreams: 100, connectionsPerAddress: 10, http2StreamsPerAddress: 100 });
    try {
      const client = rawClient(port);
      client.socket.write(Buffer.concat([Buffer.from(PREFACE), frame(FRAME.settings, 0, 0)]));
      await until('SETTINGS', () => settingsOf(framesOf(client)));
      // HPACK's integer encoding of a string length (7-bit prefix), and a literal that is added
      // to the dynamic table, where it becomes index 62.
      const length = (n: number) => (n < 127 ? Buffer.from([n]) : Buffer.from([127, ((n - 127) & 127) | 128, (n - 127) >> 7]));
      const indexed = Buffer.concat([Buffer.from([0x40, 5]), Buffer.from('x-big'), length(4_000), Buffer.alloc(4_000, 0x62)]);
      const referred = Buffer.alloc(120, 0x80 | 62);
      const path = `/${Health.typeName}/Check`;
      client.socket.write(
        Buffer.concat([
          frame(FRAME.settings, FLAG.ack, 0),
          frame(FRAME.headers, FLAG.endHeaders | FLAG.endStream, 1, Buffer.concat([requestHeaders(path), indexed])),
          ...Array.from({ length: 10 }, (_, i) => frame(FRAME.headers, FLAG.endHeaders | FLAG.endStream, 3 + 2 * i, Buffer.concat([requestHeaders(path), referred]))),
        ]),
      );
      const reset = await until('the streams over the bound to be reset', () => {
        const streams = new Set(
          framesOf(client)
            .filter((f) => f.type === FRAME.rstStream || f.type === FRAME.goaway)
            .map((f) => f.streamId),
        );
        return streams.size >= 10 || framesOf(client).some((f) => f.type === FRAME.goaway) ? streams : undefined;
      });
      expect(reset.size).toBeGreaterThan(0);
      await sleep(200);
      // The first stream (one 4 KB header) is within the bound and answered; none of the others starts.
      expect(started).toBe(1);
    } finally {
      for (const cleanup of cleanups.splice(0)) cleanup();
      await close();
    }
  });

  it('when a client opens hundreds of streams and resets each at once (rapid reset), then the streams reset before their turn start no handler', async () => {
    let started = 0;
    const handler = (_req: unknown, res: { end(): void }) => {
      started += 1;
      res.end();
    };
    const streams = 300;
    const { port, close } = await bareServer(handler, { http2MaxConcurrentStreams: streams, connectionsPerAddress: 10, http2StreamsPerAddress: streams });
    try {
      const client = rawClient(port);
      client.socket.write(Buffer.concat([Buffer.from(PREFACE), frame(FRAME.settings, 0, 0)]));
      await until('SETTINGS', () => settingsOf(framesOf(client)));
      const cancel = Buffer.alloc(4);
      cancel.writeUInt32BE(NGHTTP2_CANCEL);
      const resets = Array.from({ length: streams }, (_, i) => [
        frame(FRAME.headers, FLAG.endHeaders, 1 + 2 * i, requestHeaders(`/${AuthService.typeName}/Login`)),
        frame(FRAME.rstStream, 0, 1 + 2 * i, cancel),
      ]);
      client.socket.write(Buffer.concat([frame(FRAME.settings, FLAG.ack, 0), ...resets.flat()]));
      await sleep(500);
      // Those of the first turn start (src/server.ts starts 16 per turn of the event loop), while
      // their streams are still open; before, every one started after its client had reset it.
      expect(started).toBeGreaterThan(0);
      expect(started).toBeLessThan(streams / 4);
    } finally {
      for (const cleanup of cleanups.splice(0)) cleanup();
      await close();
    }
  });

  it('when one address resets streams before they start on connection after connection (rotating under nghttp2’s 1 000 per connection), then its connections are closed and refused, and another address is answered at once', async () => {
    // Before, every reset stream waited in the turn gate, each took one of a turn's 16 places,
    // and each turn copied the backlog: 150 such connections kept /health unanswered for minutes,
    // at 3 GB of RSS (helper 156). The attacker is 127.0.0.77; this file's other requests come
    // from 127.0.0.1, which the attacker's spent budget does not touch.
    const cancel = Buffer.alloc(4);
    cancel.writeUInt32BE(NGHTTP2_CANCEL);
    const headers = requestHeaders(`/${AuthService.typeName}/Login`);
    const burst = Buffer.concat([
      Buffer.from(PREFACE),
      frame(FRAME.settings, 0, 0),
      // Every other request complete in its HEADERS (END_STREAM): Node hands those over only after
      // the whole write is read, already reset.
      ...Array.from({ length: 900 }, (_, i) => [
        frame(FRAME.headers, FLAG.endHeaders | (i % 2 === 0 ? FLAG.endStream : 0), 1 + 2 * i, headers),
        frame(FRAME.rstStream, 0, 1 + 2 * i, cancel),
      ]).flat(),
    ]);
    const connections = 150;
    let next = 0;
    const calmedOrRefused: boolean[] = [];
    const worker = async () => {
      while (next < connections) {
        next += 1;
        const client = rawClient(server.port, { localAddress: '127.0.0.77' });
        const outcome = Promise.race([client.closed.then(() => true), sleep(1_000).then(() => false)]);
        client.socket.write(burst);
        // Closed by the server: refused at once, or GOAWAY ENHANCE_YOUR_CALM (11) then closed.
        const closedByServer = await outcome;
        const goaway = framesOf(client).find((f) => f.type === FRAME.goaway);
        calmedOrRefused.push(closedByServer && (goaway === undefined || goaway.payload.readUInt32BE(4) === 11));
        client.socket.destroy();
      }
    };
    const startedAt = performance.now();
    await Promise.all(Array.from({ length: 4 }, worker));
    const attackMs = performance.now() - startedAt;
    // From the budget's end on, every connection of the attacker is closed by the server.
    expect(calmedOrRefused.slice(-100).every(Boolean)).toBe(true);
    const healthStarted = performance.now();
    const res = await fetch(`${server.baseUrl}/health`);
    expect(res.status).toBe(200);
    expect({ healthMs: performance.now() - healthStarted < 1_000, attackMs: attackMs < 60_000 }).toEqual({ healthMs: true, attackMs: true });
  });

  it('when one address resets its streams and then its TCP connection, burst after burst, then its streams are counted all the same and it is refused', async () => {
    // Streams complete in their HEADERS reach the handler only after the read: when their
    // connection is gone by then, the address is the one their session had when it began (helper
    // 159 saw such streams counted under no address; this machine's loopback did not reproduce
    // the timing, so this guards the budget against the connection's reset, not that order).
    const cancel = Buffer.alloc(4);
    cancel.writeUInt32BE(NGHTTP2_CANCEL);
    const burst = Buffer.concat([
      Buffer.from(PREFACE),
      frame(FRAME.settings, 0, 0),
      ...Array.from({ length: 900 }, (_, i) => [
        frame(FRAME.headers, FLAG.endHeaders | FLAG.endStream, 1 + 2 * i, requestHeaders(`/${Health.typeName}/Check`)),
        frame(FRAME.rstStream, 0, 1 + 2 * i, cancel),
      ]).flat(),
    ]);
    for (let index = 0; index < 6; index += 1) {
      await new Promise<void>((resolve) => {
        const socket = net.connect({ port: server.port, host: '127.0.0.1', localAddress: '127.0.0.81' });
        socket.on('error', () => undefined);
        socket.once('close', () => resolve());
        socket.once('connect', () => socket.write(burst, () => socket.resetAndDestroy()));
      });
    }
    await sleep(200);
    // Refused: closed before a byte of the server's SETTINGS.
    const probe = rawClient(server.port, { localAddress: '127.0.0.81' });
    probe.socket.write(Buffer.concat([Buffer.from(PREFACE), frame(FRAME.settings, 0, 0)]));
    const closedMs = await closedWithin(probe.closed, 2_000);
    expect({ refused: closedMs < 2_000 && probe.received().length === 0 }).toEqual({ refused: true });
  });

  it('when callers of an internal layer’s port reset streams before they start, then one without the internal secret is closed and refused, and one presenting it is not', async () => {
    // A layer port caps no address (its peers are the layers above), and a controller cancels
    // internal calls whose clients went away: only callers without the secret are counted. Helper
    // 156 took a service layer from 153 MB to 2.3 GB this way, without the secret.
    const secret = 'layer-secret';
    const { port, close } = await bareServer(
      // '/slow' answers after 300 ms, as a call to the database would.
      (req, res) => void sleep((req as { url?: string }).url === '/slow' ? 300 : 0).then(() => res.end()),
      { http2MaxConcurrentStreams: 10_000, connectionsPerAddress: 0, http2StreamsPerAddress: 0 },
      undefined,
      presentsSecret(secret),
    );
    try {
      const cancel = Buffer.alloc(4);
      cancel.writeUInt32BE(NGHTTP2_CANCEL);
      const burst = (extra: [string, string][]) =>
        Buffer.concat([
          Buffer.from(PREFACE),
          frame(FRAME.settings, 0, 0),
          ...Array.from({ length: 900 }, (_, i) => [
            frame(FRAME.headers, FLAG.endHeaders | FLAG.endStream, 1 + 2 * i, requestHeaders('/x', extra)),
            frame(FRAME.rstStream, 0, 1 + 2 * i, cancel),
          ]).flat(),
        ]);
      /** Whether the server closed each of `count` connections from `localAddress` within 1 s of its burst. */
      const closedByServer = async (localAddress: string, extra: [string, string][], count: number) => {
        const closed: boolean[] = [];
        for (let index = 0; index < count; index += 1) {
          const client = rawClient(port, { localAddress });
          const outcome = Promise.race([client.closed.then(() => true), sleep(1_000).then(() => false)]);
          client.socket.write(burst(extra));
          closed.push(await outcome);
          client.socket.destroy();
        }
        return closed;
      };
      // The layer above, on the address the stranger will use, with a call in flight.
      const layerAbove = h2Session(port, '127.0.0.78');
      const call = (session: http2.ClientHttp2Session) =>
        new Promise<string>((resolve) => {
          const stream = session.request({ ':method': 'POST', ':path': '/slow', 'content-type': 'application/grpc', authorization: `Bearer ${secret}` });
          stream.on('response', (head) => resolve(String(head[':status'])));
          stream.on('error', (error: Error) => resolve(error.message));
          stream.on('close', () => resolve(`closed with ${stream.rstCode}`));
          stream.end();
        });
      expect(await call(layerAbove)).toBe('200');
      const inFlight = call(layerAbove);
      expect((await closedByServer('127.0.0.78', [], 4)).slice(-2)).toEqual([true, true]);
      // Its session and call are untouched, and a new connection of its is taken: whether a
      // connection's calls present the secret is not known when it is accepted (helper 159).
      const newConnection = h2Session(port, '127.0.0.78');
      expect({ inFlight: await inFlight, newConnection: await call(newConnection) }).toEqual({ inFlight: '200', newConnection: '200' });
      layerAbove.close();
      newConnection.close();
      expect(await closedByServer('127.0.0.79', [['authorization', `Bearer ${secret}`]], 3)).toEqual([false, false, false]);
    } finally {
      for (const cleanup of cleanups.splice(0)) cleanup();
      await close();
    }
  });

  it('when an :authority is not a host name or address, or a host header disagrees with it, then invalid_argument over gRPC, gRPC-Web and Connect, each in its own shape, and the connection serves on', async () => {
    // RFC 9113 §8.3.1; connect-node answered `[` with a bare 400 (helper 69), and a disagreeing
    // host header reached the handlers, where a proxy in front may have routed by the other. The
    // refusal was then the REST envelope with HTTP 400, which gRPC and Connect clients read as
    // `internal` (helper 86).
    const session = h2Session(server.port);
    const call = (headers: http2.OutgoingHttpHeaders, contentType: string) =>
      new Promise<{ status: number; grpcStatus: unknown; body: string }>((resolve, reject) => {
        const stream = session.request({ ':method': 'POST', ':path': `/${Health.typeName}/Check`, 'content-type': contentType, te: 'trailers', ...headers });
        let status = 0;
        let grpcStatus: unknown;
        let body = '';
        stream.on('response', (head) => ((status = Number(head[':status'])), (grpcStatus = head['grpc-status'])));
        stream.on('data', (chunk: Buffer) => (body += chunk.toString('latin1')));
        stream.on('end', () => resolve({ status, grpcStatus, body }));
        stream.on('error', reject);
        stream.end(contentType === 'application/json' ? '{}' : Buffer.alloc(5));
      });
    for (const contentType of ['application/grpc', 'application/grpc-web+proto', 'application/json']) {
      for (const headers of [
        { ':authority': '[' },
        { ':authority': '[::1' },
        { ':authority': 'localhost:99999' },
        { ':authority': 'api.example.com', host: 'internal.example.com' },
      ]) {
        const answer = await call(headers, contentType);
        const what = `${contentType} ${JSON.stringify(headers)}`;
        if (contentType === 'application/json') {
          expect(answer.status, what).toBe(400);
          expect(JSON.parse(answer.body)).toMatchObject({ code: 'invalid_argument' });
        } else {
          expect({ status: answer.status, grpcStatus: answer.grpcStatus, body: answer.body }, what).toEqual({ status: 200, grpcStatus: '3', body: '' });
        }
      }
      const fine = await call({ ':authority': 'api.example.com', host: 'API.example.com' }, contentType);
      expect(fine.status, contentType).toBe(200);
    }
  });

  it('when a stream carries two authorization fields, whichever comes first, then it is answered 400 and the connection serves on', async () => {
    // As over HTTP/1.1 (helper 76): Node's HTTP/2 also keeps the first of a single-value field.
    const user = await register(server);
    const client = rawClient(server.port);
    client.socket.write(Buffer.concat([Buffer.from(PREFACE), frame(FRAME.settings, 0, 0)]));
    await until('SETTINGS', () => settingsOf(framesOf(client)));
    const call = (streamId: number, authorizations: string[]) =>
      Buffer.concat([
        frame(
          FRAME.headers,
          FLAG.endHeaders,
          streamId,
          headerBlock([
            [':method', 'POST'],
            [':scheme', 'http'],
            [':path', `/${AuthService.typeName}/GetCurrentUser`],
            [':authority', 'x'],
            ['content-type', 'application/json'],
            ...authorizations.map((value): [string, string] => ['authorization', value]),
          ]),
        ),
        frame(FRAME.data, FLAG.endStream, streamId, Buffer.from('{}')),
      ]);
    const token = `Bearer ${user.accessToken}`;
    client.socket.write(Buffer.concat([call(1, [token, 'Bearer forged']), call(3, ['Bearer forged', token]), call(5, [token])]));
    // The first field of each answer's block: HPACK's static table entry 12 is `:status 400`, 8 `:status 200`.
    const statuses = await until('three answers', () => {
      const answers = framesOf(client).filter((f) => f.type === FRAME.headers && f.payload.length > 0 && [1, 3, 5].includes(f.streamId));
      const first = new Map<number, number>();
      for (const answer of answers) if (!first.has(answer.streamId)) first.set(answer.streamId, answer.payload[0] ?? 0);
      return first.size === 3 ? [first.get(1), first.get(3), first.get(5)] : undefined;
    });
    expect(statuses).toEqual([0x80 | 12, 0x80 | 12, 0x80 | 8]);
    client.socket.destroy();
  });

  it('when a client opens more streams than it may, then SETTINGS advertise the limit and the excess is refused', async () => {
    const headers = requestHeaders(`/${AuthService.typeName}/Login`);
    // Streams sent with the preface race the server's SETTINGS: the excess is refused one by one.
    const racing = rawClient(server.port);
    const early = Array.from({ length: MAX_STREAMS + 5 }, (_, i) => frame(FRAME.headers, FLAG.endHeaders, 1 + 2 * i, headers));
    racing.socket.write(Buffer.concat([Buffer.from(PREFACE), frame(FRAME.settings, 0, 0), ...early]));
    const settings = await until('SETTINGS', () => settingsOf(framesOf(racing)));
    expect(settings.get(SETTINGS_MAX_CONCURRENT_STREAMS)).toBe(MAX_STREAMS);
    const refused = await until('5 refusals', () => (rstCodes(framesOf(racing)).length >= 5 ? rstCodes(framesOf(racing)).slice(0, 5) : undefined));
    expect(refused).toEqual(Array(5).fill(NGHTTP2_REFUSED_STREAM));

    // A client that has acknowledged the limit and still exceeds it loses the connection.
    const defiant = rawClient(server.port);
    defiant.socket.write(Buffer.concat([Buffer.from(PREFACE), frame(FRAME.settings, 0, 0)]));
    await until('SETTINGS', () => settingsOf(framesOf(defiant)));
    const excess = Array.from({ length: MAX_STREAMS + 1 }, (_, i) => frame(FRAME.headers, FLAG.endHeaders, 1 + 2 * i, headers));
    defiant.socket.write(Buffer.concat([frame(FRAME.settings, FLAG.ack, 0), ...excess]));
    const goaway = await until('GOAWAY', () => framesOf(defiant).find((f) => f.type === FRAME.goaway));
    expect(goaway.payload.readUInt32BE(4)).toBe(NGHTTP2_PROTOCOL_ERROR);
    expect(await closedWithin(defiant.closed, SLACK_MS)).toBeLessThan(Number.POSITIVE_INFINITY);
  });
});

describe('grpc.health.v1.Health/Watch', () => {
  it('when more watches are opened than the cap, over gRPC and Connect alike, then the excess fails resource_exhausted and one readiness probe per interval serves them all', async () => {
    const database = monolithOf(server).database;
    const agent = new http.Agent({ keepAlive: true });
    cleanups.push(() => agent.destroy());
    // Each gRPC watcher on its own connection: one connection carries only MAX_STREAMS at once.
    const overGrpc = () => {
      const sessions = new Http2SessionManager(server.baseUrl);
      cleanups.push(() => sessions.abort());
      return createClient(Health, createGrpcTransport({ baseUrl: server.baseUrl, sessionManager: sessions }));
    };
    const overConnect = () => createClient(Health, createConnectTransport({ baseUrl: server.baseUrl, httpVersion: '1.1', nodeOptions: { agent } }));
    const controllers: AbortController[] = [];
    const firstStatus: ServingStatus[] = [];
    const failures: ConnectError[] = [];
    const watch = (client: ReturnType<typeof overGrpc>) => {
      const controller = new AbortController();
      controllers.push(controller);
      cleanups.push(() => controller.abort());
      return (async () => {
        try {
          for await (const response of client.watch({ service: '' }, { signal: controller.signal })) firstStatus.push(response.status);
        } catch (error) {
          if (!controller.signal.aborted) failures.push(ConnectError.from(error));
        }
      })();
    };

    const queriesBefore = database.queryCount();
    const startedAt = performance.now();
    // Opened all at once, as an attacker (or a fleet of health-checking clients) would.
    for (let i = 0; i < WATCH_MAX; i += 1) void watch(i % 2 === 0 ? overGrpc() : overConnect());
    await until('every watcher to get its first status', () => (firstStatus.length === WATCH_MAX ? true : undefined));
    await sleep(2_000);
    const queries = database.queryCount() - queriesBefore;
    const intervals = (performance.now() - startedAt) / WATCH_INTERVAL_MS;
    expect(firstStatus).toEqual(Array(WATCH_MAX).fill(ServingStatus.SERVING));
    // One probe per interval (and the first at once), not one per watcher.
    expect(queries).toBeGreaterThanOrEqual(2);
    expect(queries).toBeLessThanOrEqual(Math.ceil(intervals) + 1);

    // On a server without a cap these would simply stay open.
    await Promise.race([Promise.all([watch(overGrpc()), watch(overConnect())]), sleep(SLACK_MS)]);
    expect(failures.map((failure) => failure.code)).toEqual([Code.ResourceExhausted, Code.ResourceExhausted]);

    // A watcher that leaves frees its place, whichever protocol it used.
    controllers[0]?.abort();
    controllers[1]?.abort();
    await sleep(500);
    void watch(overGrpc());
    void watch(overConnect());
    await until('the new watchers to get their status', () => (firstStatus.length === WATCH_MAX + 2 ? true : undefined));
    expect(failures).toHaveLength(2);
  });
});

describe('grpc.health.v1.Health/Watch, per address', () => {
  it('when one address opens more watches than its share, over gRPC, Connect and gRPC-Web, then its excess fails resource_exhausted while another address still watches', async () => {
    const PER_ADDRESS = 4;
    const own = await startTestServer({
      HEALTH_WATCH_MAX: String(WATCH_MAX),
      HEALTH_WATCH_PER_ADDRESS_MAX: String(PER_ADDRESS),
      HEALTH_WATCH_INTERVAL_MS: String(WATCH_INTERVAL_MS),
    });
    try {
      // Two clients on loopback addresses of their own (all of 127/8 reaches this host).
      const clientsFrom = (localAddress: string) => {
        const agent = new http.Agent({ keepAlive: true, localAddress });
        cleanups.push(() => agent.destroy());
        const overGrpc = () => {
          const { port } = new URL(own.baseUrl);
          const sessions = new Http2SessionManager(own.baseUrl, undefined, { createConnection: () => net.connect({ host: '127.0.0.1', port: Number(port), localAddress }) });
          cleanups.push(() => sessions.abort());
          return createClient(Health, createGrpcTransport({ baseUrl: own.baseUrl, sessionManager: sessions }));
        };
        return [
          overGrpc,
          () => createClient(Health, createConnectTransport({ baseUrl: own.baseUrl, httpVersion: '1.1', nodeOptions: { agent } })),
          () => createClient(Health, createGrpcWebTransport({ baseUrl: own.baseUrl, httpVersion: '1.1', nodeOptions: { agent } })),
        ];
      };
      const seen = new Map<string, ServingStatus[]>();
      const failed = new Map<string, Code>();
      const watch = (name: string, client: ReturnType<ReturnType<typeof clientsFrom>[number]>) => {
        const controller = new AbortController();
        cleanups.push(() => controller.abort());
        seen.set(name, []);
        void (async () => {
          try {
            for await (const response of client.watch({ service: '' }, { signal: controller.signal })) seen.get(name)?.push(response.status);
          } catch (error) {
            if (!controller.signal.aborted) failed.set(name, ConnectError.from(error).code);
          }
        })();
        return controller;
      };
      const hog = clientsFrom('127.0.0.2');
      const hogs = Array.from({ length: PER_ADDRESS }, (_, i) => watch(`hog ${i}`, (hog[i % hog.length] as (typeof hog)[number])()));
      await until('the first watches to be told SERVING', () => ([...seen.values()].filter((statuses) => statuses.length > 0).length === PER_ADDRESS ? true : undefined));
      // The same address over each protocol: refused, where its share is used up.
      hog.forEach((client, i) => watch(`excess ${i}`, client()));
      await until('the excess to be refused', () => (failed.size === hog.length ? true : undefined));
      expect([...failed.values()]).toEqual(hog.map(() => Code.ResourceExhausted));
      // Another address, over each protocol, still watches: the process's places are not all taken.
      const other = clientsFrom('127.0.0.3');
      other.forEach((client, i) => watch(`other ${i}`, client()));
      await until('the other address to be told SERVING', () => (other.every((_, i) => (seen.get(`other ${i}`)?.length ?? 0) > 0) ? true : undefined));
      expect(other.map((_, i) => seen.get(`other ${i}`)?.[0])).toEqual(other.map(() => ServingStatus.SERVING));
      // A watch that ends gives its address's place back.
      hogs[0]?.abort();
      await sleep(500);
      watch('hog again', (hog[0] as (typeof hog)[number])());
      await until('the new watch to be told SERVING', () => ((seen.get('hog again')?.length ?? 0) > 0 ? true : undefined));
      expect(failed.has('hog again')).toBe(false);
    } finally {
      for (const cleanup of cleanups.splice(0)) cleanup();
      await own.close();
    }
  });
});

describe('readiness probes', () => {
  // A server of its own with the default deadlines: the file's one-second deadlines are what the
  // other tests attack, and a worker starved for a second on a busy CI machine let them cut a
  // probe's connection before it was read (ECONNRESET), which is not what this test is about.
  let probed: TestServer;

  beforeAll(async () => {
    probed = await startTestServer({ HTTP2_MAX_CONCURRENT_STREAMS: String(MAX_STREAMS) });
  });

  afterAll(async () => {
    await probed.close();
  });

  it('when /ready and Health/Check are flooded over REST, gRPC, Connect and gRPC-Web at once, then every probe is answered and they share their database queries', async () => {
    const database = monolithOf(probed).database;
    const agent = new http.Agent({ keepAlive: true, maxSockets: 25 });
    cleanups.push(() => agent.destroy());
    // gRPC over ten connections, each carrying its MAX_STREAMS once its SETTINGS have arrived.
    const grpc = await Promise.all(
      Array.from({ length: 10 }, async () => {
        const sessions = new Http2SessionManager(probed.baseUrl);
        cleanups.push(() => sessions.abort());
        const client = createClient(Health, createGrpcTransport({ baseUrl: probed.baseUrl, sessionManager: sessions }));
        await client.check({ service: '' });
        return client;
      }),
    );
    const overHttp1 = [
      createClient(Health, createConnectTransport({ baseUrl: probed.baseUrl, httpVersion: '1.1', nodeOptions: { agent } })),
      createClient(Health, createGrpcWebTransport({ baseUrl: probed.baseUrl, httpVersion: '1.1', nodeOptions: { agent } })),
    ];
    const rest = () =>
      new Promise<{ status: number; body: string }>((resolve, reject) => {
        http
          .get(`${probed.baseUrl}/ready`, { agent }, (response) => {
            let body = '';
            response.on('data', (chunk: Buffer) => (body += chunk.toString()));
            response.on('end', () => resolve({ status: response.statusCode ?? 0, body }));
          })
          .on('error', reject);
      });
    const perProtocol = 100;
    const queriesBefore = database.queryCount();
    const [answers, statuses] = await Promise.all([
      Promise.all(Array.from({ length: perProtocol }, rest)),
      Promise.all(
        [...grpc.flatMap((client) => Array.from({ length: MAX_STREAMS }, () => client)), ...overHttp1.flatMap((client) => Array.from({ length: perProtocol }, () => client))].map(
          async (client) => (await client.check({ service: '' })).status,
        ),
      ),
    ]);
    const queries = database.queryCount() - queriesBefore;
    for (const answer of answers) expect(answer).toEqual({ status: 200, body: JSON.stringify({ status: 'ready', checks: { database: 'ok' } }) });
    expect(statuses).toEqual(Array(3 * perProtocol).fill(ServingStatus.SERVING));
    // One query per probe would be 400; a check runs once at a time, and those who ask meanwhile share it.
    expect(queries).toBeGreaterThanOrEqual(1);
    expect(queries).toBeLessThanOrEqual(perProtocol);
  });
});

/** A schema of its own for a server process; `drop` removes it. */
async function freshSchema(prefix: string): Promise<{ schema: string; drop: () => Promise<void> }> {
  const schema = `${prefix}_${Date.now()}_${randomBytes(3).toString('hex')}`;
  const admin = new pg.Client({ connectionString: TEST_DATABASE_URL });
  await admin.connect();
  await createMigratedSchema(admin, schema);
  return {
    schema,
    drop: async () => {
      await admin.query(`DROP SCHEMA "${schema}" CASCADE`);
      await admin.end();
    },
  };
}

interface ServerProcess {
  child: ChildProcess;
  exited: Promise<number | null>;
  baseUrl: string;
  /** Every line it has logged. */
  lines: string[];
}

/** `node src/main.js` on a free port over `schema`, with `extra` environment; resolves once it listens. */
async function spawnServer(schema: string, extra: Record<string, string>): Promise<ServerProcess> {
  const url = new URL(TEST_DATABASE_URL);
  url.searchParams.set('schema', schema);
  const child = spawn(process.execPath, [join(import.meta.dirname, '..', '..', 'src', 'main.js')], {
    env: { ...TEST_ENV, PATH: process.env.PATH ?? '', PORT: '0', HOST: '127.0.0.1', LOG_LEVEL: 'info', DATABASE_URL: url.toString(), ...extra },
  });
  cleanups.push(() => child.kill('SIGKILL'));
  const lines: string[] = [];
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
  const baseUrl = await new Promise<string>((resolve, reject) => {
    createInterface({ input: child.stdout }).on('line', (line) => {
      lines.push(line);
      const entry = JSON.parse(line) as { msg?: string; address?: string };
      if (entry.msg === 'arcana-cloud listening') resolve(`http://${entry.address ?? ''}`);
    });
    void exited.then((code) => reject(new Error(`server exited with ${code}`)));
  });
  return { child, exited, baseUrl, lines };
}

/** How much of a body the server takes from `socket` in 1.5 s: each write waits until the kernel has room for it. */
async function bytesTakenIn1500ms(socket: net.Socket): Promise<number> {
  const piece = Buffer.alloc(256 * 1024, 0x78);
  let taken = 0;
  const stopAt = performance.now() + 1_500;
  while (performance.now() < stopAt && !socket.destroyed) {
    if (!socket.write(piece)) {
      const drained = await Promise.race([once(socket, 'drain').then(() => true), sleep(200).then(() => false)]);
      if (!drained) continue;
    }
    taken += piece.length;
  }
  return taken;
}

describe('a refused upload', () => {
  it('when a client keeps sending a body declared larger than the limit after its 413, then the server reads no more of it while the connection lingers', async () => {
    // Found by an attacker (helper 176): Node's dump of the unread body, resumed as the answer
    // ended, read a declared 1 GB at line rate while the connection lingered (73 MB a second).
    // A process of its own: in this one the client's writes and the server's reads share a loop.
    const { schema, drop } = await freshSchema('test_linger');
    const spawned = await spawnServer(schema, {});
    cleanups.push(() => void drop());
    // Half-open, as the attacker's client: it goes on writing after the server's end.
    const client = rawClient(Number(new URL(spawned.baseUrl).port), { allowHalfOpen: true });
    await client.connected;
    client.socket.write('POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n');
    await until('the 413', () => (statusLines(client.received()).length > 0 ? true : undefined));
    expect(statusLines(client.received())).toEqual(['HTTP/1.1 413']);
    const taken = await bytesTakenIn1500ms(client.socket);
    // Kernel buffers on both sides hold a few MB; read at line rate it was hundreds.
    expect(taken).toBeLessThan(32 * 1024 * 1024);
  });

  it('when an RPC client keeps sending a body after its call was answered early (a declared length over the limit, a deadline that passed), then the server reads no more of it either', async () => {
    // Helper 209: REST's refusals linger unread, but RPC's early answers over HTTP/1.1 left the
    // connection to Node, whose dump read the rest of a declared 1 GB body at line rate.
    const { schema, drop } = await freshSchema('test_linger_rpc');
    const spawned = await spawnServer(schema, {});
    cleanups.push(() => void drop());
    const port = Number(new URL(spawned.baseUrl).port);
    const sendAfterAnswer = async (head: string, status: string) => {
      const client = rawClient(port, { allowHalfOpen: true });
      await client.connected;
      client.socket.write(head);
      await until(status, () => (statusLines(client.received()).length > 0 ? true : undefined));
      expect(statusLines(client.received())).toEqual([status]);
      const taken = await bytesTakenIn1500ms(client.socket);
      client.socket.destroy();
      return taken;
    };
    const login = '/arcana.auth.v1.AuthService/Login';
    // Connect's resource_exhausted is 429, deadline_exceeded 504.
    const overLimit = await sendAfterAnswer(`POST ${login} HTTP/1.1\r\nHost: x\r\nContent-Type: application/proto\r\nContent-Length: 1000000000\r\n\r\n`, 'HTTP/1.1 429');
    const outOfTime = await sendAfterAnswer(
      `POST ${login} HTTP/1.1\r\nHost: x\r\nContent-Type: application/proto\r\nConnect-Timeout-Ms: 200\r\nContent-Length: 60000\r\n\r\n`,
      'HTTP/1.1 504',
    );
    expect(overLimit).toBeLessThan(32 * 1024 * 1024);
    // Its declared body is 60 KB: the rest is not read as another request either.
    expect(outOfTime).toBeLessThan(32 * 1024 * 1024);
  });
});

describe('a refused upload over HTTP/2', () => {
  it('when a client keeps sending after its call was refused for its size, over gRPC and Connect, health checks included, then the stream is closed, not read on until the deadline', async () => {
    // Helper 222: answered resource_exhausted at once, each stream was then read window after
    // window until the request deadline reset it: 5 GB in 30 s from 20 streams.
    const session = http2.connect(server.baseUrl);
    cleanups.push(() => session.destroy());
    session.on('error', () => undefined);
    const envelope = Buffer.alloc(5);
    envelope.writeUInt32BE(0xffff_fff0, 1);
    const chunk = Buffer.alloc(64 * 1024);
    const calls = [
      { path: '/arcana.auth.v1.AuthService/Login', contentType: 'application/grpc', prefix: envelope },
      { path: '/grpc.health.v1.Health/Check', contentType: 'application/grpc', prefix: envelope },
      { path: '/arcana.auth.v1.AuthService/Login', contentType: 'application/proto', prefix: chunk },
    ];
    const outcomes = await Promise.all(
      calls.map(
        ({ path, contentType, prefix }) =>
          new Promise<{ status: string; sent: number; openAfterAnswerMs: number }>((resolve) => {
            const stream = session.request({ ':method': 'POST', ':path': path, 'content-type': contentType, te: 'trailers' });
            stream.on('error', () => undefined);
            let status = '';
            let answeredAt = 0;
            let sent = 0;
            const answered = (value: string) => {
              status ||= value;
              answeredAt ||= performance.now();
            };
            stream.on('response', (headers) => {
              if (headers['grpc-status'] !== undefined) answered(`grpc ${String(headers['grpc-status'])}`);
              else if (headers[':status'] !== 200) answered(`http ${String(headers[':status'])}`);
            });
            stream.on('trailers', (trailers) => answered(`grpc ${String(trailers['grpc-status'])}`));
            stream.resume();
            const startedAt = performance.now();
            const write = () => {
              // Sent for as long as the stream takes it, 3 s at most.
              while (!stream.destroyed && !stream.closed && performance.now() - startedAt < 3_000) {
                sent += chunk.length;
                if (!stream.write(chunk)) return void stream.once('drain', write);
              }
            };
            stream.write(prefix);
            write();
            stream.once('close', () => resolve({ status, sent, openAfterAnswerMs: answeredAt === 0 ? -1 : performance.now() - answeredAt }));
            setTimeout(() => stream.close(), 10_000).unref();
          }),
      ),
    );
    expect(outcomes.map((outcome) => outcome.status)).toEqual(['grpc 8', 'grpc 8', 'http 429']);
    for (const outcome of outcomes) {
      // Closed right after the answer, where it stayed open until the 1.5 s request deadline of
      // this file's server (60 s by default), taking all that was sent.
      expect(outcome.openAfterAnswerMs).toBeGreaterThanOrEqual(0);
      expect(outcome.openAfterAnswerMs).toBeLessThan(REQUEST_MS / 2);
      expect(outcome.sent).toBeLessThan(32 * 1024 * 1024);
    }
  });
});

describe('lingering refusals shared out', () => {
  it("when one address holds more refused uploads open than the server lingers for, then another address's refusal still lingers: its client, still sending, is not reset", async () => {
    // Helper 215: a declared length over the limit is refused before any rate limit and lingers
    // 5 s; 64 such connections from one address (13 new ones a second) held every place, and other
    // clients' refusals went back to the plain close, whose reset could overtake their 413.
    const { schema, drop } = await freshSchema('test_linger_share');
    const spawned = await spawnServer(schema, {});
    cleanups.push(() => void drop());
    const port = Number(new URL(spawned.baseUrl).port);
    const refused = async (localAddress: string, head: string, status: string) => {
      const client = rawClient(port, { localAddress, allowHalfOpen: true });
      await client.connected;
      client.socket.write(head);
      await until(status, () => (statusLines(client.received()).length > 0 ? true : undefined));
      expect(statusLines(client.received())).toEqual([status]);
      return client;
    };
    const overLimit = (path: string, type: string) => `POST ${path} HTTP/1.1\r\nHost: x\r\nContent-Type: ${type}\r\nContent-Length: 1000000000\r\n\r\n`;
    // 70 at once from 127.0.0.1, each kept open: more than the 64 places there are.
    await Promise.all(Array.from({ length: 70 }, () => refused('127.0.0.1', overLimit('/arcana.auth.v1.AuthService/Login', 'application/proto'), 'HTTP/1.1 429')));
    const victim = await refused('127.0.0.2', overLimit('/api/v1/auth/login', 'application/json'), 'HTTP/1.1 413');
    let reset: unknown;
    victim.socket.on('error', (error) => (reset = error));
    await bytesTakenIn1500ms(victim.socket);
    expect(reset).toBeUndefined();
    expect(victim.socket.destroyed).toBe(false);
  });
});

describe('graceful shutdown', () => {
  it('when node src/main.js gets SIGTERM with health watches (HTTP/2 and HTTP/1.1) and a reflection stream open, then each ends and the process exits 0 at once', async () => {
    const SHUTDOWN_TIMEOUT_MS = 20_000;
    const { schema, drop } = await freshSchema('test_conn');
    let server: ServerProcess | undefined;
    try {
      server = await spawnServer(schema, { SHUTDOWN_TIMEOUT_MS: String(SHUTDOWN_TIMEOUT_MS) });
      const { child, exited, baseUrl } = server;
      const sessions = new Http2SessionManager(baseUrl);
      cleanups.push(() => sessions.abort());
      // The gRPC-Web watch keeps its HTTP/1.1 connection alive after the drain ends it: that
      // connection held the shutdown until SHUTDOWN_TIMEOUT_MS, and the process exited 1.
      const agent = new http.Agent({ keepAlive: true });
      cleanups.push(() => agent.destroy());
      const clients = [
        createClient(Health, createGrpcTransport({ baseUrl, sessionManager: sessions })),
        createClient(Health, createConnectTransport({ baseUrl, httpVersion: '1.1' })),
        createClient(Health, createGrpcWebTransport({ baseUrl, httpVersion: '1.1', nodeOptions: { agent } })),
      ];
      const seen: ServingStatus[][] = clients.map(() => []);
      const watches = clients.map(async (client, index) => {
        try {
          for await (const response of client.watch({ service: '' })) seen[index]?.push(response.status);
          return 'completed';
        } catch (error) {
          return Code[ConnectError.from(error).code];
        }
      });
      await until('every watcher to be told SERVING', () => (seen.every((statuses) => statuses.length === 1) ? true : undefined), 30_000);
      // A reflection stream whose client has asked one question and may ask more.
      const reflection = http2.connect(baseUrl);
      cleanups.push(() => reflection.destroy());
      const stream = reflection.request({
        ':method': 'POST',
        ':path': '/grpc.reflection.v1.ServerReflection/ServerReflectionInfo',
        'content-type': 'application/grpc',
        te: 'trailers',
      });
      const answered = new Promise<void>((resolve) => stream.once('data', () => resolve()));
      const reflectionStatus = new Promise<string | undefined>((resolve) => {
        stream.on('trailers', (trailers) => resolve(String(trailers['grpc-status'])));
        stream.on('close', () => resolve(undefined));
        stream.resume();
      });
      stream.write(Buffer.from([0, 0, 0, 0, 3, 0x3a, 0x01, 0x2a]));
      await answered;

      const signalledAt = performance.now();
      child.kill('SIGTERM');
      expect(await Promise.race([exited, sleep(SHUTDOWN_TIMEOUT_MS).then(() => 'still running')])).toBe(0);
      expect(performance.now() - signalledAt).toBeLessThan(3_000);
      expect(await Promise.all(watches)).toEqual(['completed', 'completed', 'completed']);
      expect(seen).toEqual([
        [ServingStatus.SERVING, ServingStatus.NOT_SERVING],
        [ServingStatus.SERVING, ServingStatus.NOT_SERVING],
        [ServingStatus.SERVING, ServingStatus.NOT_SERVING],
      ]);
      // The reflection stream is told the server is going (unavailable: open a new one).
      expect(await reflectionStatus).toBe(String(Code.Unavailable));
    } finally {
      server?.child.kill('SIGKILL');
      await drop();
    }
  });
});

describe('graceful shutdown against a client that stops reading', () => {
  it('when a reflection client stops reading its answers at SIGTERM, then its stream is cut near the timeout, the shutdown completes and the process exits 0', async () => {
    const SHUTDOWN_TIMEOUT_MS = 3_000;
    const { schema, drop } = await freshSchema('test_cut');
    let server: ServerProcess | undefined;
    try {
      server = await spawnServer(schema, { SHUTDOWN_TIMEOUT_MS: String(SHUTDOWN_TIMEOUT_MS) });
      const { child, exited, baseUrl, lines } = server;
      // 150 questions whose answers (about 4.7 KB each) outgrow the stream's flow-control window
      // while the client reads nothing: the handler waits to write, and never sees the drain.
      const session = http2.connect(baseUrl);
      cleanups.push(() => session.destroy());
      session.on('error', () => undefined);
      const { stream, questions } = reflectionStream(session, 150);
      stream.pause();
      stream.write(questions);
      await sleep(500);

      const signalledAt = performance.now();
      child.kill('SIGTERM');
      // Before the cut, such a stream held the drain until the timeout: exit 1, "shutdown timed out".
      expect(await Promise.race([exited, sleep(SHUTDOWN_TIMEOUT_MS * 2).then(() => 'still running')])).toBe(0);
      expect(performance.now() - signalledAt).toBeLessThan(SHUTDOWN_TIMEOUT_MS);
      const messages = lines.map((line) => (JSON.parse(line) as { msg?: string }).msg);
      expect(messages).toContain('shutdown: closed connections still open near the shutdown timeout');
      expect(messages).toContain('shutdown complete');
      expect(messages).not.toContain('shutdown timed out; exiting');
    } finally {
      server?.child.kill('SIGKILL');
      await drop();
    }
  });
});

describe('graceful shutdown with writes under way', () => {
  it('when SIGTERM comes with registrations queued for bcrypt, then those the cut would end are refused at once, and after a restart each Idempotency-Key can be retried at once, none is "in progress"', async () => {
    const { schema, drop } = await freshSchema('test_cutw');
    try {
      // Hashes short next to what the shutdown leaves them (cut at 80 %, writes until 90 %: 1.2 s,
      // and 1.2 s to close), and enough of them still queued at the cut, also on a machine busy
      // with other suites: 150 hashes at cost 11, one at a time, take ~16 s of one core, past the
      // cut at 9.6 s. (At 6 s, closing 600 connections once outlasted its 600 ms: exit 1; at 10 s
      // with cost 10, a loaded machine left 3 of 600 keys still in progress, before the gate
      // re-judged its tail. 300 hashes two at a time held both of CI's cores for 10 s.)
      const env = {
        SHUTDOWN_TIMEOUT_MS: '12000',
        BCRYPT_ROUNDS: '11',
        PASSWORD_HASH_CONCURRENCY: '1',
        RATE_LIMIT_ENABLED: 'false',
        PASSWORD_HASH_QUEUE_MAX: '1000',
        CONNECTIONS_PER_ADDRESS_MAX: '0',
      };
      const first = await spawnServer(schema, env);
      const users = Array.from({ length: 150 }, (_, index) => ({ ...newUser(`cut${index}`), key: `cut-${schema}-${index}` }));
      const register = (baseUrl: string, user: (typeof users)[number]) =>
        fetch(`${baseUrl}/api/v1/auth/register`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', 'idempotency-key': user.key },
          body: JSON.stringify({ username: user.username, email: user.email, password: user.password }),
        }).then(
          async (res) => (res.status === 201 ? 201 : `${res.status} ${await res.text()}`),
          () => 0,
        );
      // Each on its own connection, queued behind the bcrypt slots; many are still waiting at the cut.
      const pending = users.map((user) => register(first.baseUrl, user));
      // SIGTERM once every registration has claimed its key and so waits for bcrypt: how many
      // got that far in a fixed time depends on how busy the machine is, and a queue that the
      // cut would not reach has nothing to refuse.
      const claims = new pg.Client({ connectionString: TEST_DATABASE_URL });
      await claims.connect();
      try {
        const queuedBy = Date.now() + 30_000;
        const claimed = async () => Number((await claims.query<{ n: string }>(`SELECT count(*) AS n FROM "${schema}".idempotency_records`)).rows[0]?.n);
        while ((await claimed()) < users.length && Date.now() < queuedBy) await sleep(100);
      } finally {
        await claims.end();
      }
      // Whatever answers within a quarter of the shutdown's 9.6 s before the cut was not cut off.
      const early = Promise.all(pending.map((answer) => Promise.race([answer, sleep(2_400).then(() => 'later')])));
      first.child.kill('SIGTERM');
      const answeredEarly = await early;
      expect(await first.exited).toBe(0);
      const firstAnswers = await Promise.all(pending);
      const cut = firstAnswers.filter((status) => status !== 201).length;
      expect(cut).toBeGreaterThan(0);
      // Hashes queued past the cut are refused as the shutdown begins, with a retry delay: the
      // client may go elsewhere at once, and each claim is given back while there is time.
      // 150 hashes at cost 11 are ~16 s of one core here: about a third cannot be done by the cut.
      const refusedAtOnce = answeredEarly.filter((status) => typeof status === 'string' && status.startsWith('503') && status.includes('shutting down'));
      expect(refusedAtOnce.length).toBeGreaterThan(0);
      // Their claims used to stay behind: "still in progress; retry later" for the 5-minute lease.
      // Every key whose request was cut is retried, and twenty of those answered (each a replay
      // that compares its password with a cost-11 hash: all ~150 of 300 were half of this test's minute
      // in CI). The new accounts the retries create are hashed cheaply: the keys are what is tested.
      const second = await spawnServer(schema, { ...env, BCRYPT_ROUNDS: '4' });
      const answered = users.filter((_, index) => firstAnswers[index] === 201);
      const again = [...users.filter((_, index) => firstAnswers[index] !== 201), ...answered.slice(0, 20)];
      const retried = await Promise.all(again.map((user) => register(second.baseUrl, user)));
      expect(retried.filter((status) => status !== 201)).toEqual([]);
      second.child.kill('SIGTERM');
      await second.exited;
    } finally {
      await drop();
    }
  }, 120_000);
});

describe('legitimate clients under the bounds', () => {
  it('when a Watch stream stays open past the idle and request deadlines, then it is not cut off, while an idle session next to it is', async () => {
    const sessions = new Http2SessionManager(server.baseUrl, { pingIntervalMs: 200 });
    cleanups.push(() => sessions.abort());
    const health = createClient(Health, createGrpcTransport({ baseUrl: server.baseUrl, sessionManager: sessions }));
    const controller = new AbortController();
    cleanups.push(() => controller.abort());
    const seen: ServingStatus[] = [];
    const watching = (async () => {
      try {
        for await (const response of health.watch({ service: '' }, { signal: controller.signal })) seen.push(response.status);
        return 'ended';
      } catch (error) {
        return Code[ConnectError.from(error).code];
      }
    })();
    const idle = h2Session(server.port);
    const idleClosed = new Promise<number>((resolve) => idle.once('close', () => resolve(performance.now())));

    const longerThanEveryDeadline = Math.max(IDLE_MS, REQUEST_MS, DETECTION_MS) * 3;
    await sleep(longerThanEveryDeadline);
    expect(await closedWithin(idleClosed, SLACK_MS)).toBeLessThan(Number.POSITIVE_INFINITY);
    expect(seen).toEqual([ServingStatus.SERVING]);
    controller.abort();
    expect(await watching).toBe(Code[Code.Canceled]);
  });

  it('when the bounds are in place, then every protocol still works, also after the server closed its idle connections', async () => {
    const clients = apiClients(server.baseUrl);
    try {
      const tokens = await Promise.all(
        clients.map(async (client) => {
          const user = newUser('conn');
          expect((await client.register(user)).code, client.protocol).toBe('ok');
          const login = await client.login({ usernameOrEmail: user.username, password: user.password });
          expect(login.code, client.protocol).toBe('ok');
          return { client, user, token: login.data?.tokens.accessToken ?? '' };
        }),
      );
      // Every connection is now past its idle or keep-alive deadline and closed by the server.
      await sleep(Math.max(IDLE_MS, KEEP_ALIVE_MS + KEEP_ALIVE_BUFFER_MS) + 1_000);
      for (const { client, user, token } of tokens) {
        const me = await client.me(token);
        expect(me.code, client.protocol).toBe('ok');
        expect(me.data?.username, client.protocol).toBe(user.username);
      }
    } finally {
      closeAll(clients);
    }
  });

  it('when attackers reset their connections at every stage in parallel, then the server keeps serving', async () => {
    const stages = [
      '',
      'PRI * HTTP/2.0\r\n',
      PREFACE,
      `${PREFACE}\u0000\u0000`,
      'GET /health HTTP/1.1\r\nHost',
      'POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{',
    ];
    await Promise.all(
      stages.flatMap((bytes) =>
        Array.from({ length: 5 }, async () => {
          const client = rawClient(server.port);
          await client.connected;
          if (bytes.length > 0) client.socket.write(bytes);
          await sleep(50);
          client.socket.resetAndDestroy();
        }),
      ),
    );
    const session = h2Session(server.port);
    await new Promise((resolve) => session.once('remoteSettings', resolve));
    stalledStream(session).stream.close(http2.constants.NGHTTP2_CANCEL);
    session.destroy();
    const health = await fetch(`${server.baseUrl}/health`);
    expect(health.status).toBe(200);
  });
});

describe('per-address caps', () => {
  let capped: TestServer;
  const TRUSTED_PROXY = '127.0.0.2';
  const CONNECTIONS = 5;
  const STREAMS = 15;

  beforeAll(async () => {
    capped = await startTestServer({
      CONNECTIONS_PER_ADDRESS_MAX: String(CONNECTIONS),
      HTTP2_STREAMS_PER_ADDRESS_MAX: String(STREAMS),
      HTTP2_MAX_CONCURRENT_STREAMS: String(MAX_STREAMS),
      TRUST_PROXY: TRUSTED_PROXY,
    });
  });

  afterAll(async () => {
    await capped.close();
  });

  it('when one address opens more connections than the cap at once, then the excess is closed at once, and a trusted proxy is not capped', async () => {
    const fromClient = Array.from({ length: CONNECTIONS + 7 }, () => rawClient(capped.port));
    const fromProxy = Array.from({ length: CONNECTIONS + 7 }, () => rawClient(capped.port, { localAddress: TRUSTED_PROXY }));
    const clientClosed = await Promise.all(fromClient.map((client) => closedWithin(client.closed, 1_500)));
    const proxyClosed = await Promise.all(fromProxy.map((client) => closedWithin(client.closed, 1)));
    expect(clientClosed.filter((ms) => ms === Number.POSITIVE_INFINITY)).toHaveLength(CONNECTIONS);
    expect(clientClosed.filter((ms) => ms < 1_500)).toHaveLength(7);
    expect(proxyClosed.filter((ms) => ms === Number.POSITIVE_INFINITY)).toHaveLength(CONNECTIONS + 7);

    // A connection that ends frees its place.
    const open = fromClient.filter((_, index) => clientClosed[index] === Number.POSITIVE_INFINITY);
    open[0]?.socket.destroy();
    await sleep(200);
    const next = rawClient(capped.port);
    expect(await closedWithin(next.closed, 1_000)).toBe(Number.POSITIVE_INFINITY);
    const over = rawClient(capped.port);
    expect(await closedWithin(over.closed, 1_000)).toBeLessThan(1_000);
  });

  it('when one address spreads stalled streams over several connections, then streams beyond its budget are refused, and a trusted proxy is not capped', async () => {
    // The previous test's sockets may still be closing on the server side.
    await sleep(500);
    const open = async (localAddress?: string) => {
      const sessions = [h2Session(capped.port, localAddress), h2Session(capped.port, localAddress)];
      await Promise.all(sessions.map((session) => new Promise((resolve) => session.once('remoteSettings', resolve))));
      const streams = sessions.flatMap((session) => Array.from({ length: MAX_STREAMS }, () => stalledStream(session)));
      await sleep(1_000);
      return streams.map(({ stream }) => (stream.closed ? stream.rstCode : 'open'));
    };
    const [client, proxy] = await Promise.all([open(), open(TRUSTED_PROXY)]);
    expect(client.filter((state) => state === 'open')).toHaveLength(STREAMS);
    expect(client.filter((state) => state === NGHTTP2_REFUSED_STREAM)).toHaveLength(2 * MAX_STREAMS - STREAMS);
    expect(proxy.filter((state) => state === 'open')).toHaveLength(2 * MAX_STREAMS);
  });
});

describe('refusal logging', () => {
  it('when an address is refused many connections, then one warning line is logged, not one per connection', async () => {
    const lines: string[] = [];
    const logger = pino({ level: 'warn' }, { write: (line: string) => void lines.push(line) });
    const handler = (_req: unknown, res: { end(): void }) => res.end();
    const { port, close } = await bareServer(handler, { http2MaxConcurrentStreams: 10, connectionsPerAddress: 1, http2StreamsPerAddress: 10 }, logger);
    try {
      const clients = Array.from({ length: 40 }, () => rawClient(port));
      await Promise.all(clients.slice(1).map((client) => closedWithin(client.closed, 2_000)));
      expect(lines).toHaveLength(1);
      expect(JSON.parse(lines[0] ?? '{}')).toMatchObject({ level: 40, peer: '127.0.0.1', limit: 1 });
    } finally {
      for (const cleanup of cleanups.splice(0)) cleanup();
      await close();
    }
  });
});
