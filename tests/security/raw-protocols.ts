// Requests no generated client would send, over each public protocol: any bytes in any field,
// bodies cut short, garbled or wrongly compressed, a Connect GET with any query. Answers are
// normalised as tests/helpers/protocols.ts does: a Connect code name (`ok`, `invalid_argument`…,
// REST error codes mapped through the server's own table), the message, and the field problems
// (REST `details`, RPC google.rpc.BadRequest).
import { Code, ConnectError } from '@connectrpc/connect';
import { encodeEnvelope } from '@connectrpc/connect/protocol';
import { errorFromJsonBytes } from '@connectrpc/connect/protocol-connect';
import { findTrailerError } from '@connectrpc/connect/protocol-grpc';
import { trailerParse } from '@connectrpc/connect/protocol-grpc-web';
import http from 'node:http';
import http2 from 'node:http2';
import { brotliCompressSync, deflateSync, gzipSync } from 'node:zlib';
import { BadRequestSchema } from '../../gen/proto/google/rpc/error_details_pb.js';
import { CONNECT_CODE } from '../../src/controllers/rpc/interceptors.ts';

/** The RPC protocols; with REST they are the five the server speaks. */
export const RPC_PROTOCOLS = ['connect-json', 'connect-binary', 'grpc-web', 'grpc'] as const;
export type RpcProtocol = (typeof RPC_PROTOCOLS)[number];

export interface RawAnswer {
  /** `ok` or a Connect code name; REST error codes as the RPC facade would answer them. */
  code: string;
  /** The HTTP status (gRPC and gRPC-Web answer 200 and carry the code in trailers). */
  status: number;
  message: string;
  /** Field → problem: REST `details`, or the google.rpc.BadRequest field violations. */
  violations: Record<string, string>;
  /** Whether the answer had the shape its protocol promises (REST: the error envelope). */
  wellFormed: boolean;
  headers: Headers;
  /** REST: the parsed body. */
  json?: unknown;
}

export function codeName(code: Code): string {
  return Code[code].replace(/([a-z])([A-Z])/g, '$1_$2').toLowerCase();
}

/** Compresses with a codec the server accepts. */
export function compress(bytes: Uint8Array, encoding: 'gzip' | 'br' | 'deflate'): Uint8Array {
  return new Uint8Array(encoding === 'gzip' ? gzipSync(bytes) : encoding === 'deflate' ? deflateSync(bytes) : brotliCompressSync(bytes));
}

interface HttpResult {
  status: number;
  headers: Headers;
  body: Uint8Array;
  trailers: Headers;
}

function toHeaders(source: Record<string, string | string[] | number | undefined>): Headers {
  const headers = new Headers();
  for (const [name, value] of Object.entries(source)) {
    if (name.startsWith(':') || value === undefined) continue;
    for (const one of Array.isArray(value) ? value : [String(value)]) headers.append(name, one);
  }
  return headers;
}

/** Clients of one server: an HTTP/1.1 agent and an HTTP/2 session, reused across requests. */
export class RawClient {
  readonly baseUrl: string;
  readonly #agent = new http.Agent({ keepAlive: true, maxSockets: 32 });
  #session: http2.ClientHttp2Session | undefined;

  constructor(baseUrl: string) {
    this.baseUrl = baseUrl;
  }

  close(): void {
    this.#agent.destroy();
    this.#session?.close();
  }

  /** One HTTP/1.1 request; a request the server cuts off is answered with status 0. */
  http1(method: string, path: string, headers: Record<string, string>, body?: Uint8Array): Promise<HttpResult> {
    return new Promise((resolve, reject) => {
      const req = http.request(
        new URL(path, this.baseUrl),
        { method, headers: { ...headers, ...(body === undefined ? {} : { 'content-length': String(body.byteLength) }) }, agent: this.#agent },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (chunk: Buffer) => chunks.push(chunk));
          res.on('end', () =>
            resolve({ status: res.statusCode ?? 0, headers: toHeaders(res.headers), body: new Uint8Array(Buffer.concat(chunks)), trailers: toHeaders(res.trailers) }),
          );
          res.on('error', reject);
        },
      );
      req.on('error', reject);
      req.end(body === undefined ? undefined : Buffer.from(body));
    });
  }

