// The messages of a streaming RPC meet the same checks as a unary request's (helper 169):
// Health/Watch, the one server-streaming RPC, skipped them (the validation interceptor looked at
// unary requests only), so a service name with a NUL, or a binary request carrying a field
// HealthCheckRequest does not declare, was answered with a watch (SERVICE_UNKNOWN / SERVING)
// where Health/Check answers the same bytes invalid_argument.
import http2 from 'node:http2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from '../helpers/test-app.ts';

let t: TestServer;

beforeAll(async () => {
  t = await startTestServer();
});

afterAll(async () => {
  await t.close();
});

const envelope = (flags: number, message: Uint8Array): Buffer => {
  const out = Buffer.alloc(5 + message.length);
  out[0] = flags;
  out.writeUInt32BE(message.length, 1);
  Buffer.from(message).copy(out, 5);
  return out;
};

/** A gRPC call over h2c with a 1 s deadline; the grpc-status it ends with, and whether a message came first. */
function grpcCall(method: string, message: Uint8Array): Promise<{ status: string; messages: number }> {
  return new Promise((resolve, reject) => {
    const session = http2.connect(t.baseUrl);
    session.on('error', reject);
    const stream = session.request({ ':method': 'POST', ':path': `/grpc.health.v1.Health/${method}`, 'content-type': 'application/grpc', te: 'trailers', 'grpc-timeout': '1S' });
    let status = 'none';
    let bytes = 0;
    const take = (headers: http2.IncomingHttpHeaders) => {
      if (headers['grpc-status'] !== undefined) status = String(headers['grpc-status']);
    };
    stream.on('response', take);
    stream.on('trailers', take);
    stream.on('data', (chunk: Buffer) => (bytes += chunk.length));
    stream.on('error', () => undefined);
    stream.on('close', () => {
      session.close();
      resolve({ status, messages: bytes > 0 ? 1 : 0 });
    });
    stream.end(envelope(0, message));
  });
}

describe('Health/Watch against what Health/Check refuses', () => {
  const cases: [string, Buffer][] = [
    ['a service name with a NUL', Buffer.from([0x0a, 1, 0x00])],
    ['an undeclared field (number 5, varint)', Buffer.from([0x28, 1])],
    ['an undeclared field (number 99, string)', Buffer.from([0x9a, 0x06, 3, 0x61, 0x62, 0x63])],
  ];
  it.each(cases)('when a gRPC request carries %s, then Watch refuses it invalid_argument as Check does, and starts no watch', async (_label, message) => {
    const check = await grpcCall('Check', message);
    expect(check.status).toBe('3');
    const watch = await grpcCall('Watch', message);
    expect(watch).toEqual({ status: '3', messages: 0 });
  });

  it('when a Connect JSON watch names a service with a NUL, then invalid_argument, as Check answers it', async () => {
    const check = await fetch(`${t.baseUrl}/grpc.health.v1.Health/Check`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"service":"\\u0000"}' });
    expect(check.status).toBe(400);
    const watch = await fetch(`${t.baseUrl}/grpc.health.v1.Health/Watch`, {
      method: 'POST',
      headers: { 'content-type': 'application/connect+json', 'connect-timeout-ms': '1000' },
      body: envelope(0, new TextEncoder().encode('{"service":"\\u0000"}')),
    });
    const body = Buffer.from(await watch.arrayBuffer());
    // The first envelope is the end of the stream (flags 2), carrying the error; not a status message.
    expect(body[0]).toBe(2);
    expect(body.subarray(5).toString()).toContain('"invalid_argument"');
  });
});
