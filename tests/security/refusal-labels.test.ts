// What a client can make of the request metrics and of a refusal's headers with requests it is
// refused. Found by an attacking helper (138):
// - The REST route label was given from the path alone (routeMatcher, for requests refused before
//   the validator matched them), whatever the method: with the `method` label taking any of the
//   ~34 methods Node's parser accepts, one unauthenticated client made methods × templates ×
//   statuses series (3,300 series, a 5.7 MB `/metrics` taking 0.9 s to scrape after 5,000
//   requests in 15 s). A method no operation of the path takes is `unmatched` again.
// - A REST body in a content coding the server does not take was a 415 without Accept-Encoding
//   (RFC 9110 §15.5.16), where the RPC refusals name the encodings taken; and so did the refusal
//   of an unknown encoding on the reflection stream, the one stream the gate does not decode.
// - RPCs answered before the gate (a procedure no service has, a method or content type the
//   procedure does not take: 404, 405, 415) were counted nowhere, where REST counts its own.
import { create, toBinary } from '@bufbuild/protobuf';
import { encodeEnvelope } from '@connectrpc/connect/protocol';
import http from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HealthCheckRequestSchema } from '../../gen/proto/grpc/health/v1/health_pb.js';
import { ServerReflectionRequestSchema } from '../../gen/proto/grpc/reflection/v1/reflection_pb.js';
import { serveTestMetrics, type MetricsScrape } from '../helpers/metrics-scrape.ts';
import { startTestServer, type TestServer } from '../helpers/test-app.ts';
import { RawClient } from './raw-protocols.ts';

let t: TestServer;
let raw: RawClient;
let metrics: MetricsScrape;

beforeAll(async () => {
  t = await startTestServer({ METRICS_PORT: '9464' }, { topology: 'monolithic' });
  metrics = await serveTestMetrics(t);
  raw = new RawClient(t.baseUrl);
}, 60_000);

afterAll(async () => {
  raw.close();
  await metrics.close();
  await t.close();
});

const series = async () => (await metrics.scrape()).split('\n').filter((line) => line.startsWith('arcana_http_requests_seconds_count{'));

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

