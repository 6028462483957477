// HTTP/1.1 framing and connection persistence as a proxy in front, or a pipelining client, reads
// them (helper 115). Raw bytes on a real loopback port; what is asserted is what the client sees:
// each request answered, or the connection closed so that it can retry (RFC 9112 §9.3.2), never a
// connection the server keeps open while it has silently dropped requests it was sent, nor one it
// keeps open after the client said `close`.
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.ts';
import { createDualProtocolServer } from '../../src/server.ts';
import { startTestServer, type TestServer } from '../helpers/test-app.ts';

let server: TestServer;

beforeAll(async () => {
  server = await startTestServer({ RATE_LIMIT_ENABLED: 'false' });
});

afterAll(async () => {
  await server.close();
});

/** Writes `bytes` in one write and collects what comes back for `forMs`, or until the server closes. */
async function exchange(bytes: string, forMs: number): Promise<{ text: string; closed: boolean }> {
  const socket = net.connect(server.port, '127.0.0.1');
  const chunks: Buffer[] = [];
  let closed = false;
  socket.on('data', (chunk: Buffer) => chunks.push(chunk));
  socket.on('error', () => undefined);
  await new Promise<void>((resolve) => socket.once('connect', resolve));
  socket.write(bytes);
  await new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, forMs);
    socket.once('close', () => {
      closed = true;
      clearTimeout(timer);
      resolve();
    });
  });
  socket.destroy();
  return { text: Buffer.concat(chunks).toString('latin1'), closed };
}

const statusLines = (text: string) => text.match(/HTTP\/1\.1 \d{3}/g) ?? [];

const SECOND = 'GET /api/v1/auth/me HTTP/1.1\r\nHost: x\r\n\r\n';

