// The RPC transport edge (helper 110): what reaches the handlers' decoders and compressors before
// any caller is known. Three defects, each asserted as a client sees it:
// 1. An internal layer's health service is open to callers without INTERNAL_API_SECRET (as it
//    must be, for probes), but is decoded with the internal readMaxBytes of 16 MiB: a 16 KB gzip
//    bomb per call, no secret, inflates to 16 MiB and is parsed before `not_found`.
// 2. RPC answers are compressed with brotli at quality 11 whenever a client accepts only `br`
//    (connect-node's compressionBrotli), ~6× the CPU of gzip per answer; REST's compression()
//    uses quality 4. Unauthenticated reflection streams give 200 such answers per call. (A first
//    test compared the CPU of the two; under CI's load the ratio wandered past its bound.)
// 3. A CORS preflight (a bodiless OPTIONS, answered synchronously) is marked `connection: close`
//    by the "answered before its body was read" rule, so every preflight costs the browser its
//    connection.
// And one left from an earlier round: a method an RPC path does not take was answered 405
// without the Allow header RFC 9110 requires.
import { create, toBinary } from '@bufbuild/protobuf';
import { randomBytes } from 'node:crypto';
import http2 from 'node:http2';
import net from 'node:net';
import { brotliCompressSync, brotliDecompressSync, constants as zlibConstants, gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Code, ConnectError, createClient } from '@connectrpc/connect';
import { createConnectTransport, createGrpcTransport } from '@connectrpc/connect-node';
import { AuditEventType } from '../../gen/proto/arcana/audit/v1/audit_service_pb.js';
import { AuditRepositoryService } from '../../gen/proto/arcana/internal/repository/v1/audit_repository_service_pb.js';
import { TokenRepositoryService } from '../../gen/proto/arcana/internal/repository/v1/token_repository_service_pb.js';
import { UserRepositoryService } from '../../gen/proto/arcana/internal/repository/v1/user_repository_service_pb.js';
import { HealthCheckRequestSchema } from '../../gen/proto/grpc/health/v1/health_pb.js';
import { ServerReflectionRequestSchema } from '../../gen/proto/grpc/reflection/v1/reflection_pb.js';
import { createApplication, type Application } from '../../src/app.ts';
import { loadConfig } from '../../src/config.ts';
import { createLogger } from '../../src/infrastructure/logger.ts';
import { createDualProtocolServer } from '../../src/server.ts';
import { openTestDatabase, type TestDatabase } from '../helpers/test-database.ts';
import { startTestServer, TEST_DATABASE_URL, TEST_ENV, type TestServer } from '../helpers/test-app.ts';
import { RawClient, RPC_PROTOCOLS, type RpcProtocol } from './raw-protocols.ts';

/** The public facades the last three groups attack, one server for all of them. */
let t: TestServer;

beforeAll(async () => {
  t = await startTestServer();
}, 60_000);

afterAll(async () => {
  await t.close();
});