  /** One request over HTTP/2 with prior knowledge (gRPC, and Connect as the helper's clients use it). */
  http2(method: string, path: string, headers: Record<string, string>, body?: Uint8Array): Promise<HttpResult> {
    if (this.#session === undefined || this.#session.closed || this.#session.destroyed) {
      this.#session = http2.connect(this.baseUrl);
      this.#session.on('error', () => undefined);
      this.#session.unref();
    }
    const session = this.#session;
    return new Promise((resolve, reject) => {
      const stream = session.request({ ':method': method, ':path': path, ...headers });
      let status = 0;
      let responseHeaders = new Headers();
      let trailers = new Headers();
      const chunks: Buffer[] = [];
      stream.on('response', (head) => {
        status = head[':status'] ?? 0;
        responseHeaders = toHeaders(head);
      });
      stream.on('trailers', (head: http2.IncomingHttpHeaders) => (trailers = toHeaders(head)));
      stream.on('data', (chunk: Buffer) => chunks.push(chunk));
      stream.on('end', () => resolve({ status, headers: responseHeaders, body: new Uint8Array(Buffer.concat(chunks)), trailers }));
      stream.on('error', reject);
      stream.end(body === undefined ? undefined : Buffer.from(body));
    });
  }

  /** A REST call with any body bytes; JSON values are serialised for you. */
  async rest(method: string, path: string, options: { body?: Uint8Array | string | object; headers?: Record<string, string>; token?: string } = {}): Promise<RawAnswer> {
    const headers: Record<string, string> = { ...options.headers };
    if (options.token !== undefined) headers.authorization = `Bearer ${options.token}`;
    let body: Uint8Array | undefined;
    if (options.body !== undefined) {
      body = options.body instanceof Uint8Array ? options.body : new TextEncoder().encode(typeof options.body === 'string' ? options.body : JSON.stringify(options.body));
      headers['content-type'] ??= 'application/json';
    }
    const result = await this.http1(method, path, headers, body);
    return restAnswer(result);
  }

  /**
   * An RPC with `payload` as the request message, already serialised for the protocol (JSON text
   * for connect-json, protobuf for the others). `compression` compresses it and names the
   * encoding; `frame` rewrites the bytes finally sent (to cut them short, say).
   */
  async rpc(protocol: RpcProtocol, procedure: string, payload: Uint8Array, options: RpcOptions = {}): Promise<RawAnswer> {
    const headers: Record<string, string> = {};
    if (options.token !== undefined) headers.authorization = `Bearer ${options.token}`;
    let message = payload;
    if (options.compression !== undefined) message = compress(payload, options.compression);
    const encoding = options.declaredEncoding ?? options.compression;
    let body: Uint8Array;
    if (protocol === 'connect-json' || protocol === 'connect-binary') {
      headers['content-type'] = protocol === 'connect-json' ? 'application/json' : 'application/proto';
      if (encoding !== undefined) headers['content-encoding'] = encoding;
      body = message;
    } else {
      headers['content-type'] = protocol === 'grpc' ? 'application/grpc' : 'application/grpc-web+proto';
      if (protocol === 'grpc') headers.te = 'trailers';
      if (encoding !== undefined) headers['grpc-encoding'] = encoding;
      body = encodeEnvelope(options.compressedFlag ?? (options.compression !== undefined ? 1 : 0), message);
    }
    if (options.frame !== undefined) body = options.frame(body);
    // Given headers win: a gRPC request may name the JSON codec, say.
    Object.assign(headers, options.headers);
    const path = `/${procedure}`;
    const send = protocol === 'connect-binary' || protocol === 'grpc' ? this.http2.bind(this) : this.http1.bind(this);
    const result = await send('POST', path, headers, body);
    return protocol === 'connect-json' || protocol === 'connect-binary' ? connectAnswer(result) : grpcAnswer(result, protocol);
  }