describe('the RPC request metrics', () => {
  it('when RPCs are refused before the gate (unknown procedure over h2c, a content type or method the procedure does not take), then each is counted, the unknown procedure as unmatched', async () => {
    const scrape = async () => (await metrics.scrape()).split('\n').filter((line) => line.startsWith('arcana_rpc_requests_seconds_count{'));
    const count = (lines: string[], part: string) => lines.filter((line) => line.includes(part)).reduce((sum, line) => sum + Number(line.split(' ').at(-1)), 0);
    const before = await scrape();
    const answers = await Promise.all([
      raw.http2('POST', '/arcana.user.v1.UserService/NoSuchMethod', { 'content-type': 'application/grpc', te: 'trailers' }, encodeEnvelope(0, new Uint8Array(0))),
      raw.http2('POST', '/arcana.user.v1.UserService/GetUser', { 'content-type': 'application/grpc+foo', te: 'trailers' }, encodeEnvelope(0, new Uint8Array(0))),
      raw.http1('POST', '/arcana.user.v1.UserService/GetUser', { 'content-type': 'text/plain' }, new TextEncoder().encode('{}')),
      raw.http1('PUT', '/arcana.user.v1.UserService/GetUser', { 'content-type': 'application/json' }, new TextEncoder().encode('{}')),
    ]);
    expect(answers.map((answer) => answer.status)).toEqual([404, 415, 415, 405]);
    const after = await scrape();
    expect({
      unmatched: count(after, 'procedure="unmatched"') - count(before, 'procedure="unmatched"'),
      getUser: count(after, 'procedure="arcana.user.v1.UserService/GetUser"') - count(before, 'procedure="arcana.user.v1.UserService/GetUser"'),
      named: after.some((line) => line.includes('NoSuchMethod')),
    }).toEqual({ unmatched: 1, getUser: 3, named: false });
  });

  it('when reflection, a bidirectional stream, is asked for over HTTP/1.1 by gRPC-Web or Connect, then it is unimplemented in that protocol, with a request id, and counted so', async () => {
    // connect-es answered a bare 505 with no status any client reads and no request id, counted
    // as `unknown`, a server fault (helper 147).
    const reflection = 'grpc.reflection.v1.ServerReflection/ServerReflectionInfo';
    const listServices = encodeEnvelope(0, toBinary(ServerReflectionRequestSchema, create(ServerReflectionRequestSchema, { messageRequest: { case: 'listServices', value: '' } })));
    const count = (code: string) => metrics.sum('arcana_rpc_requests_seconds_count', { procedure: reflection, code });
    const before = { unimplemented: await count('unimplemented'), unknown: await count('unknown') };
    const [grpcWeb, connect] = await Promise.all([
      raw.http1('POST', `/${reflection}`, { 'content-type': 'application/grpc-web+proto' }, listServices),
      raw.http1('POST', `/${reflection}`, { 'content-type': 'application/connect+proto' }, listServices),
    ]);
    expect({ status: grpcWeb.status, grpcStatus: grpcWeb.headers.get('grpc-status'), requestId: grpcWeb.headers.get('x-request-id') !== null }).toEqual({
      status: 200,
      grpcStatus: '12',
      requestId: true,
    });
    expect({
      status: connect.status,
      unimplemented: new TextDecoder().decode(connect.body).includes('"code":"unimplemented"'),
      requestId: connect.headers.get('x-request-id') !== null,
    }).toEqual({
      status: 200,
      unimplemented: true,
      requestId: true,
    });
    expect({ unimplemented: (await count('unimplemented')) - before.unimplemented, unknown: (await count('unknown')) - before.unknown }).toEqual({ unimplemented: 2, unknown: 0 });
  });
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

  it('when a stream over gRPC, gRPC-Web or Connect names an encoding the server does not take, then it is unimplemented naming those taken, the reflection stream as the health watch', async () => {
    const reflection = '/grpc.reflection.v1.ServerReflection/ServerReflectionInfo';
    const watch = '/grpc.health.v1.Health/Watch';
    const listServices = toBinary(ServerReflectionRequestSchema, create(ServerReflectionRequestSchema, { messageRequest: { case: 'listServices', value: '' } }));
    const healthCheck = toBinary(HealthCheckRequestSchema, create(HealthCheckRequestSchema, { service: '' }));
    const names = (value: string | null) =>
      (value ?? '')
        .split(',')
        .map((name) => name.trim())
        .filter((name) => name !== '')
        .sort()
        .join(',');
    const call = async (path: string, protocol: 'grpc' | 'connect', message: Uint8Array) => {
      const headers: Record<string, string> =
        protocol === 'grpc'
          ? { 'content-type': 'application/grpc', te: 'trailers', 'grpc-encoding': 'zstd' }
          : { 'content-type': 'application/connect+proto', 'connect-content-encoding': 'zstd' };
      const result = await raw.http2('POST', path, headers, encodeEnvelope(0, message));
      const accepted =
        protocol === 'grpc' ? (result.headers.get('grpc-accept-encoding') ?? result.trailers.get('grpc-accept-encoding')) : result.headers.get('connect-accept-encoding');
      const status =
        protocol === 'grpc'
          ? (result.trailers.get('grpc-status') ?? result.headers.get('grpc-status'))
          : new TextDecoder().decode(result.body).includes('"unimplemented"')
            ? '12'
            : 'other';
      return { path, protocol, status, accepted: names(accepted) };
    };
    const outcomes = await Promise.all([
      call(watch, 'grpc', healthCheck),
      call(watch, 'connect', healthCheck),
      call(reflection, 'grpc', listServices),
      call(reflection, 'connect', listServices),
    ]);
    expect(outcomes).toEqual([
      { path: watch, protocol: 'grpc', status: '12', accepted: 'br,deflate,gzip' },
      { path: watch, protocol: 'connect', status: '12', accepted: 'br,deflate,gzip' },
      { path: reflection, protocol: 'grpc', status: '12', accepted: 'br,deflate,gzip' },
      { path: reflection, protocol: 'connect', status: '12', accepted: 'br,deflate,gzip' },
    ]);
  });
});