describe('an internal layer against a caller without INTERNAL_API_SECRET', () => {
  let database: TestDatabase;
  let repository: Application;
  let origin: string;
  let closeServer: () => Promise<void>;

  beforeAll(async () => {
    database = await openTestDatabase(TEST_DATABASE_URL, `test_${Date.now()}_${randomBytes(4).toString('hex')}`);
    const env = { ...TEST_ENV, DATABASE_URL: database.url, DEPLOYMENT_MODE: 'layered', COMMUNICATION_PROTOCOL: 'grpc', DEPLOYMENT_LAYER: 'repository' };
    const config = loadConfig(env);
    repository = await createApplication(config, createLogger({ level: 'silent' }));
    const { server, close } = createDualProtocolServer({ http1: repository.http, http2: repository.http2 }, { limits: config.server.connections });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const address = server.address();
    origin = `http://127.0.0.1:${typeof address === 'object' && address !== null ? address.port : 0}`;
    closeServer = close;
  }, 60_000);

  afterAll(async () => {
    repository.drain();
    await closeServer();
    await repository.close();
    await database.close();
  });

  /** A grpc.health.v1.HealthCheckRequest whose service name is `size` bytes, gzipped into one envelope. */
  const healthBomb = (size: number): Buffer => {
    const head = [0x0a];
    for (let n = size; ; n >>>= 7) {
      if (n <= 0x7f) {
        head.push(n);
        break;
      }
      head.push((n & 0x7f) | 0x80);
    }
    const compressed = gzipSync(Buffer.concat([Buffer.from(head), Buffer.alloc(size, 0x61)]), { level: 9 });
    const envelope = Buffer.alloc(5 + compressed.length);
    envelope[0] = 1;
    envelope.writeUInt32BE(compressed.length, 1);
    compressed.copy(envelope, 5);
    return envelope;
  };

  const checkWithoutSecret = (session: http2.ClientHttp2Session, body: Buffer): Promise<{ code: string; message: string }> =>
    new Promise((resolve) => {
      const stream = session.request({ ':method': 'POST', ':path': '/grpc.health.v1.Health/Check', 'content-type': 'application/grpc', 'grpc-encoding': 'gzip', te: 'trailers' });
      let answer = { code: 'none', message: '' };
      const take = (headers: http2.IncomingHttpHeaders) => {
        if (headers['grpc-status'] !== undefined) answer = { code: String(headers['grpc-status']), message: decodeURIComponent(String(headers['grpc-message'] ?? '')) };
      };
      stream.on('response', take);
      stream.on('trailers', take);
      stream.on('data', () => undefined);
      stream.on('error', () => undefined);
      stream.on('close', () => resolve(answer));
      stream.end(body);
    });

  it('when callers without the secret send Health/Check gzip bombs (16 KB inflating to 16 MiB), then each is refused before it is inflated, and memory stays bounded', async () => {
    const bomb = healthBomb(16 * 1024 * 1024 - 64);
    expect(bomb.byteLength).toBeLessThan(20_000);
    const sessions = Array.from({ length: 4 }, () => {
      const session = http2.connect(origin);
      session.on('error', () => undefined);
      return session;
    });
    const baseline = process.memoryUsage().rss;
    let peak = baseline;
    const sampler = setInterval(() => {
      peak = Math.max(peak, process.memoryUsage().rss);
    }, 10);
    let answers: { code: string; message: string }[];
    try {
      // 24 calls, 390 KB on the wire in all.
      answers = await Promise.all(Array.from({ length: 24 }, (_, i) => checkWithoutSecret(sessions[i % sessions.length] as http2.ClientHttp2Session, bomb)));
    } finally {
      clearInterval(sampler);
      for (const session of sessions) session.close();
    }
    peak = Math.max(peak, process.memoryUsage().rss);
    const grewMiB = Math.round((peak - baseline) / 2 ** 20);
    // A health request names a service: a few hundred bytes at most. What an unauthenticated
    // caller may make the layer inflate and parse should be bounded as the public port bounds it.
    expect(grewMiB, `resident memory grew by ${grewMiB} MiB for 24 unauthenticated health checks`).toBeLessThan(128);
    expect(answers.map((answer) => answer.code)).toEqual(Array.from({ length: 24 }, () => '8'));
  }, 120_000);

  it('when a caller with the secret sends a repository call that lacks a required message field, then it is invalid_argument, not internal, over gRPC and Connect, and nothing is written', async () => {
    // Helper 193: an empty CreateUser was answered `internal` and logged as a server error.
    const secret = { authorization: `Bearer ${TEST_ENV.INTERNAL_API_SECRET ?? ''}` };
    const users = async () => Number((await database.sql<{ n: string }>('SELECT count(*) AS n FROM users'))[0]?.n);
    const before = await users();
    const transports = [createGrpcTransport({ baseUrl: origin }), createConnectTransport({ baseUrl: origin, httpVersion: '1.1' })];
    const codes = await Promise.all(
      transports.flatMap((transport) => {
        const client = createClient(UserRepositoryService, transport);
        return Array.from({ length: 5 }, () =>
          client.createUser({}, { headers: secret }).then(
            () => 'ok',
            (error: unknown) => Code[ConnectError.from(error).code],
          ),
        );
      }),
    );
    expect(codes).toEqual(Array.from({ length: 10 }, () => Code[Code.InvalidArgument]));
    expect(await users()).toBe(before);
  });

  it('when a caller with the secret sends values the database refuses, a nested message lacking a required field, or no revocation reason, then each is invalid_argument, not internal, over gRPC and Connect', async () => {
    // Helper 196: 167 of 967 such calls were answered `internal` (HTTP 500) and logged as server
    // errors: PostgreSQL's data exceptions (a NUL, a value longer than its column, a family id
    // that is no UUID, a negative LIMIT) passed through as they came, and two checks of the
    // request threw plain errors.
    const secret = { authorization: `Bearer ${TEST_ENV.INTERNAL_API_SECRET ?? ''}` };
    const [user] = await database.sql<{ id: number }>(
      `INSERT INTO users (username, username_key, email, password_hash, updated_at) VALUES ('edge_values', 'edge_values', 'edge_values@example.com', 'x', now()) RETURNING id`,
    );
    const id = user?.id ?? 0;
    const transports = [createGrpcTransport({ baseUrl: origin }), createConnectTransport({ baseUrl: origin, httpVersion: '1.1' })];
    const answers = await Promise.all(
      transports.flatMap((transport) => {
        const users = createClient(UserRepositoryService, transport);
        const tokens = createClient(TokenRepositoryService, transport);
        const audit = createClient(AuditRepositoryService, transport);
        const calls: [string, () => Promise<unknown>][] = [
          ['a NUL', () => users.findUserByLogin({ usernameOrEmail: 'edge\u0000' }, { headers: secret })],
          ['longer than its column', () => users.updateUser({ id, changes: { phone: '9'.repeat(300) } }, { headers: secret })],
          ['no UUID', () => tokens.revokeTokenFamily({ familyId: 'not-a-uuid', reason: 'revoked' }, { headers: secret })],
          ['a negative page size', () => users.listUsers({ page: 1, perPage: -1, sort: 'id' }, { headers: secret })],
          ['a nested required field', () => tokens.createToken({ token: {} }, { headers: secret })],
          ['no revocation reason', () => tokens.revokeToken({ id: 1 }, { headers: secret })],
          // Helper 197: page 0 reached Prisma as a negative skip; a timestamp past what a Date holds
          // became an Invalid Date; details not flat threw a plain error.
          ['page 0', () => audit.listAuditEvents({ page: 0, perPage: 20 }, { headers: secret })],
          ['a timestamp no Date holds', () => audit.purgeAuditEvents({ before: { seconds: 9_007_199_254_740_993n, nanos: 0 }, limit: 10 }, { headers: secret })],
          [
            'details not flat',
            () =>
              audit.createAuditEvents(
                { events: [{ type: AuditEventType.LOGOUT, details: { nested: { deeper: 1 } }, createdAt: { seconds: 1_700_000_000n, nanos: 0 } }] },
                { headers: secret },
              ),
          ],
        ];
        return calls.map(async ([what, call]) => [
          what,
          await call().then(
            () => 'ok',
            (error: unknown) => Code[ConnectError.from(error).code],
          ),
        ]);
      }),
    );
    const half = answers.length / 2;
    expect(Object.fromEntries(answers.slice(0, half))).toEqual(Object.fromEntries(answers.slice(0, half).map(([what]) => [what, Code[Code.InvalidArgument]])));
    expect(Object.fromEntries(answers.slice(half))).toEqual(Object.fromEntries(answers.slice(half).map(([what]) => [what, Code[Code.InvalidArgument]])));
    expect(await database.sql('SELECT id FROM audit_events')).toEqual([]);
    // Nothing was changed by them.
    expect(await database.sql('SELECT phone, version FROM users WHERE id = $1', [id])).toEqual([{ phone: null, version: 1 }]);
  });
});

