// gRPC-Web's text mode, as Google's grpc-web client sends it by default (`mode=grpcwebtext`):
// Content-Type and Accept `application/grpc-web-text`, `x-grpc-web: 1`, the request's frames in
// base64, the answer read as base64 that may be padded mid-stream. The client below speaks it on
// the wire through connect-es's gRPC-Web protocol, so that the answers are read by a real client;
// the attacks send what no client would.
import { Code, ConnectError, createClient, type Transport } from '@connectrpc/connect';
import { createNodeHttpClient, Http2SessionManager } from '@connectrpc/connect-node';
import { createTransport } from '@connectrpc/connect/protocol-grpc-web';
import { trailerParse } from '@connectrpc/connect/protocol-grpc-web';
import http from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AuthService } from '../../gen/proto/arcana/auth/v1/auth_service_pb.js';
import { newUser, startTestServer, type TestServer } from '../helpers/test-app.ts';

let server: TestServer;

beforeAll(async () => {
  server = await startTestServer();
});

afterAll(async () => {
  await server.close();
});

/** Base64 as the grpc-web client reads it: padded chunks, one after another. */
function fromTextChunks(text: string): Uint8Array {
  const chunks = text.match(/[A-Za-z0-9+/]*(?:==|=)?/g) ?? [];
  return new Uint8Array(Buffer.concat(chunks.filter((chunk) => chunk.length > 0).map((chunk) => Buffer.from(chunk, 'base64'))));
}

async function collect(body: AsyncIterable<Uint8Array> | undefined): Promise<Buffer> {
  const chunks: Uint8Array[] = [];
  for await (const chunk of body ?? []) chunks.push(chunk);
  return Buffer.concat(chunks);
}

/**
 * A gRPC-Web client in text mode. `split` sends the request as two base64 chunks, each padded, as
 * a client flushing twice would.
 */
function textTransport(baseUrl: string, httpVersion: '1.1' | '2', options: { split?: boolean } = {}): { transport: Transport; seen: string[]; close: () => void } {
  const agent = new http.Agent({ keepAlive: true });
  const sessions = new Http2SessionManager(baseUrl);
  const binary = httpVersion === '2' ? createNodeHttpClient({ httpVersion, sessionProvider: () => sessions }) : createNodeHttpClient({ httpVersion, nodeOptions: { agent } });
  const seen: string[] = [];
  const transport = createTransport({
    baseUrl,
    useBinaryFormat: true,
    interceptors: [],
    acceptCompression: [],
    compressMinBytes: 1024,
    readMaxBytes: 1 << 20,
    writeMaxBytes: 1 << 20,
    sendCompression: null,
    httpClient: async (request) => {
      const frames = await collect(request.body);
      const half = options.split === true ? Math.ceil(frames.length / 2) : frames.length;
      const text = frames.subarray(0, half).toString('base64') + frames.subarray(half).toString('base64');
      const header = new Headers(request.header);
      header.set('content-type', 'application/grpc-web-text');
      header.set('accept', 'application/grpc-web-text');
      const response = await binary({
        ...request,
        header,
        body: (async function* () {
          yield Buffer.from(text);
        })(),
      });
      seen.push(response.header.get('content-type') ?? '');
      const answer = fromTextChunks((await collect(response.body)).toString('latin1'));
      const binaryHeader = new Headers(response.header);
      binaryHeader.set('content-type', 'application/grpc-web+proto');
      return {
        ...response,
        header: binaryHeader,
        body: (async function* () {
          yield answer;
        })(),
      };
    },
  });
  return {
    transport,
    seen,
    close: () => {
      agent.destroy();
      sessions.abort();
    },
  };
}

