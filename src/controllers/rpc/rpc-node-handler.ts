// connect-node's request handler, with a gate in front of every call. @connectrpc/connect reads,
// decompresses and decodes a request before any interceptor runs, and answers what it cannot
// decode with `internal` (a binary message that does not parse, a gzip body cut short); such a
// call was neither logged nor rate limited. The gate runs first, through connect-es's own
// `requestGate` hook (after the headers, before the body is read), in this order:
// 1. `admit` (the per-client rate limit), so a refused client costs no body read;
// 2. the body is read once and decoded as connect-es will decode it (request-decoder.ts), and
//    what does not decode is answered as the client's error;
// 3. connect-es is handed the same bytes and decodes them again, now certain to succeed;
//    except unary gRPC calls over HTTP/2 and unary Connect POSTs, which are served here from the
//    decoded message (serveGrpcUnary, serveConnectUnary).
// A call the gate refuses never reaches the interceptors, so the gate logs it: one line, like
// the request-context interceptor's, and no stack unless the server itself failed.
import type { DescService, Message } from '@bufbuild/protobuf';
import {
  Code,
  ConnectError,
  createConnectRouter,
  createContextKey,
  createContextValues,
  createServiceImplSpec,
  type ContextValues,
  type HandlerContext,
  type ServiceImpl,
} from '@connectrpc/connect';
import {
  compressionNegotiate,
  type Compression,
  createMethodSerializationLookup,
  encodeEnvelope,
  envelopeCompress,
  invokeUnaryImplementation,
  mergeNonProtocolHeaders,
  readAllBytes,
  validateUniversalHandlerOptions,
} from '@connectrpc/connect/protocol';
import {
  codeToHttpStatus,
  contentTypeUnaryJson,
  contentTypeUnaryProto,
  errorToJsonBytes,
  headerTimeout as headerConnectTimeout,
  headerUnaryAcceptEncoding,
  headerUnaryContentLength,
  headerUnaryEncoding,
  parseContentType as parseConnectContentType,
  parseTimeout as parseConnectTimeout,
  trailerMux,
} from '@connectrpc/connect/protocol-connect';
import {
  contentTypeJson,
  contentTypeProto,
  grpcStatusOk,
  headerAcceptEncoding as headerGrpcAcceptEncoding,
  headerEncoding as headerGrpcEncoding,
  headerGrpcStatus,
  headerTimeout as headerGrpcTimeout,
  codeFromHttpStatus,
  parseContentType as parseGrpcContentType,
  parseTimeout,
  setTrailerStatus,
} from '@connectrpc/connect/protocol-grpc';
import { compressionBrotli, compressionGzip, universalRequestFromNodeRequest, universalResponseToNodeResponse, type ConnectNodeAdapterOptions } from '@connectrpc/connect-node';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { promisify } from 'node:util';
import zlib from 'node:zlib';
import { constants, type Http2ServerRequest, type Http2ServerResponse } from 'node:http2';
import { AppError, RateLimitedError, ValidationError } from '../../domain/errors.ts';
import { findQueryProblems, framingBound, hasBody, queryPairsOver } from '../edge-input.ts';
import { closeAfterAnswer } from '../close-after-answer.ts';
import { isHealthService } from '../../rpc/call-limits.ts';
import { unmeteredLine, type Logger } from '../../infrastructure/logger.ts';
import { requestIdFrom } from '../../infrastructure/request-id.ts';
import { rpcRefusal } from '../../rpc/refusal.ts';
import { base64Length, binaryRequestOf, isGrpcWebText, textResponseOf } from '../../rpc/grpc-web-text.ts';
import { connectTimeoutMs, grpcTimeoutMs, timerTimeout } from '../../infrastructure/call-context.ts';
import { nodeHeadersFromWeb, webHeadersFromNode } from '../../rpc/node-headers.ts';
import { toConnectError } from './interceptors.ts';
import { rpcProtocolOf, type Metrics } from '../../infrastructure/metrics.ts';
import { createRequestDecoder, protocolHeaderProblem } from './request-decoder.ts';

type NodeRequest = IncomingMessage | Http2ServerRequest;
type NodeResponse = ServerResponse | Http2ServerResponse;

/**
 * Whether an answer can no longer be sent: its HTTP/1.1 socket or its HTTP/2 stream is gone.
 * Http2ServerResponse has no `destroyed` of its own (helper 48: the check never fired there).
 */
const answerGone = (res: NodeResponse): boolean => ('stream' in res ? res.stream.destroyed : res.destroyed);

const brotliCompress = promisify(zlib.brotliCompress);

/**
 * Brotli as REST's compression() uses it (quality 4), for the answers of clients that accept only
 * `br`: connect-node's compressionBrotli compresses at zlib's default quality, 11, which cost ~6 ms
 * of a core per 4.6 KB answer against gzip's ~1 ms (helper 110: a reflection stream of 200
 * questions took 1.2 s of CPU with `br`, 0.2 s with gzip, on the thread pool bcrypt uses).
 * Decompression is connect-node's, with its size limit.
 */