describe('HTTP/1.1 framing: what a proxy in front, or a pipelining client, would read', () => {
  it('when a request target is in absolute form, then it is served as its path (RFC 9112 §3.2.2); a malformed one is refused in the envelope', async () => {
    // It was a 404 on every path: the routes saw `http://host/…` as the path.
    const port = server.port;
    const health = await exchange(`GET http://127.0.0.1:${port}/health HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nConnection: close\r\n\r\n`, 2_000);
    expect(health.text).toMatch(/^HTTP\/1\.1 200 /);
    expect(health.text).toContain('"status":"');
    // The path as written, query included, whatever the Host header says.
    const spec = await exchange(`GET HTTPS://localhost:${port}/openapi.yaml?x=1 HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n`, 2_000);
    expect(spec.text).toMatch(/^HTTP\/1\.1 200 /);
    expect(spec.text).toContain('openapi: 3.1');
    const me = await exchange(`GET http://localhost/api/v1/auth/me HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n`, 2_000);
    expect(me.text).toMatch(/^HTTP\/1\.1 401 /);
    expect(me.text).toContain('"code":"AUTHENTICATION_ERROR"');
    const http10 = await exchange(`GET http://localhost/health HTTP/1.0\r\n\r\n`, 2_000);
    expect(http10.text).toMatch(/^HTTP\/1\.1 200 /);
    // On an RPC path, refused in the RPC's own shape, as a malformed Host is (helper 127: the
    // REST envelope, which gRPC-Web and Connect clients read as `internal`).
    for (const target of ['http://user@localhost/grpc.health.v1.Health/Check', 'http://localhost:99999/grpc.health.v1.Health/Check']) {
      const grpcWeb = await exchange(
        `POST ${target} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/grpc-web+proto\r\nContent-Length: 5\r\nConnection: close\r\n\r\n\0\0\0\0\0`,
        2_000,
      );
      expect(grpcWeb.text, target).toMatch(/^HTTP\/1\.1 200 /);
      expect(grpcWeb.text, target).toMatch(/grpc-status: 3\r\n/i);
      const connect = await exchange(`POST ${target} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}`, 2_000);
      expect(connect.text, target).toMatch(/^HTTP\/1\.1 400 /);
      expect(connect.text, target).toContain('"code":"invalid_argument"');
    }
    // An Expect the server does not take, on an RPC path in absolute form: refused as in origin
    // form, a Connect error (helper 137: the refusal came before the target was rewritten, so it
    // saw no RPC path and answered the REST envelope).
    for (const target of ['/arcana.auth.v1.AuthService/GetCurrentUser', 'http://localhost/arcana.auth.v1.AuthService/GetCurrentUser']) {
      const expecting = await exchange(
        `POST ${target} HTTP/1.1\r\nHost: localhost\r\nExpect: something-else\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}`,
        2_000,
      );
      expect(JSON.parse(expecting.text.slice(expecting.text.indexOf('\r\n\r\n') + 4)), target).toEqual({ code: 'invalid_argument', message: 'Expect may only be 100-continue' });
    }
    for (const target of ['http://user:secret@localhost/health', 'http://[::1/health', 'http://local host/health']) {
      const refused = await exchange(`GET ${target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n`, 2_000);
      if (refused.text === '') expect(refused.closed, target).toBe(true);
      else {
        expect(refused.text, target).toMatch(/^HTTP\/1\.1 400 /);
        expect(refused.text, target).toContain('"code":"VALIDATION_ERROR"');
      }
    }
  });

  it('when a request asks for an Upgrade (h2c, websocket) the server does not perform and a second request follows in the same write, then both are answered, or the connection is closed', async () => {
    // Node, with no 'upgrade' listener, answers the request as a plain one but discards every
    // byte that arrived after it in the same read, and keeps the connection open with
    // `Connection: keep-alive`: the pipelined request is never answered, and its client waits
    // for the keep-alive deadline (65 s) before it may retry.
    for (const upgrade of ['h2c', 'websocket']) {
      const head = `GET /health HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: ${upgrade}\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n`;
      const { text, closed } = await exchange(head + SECOND, 3_000);
      const answers = statusLines(text);
      expect(answers[0], upgrade).toBe('HTTP/1.1 200');
      // Either the second request is answered, or the server has closed so the client retries.
      expect({ upgrade, answered: answers.length, closed }, text).toSatisfy((outcome: { answered: number; closed: boolean }) => outcome.answered === 2 || outcome.closed);
    }
  });

  it('when an HTTP/1.0 request says `close` as well as `keep-alive`, then the connection is closed after its answer and nothing after it is read', async () => {
    // RFC 9112 §9.3: a `close` option ends the connection after the current response, whatever
    // else Connection says. llhttp honours `keep-alive` first on HTTP/1.0, so the server answered
    // `Connection: keep-alive` and read the bytes after it as a second request, where a proxy in
    // front that honours `close` thinks the connection ended (framing it may read otherwise).
    for (const connection of ['Connection: keep-alive, close\r\n', 'Connection: close, keep-alive\r\n', 'Connection: keep-alive\r\nConnection: close\r\n']) {
      const { text, closed } = await exchange(`GET /health HTTP/1.0\r\n${connection}\r\n${SECOND}`, 3_000);
      expect(statusLines(text), JSON.stringify(connection)).toEqual(['HTTP/1.1 200']);
      expect(text, JSON.stringify(connection)).not.toMatch(/\r\nConnection: keep-alive\r\n/i);
      expect(closed, JSON.stringify(connection)).toBe(true);
    }
  });

  it('when a request with `Connection: close` is followed by more bytes in the same write, then it is still answered before the connection is closed', async () => {
    // RFC 9112 §9.6: the server sends the final response to the request that carried `close`,
    // then closes, and processes nothing after it. llhttp refuses the bytes after it
    // (HPE_CLOSED_CONNECTION) while the request still waits for its turn, and answerClientError
    // then closes the connection without writing anything: the sound request is lost.
    for (const head of [
      'GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n',
      'POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}',
    ]) {
      const { text, closed } = await exchange(head + SECOND, 3_000);
      expect(closed, JSON.stringify(head)).toBe(true);
      expect(statusLines(text), JSON.stringify(head)).toHaveLength(1);
    }
  });

  it('when a request declares a body larger than the limit with an Expect other than 100-continue, then it is refused in the error envelope and the connection is closed before the body is read', async () => {
    // Node answers an Expect it does not know with a bare 417 (no envelope, no X-Request-Id)
    // before any handler runs, keeps the connection alive and reads the whole declared body to
    // throw it away: the 413-before-a-byte-is-read rule (helper 97) and the header checks
    // (two Host, two Authorization) are skipped. 50 MB sent after such a 417 were read in 0.07 s
    // and the next request on the connection was served.
    const declared = 100 * 1024 * 1024;
    const { text, closed } = await exchange(
      `POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nExpect: foo\r\nContent-Type: application/json\r\nContent-Length: ${declared}\r\n\r\n`,
      3_000,
    );
    expect(closed).toBe(true);
    const body = text.slice(text.indexOf('\r\n\r\n') + 4);
    expect(text).toMatch(/^HTTP\/1\.1 4\d\d /);
    expect(JSON.parse(body)).toMatchObject({ success: false });
  });
  it('when a client sends CONNECT, alone or pipelined behind a registration, then what came before is answered and carried out, and the CONNECT gets a 405 in the envelope', async () => {
    // With no 'connect' listener Node destroyed the socket: no answer to the CONNECT nor to the
    // registration ahead of it, which was dropped as its client had gone (helper 145).
    for (const target of ['127.0.0.1:443', '/api/v1/users', `http://127.0.0.1:${server.port}/api/v1/users`]) {
      const { text, closed } = await exchange(`CONNECT ${target} HTTP/1.1\r\nHost: 127.0.0.1:${server.port}\r\n\r\n`, 2_000);
      expect(text, `CONNECT ${target}`).toMatch(/^HTTP\/1\.1 405 /);
      expect(text).toMatch(/\r\nx-request-id: [\w-]+\r\n/i);
      expect(text).toContain('"success":false');
      expect(closed).toBe(true);
    }
    const username = `tunnel_${Date.now()}`;
    const body = JSON.stringify({ username, email: `${username}@example.com`, password: 'Tunnel-Passw0rd!' });
    const register = `POST /api/v1/auth/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;
    const { text, closed } = await exchange(`GET /health HTTP/1.1\r\nHost: x\r\n\r\n${register}CONNECT 127.0.0.1:443 HTTP/1.1\r\nHost: 127.0.0.1:443\r\n\r\n`, 5_000);
    expect(statusLines(text)).toEqual(['HTTP/1.1 200', 'HTTP/1.1 201', 'HTTP/1.1 405']);
    expect(closed).toBe(true);
    expect(await server.sql('SELECT username FROM users WHERE username = $1', [username])).toEqual([{ username }]);
  });

  it('when a request carries two Content-Type headers, in either order, then 400 in the envelope and nothing is done', async () => {
    // Node read the first and dropped the second; a proxy or filter that keeps the last saw text
    // it had no reason to inspect where the server parsed JSON, and the login went through (helper 145).
    const body = JSON.stringify({ usernameOrEmail: 'nobody_here', password: 'Whatever-Passw0rd!' });
    for (const [first, second] of [
      ['application/json', 'text/plain'],
      ['text/plain', 'application/json'],
    ]) {
      const { text } = await exchange(
        `POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: ${first}\r\nContent-Type: ${second}\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
        2_000,
      );
      expect(text).toMatch(/^HTTP\/1\.1 400 /);
      expect(text).toContain('one Content-Type header');
    }
  });
  it('when a client sends CONNECT and resets the connection, alone or behind a request, then the server goes on serving', async () => {
    // The CONNECT's socket had no error listener once Node handed it over: the reset was an
    // uncaught ECONNRESET that stopped the process (helper 146).
    for (const bytes of [
      'CONNECT 127.0.0.1:443 HTTP/1.1\r\nHost: 127.0.0.1:443\r\n\r\n',
      `GET /health HTTP/1.1\r\nHost: x\r\n\r\nCONNECT 127.0.0.1:443 HTTP/1.1\r\nHost: 127.0.0.1:443\r\n\r\n`,
    ]) {
      const socket = net.connect(server.port, '127.0.0.1');
      socket.on('error', () => undefined);
      await new Promise<void>((resolve) => socket.once('connect', resolve));
      socket.write(bytes);
      await new Promise((resolve) => setTimeout(resolve, 20));
      socket.resetAndDestroy();
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect((await exchange('GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n', 2_000)).text).toMatch(/^HTTP\/1\.1 200 /);
  });

  it('when a client keeps its side of a refused CONNECT open, then the server ends it after the keep-alive timeout, and closeNow at shutdown ends it at once', async () => {
    // Node takes a CONNECT's socket out of its timeouts and of closeAllConnections: it held its
    // place in the per-address cap for good, and the shutdown until it was killed (helper 146).
    const open = async (keepAliveMs: string) => {
      const limits = loadConfig({ HTTP_KEEP_ALIVE_TIMEOUT_MS: keepAliveMs }).server.connections;
      const dual = createDualProtocolServer({ http1: (_req, res) => res.end('ok'), http2: (_req, res) => res.end('ok') }, { limits });
      await new Promise<void>((resolve) => dual.server.listen(0, '127.0.0.1', resolve));
      const socket = net.connect({ port: (dual.server.address() as net.AddressInfo).port, host: '127.0.0.1', allowHalfOpen: true });
      let text = '';
      socket.on('data', (chunk: Buffer) => (text += chunk.toString('latin1')));
      socket.on('error', () => undefined);
      socket.write('CONNECT 127.0.0.1:443 HTTP/1.1\r\nHost: 127.0.0.1:443\r\n\r\n');
      await new Promise((resolve) => setTimeout(resolve, 100));
      let stopped = false;
      const stopping = dual.close().then(() => (stopped = true));
      return { dual, socket, stopping, stopped: () => stopped, text: () => text };
    };
    // The server's side ends within the keep-alive timeout, and with it the close.
    const lingering = await open('300');
    expect(lingering.text()).toMatch(/^HTTP\/1\.1 405 /);
    const refusedAt = Date.now();
    await lingering.stopping;
    expect(Date.now() - refusedAt).toBeLessThan(1_000);
    lingering.socket.destroy();
    // With a long keep-alive the close waits, until closeNow ends it.
    const held = await open('60000');
    expect(held.text()).toMatch(/^HTTP\/1\.1 405 /);
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(held.stopped()).toBe(false);
    expect(held.dual.closeNow()).toBe(1);
    await held.stopping;
    held.socket.destroy();
  });
});
