// connect-node's request handler, with a gate in front of every call. @connectrpc/connect reads,
// decompresses and decodes a request before any interceptor runs, and answers what it cannot
// decode with `internal` (a binary message that does not parse, a gzip body cut short); such a
// call was neither logged nor rate limited. The gate runs first, through connect-es's own
// `requestGate` hook (after the headers, before the body is read), in this order:
// 1. `admit` (the per-client rate limit), so a refused client costs no body read;
// 2. the body is read once and decoded as connect-es will decode it (request-decoder.ts), and
//    what does not decode is answered as the client's error;
// 3. connect-es is handed the same bytes and decodes them again, now certain to succeed.
// A call the gate refuses never reaches the interceptors, so the gate logs it: one line, like
// the request-context interceptor's, and no stack unless the server itself failed.
import { Code, ConnectError, createConnectRouter, createContextKey, createContextValues, type HandlerContext } from '@connectrpc/connect';
import { readAllBytes } from '@connectrpc/connect/protocol';
import {
  compressionBrotli,
  compressionGzip,
  universalRequestFromNodeRequest,
  universalResponseToNodeResponse,
  type ConnectNodeAdapterOptions,
} from '@connectrpc/connect-node';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Http2ServerRequest, Http2ServerResponse } from 'node:http2';
import { AppError } from '../../domain/errors.ts';
import type { Logger } from '../../infrastructure/logger.ts';
import { requestIdFrom } from '../../infrastructure/request-id.ts';
import { toConnectError } from './interceptors.ts';
import { createRequestDecoder } from './request-decoder.ts';

type NodeRequest = IncomingMessage | Http2ServerRequest;
type NodeResponse = ServerResponse | Http2ServerResponse;

// connect-es's default, stated so the decoder can use the same limit.
const UNLIMITED_BYTES = 0xffffffff;

export interface RpcNodeHandlerOptions extends ConnectNodeAdapterOptions {
  /** Logs the calls the gate refuses, which no interceptor sees. */
  logger?: Logger | undefined;
  /** Runs before a call's body is read; throw to refuse the call (the public rate limit). */
  admit?: ((context: HandlerContext) => Promise<void>) | undefined;
  /**
   * Refuse JSON keys and enum names a request message does not declare, instead of dropping
   * them as connect-es does by default (a public API: a dropped filter lists everything). Kept
   * lenient between the deployment's own layers, which may be upgraded one at a time.
   */
  strictJson?: boolean;
}

/** The request body, buffered when the gate has read it, so that connect-es reads the same bytes. */
class ReplayableBody implements AsyncIterable<Uint8Array> {
  readonly #source: AsyncIterable<Uint8Array>;
  #bytes: Uint8Array | undefined;

  constructor(source: AsyncIterable<Uint8Array>) {
    this.#source = source;
  }

  async read(maxBytes: number, lengthHint: string | null): Promise<Uint8Array> {
    if (this.#bytes !== undefined) throw new Error('the request body was read twice');
    this.#bytes = await readAllBytes(this.#source, maxBytes, lengthHint);
    return this.#bytes;
  }

  async *[Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
    if (this.#bytes === undefined) yield* this.#source;
    else if (this.#bytes.byteLength > 0) yield this.#bytes;
  }
}

const bodyKey = createContextKey<ReplayableBody | undefined>(undefined, { description: 'the raw request body, for the gate' });

/** Like connectNodeAdapter, with a gate that rate limits and decodes each call before connect-es does. */
export function createRpcNodeHandler(options: RpcNodeHandlerOptions): (req: NodeRequest, res: NodeResponse) => void {
  const { logger, admit, strictJson = false, ...adapterOptions } = options;
  const acceptCompression = adapterOptions.acceptCompression ?? [compressionGzip, compressionBrotli];
  const readMaxBytes = adapterOptions.readMaxBytes ?? UNLIMITED_BYTES;
  const jsonOptions = strictJson ? { ...adapterOptions.jsonOptions, ignoreUnknownFields: false } : adapterOptions.jsonOptions;
  const decode = createRequestDecoder({ readMaxBytes, acceptCompression, jsonOptions, binaryOptions: adapterOptions.binaryOptions });

  const gate = async (context: HandlerContext): Promise<void> => {
    const started = process.hrtime.bigint();
    try {
      await admit?.(context);
      const body = context.values.get(bodyKey);
      if (body !== undefined) await decode(context, (maxBytes, lengthHint) => body.read(maxBytes, lengthHint));
    } catch (error) {
      const refusal = refusalOf(error, context);
      const requestId = requestIdFrom(context.requestHeader.get('x-request-id'));
      refusal.metadata.set('x-request-id', requestId);
      const code = Code[refusal.code].toLowerCase();
      const line = {
        requestId,
        procedure: `${context.service.typeName}/${context.method.name}`,
        code,
        // Messages made at the edge are fixed texts, never the request's content.
        reason: refusal.rawMessage,
        durationMs: Math.round(Number(process.hrtime.bigint() - started) / 1e4) / 100,
      };
      if (refusal.code === Code.Internal) logger?.error({ ...line, err: error }, 'rpc failed');
      else logger?.info(line, 'rpc completed');
      throw refusal;
    }
  };

  const router = createConnectRouter({ ...adapterOptions, acceptCompression, jsonOptions, requestGate: gate });
  adapterOptions.routes(router);
  const handlers = new Map(router.handlers.map((handler) => [handler.requestPath, handler]));
  return (req, res) => {
    const handler = handlers.get((req.url ?? '').split('?', 1)[0] ?? '');
    if (handler === undefined) {
      if (adapterOptions.fallback !== undefined) {
        adapterOptions.fallback(req, res);
      } else {
        res.statusCode = 404;
        res.end();
      }
      return;
    }
    const contextValues = adapterOptions.contextValues?.(req) ?? createContextValues();
    let request;
    try {
      request = universalRequestFromNodeRequest(req, res, undefined, contextValues);
    } catch {
      // connect-node cannot form the request's URL (an HTTP/1.0 request without a Host header);
      // thrown from here it would be an uncaught exception and end the process.
      res.statusCode = 400;
      res.end();
      return;
    }
    const body = new ReplayableBody(request.body as AsyncIterable<Uint8Array>);
    contextValues.set(bodyKey, body);
    handler({ ...request, body })
      .then((response) => universalResponseToNodeResponse(response, res))
      .catch((reason: unknown) => {
        if (ConnectError.from(reason).code !== Code.Aborted) res.destroy();
      });
  };
}

/** What the client is told when the gate refuses a call: domain errors as the interceptors translate them. */
function refusalOf(error: unknown, context: HandlerContext): ConnectError {
  if (error instanceof AppError) return toConnectError(error, context.method.input);
  if (error instanceof ConnectError && error.code !== Code.Internal && error.code !== Code.Unknown) return error;
  return new ConnectError('Internal server error', Code.Internal);
}