const BROTLI_QUALITY_4: Compression = {
  name: compressionBrotli.name,
  compress: async (bytes) => new Uint8Array(await brotliCompress(bytes, { params: { [zlib.constants.BROTLI_PARAM_QUALITY]: 4 } })),
  decompress: (bytes, readMaxBytes) => compressionBrotli.decompress(bytes, readMaxBytes),
};

const deflateCompress = promisify(zlib.deflate);
const inflate = promisify(zlib.inflate);

/**
 * gRPC's `deflate` (zlib's format, RFC 1950): one of gRPC's standard encodings, and one of the two
 * grpc-python offers; every call of a client set to it was `unimplemented` (helper 126). With the
 * same size limit and error codes as connect-node's gzip.
 */
const DEFLATE: Compression = {
  name: 'deflate',
  compress: async (bytes) => new Uint8Array(await deflateCompress(bytes)),
  decompress: async (bytes, readMaxBytes) => {
    if (bytes.length === 0) return new Uint8Array(0);
    try {
      return new Uint8Array(await inflate(bytes, { maxOutputLength: readMaxBytes }));
    } catch (error) {
      if ((error as { code?: unknown }).code === 'ERR_BUFFER_TOO_LARGE') {
        throw new ConnectError(`message is larger than configured readMaxBytes ${readMaxBytes} after decompression`, Code.ResourceExhausted);
      }
      throw new ConnectError('decompression failed', Code.InvalidArgument);
    }
  },
};

/** Where each protocol names the encodings a server takes: gRPC, Connect unary, Connect streams. */
const ACCEPT_ENCODING_HEADERS = ['grpc-accept-encoding', 'accept-encoding', 'connect-accept-encoding'] as const;

// connect-es's default, stated so the decoder can use the same limit.
const UNLIMITED_BYTES = 0xffffffff;

export interface RpcNodeHandlerOptions extends ConnectNodeAdapterOptions {
  /** Logs the calls the gate refuses, which no interceptor sees. */
  logger?: Logger | undefined;
  /** Where the calls the gate refuses are counted, as the interceptors count the others. */
  metrics?: Metrics | undefined;
  /** Runs before a call's body is read; throw to refuse the call (the public rate limit). */
  admit?: ((context: HandlerContext) => Promise<void>) | undefined;
  /**
   * Refuse JSON keys and enum names a request message does not declare, instead of dropping
   * them as connect-es does by default (a public API: a dropped filter lists everything), and
   * binary fields it does not declare as they are read, before the message is parsed. Kept
   * lenient between the deployment's own layers, which may be upgraded one at a time.
   */
  strict?: boolean;
}

/**
 * The request headers the unary paths read, by the lower-case names Node gives them (connect-es's
 * constants are capitalised: `req.headers['Grpc-Timeout']` is always undefined).
 */
const REQUEST_HEADERS = {
  grpcTimeout: headerGrpcTimeout.toLowerCase(),
  grpcEncoding: headerGrpcEncoding.toLowerCase(),
  grpcAcceptEncoding: headerGrpcAcceptEncoding.toLowerCase(),
  connectTimeout: headerConnectTimeout.toLowerCase(),
  contentEncoding: headerUnaryEncoding.toLowerCase(),
  acceptEncoding: headerUnaryAcceptEncoding.toLowerCase(),
} as const;

/** The request body as the gate reads it: in full, within a limit. */
interface GateBody {
  read(maxBytes: number, lengthHint: string | null): Promise<Uint8Array>;
}