  /** A Connect GET (the idempotent RPCs), with the query as given. */
  /** A Connect GET; a string `query` is sent exactly as written. */
  async connectGet(procedure: string, query: Record<string, string> | string, options: { token?: string; headers?: Record<string, string> } = {}): Promise<RawAnswer> {
    const headers: Record<string, string> = { ...options.headers };
    if (options.token !== undefined) headers.authorization = `Bearer ${options.token}`;
    return connectAnswer(await this.http1('GET', `/${procedure}?${typeof query === 'string' ? query : new URLSearchParams(query).toString()}`, headers));
  }
}

export interface RpcOptions {
  token?: string;
  headers?: Record<string, string>;
  compression?: 'gzip' | 'br' | 'deflate';
  /** The encoding the request names, when it should differ from what was applied. */
  declaredEncoding?: string;
  /** The envelope's flags byte (gRPC, gRPC-Web): 1 claims the message is compressed. */
  compressedFlag?: number;
  frame?: (body: Uint8Array) => Uint8Array;
}

function restAnswer(result: HttpResult): RawAnswer {
  const text = new TextDecoder().decode(result.body);
  let json: unknown;
  try {
    json = text === '' ? undefined : JSON.parse(text);
  } catch {
    json = undefined;
  }
  const envelope = json as { success?: unknown; data?: unknown; error?: { code?: unknown; message?: unknown; details?: unknown }; requestId?: unknown } | undefined;
  if (result.status >= 200 && result.status < 300) {
    // Most answers are enveloped, the probes not; the server checks 2xx bodies against openapi.yaml.
    return { code: 'ok', status: result.status, message: '', violations: {}, wellFormed: json !== undefined, headers: result.headers, json };
  }
  const error = envelope?.error;
  const restCode = typeof error?.code === 'string' ? error.code : undefined;
  const connectCode = restCode === undefined ? undefined : CONNECT_CODE[restCode as keyof typeof CONNECT_CODE];
  const details = typeof error?.details === 'object' && error.details !== null ? (error.details as Record<string, string>) : {};
  return {
    code: connectCode === undefined ? `rest:${restCode ?? `HTTP_${result.status}`}` : codeName(connectCode),
    status: result.status,
    message: typeof error?.message === 'string' ? error.message : text,
    violations: details,
    wellFormed: envelope?.success === false && connectCode !== undefined && typeof envelope.requestId === 'string',
    headers: result.headers,
    json,
  };
}

function violationsOf(error: ConnectError): Record<string, string> {
  return Object.fromEntries(error.findDetails(BadRequestSchema).flatMap((detail) => detail.fieldViolations.map((v) => [v.field, v.description])));
}

function fromError(error: ConnectError, result: HttpResult, wellFormed: boolean): RawAnswer {
  return { code: codeName(error.code), status: result.status, message: error.rawMessage, violations: violationsOf(error), wellFormed, headers: result.headers };
}

function connectAnswer(result: HttpResult): RawAnswer {
  if (result.status === 200) return { code: 'ok', status: 200, message: '', violations: {}, wellFormed: true, headers: result.headers };
  const malformed = new ConnectError('not a Connect error body', Code.Unknown);
  const error = errorFromJsonBytes(result.body, result.headers, malformed);
  return fromError(error, result, error !== malformed && result.headers.get('content-type') === 'application/json');
}

function grpcAnswer(result: HttpResult, protocol: 'grpc' | 'grpc-web'): RawAnswer {
  // Trailers-only answers carry the status in the headers.
  let trailers = result.headers.has('grpc-status') ? result.headers : result.trailers;
  if (protocol === 'grpc-web' && !trailers.has('grpc-status')) {
    let offset = 0;
    while (offset + 5 <= result.body.length) {
      const flags = result.body[offset] ?? 0;
      const length = new DataView(result.body.buffer, result.body.byteOffset + offset + 1, 4).getUint32(0);
      if ((flags & 0x80) === 0x80) trailers = trailerParse(result.body.subarray(offset + 5, offset + 5 + length));
      offset += 5 + length;
    }
  }
  if (!trailers.has('grpc-status')) {
    return { code: `http_${result.status}`, status: result.status, message: '', violations: {}, wellFormed: false, headers: result.headers };
  }
  const error = findTrailerError(trailers);
  if (error === undefined) return { code: 'ok', status: result.status, message: '', violations: {}, wellFormed: true, headers: result.headers };
  return fromError(error, result, result.status === 200);
}