describe('response compression on the public RPC facade', () => {
  /** One reflection answer, as a client accepting only br receives it: the envelope's bytes, compressed. */
  const compressedReflectionAnswer = (): Promise<{ flags: number; payload: Buffer }> =>
    new Promise((resolve, reject) => {
      const session = http2.connect(t.baseUrl);
      session.on('error', reject);
      const stream = session.request({
        ':method': 'POST',
        ':path': '/grpc.reflection.v1.ServerReflection/ServerReflectionInfo',
        'content-type': 'application/grpc',
        'grpc-accept-encoding': 'br',
        te: 'trailers',
      });
      const chunks: Buffer[] = [];
      stream.on('data', (chunk: Buffer) => chunks.push(chunk));
      stream.on('error', reject);
      stream.on('close', () => {
        session.close();
        const body = Buffer.concat(chunks);
        resolve({ flags: body[0] ?? -1, payload: body.subarray(5, 5 + body.readUInt32BE(1)) });
      });
      const question = toBinary(
        ServerReflectionRequestSchema,
        create(ServerReflectionRequestSchema, { messageRequest: { case: 'fileContainingSymbol', value: 'arcana.user.v1.UserService' } }),
      );
      const envelope = Buffer.alloc(5 + question.length);
      envelope.writeUInt32BE(question.length, 1);
      envelope.set(question, 5);
      stream.end(envelope);
    });

  it('when an unauthenticated client accepts only br, then answers are compressed at brotli quality 4, as REST compresses, not 11', async () => {
    // Quality 11 (connect-node's, zlib's default) cost ~6 ms of a core per 4.6 KB reflection
    // answer against gzip's ~1 ms; 200 questions per stream, on bcrypt's thread pool. Brotli's
    // output for the same bytes and settings is always the same, so the quality shows in it.
    const { flags, payload } = await compressedReflectionAnswer();
    expect(flags).toBe(1);
    const message = brotliDecompressSync(payload);
    expect(message.length).toBeGreaterThan(1024);
    const at = (quality: number) => brotliCompressSync(message, { params: { [zlibConstants.BROTLI_PARAM_QUALITY]: quality } });
    expect(payload.equals(at(4))).toBe(true);
    expect(payload.equals(at(11))).toBe(false);
  });
});