/** The request body, buffered when the gate has read it, so that connect-es reads the same bytes. */
class ReplayableBody implements GateBody, AsyncIterable<Uint8Array> {
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

const bodyKey = createContextKey<GateBody | undefined>(undefined, { description: 'the raw request body, for the gate' });

/** Query parameters a Connect GET may carry: `connect`, `encoding`, `message`, `base64`, `compression`, and room. */
const CONNECT_GET_PAIRS_MAX = 16;

/** A GET's query string as sent (Connect GET carries the message in it), for the gate. */
const getQueryKey = createContextKey<string | undefined>(undefined, { description: 'the query string of a GET, as sent' });

/** The request message as the gate decoded it, for the unary paths below. */
const decodedKey = createContextKey<Message | undefined>(undefined, { description: 'the request message the gate decoded' });

/** Set when the gate saw the call: from there on the gate or the interceptors count it. */
const gatedKey = createContextKey<boolean>(false, { description: 'whether the gate saw the call' });

/** Like connectNodeAdapter, with a gate that rate limits and decodes each call before connect-es does. */
export function createRpcNodeHandler(options: RpcNodeHandlerOptions): (req: NodeRequest, res: NodeResponse) => void {
  const { logger, metrics, admit, strict = false, ...adapterOptions } = options;
  const acceptCompression = adapterOptions.acceptCompression ?? [compressionGzip, BROTLI_QUALITY_4, DEFLATE];
  const readMaxBytes = adapterOptions.readMaxBytes ?? UNLIMITED_BYTES;
  const jsonOptions = strict ? { ...adapterOptions.jsonOptions, ignoreUnknownFields: false } : adapterOptions.jsonOptions;
  const decode = createRequestDecoder({ readMaxBytes, acceptCompression, jsonOptions, binaryOptions: adapterOptions.binaryOptions, refuseUnknownFields: strict });

  const gate = async (context: HandlerContext): Promise<void> => {
    const started = process.hrtime.bigint();
    context.values.set(gatedKey, true);
    try {
      await admit?.(context);
      const headerProblem = protocolHeaderProblem(context, acceptCompression);
      if (headerProblem !== undefined) throw headerProblem;
      // A deadline of zero has passed on arrival; its timer would fire only after a fast call
      // had been answered (or a write done).
      const remainingMs = context.timeoutMs();
      if (remainingMs !== undefined && remainingMs <= 0) throw new ConnectError('the deadline passed before the call could start', Code.DeadlineExceeded);
      // connect-es reads the query with URLSearchParams: `%FF` as U+FFFD, and the first of two
      // `message` parameters. Refused instead, as the same message in a POST body would be.
      const query = context.values.get(getQueryKey);
      if (query !== undefined) {
        const problems = findQueryProblems(query, true);
        if (Object.keys(problems).length > 0) throw new ValidationError('Validation failed', problems);
      }
      const body = context.values.get(bodyKey);
      if (body !== undefined) {
        const decoding = decode(context, (maxBytes, lengthHint) => body.read(maxBytes, lengthHint));
        context.values.set(decodedKey, await untilCallEnds(decoding, context.signal));
      }
    } catch (error) {
      const refusal = refusalOf(error, context);
      const requestId = requestIdFrom(context.requestHeader.get('x-request-id'));
      refusal.metadata.set('x-request-id', requestId);
      // An encoding this server does not take is refused naming those it does, as the gRPC and
      // Connect specifications require: connect-es drops protocol headers from an error's
      // metadata, so no client could learn what to send instead (helper 126).
      for (const name of ACCEPT_ENCODING_HEADERS) {
        const accepted = refusal.code === Code.Unimplemented ? refusal.metadata.get(name) : null;
        if (accepted !== null) context.responseHeader.set(name, accepted);
      }
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
      // A refusal of a client over its rate limit, or of a health call (never charged), is one of
      // as many as its client sends (unmeteredLine): malformed health checks wrote a line each,
      // 2-2.6 MB of log a second from one address (helper 211).
      else if (error instanceof RateLimitedError || isHealthService(context.service)) {
        if (logger !== undefined) unmeteredLine(logger, 'info', line, 'rpc completed');
      } else logger?.info(line, 'rpc completed');
      // Counted too: a flood the rate limit refused over RPC was in the logs alone, where the same
      // flood over REST showed on the dashboard (helper 133).
      metrics?.rpcRequest(line.procedure, rpcProtocolOf(context.requestHeader.get('content-type')), code, Number(process.hrtime.bigint() - started) / 1e9);
      throw refusal;
    }
  };

  const routerOptions = { ...adapterOptions, acceptCompression, jsonOptions, requestGate: gate };
  const router = createConnectRouter(routerOptions);
  // The unary methods' implementations, for the unary paths below: every service is registered
  // with the router's own options (no per-service options), so one set of options serves all.
  const unaryMethods = new Map<string, UnaryMethod>();
  const grpcOptions = validateUniversalHandlerOptions(routerOptions);
  const register = router.service;
  router.service = (service: DescService, implementation: Partial<ServiceImpl<DescService>>, options?: unknown) => {
    if (options === undefined) {
      const spec = createServiceImplSpec(service, implementation);
      for (const method of Object.values(spec.methods)) {
        if (method.kind !== 'unary') continue;
        const serialization = createMethodSerializationLookup(method.method, grpcOptions.binaryOptions, grpcOptions.jsonOptions, grpcOptions);
        unaryMethods.set(`/${service.typeName}/${method.method.name}`, { spec: method, serialization });
      }
    }
    return (register as (...args: unknown[]) => typeof router)(service, implementation, options);
  };
  adapterOptions.routes(router);
  router.service = register;
  const handlers = new Map(router.handlers.map((handler) => [handler.requestPath, handler]));
  const acceptedEncodings = grpcOptions.acceptCompression.map((compression) => compression.name).join(',');

  /** A request header by its lower-case name (Node lower-cases them; see REQUEST_HEADERS). */
  const headerOf = (req: NodeRequest, name: string): string | null => {
    const value = req.headers[name];
    return typeof value === 'string' ? value : null;
  };

  /** Negotiates compression as connect-es does, from the request's encoding and accept-encoding headers. */
  const negotiateCompression = (req: NodeRequest, encodingHeader: string, acceptHeader: string, advertisedHeader: string) =>
    compressionNegotiate(grpcOptions.acceptCompression, headerOf(req, encodingHeader), headerOf(req, acceptHeader), advertisedHeader);

  /**
   * The handler context of a unary call served here, and what to release when it is answered.
   * Its signal aborts when the client goes away (the response closes unanswered), when the
   * deadline passes, or when the server shuts down; never on an answered call (connect-es aborts
   * it after every call, which builds a DOMException each time).
   */
  const startUnaryCall = (
    method: UnaryMethod,
    req: NodeRequest,
    res: NodeResponse,
    contextValues: ContextValues,
    protocolName: 'grpc' | 'connect',
    // Never past what a timer can wait: dropOverlongTimeouts has dropped such deadlines.
    timeoutMs: number | undefined,
    responseHeader: Headers,
    responseTrailer: Headers,
  ): { context: HandlerContext; release: () => void } => {
    const abort = new AbortController();
    const deadline = timeoutMs === undefined ? undefined : Date.now() + timeoutMs;
    const onClose = () => {
      if (!res.writableEnded) abort.abort(new ConnectError('the client cancelled the call', Code.Canceled));
    };
    res.once('close', onClose);
    // Over HTTP/1.1 a client that gave up closes its connection; the FIN is read at once, the
    // answer's 'close' only tens of milliseconds later (after Node's own end of the socket), by
    // when a write the caller gave up could have gone ahead (see layerContextInterceptor).
    const socket = req.httpVersionMajor === 2 ? undefined : req.socket;
    socket?.once('end', onClose);
    const timer = timeoutMs === undefined ? undefined : setTimeout(() => abort.abort(new ConnectError('the operation timed out', Code.DeadlineExceeded)), timeoutMs);
    const onShutdown = () => abort.abort(new ConnectError('the server is shutting down', Code.Unavailable));
    grpcOptions.shutdownSignal?.addEventListener('abort', onShutdown, { once: true });
    const context: HandlerContext = {
      service: method.spec.method.parent,
      method: method.spec.method,
      signal: abort.signal,
      timeoutMs: () => (deadline === undefined ? undefined : deadline - Date.now()),
      requestMethod: req.method ?? 'POST',
      requestHeader: webHeadersFromNode(req.headers),
      responseHeader,
      responseTrailer,
      protocolName,
      values: contextValues,
      url: `http://${headerOf(req, ':authority') ?? headerOf(req, 'host') ?? 'localhost'}${req.url}`,
    };
    contextValues.set(bodyKey, { read: (maxBytes, lengthHint) => readNodeBody(req, maxBytes, lengthHint) });
    const release = () => {
      if (timer !== undefined) clearTimeout(timer);
      socket?.off('end', onClose);
      grpcOptions.shutdownSignal?.removeEventListener('abort', onShutdown);
    };
    return { context, release };
  };

  /** The gate (admission, body read and decode), then the implementation through the interceptors. */
  const invokeUnary = async (method: UnaryMethod, context: HandlerContext): Promise<Message> => {
    await gate(context);
    const input = context.values.get(decodedKey);
    if (input === undefined) throw new ConnectError('protocol error: missing input message for unary method', Code.Unimplemented);
    return invokeUnaryImplementation(method.spec, context, input, grpcOptions.interceptors);
  };

  /**
   * A unary gRPC call over HTTP/2, served as connect-es's gRPC handler serves it, without its
   * streaming pipeline: connect-es runs every gRPC call, unary ones too, through a chain of async
   * generators (split, decompress, parse, invoke, serialize, compress, join), and its adapter
   * wraps the Node request and response in async iterables, linked AbortControllers and timers.
   * Here the gate reads and decodes the one request message from the Node stream, the
   * implementation runs through the same interceptors with a HandlerContext built for the call,
   * and the answer is written straight to the Node response: headers, one envelope, the status
   * in the trailers, as connect-es writes them. Calls this path does not cover (HTTP/1.1, a
   * compressed request, a malformed grpc-timeout) go to connect-es, which answers them as before.
   */
  const serveGrpcUnary = async (method: UnaryMethod, req: NodeRequest, res: NodeResponse, contextValues: ContextValues, binary: boolean): Promise<boolean> => {
    if (req.httpVersionMajor !== 2) return false;
    const timeout = parseTimeout(headerOf(req, REQUEST_HEADERS.grpcTimeout), grpcOptions.maxTimeoutMs);
    const compression = negotiateCompression(req, REQUEST_HEADERS.grpcEncoding, REQUEST_HEADERS.grpcAcceptEncoding, headerGrpcAcceptEncoding);
    if (timeout.error !== undefined || compression.error !== undefined || compression.request !== null) return false;
    const responseHeader = new Headers({ 'content-type': binary ? contentTypeProto : contentTypeJson });
    if (compression.response !== null) responseHeader.set(headerGrpcEncoding, compression.response.name);
    const { context, release } = startUnaryCall(method, req, res, contextValues, 'grpc', timeout.timeoutMs, responseHeader, new Headers({ [headerGrpcStatus]: grpcStatusOk }));
    let envelope: Uint8Array | undefined;
    try {
      const output = await invokeUnary(method, context);
      const data = method.serialization.getO(binary).serialize(output);
      const enveloped = await envelopeCompress({ flags: 0, data }, compression.response, grpcOptions.compressMinBytes);
      envelope = encodeEnvelope(enveloped.flags, enveloped.data);
    } catch (error) {
      setTrailerStatus(context.responseTrailer, error instanceof ConnectError ? error : new ConnectError('internal error', Code.Internal, undefined, undefined, error));
    } finally {
      release();
    }
    // HTTP/2 only (see above).
    const h2 = res as Http2ServerResponse;
    if (answerGone(h2)) return true;
    h2.writeHead(200, nodeHeadersFromWeb(context.responseHeader));
    if (envelope !== undefined) h2.write(envelope);
    h2.addTrailers(nodeHeadersFromWeb(context.responseTrailer));
    h2.end();
    return true;
  };

  /**
   * A unary Connect POST (HTTP/1.1 or HTTP/2), served as connect-es's Connect handler serves it:
   * the answer is the message itself, or the error as JSON with the HTTP status of its code;
   * trailers travel as `trailer-` headers; the answer is compressed as the client accepts, above
   * the same threshold. Without connect-node's adapter (async iterables, WHATWG request and
   * response objects, an AbortController aborted after every call). GETs, a malformed
   * connect-timeout-ms, an encoding this server does not speak and a server that requires the
   * protocol-version header go to connect-es.
   */
  const serveConnectUnary = async (method: UnaryMethod, req: NodeRequest, res: NodeResponse, contextValues: ContextValues, binary: boolean): Promise<boolean> => {
    if (grpcOptions.requireConnectProtocolHeader) return false;
    const timeout = parseConnectTimeout(headerOf(req, REQUEST_HEADERS.connectTimeout), grpcOptions.maxTimeoutMs);
    const compression = negotiateCompression(req, REQUEST_HEADERS.contentEncoding, REQUEST_HEADERS.acceptEncoding, headerUnaryAcceptEncoding);
    if (timeout.error !== undefined || compression.error !== undefined) return false;
    const responseHeader = new Headers({ 'content-type': binary ? contentTypeUnaryProto : contentTypeUnaryJson });
    const { context, release } = startUnaryCall(method, req, res, contextValues, 'connect', timeout.timeoutMs, responseHeader, new Headers());
    let status = 200;
    let body: Uint8Array;
    try {
      const output = await invokeUnary(method, context);
      body = method.serialization.getO(binary).serialize(output);
    } catch (error) {
      const connectError = error instanceof ConnectError ? error : new ConnectError('internal error', Code.Internal, undefined, undefined, error);
      status = codeToHttpStatus(connectError.code);
      context.responseHeader.set('content-type', contentTypeUnaryJson);
      if (!connectError.isWireError) mergeNonProtocolHeaders(context.responseHeader, connectError.metadata);
      body = errorToJsonBytes(connectError, grpcOptions.jsonOptions);
    } finally {
      release();
    }
    if (compression.response !== null && body.byteLength >= grpcOptions.compressMinBytes) {
      body = await compression.response.compress(body);
      context.responseHeader.set(headerUnaryEncoding, compression.response.name);
    }
    const header = trailerMux(context.responseHeader, context.responseTrailer);
    header.set(headerUnaryContentLength, String(body.byteLength));
    if (answerGone(res)) return true;
    lingerIfUnread(req, res);
    (res as ServerResponse).writeHead(status, nodeHeadersFromWeb(header));
    (res as ServerResponse).end(body);
    return true;
  };

  /**
   * Counts a call answered before the gate saw it (a path no procedure has, a method or content
   * type the procedure does not take), as the gate and the interceptors count the others and as
   * REST counts its 404, 405 and 415 (helper 138: these were counted nowhere). A path no
   * procedure has is `unmatched`: the label takes no value a client chooses.
   */
  const countUngated = (req: NodeRequest, res: NodeResponse, procedure: string, started: bigint) => {
    if (metrics === undefined || res.statusCode < 400) return;
    const code = Code[codeFromHttpStatus(res.statusCode)].toLowerCase();
    metrics.rpcRequest(procedure, rpcProtocolOf(headerOf(req, 'content-type')), code, Number(process.hrtime.bigint() - started) / 1e9);
  };

  return (req, res) => {
    const started = process.hrtime.bigint();
    const handler = handlers.get((req.url ?? '').split('?', 1)[0] ?? '');
    // An HTTP/1.0 request may omit Host (the server stands for its own authority); connect-node
    // cannot form such a request's URL, and it was a bare 400 that no RPC client reads, where REST
    // serves the same request (helper 137). It is served as one to the server's default name.
    if (handler !== undefined && req.httpVersionMajor === 1 && req.headers.host === undefined) req.headers.host = 'localhost';
    // A Connect GET is cacheable by default, its refusals too (a 405 heuristically): every answer
    // to one says no-store from the start, the refusals made before the interceptors (a message
    // that does not decode, an encoding not taken, a method with side effects, the rate limit)
    // included, where only answers past them said it (helper 171).
    if (handler !== undefined && req.method === 'GET') res.setHeader('cache-control', 'no-store');
    if (handler === undefined) {
      if (adapterOptions.fallback !== undefined) {
        adapterOptions.fallback(req, res);
      } else {
        res.once('close', () => countUngated(req, res, 'unmatched', started));
        res.statusCode = 404;
        res.end();
        endUnreadStream(req);
      }
      return;
    }
    if (!handler.allowedMethods.includes(req.method ?? '')) {
      res.once('close', () => countUngated(req, res, handler.requestPath.slice(1), started));
      // As connect-es answers it, with the Allow header RFC 9110 (15.5.6) requires of a 405.
      res.statusCode = 405;
      res.setHeader('allow', handler.allowedMethods.join(', '));
      res.end();
      endUnreadStream(req);
      return;
    }
    // However the call is answered, a stream answered before its body ended is closed: a call
    // refused for its size (a 4 GiB envelope, a compressed message past the bound) was answered
    // at once and then read on, window after window, until the request deadline, 5 GB in 30 s of
    // 20 streams taking 15 s of a controller's CPU, Health/Check's included (helper 222).
    endUnreadStream(req);
    // A bidirectional stream (reflection) needs HTTP/2. connect-es refused one over HTTP/1.x with
    // a bare 505 that no gRPC-Web or Connect client reads, with no request id, counted `unknown`
    // (helper 147): it is `unimplemented` here, in the call's own protocol.
    if (handler.method.methodKind === 'bidi_streaming' && req.httpVersionMajor === 1) {
      refuseInProtocol(req, res, new ConnectError('This procedure is a bidirectional stream, which needs HTTP/2', Code.Unimplemented));
      metrics?.rpcRequest(handler.requestPath.slice(1), rpcProtocolOf(headerOf(req, 'content-type')), 'unimplemented', Number(process.hrtime.bigint() - started) / 1e9);
      return;
    }
    // A body declared larger than any message taken (one, with its 5-byte envelope prefix) is
    // refused before it is read, in the call's protocol, as Connect's unary path refused it:
    // gRPC-Web waited for the whole declared body and answered 408, in REST's envelope, at the
    // request deadline (helper 180).
    const text = isGrpcWebText(headerOf(req, 'content-type'));
    const declared = Number(req.headers['content-length']);
    if (declared > (text ? base64Length(readMaxBytes + 5) : readMaxBytes + 5)) {
      refuseInProtocol(req, res, new ConnectError(`message size ${declared} is larger than configured readMaxBytes ${readMaxBytes}`, Code.ResourceExhausted));
      metrics?.rpcRequest(handler.requestPath.slice(1), rpcProtocolOf(headerOf(req, 'content-type')), 'resource_exhausted', Number(process.hrtime.bigint() - started) / 1e9);
      return;
    }
    dropOverlongTimeouts(req.headers);
    const contextValues = adapterOptions.contextValues?.(req) ?? createContextValues();
    if (req.method === 'GET') {
      const url = req.url ?? '';
      const query = url.indexOf('?');
      // connect-es reads a GET's query (URLSearchParams) before the gate and its rate limit: 16
      // KiB of `%FF&` cost 39 ms of CPU for a call answered 429 (helper 209). A Connect GET names
      // at most five parameters; one with many more is refused before anything reads it.
      if (queryPairsOver(url, CONNECT_GET_PAIRS_MAX)) {
        refuseInProtocol(req, res, new ConnectError(`a Connect GET takes at most ${CONNECT_GET_PAIRS_MAX} query parameters`, Code.InvalidArgument));
        metrics?.rpcRequest(handler.requestPath.slice(1), rpcProtocolOf(headerOf(req, 'content-type')), 'invalid_argument', Number(process.hrtime.bigint() - started) / 1e9);
        return;
      }
      contextValues.set(getQueryKey, query < 0 ? '' : url.slice(query + 1));
    }
    const unary = req.method === 'POST' ? unaryMethods.get(handler.requestPath) : undefined;
    if (unary !== undefined) {
      const contentType = req.headers['content-type'] ?? null;
      const grpcType = parseGrpcContentType(contentType);
      const connectType = grpcType === undefined ? parseConnectContentType(contentType) : undefined;
      const served =
        grpcType !== undefined
          ? serveGrpcUnary(unary, req, res, contextValues, grpcType.binary)
          : connectType !== undefined && !connectType.stream
            ? serveConnectUnary(unary, req, res, contextValues, connectType.binary)
            : undefined;
      if (served !== undefined) {
        served
          .then((done) => {
            if (!done) serveWithConnect(handler, req, res, contextValues);
          })
          .catch((reason: unknown) => {
            if (ConnectError.from(reason).code !== Code.Aborted) res.destroy();
          });
        return;
      }
    }
    // A stream the gate does not decode (reflection, the one bidirectional stream) is refused an
    // encoding by connect-es, which drops the header naming those taken from the error: set here,
    // it stays on every answer, as a gRPC server's does (helper 138: reflection's refusal named
    // none, where the health watch's did).
    const streamAcceptHeader = streamAcceptEncodingHeader(headerOf(req, 'content-type'));
    if (streamAcceptHeader !== undefined) res.setHeader(streamAcceptHeader, acceptedEncodings);
    res.once('close', () => {
      if (!contextValues.get(gatedKey)) countUngated(req, res, handler.requestPath.slice(1), started);
    });
    serveWithConnect(handler, req, res, contextValues, text);
  };
}

/** Answers `error` in the call's own protocol, with a request id, and leaves its body unread. */
function refuseInProtocol(req: NodeRequest, res: NodeResponse, error: ConnectError): void {
  const header = (name: string) => (typeof req.headers[name] === 'string' ? req.headers[name] : undefined);
  const refusal = rpcRefusal(header('content-type') ?? '', error);
  res.statusCode = refusal.status;
  for (const [name, value] of Object.entries(refusal.headers)) res.setHeader(name, value);
  res.setHeader('content-length', refusal.body.byteLength);
  res.setHeader('x-request-id', requestIdFrom(header('x-request-id')));
  lingerIfUnread(req, res);
  res.end(refusal.body);
  endUnreadStream(req);
}

/**
 * Over HTTP/1.1, an answer made before the request's body ended (its deadline passed while it was
 * read, a declared length over the limit) is the connection's last, and the connection lingers
 * unread (closeAfterAnswer): Node closed it at once, and the reset the client's unread bytes
 * drew could overtake the answer, as it did for REST (helper 209).
 */
function lingerIfUnread(req: NodeRequest, res: NodeResponse): void {
  if ('stream' in req || !hasBody(req) || req.readableEnded) return;
  closeAfterAnswer(req, res as ServerResponse);
}

/** The header in which a streaming protocol's answer names the encodings taken (none for unary Connect). */
function streamAcceptEncodingHeader(contentType: string | null): string | undefined {
  if (contentType === null) return undefined;
  if (parseGrpcContentType(contentType) !== undefined || /^application\/grpc-web/i.test(contentType)) return 'grpc-accept-encoding';
  return parseConnectContentType(contentType)?.stream === true ? 'connect-accept-encoding' : undefined;
}

/**
 * The whole body of a unary call, read from the Node stream's events with the limits and errors
 * of connect-es's `readAllBytes` (which would read it through two async generators): a body over
 * `maxBytes` is `resource_exhausted`, one that breaks a valid length hint `invalid_argument`. A stream
 * the client breaks off fails the read as connect-node's would: `aborted`, the client's doing, not
 * the server's fault.
 */
function readNodeBody(req: NodeRequest, maxBytes: number, lengthHint: string | null): Promise<Uint8Array> {
  const hint = lengthHint === null ? Number.NaN : Number.parseInt(lengthHint, 10);
  const promised = Number.isSafeInteger(hint) && hint >= 0 ? hint : undefined;
  // The client reset the stream while the gate was admitting the call: no event is coming.
  if (req.destroyed) return Promise.reject(new ConnectError('the request body was cut short', Code.Aborted));
  if (promised !== undefined && promised > maxBytes) {
    return Promise.reject(new ConnectError(`message size ${promised} is larger than configured readMaxBytes ${maxBytes}`, Code.ResourceExhausted));
  }
  // Over HTTP/1.1, the bytes on the wire too, framing included: chunk extensions and leading zeros
  // in chunk sizes pad a body without end, which the parser strips (helper 180; server.ts,
  // boundFraming). Such a body is not read to its end: its connection closes with the answer.
  const wire = 'stream' in req ? undefined : { socket: req.socket, start: req.socket.bytesRead, bound: framingBound(maxBytes) };
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let count = 0;
    const stop = () => {
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('error', onError);
      req.off('close', onClose);
    };
    // A body over its limit is answered at once; the rest of it is read and dropped, so that an
    // HTTP/1.1 connection stays usable (destroying the request would reset it under the client).
    const giveUp = (error: ConnectError) => {
      stop();
      req.resume();
      reject(error);
    };
    const onData = (chunk: Buffer) => {
      count += chunk.byteLength;
      if (promised !== undefined && count > promised) giveUp(new ConnectError(`protocol error: promised ${promised} bytes, received ${count}`, Code.InvalidArgument));
      else if (promised === undefined && count > maxBytes) giveUp(new ConnectError(`message size is larger than configured readMaxBytes ${maxBytes}`, Code.ResourceExhausted));
      else if (wire !== undefined && wire.socket.bytesRead - wire.start > wire.bound) {
        stop();
        req.pause();
        reject(new ConnectError(`message framing is larger than configured readMaxBytes ${maxBytes} allows`, Code.ResourceExhausted));
      } else chunks.push(chunk);
    };
    const onEnd = () => {
      stop();
      if (promised !== undefined && count < promised) reject(new ConnectError(`protocol error: promised ${promised} bytes, received ${count}`, Code.InvalidArgument));
      else resolve(chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks, count));
    };
    const onError = (error: Error) => {
      stop();
      reject(new ConnectError('the request body was cut short', Code.Aborted, undefined, undefined, error));
    };
    const onClose = () => {
      stop();
      reject(new ConnectError('the request body was cut short', Code.Aborted));
    };
    req.on('data', onData);
    req.once('end', onEnd);
    req.once('error', onError);
    req.once('close', onClose);
  });
}

