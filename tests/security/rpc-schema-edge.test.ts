// Clients in other languages at the RPC edge (helper 116): what a request the generated TypeScript
// would never send makes the server answer. The refusal itself is right (invalid_argument); what
// is attacked here is its size. The google.rpc.BadRequest detail names every unknown field number
// and echoes every unknown JSON key in full, and gRPC carries that detail in a header
// (grpc-status-details-bin), where HTTP/2 header limits apply: grpc-core (Python, C++, Ruby, C#)
// takes 8 KiB of metadata by default, grpc-go 16 KiB, Node's http2 64 KiB.
//
// The edge is the controller layer: the same code serves every topology, so this file runs in the
// monolithic project only.
import { BinaryWriter, WireType } from '@bufbuild/protobuf/wire';
import { encodeEnvelope } from '@connectrpc/connect/protocol';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loginAdmin, startTestServer, type TestServer } from '../helpers/test-app.ts';
import { RawClient } from './raw-protocols.ts';

let t: TestServer;
let raw: RawClient;

beforeAll(async () => {
  t = await startTestServer();
  raw = new RawClient(t.baseUrl);
});

afterAll(async () => {
  raw.close();
  await t.close();
});

/** grpc-core's default limit on a response's metadata (its headers, or its trailers). */
const GRPC_CORE_METADATA_LIMIT = 8 * 1024;

/** `count` varint fields with numbers the message does not declare (100, 101, …), each 0. */
const unknownFields = (count: number) => {
  const writer = new BinaryWriter();
  for (let number = 100; number < 100 + count; number += 1) writer.tag(number, WireType.Varint).uint32(0);
  return writer.finish();
};

const sizeOf = (headers: Headers) => {
  let size = 0;
  headers.forEach((value, name) => (size += name.length + value.length));
  return size;
};

/** A gRPC call's code and the size of its metadata, or how its stream ended when it was reset. */
async function grpcCall(procedure: string, message: Uint8Array, contentType = 'application/grpc') {
  // A connection of its own: the reset is a connection error (FRAME_SIZE_ERROR), which ends every
  // call on the connection, not this one only.
  const own = new RawClient(t.baseUrl);
  try {
    const result = await own.http2('POST', `/${procedure}`, { 'content-type': contentType, te: 'trailers' }, encodeEnvelope(0, message));
    return {
      grpcStatus: result.headers.get('grpc-status') ?? result.trailers.get('grpc-status'),
      metadataBytes: Math.max(sizeOf(result.headers), sizeOf(result.trailers)),
    };
  } catch (error) {
    return { grpcStatus: `stream reset: ${(error as Error).message}`, metadataBytes: Number.NaN };
  } finally {
    own.close();
  }
}

describe('refusals of unknown fields: an answer every gRPC client can read', () => {
  it('when an unauthenticated binary Register carries 1000 unknown fields (3 KB), then gRPC answers invalid_argument in metadata grpc-core accepts, not a reset stream', async () => {
    const answer = await grpcCall('arcana.auth.v1.AuthService/Register', unknownFields(1000));
    // Seen: the stream is reset (NGHTTP2_FRAME_SIZE_ERROR here; Python's grpcio reports INTERNAL
    // "Received RST_STREAM with error code 6"), while the server logs invalid_argument. From 300
    // unknown fields (900 bytes) on, grpcio reports RESOURCE_EXHAUSTED "received initial metadata
    // size exceeds limit" instead.
    expect(answer.grpcStatus).toBe('3');
    expect(answer.metadataBytes).toBeLessThanOrEqual(GRPC_CORE_METADATA_LIMIT);
  });

  it('when one client sends that request among other calls on a shared HTTP/2 connection (a gateway, a channel), then the other calls are still answered', async () => {
    const admin = await loginAdmin(t);
    const shared = new RawClient(t.baseUrl);
    try {
      const list = () =>
        shared
          .rpc('grpc', 'arcana.user.v1.UserService/ListUsers', new Uint8Array(), { token: admin })
          .then((answer) => answer.code)
          .catch((error: unknown) => `failed: ${(error as Error).message}`);
      const before = Array.from({ length: 100 }, list);
      const hostile = shared
        .http2('POST', '/arcana.auth.v1.AuthService/Register', { 'content-type': 'application/grpc', te: 'trailers' }, encodeEnvelope(0, unknownFields(1000)))
        .catch(() => undefined);
      const after = Array.from({ length: 100 }, list);
      await hostile;
      const codes = await Promise.all([...before, ...after]);
      // Seen: the connection is torn down (FRAME_SIZE_ERROR is a connection error): calls of
      // other callers in flight on it fail (grpcio: UNAVAILABLE "Socket closed", 59 of 400).
      expect(codes.filter((code) => code !== 'ok')).toEqual([]);
    } finally {
      shared.close();
    }
  });

  it('when a gRPC JSON (application/grpc+json) request names one unknown key of 20,000 characters, then invalid_argument in metadata grpc-core accepts', async () => {
    const body = new TextEncoder().encode(JSON.stringify({ ['k'.repeat(20_000)]: 1 }));
    const answer = await grpcCall('arcana.auth.v1.AuthService/Register', body, 'application/grpc+json');
    // Seen: invalid_argument, but with 27 KB of trailers (the key echoed, base64 and all): over
    // grpc-core's and grpc-go's limits. At 60,000 characters the stream is reset.
    expect(answer.grpcStatus).toBe('3');
    expect(answer.metadataBytes).toBeLessThanOrEqual(GRPC_CORE_METADATA_LIMIT);
  });

  it('when a Connect binary request of 94 KB carries 24,000 unknown fields, then the refusal is not many times the request (no amplification)', async () => {
    const message = unknownFields(24_000);
    const [connect, grpcWeb] = await Promise.all([
      raw.http2('POST', '/arcana.auth.v1.AuthService/Register', { 'content-type': 'application/proto' }, message),
      raw.http1('POST', '/arcana.auth.v1.AuthService/Register', { 'content-type': 'application/grpc-web+proto' }, encodeEnvelope(0, message)),
    ]);
    // Seen: 400 with a 3.9 MB body over Connect (41 times the request, about 350 ms of CPU), and a
    // 1.9 MB trailer frame over gRPC-Web, for one unauthenticated request.
    expect(connect.status).toBe(400);
    expect(connect.body.byteLength).toBeLessThanOrEqual(message.byteLength);
    expect(grpcWeb.body.byteLength).toBeLessThanOrEqual(message.byteLength);
  });

  it('when a REST body names 500 unknown keys, one of them 20,000 characters long, then the 400 lists a bounded few, each cut', async () => {
    const body: Record<string, string> = { username: 'someone_new', email: 'someone@example.com', password: 'Sturdy-Passw0rd!', ['k'.repeat(20_000)]: 'x' };
    for (let index = 0; index < 500; index += 1) body[`extra${index}`] = 'x';
    const res = await t.request.post('/api/v1/auth/register').send(body);
    expect(res.status).toBe(400);
    const details = (res.body as { error: { details: Record<string, string> } }).error.details;
    expect(Object.keys(details).length).toBeLessThanOrEqual(21);
    expect(Object.keys(details).every((key) => key.length <= 64)).toBe(true);
    expect(JSON.stringify(res.body).length).toBeLessThan(8 * 1024);
  });
});