/** One text-mode call on the wire: its status, Content-Type, and the grpc-status of its trailers (headers or body). */
async function rawTextCall(
  path: string,
  body: string | Buffer | ReadableStream<Uint8Array>,
): Promise<{ status: number; contentType: string | null; grpcStatus: string | null; grpcMessage: string | null; requestId: string | null }> {
  const response = await fetch(`${server.baseUrl}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/grpc-web-text', 'x-grpc-web': '1' },
    body,
    duplex: 'half',
  });
  const text = await response.text();
  let trailers = new Headers();
  const bytes = fromTextChunks(text);
  // The last frame, flagged 0x80, holds the trailers.
  for (let at = 0; at + 5 <= bytes.length;) {
    const length = Buffer.from(bytes.subarray(at + 1, at + 5)).readUInt32BE(0);
    if ((bytes[at] as number) & 0x80) trailers = trailerParse(bytes.subarray(at + 5, at + 5 + length));
    at += 5 + length;
  }
  return {
    status: response.status,
    contentType: response.headers.get('content-type'),
    grpcStatus: response.headers.get('grpc-status') ?? trailers.get('grpc-status'),
    grpcMessage: response.headers.get('grpc-message') ?? trailers.get('grpc-message'),
    requestId: response.headers.get('x-request-id') ?? trailers.get('x-request-id'),
  };
}

describe('gRPC-Web text mode', () => {
  it.each([
    ['HTTP/1.1', '1.1', false],
    ['HTTP/1.1, the request in two padded chunks', '1.1', true],
    ['HTTP/2', '2', false],
  ] as const)('when a text-mode client registers, logs in and reads itself over %s, then each call answers as over binary gRPC-Web', async (_name, httpVersion, split) => {
    const client = textTransport(server.baseUrl, httpVersion, { split });
    try {
      const auth = createClient(AuthService, client.transport);
      const body = newUser('text_mode');
      const registered = await auth.register(body);
      expect(registered.user?.username).toBe(body.username);
      const login = await auth.login({ usernameOrEmail: body.username, password: body.password });
      const token = login.tokens?.accessToken;
      expect(token).toMatch(/^ey/);
      const { user } = await auth.getCurrentUser({}, { headers: { authorization: `Bearer ${token}` } });
      expect(user?.email).toBe(body.email);
      // Errors arrive in the text answer's trailers, with their code.
      const refused = await auth.login({ usernameOrEmail: body.username, password: 'Wrong-Passw0rd!' }).catch((error: unknown) => ConnectError.from(error));
      expect(refused).toBeInstanceOf(ConnectError);
      expect((refused as ConnectError).code).toBe(Code.Unauthenticated);
      expect(new Set(client.seen)).toEqual(new Set(['application/grpc-web-text+proto']));
    } finally {
      client.close();
    }
  });

  it('when bodies that are not base64 arrive at once, then each is invalid_argument in a text answer, and nothing is decoded leniently', async () => {
    const check = Buffer.from([0, 0, 0, 0, 0]).toString('base64');
    const answers = await Promise.all(
      [
        // A character outside the alphabet, whitespace, the URL-safe alphabet.
        'AAAA*AA=',
        'AAAA AA=',
        'AAA-_AA=',
        // A group cut short, padding inside a group, three `=`.
        'AAAAAAA',
        'AA=AAAAA',
        'A===',
        // The frame's bytes themselves, not their base64.
        Buffer.from([0, 0, 0, 0, 0]),
      ].map((body) => rawTextCall('/grpc.health.v1.Health/Check', body)),
    );
    for (const answer of answers) {
      expect(answer).toMatchObject({ status: 200, contentType: 'application/grpc-web-text+proto', grpcStatus: '3' });
      expect(answer.grpcMessage).toMatch(/base64|protocol error/);
      expect(answer.requestId).toMatch(/./);
    }
    // The well-formed check, sent beside them, is served.
    expect(await rawTextCall('/grpc.health.v1.Health/Check', check)).toMatchObject({ status: 200, contentType: 'application/grpc-web-text+proto', grpcStatus: '0' });
  });

  it('when a text body is larger than a message may be, then it is resource_exhausted, declared or not', async () => {
    // 100 KiB is the body limit: its base64, and the 5-byte prefix, fit; a byte more does not.
    const limit = 100 * 1024;
    const frame = (size: number) => {
      const bytes = Buffer.alloc(5 + size);
      bytes.writeUInt32BE(size, 1);
      return bytes.toString('base64');
    };
    const declaredTooLong = await rawTextCall('/arcana.auth.v1.AuthService/Login', 'A'.repeat(Math.ceil((limit + 6) / 3) * 4));
    expect(declaredTooLong).toMatchObject({ contentType: 'application/grpc-web-text+proto', grpcStatus: '8' });
    // No Content-Length: the limit holds on what is decoded as it arrives.
    const streamed = await rawTextCall(
      '/arcana.auth.v1.AuthService/Login',
      new ReadableStream({
        start(controller) {
          controller.enqueue(new TextEncoder().encode(frame(limit + 1)));
          controller.close();
        },
      }),
    );
    expect(streamed).toMatchObject({ contentType: 'application/grpc-web-text+proto', grpcStatus: '8' });
    // A message of the limit's size is read (and refused as the empty login it is).
    const atLimit = await rawTextCall('/arcana.auth.v1.AuthService/Login', frame(limit));
    expect(atLimit.grpcStatus).not.toBe('8');
  });
});