/** A unary method's implementation and its serializers. */
interface UnaryMethod {
  spec: Extract<ReturnType<typeof createServiceImplSpec>['methods'][string], { kind: 'unary' }>;
  serialization: ReturnType<typeof createMethodSerializationLookup>;
}

/**
 * The body's reading, or the call's end if that comes first: its deadline (`deadline_exceeded`),
 * its client gone, the server shutting down. A body that never ended was answered only by the
 * request timeout, 60 s on, whatever deadline the client had set (helper 206). The reading left
 * behind ends with its stream; its outcome is nobody's.
 */
function untilCallEnds<T>(reading: Promise<T>, signal: AbortSignal): Promise<T> {
  let onAbort: (() => void) | undefined;
  const ended = new Promise<never>((_, reject) => {
    onAbort = () => reject(ConnectError.from(signal.reason));
    if (signal.aborted) onAbort();
    else signal.addEventListener('abort', onAbort, { once: true });
  });
  reading.catch(() => undefined);
  return Promise.race([reading, ended]).finally(() => {
    if (onAbort !== undefined) signal.removeEventListener('abort', onAbort);
  });
}

/** Hands a call to connect-es, with the gate's body in its context values. */
function serveWithConnect(
  handler: ReturnType<typeof createConnectRouter>['handlers'][number],
  req: NodeRequest,
  res: NodeResponse,
  contextValues: ContextValues,
  // gRPC-Web's text mode, served as the binary call it encodes (grpc-web-text.ts).
  text = false,
): void {
  let request;
  try {
    request = universalRequestFromNodeRequest(req, res, undefined, contextValues);
  } catch {
    // connect-node cannot form the request's URL (it could not for an HTTP/1.0 request without a
    // Host header, now given one); thrown from here it would end the process.
    res.statusCode = 400;
    res.end();
    return;
  }
  if (text) request = binaryRequestOf(request);
  const body = new ReplayableBody(request.body as AsyncIterable<Uint8Array>);
  contextValues.set(bodyKey, body);
  handler({ ...request, body })
    .then((response) => universalResponseToNodeResponse(text ? textResponseOf(response) : response, res))
    .catch((reason: unknown) => {
      if (ConnectError.from(reason).code !== Code.Aborted) res.destroy();
    });
}

