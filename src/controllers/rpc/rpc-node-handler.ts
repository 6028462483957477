// connect-node's request handler, plus one correction. @connectrpc/connect answers a binary
// request body that does not decode with `internal` ("parse binary: …"), as gRPC does for
// deserialization failures, and it does so before any interceptor runs. For this API that is bad
// input, so unary answers carrying that error are re-labelled `invalid_argument`.
import { Code, ConnectError, createConnectRouter } from '@connectrpc/connect';
import { readAllBytes, type UniversalServerResponse } from '@connectrpc/connect/protocol';
import {
  compressionBrotli,
  compressionGzip,
  universalRequestFromNodeRequest,
  universalResponseToNodeResponse,
  type ConnectNodeAdapterOptions,
} from '@connectrpc/connect-node';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Http2ServerRequest, Http2ServerResponse } from 'node:http2';

type NodeRequest = IncomingMessage | Http2ServerRequest;
type NodeResponse = ServerResponse | Http2ServerResponse;

const PARSE_FAILURE = 'parse binary:';
const GRPC_WEB_TRAILER_FLAG = 0x80;

/** Like connectNodeAdapter, with undecodable unary requests answered invalid_argument. */
export function createRpcNodeHandler(options: ConnectNodeAdapterOptions): (req: NodeRequest, res: NodeResponse) => void {
  const router = createConnectRouter({ acceptCompression: [compressionGzip, compressionBrotli], ...options });
  options.routes(router);
  const handlers = new Map(router.handlers.map((handler) => [handler.requestPath, handler]));
  return (req, res) => {
    const handler = handlers.get((req.url ?? '').split('?', 1)[0] ?? '');
    if (handler === undefined) {
      if (options.fallback !== undefined) {
        options.fallback(req, res);
      } else {
        res.statusCode = 404;
        res.end();
      }
      return;
    }
    const request = universalRequestFromNodeRequest(req, res, undefined, options.contextValues?.(req));
    handler(request)
      .then((response) => (handler.method.methodKind === 'unary' ? relabelParseFailure(response) : response))
      .then((response) => universalResponseToNodeResponse(response, res))
      .catch((reason: unknown) => {
        if (ConnectError.from(reason).code !== Code.Aborted) res.destroy();
      });
  };
}

async function relabelParseFailure(response: UniversalServerResponse): Promise<UniversalServerResponse> {
  // gRPC carries the status in headers (trailers-only) or trailers.
  for (const headers of [response.header, response.trailer]) {
    if (headers?.get('grpc-status') === String(Code.Internal) && decodeURIComponent(headers.get('grpc-message') ?? '').startsWith(PARSE_FAILURE)) {
      headers.set('grpc-status', String(Code.InvalidArgument));
    }
  }
  const contentType = response.header?.get('content-type') ?? '';
  if (response.body === undefined) return response;
  if (response.status === 500 && contentType.startsWith('application/json')) {
    // Connect unary error: a JSON body.
    const bytes = await readAllBytes(response.body, Number.MAX_SAFE_INTEGER);
    const error = parseJson(bytes);
    if (error?.code === 'internal' && typeof error.message === 'string' && error.message.startsWith(PARSE_FAILURE)) {
      // The body changes length.
      response.header?.delete('content-length');
      return { ...response, status: 400, body: once(new TextEncoder().encode(JSON.stringify({ ...error, code: 'invalid_argument' }))) };
    }
    return { ...response, body: once(bytes) };
  }
  if (contentType.startsWith('application/grpc-web')) {
    // gRPC-Web: the status travels in a trailer frame at the end of the body.
    const bytes = await readAllBytes(response.body, Number.MAX_SAFE_INTEGER);
    const relabelled = relabelGrpcWebTrailer(bytes);
    if (relabelled !== bytes) response.header?.delete('content-length');
    return { ...response, body: once(relabelled) };
  }
  return response;
}

function relabelGrpcWebTrailer(bytes: Uint8Array): Uint8Array {
  let offset = 0;
  while (offset + 5 <= bytes.length) {
    const flags = bytes[offset] ?? 0;
    const length = new DataView(bytes.buffer, bytes.byteOffset + offset + 1, 4).getUint32(0);
    if ((flags & GRPC_WEB_TRAILER_FLAG) !== 0) {
      const text = new TextDecoder().decode(bytes.subarray(offset + 5, offset + 5 + length));
      const message = /grpc-message:\s*(.*)/i.exec(text)?.[1]?.trim() ?? '';
      if (!/grpc-status:\s*13\b/i.test(text) || !decodeURIComponent(message).startsWith(PARSE_FAILURE)) return bytes;
      const replaced = new TextEncoder().encode(text.replace(/grpc-status:\s*13\b/i, `grpc-status: ${Code.InvalidArgument}`));
      const frame = new Uint8Array(5 + replaced.length);
      frame[0] = flags;
      new DataView(frame.buffer).setUint32(1, replaced.length);
      frame.set(replaced, 5);
      const out = new Uint8Array(offset + frame.length);
      out.set(bytes.subarray(0, offset));
      out.set(frame, offset);
      return out;
    }
    offset += 5 + length;
  }
  return bytes;
}

function parseJson(bytes: Uint8Array): { code?: unknown; message?: unknown } | undefined {
  try {
    return JSON.parse(new TextDecoder().decode(bytes)) as { code?: unknown; message?: unknown };
  } catch {
    return undefined;
  }
}

async function* once(bytes: Uint8Array): AsyncIterable<Uint8Array> {
  yield bytes;
}