describe('request compression on the public RPC facade', () => {
  let raw: RawClient;
  beforeAll(() => {
    raw = new RawClient(t.baseUrl);
  });
  afterAll(() => {
    raw.close();
  });

  it("when requests are compressed with deflate (gRPC's standard encoding, one of the two grpc-python offers) or with one the server does not take, then the first are answered and the others refused naming what it takes, over every RPC protocol", async () => {
    // Found by an attacker (helper 126): deflate was `unimplemented`, and the refusal named no
    // encoding (connect-es drops protocol headers from an error's metadata), so a client could
    // not learn what to send instead.
    const payload = (protocol: RpcProtocol) =>
      protocol === 'connect-json' ? new TextEncoder().encode('{}') : toBinary(HealthCheckRequestSchema, create(HealthCheckRequestSchema));
    const answers = await Promise.all(
      RPC_PROTOCOLS.flatMap((protocol) => [
        raw
          .rpc(protocol, 'grpc.health.v1.Health/Check', payload(protocol), { compression: 'deflate' })
          .then((answer) => ({ protocol, sent: 'deflate', code: answer.code, accepted: '' })),
        raw.rpc(protocol, 'grpc.health.v1.Health/Check', payload(protocol), { declaredEncoding: 'snappy' }).then((answer) => ({
          protocol,
          sent: 'snappy',
          code: answer.code,
          accepted: (answer.headers.get(protocol.startsWith('connect') ? 'accept-encoding' : 'grpc-accept-encoding') ?? '')
            .split(',')
            .map((name) => name.trim())
            .sort()
            .join(','),
        })),
      ]),
    );
    expect(answers).toEqual(
      RPC_PROTOCOLS.flatMap((protocol) => [
        { protocol, sent: 'deflate', code: 'ok', accepted: '' },
        { protocol, sent: 'snappy', code: 'unimplemented', accepted: 'br,deflate,gzip' },
      ]),
    );
  });
});

describe('CORS preflights for Connect and gRPC-Web', () => {
  it('when a browser sends two preflights on one keep-alive connection, then both are answered on it: a bodiless OPTIONS has nothing unread', async () => {
    const socket = net.connect(t.port, '127.0.0.1');
    const preflight = (origin: string) =>
      `OPTIONS /arcana.auth.v1.AuthService/Login HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: ${origin}\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: content-type,connect-protocol-version\r\n\r\n`;
    let received = '';
    socket.on('data', (chunk: Buffer) => {
      received += chunk.toString('latin1');
    });
    const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
    socket.write(preflight('http://localhost:3000') + preflight('http://localhost:3000'));
    await Promise.race([closed, new Promise((resolve) => setTimeout(resolve, 1_000))]);
    socket.destroy();
    const statusLines = received.split('\r\n').filter((line) => line.startsWith('HTTP/1.1 '));
    expect(received.toLowerCase()).not.toContain('connection: close');
    expect(statusLines).toEqual(['HTTP/1.1 204 No Content', 'HTTP/1.1 204 No Content']);
  });
});

describe('an RPC path asked with a method it does not take', () => {
  it('when a client sends PUT, DELETE or PATCH to an RPC path, over HTTP/1.1 or HTTP/2, then the 405 says which methods it takes', async () => {
    const paths = { '/arcana.user.v1.UserService/GetUser': 'POST, GET', '/arcana.auth.v1.AuthService/Login': 'POST' };
    const session = http2.connect(t.baseUrl);
    session.on('error', () => undefined);
    try {
      for (const [path, allowed] of Object.entries(paths)) {
        for (const method of ['PUT', 'DELETE', 'PATCH']) {
          const http1 = await fetch(`${t.baseUrl}${path}`, { method, headers: { 'content-type': 'application/json' } });
          expect({ path, method, status: http1.status, allow: http1.headers.get('allow') }).toEqual({ path, method, status: 405, allow: allowed });
          const http2Answer = await new Promise<http2.IncomingHttpHeaders>((resolve, reject) => {
            const stream = session.request({ ':method': method, ':path': path, 'content-type': 'application/grpc' });
            stream.on('response', resolve);
            stream.on('error', reject);
            stream.resume();
            stream.end();
          });
          expect({ path, method, status: http2Answer[':status'], allow: http2Answer.allow }).toEqual({ path, method, status: 405, allow: allowed });
        }
      }
    } finally {
      session.close();
    }
  });
});