/** What the client is told when the gate refuses a call: domain errors as the interceptors translate them. */
function refusalOf(error: unknown, context: HandlerContext): ConnectError {
  if (error instanceof AppError) return toConnectError(error, context.method.input);
  if (error instanceof ConnectError && error.code !== Code.Internal && error.code !== Code.Unknown) return error;
  return new ConnectError('Internal server error', Code.Internal);
}

/**
 * Forgets a deadline longer than a timer can wait (MAX_TIMER_MS, about 25 days): valid by the
 * Connect and gRPC specifications, but a timer set for it fires at once, and connect-es (which
 * serves what the unary paths above decline) would cancel the call after 1 ms. Such a deadline
 * is no deadline; a malformed one is left for the parsers to refuse.
 */
function dropOverlongTimeouts(headers: NodeRequest['headers']): void {
  const header = headers['connect-timeout-ms'];
  const connect = connectTimeoutMs(typeof header === 'string' ? header : undefined);
  if (connect !== undefined && timerTimeout(connect) === undefined) delete headers['connect-timeout-ms'];
  const grpc = headers['grpc-timeout'];
  if (typeof grpc === 'string') {
    const timeoutMs = grpcTimeoutMs(grpc);
    if (timeoutMs !== undefined && timerTimeout(timeoutMs) === undefined) delete headers['grpc-timeout'];
  }
}

/**
 * Over HTTP/2, closes with NO_ERROR (RFC 9113 §8.1) a stream answered in full before its body was
 * read: else a client still sending a body nobody reads stalled on its window until the request
 * deadline reset the stream (an unknown path's 404 held 60 s: helper 101). The stream's own
 * 'finish' (the compatibility response's waits for the stream to close).
 */
function endUnreadStream(req: IncomingMessage | Http2ServerRequest): void {
  if (!('stream' in req)) return;
  const stream = req.stream;
  let trailers = false;
  const close = () => {
    if (!stream.destroyed && !stream.readableEnded) stream.close(constants.NGHTTP2_NO_ERROR);
  };
  // An answer with trailers (gRPC's status) is complete only once they are sent, after the
  // stream's 'finish': closed then, it went out without them.
  stream.once('wantTrailers', () => {
    trailers = true;
    setImmediate(close);
  });
  stream.once('finish', () => {
    if (!trailers) setImmediate(() => (trailers ? undefined : close()));
  });
}
