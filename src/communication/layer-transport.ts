// The transport of a typed internal client: which process of the layer below gets each call, how
// long the call may take, and when a failed call is tried again. Business code holds a client of
// the layer's interface and never sees any of this.
import type { DescMessage, DescMethod, DescMethodUnary, MessageInitShape } from '@bufbuild/protobuf';
import { MethodOptions_IdempotencyLevel as Idempotency } from '@bufbuild/protobuf/wkt';
import { Code, ConnectError, type ContextValues, type Transport, type UnaryResponse } from '@connectrpc/connect';
import { createConnectTransport, createGrpcTransport } from '@connectrpc/connect-node';
import { connect } from 'node:net';
import type { Duplex } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from '../infrastructure/logger.ts';
import type { Metrics } from '../infrastructure/metrics.ts';
import { endWithError, SpanKind, type Span, type Tracing } from '../infrastructure/tracing.ts';
import { AppError } from '../domain/errors.ts';
import { currentCallContext, remainingMs, timerTimeout } from '../infrastructure/call-context.ts';
import { callerKey, writeCallerHeaders } from '../rpc/caller.ts';

/** Who the request is for (`user:<id>`): sent down for the logs, and sent back once the service layer knows. */
export const CALLER_HEADER = 'x-arcana-caller';
/**
 * Present on a call that may repeat one already carried out: a retry after a lost connection
 * (the first attempt may have done its work and lost only the answer), or any call made while
 * serving such a call. A layer that finds the write it is asked for already done answers a repeat
 * as the first attempt would have (see UpdateUser and the revocations of the repository API).
 */
export const REPEAT_HEADER = 'x-arcana-repeat';
/** On a write to the repository layer: whom it is made for (WriteOptions.actingAs, `actingAsToHeader`). */
export const ACTING_AS_HEADER = 'x-arcana-acting-as';
/** On a write to the repository layer: the audit event it stores with itself (WriteOptions.audit), an AuditEventRecord in binary. */
export const AUDIT_HEADER = 'x-arcana-audit-bin';
import { fromLayerError, isTransportFailure, NOT_CONNECTED, socketErrorCode } from './layer-errors.ts';
import { GrpcUnaryClient } from './grpc-unary-client.ts';
import { ResolvedEndpoints, type Resolve } from './resolved-endpoints.ts';

export interface LayerTransportOptions {
  /** The layer called, for logs: 'service', 'auth-service', 'repository'… */
  target: string;
  /** Base URLs of the layer's processes; calls go round-robin across them. */
  urls: readonly string[];
  /** `http`: the Connect protocol (binary) over HTTP/1.1; `grpc`: gRPC over cleartext HTTP/2. */
  protocol: 'http' | 'grpc';
  /** Deadline of a call when the request being served has none, or a later one. */
  timeoutMs: number;
  /** Further attempts after a failure that is safe to retry. */
  retries: number;
  /** The deployment's INTERNAL_API_SECRET, presented on every call. */
  secret?: string | undefined;
  logger: Logger;
  /** Where call counts and latencies go, when metrics are on. */
  metrics?: Metrics | undefined;
  /** Where client spans go, when tracing is on; each call's `traceparent` names its span. */
  tracing?: Tracing | undefined;
  /** How a URL's host name is resolved to the addresses of its processes (gRPC only); the system's resolver by default. */
  resolve?: Resolve | undefined;
  /** First backoff step; each further attempt doubles it, up to `maxBackoffMs`, with full jitter. */
  backoffMs?: number;
  maxBackoffMs?: number;
  random?: () => number;
}

/** A Transport over one or more processes of a layer; see LayerTransportOptions. */
export function createLayerTransport(options: LayerTransportOptions): Transport {
  if (options.urls.length === 0) throw new Error(`no URLs for the ${options.target} layer`);
  const endpoints = options.urls.map((baseUrl): Transport => {
    if (options.protocol === 'http') return createConnectTransport({ baseUrl, httpVersion: '1.1', useBinaryFormat: true });
    // Unary calls, nearly all of them, go straight onto an HTTP/2 session (see
    // grpc-unary-client.ts); streams (health watches) through connect-node.
    const streams = createGrpcTransport({ baseUrl, nodeOptions: { createConnection: (authority: URL) => connectWithoutDelay(authority) } });
    // A connection to every address the URL's name resolves to, each called in turn (see
    // resolved-endpoints.ts): one connection by name pinned all calls to one replica.
    const clients = new ResolvedEndpoints<GrpcUnaryClient>(
      new URL(baseUrl).hostname,
      (address) => {
        const client: GrpcUnaryClient = new GrpcUnaryClient({
          baseUrl,
          createConnection: (authority) => connectWithoutDelay(authority, address),
          onUnreachable: () => clients.failed(client),
        });
        return client;
      },
      options.resolve === undefined ? {} : { resolve: options.resolve },
    );
    return {
      unary: (method, signal, timeoutMs, header, input) => {
        const first = clients.initial();
        if (first === undefined) return clients.pick().unary(method, signal, timeoutMs, header as Record<string, string>, input);
        return afterFirstResolution(first, signal, timeoutMs, (left) => clients.pick().unary(method, signal, left, header as Record<string, string>, input));
      },
      stream: streams.stream.bind(streams),
    };
  });
  const backoffMs = options.backoffMs ?? 25;
  const maxBackoffMs = options.maxBackoffMs ?? 1_000;
  const random = options.random ?? Math.random;
  let next = 0;
  const pick = (): Transport => {
    const endpoint = endpoints[next % endpoints.length] as Transport;
    next = (next + 1) % endpoints.length;
    return endpoint;
  };

  /** Headers every internal call carries, and the call's deadline (epoch ms). */
  const prepare = (header: HeadersInit | undefined, timeoutMs: number | undefined, contextValues: ContextValues | undefined, span?: Span) => {
    // A plain record (lower-case names), which both kinds of endpoint take as it is.
    const headers: Record<string, string> = {};
    if (header !== undefined) new Headers(header).forEach((value, name) => (headers[name] = value));
    if (span !== undefined) options.tracing?.inject(span, headers);
    if (options.secret !== undefined) headers['authorization'] = `Bearer ${options.secret}`;
    // A call of the service layer's API carries its caller (token and client) in context values.
    if (contextValues !== undefined) writeCallerHeaders(contextValues.get(callerKey), headers);
    const context = currentCallContext();
    if (context !== undefined) {
      headers['x-request-id'] = context.requestId;
      if (context.caller !== undefined) headers[CALLER_HEADER] = context.caller;
      if (context.repeat === true) headers[REPEAT_HEADER] = '1';
    }
    // The request being served may have less time left than this call's own budget: the
    // downstream call gets whichever is shorter, so no layer works on for an answer nobody awaits.
    const budget = Math.min(options.timeoutMs, timeoutMs ?? Number.POSITIVE_INFINITY, remainingMs() ?? Number.POSITIVE_INFINITY);
    // Whether the request's deadline (its client's, or the budget the layer above gave this
    // process) bounds the call rather than this transport's own timeout: then running out of time
    // is that deadline passing, not a layer failing to answer. (The handler's clock and the call
    // context's each measure it, a queue's wait apart, so the shorter of the two is taken.)
    const requestBound = budget < options.timeoutMs;
    return { headers, deadline: Date.now() + budget, context, requestBound };
  };

  /** The call ran out of time: the request's deadline passed (`deadline_exceeded`, as the client asked), or a layer did not answer within its budget (`unavailable`). */
  const outOfTime = (requestBound: boolean, error: ConnectError) =>
    requestBound ? new ConnectError('the deadline passed before the call completed', Code.DeadlineExceeded) : fromLayerError(error);
  const expired = (requestBound: boolean) => outOfTime(requestBound, new ConnectError('the request deadline passed before the call could be made', Code.DeadlineExceeded));

  const unaryTransport = async <I extends DescMessage, O extends DescMessage>(
    method: DescMethodUnary<I, O>,
    callSignal: AbortSignal | undefined,
    timeoutMs: number | undefined,
    header: ConstructorParameters<typeof Headers>[0],
    input: MessageInitShape<I>,
    contextValues: ContextValues | undefined,
    span?: Span,
  ): Promise<UnaryResponse<I, O>> => {
    const { headers, deadline, context, requestBound } = prepare(header, timeoutMs, contextValues, span);
    // A request whose client has gone cancels its calls to the layers below, so that they stop
    // (and never start bcrypt) for an answer nobody will receive.
    const signal = callSignal ?? currentCallContext()?.signal;
    for (let attempt = 0; ; attempt += 1) {
      // In whole milliseconds: a client's deadline may be a fraction of one (grpc-go writes
      // `4999876u`), and connect-timeout-ms takes digits only; `4999.0009765625` was refused by
      // the layer below, and every such call failed `internal` (helper 120).
      const left = Math.ceil(deadline - Date.now());
      if (left <= 0) throw expired(requestBound);
      try {
        const response = await pick().unary(method, signal, left, headers, input, contextValues);
        if (context !== undefined) context.caller ??= response.header.get(CALLER_HEADER) ?? undefined;
        return response;
      } catch (error) {
        const connectError = ConnectError.from(error);
        const delay = Math.min(maxBackoffMs, backoffMs * 2 ** attempt) * random();
        span?.addEvent('attempt failed', { 'rpc.response.status_code': Code[connectError.code], attempt: attempt + 1 });
        if (connectError.code === Code.DeadlineExceeded) throw outOfTime(requestBound, connectError);
        if (attempt >= options.retries || !isRetryable(method, connectError) || Date.now() + delay >= deadline || signal?.aborted === true) {
          throw fromLayerError(connectError);
        }
        options.logger.warn(
          {
            target: options.target,
            procedure: `${method.parent.typeName}/${method.name}`,
            attempt: attempt + 1,
            code: Code[connectError.code],
            cause: socketErrorCode(connectError),
          },
          'internal call failed; retrying',
        );
        await sleep(delay);
        headers[REPEAT_HEADER] = '1';
      }
    }
  };

  const { metrics, tracing } = options;
  return {
    async unary(method, signal, timeoutMs, header, input, contextValues) {
      if (metrics === undefined && tracing === undefined) return unaryTransport(method, signal, timeoutMs, header, input, contextValues);
      const started = performance.now();
      const procedure = `${method.parent.typeName}/${method.name}`;
      // One client span for the call, retries included (they are its events).
      const span = tracing?.startChildSpan(procedure, SpanKind.CLIENT, {
        'rpc.system.name': options.protocol === 'grpc' ? 'grpc' : 'connect_rpc',
        'rpc.method': procedure,
        'arcana.target.layer': options.target,
      });
      try {
        const response = await unaryTransport(method, signal, timeoutMs, header, input, contextValues, span);
        metrics?.internalCall(options.target, procedure, 'ok', (performance.now() - started) / 1000);
        span?.end();
        return response;
      } catch (error) {
        const outcome = error instanceof AppError ? error.code : 'failed';
        metrics?.internalCall(options.target, procedure, outcome, (performance.now() - started) / 1000);
        if (span !== undefined) endWithError(span, error, outcome);
        throw error;
      }
    },
    async stream(method, callSignal, timeoutMs, header, input, contextValues) {
      // Streams are not retried: part of one may already have been consumed. Their only use is
      // the health watch, which is not a request: no span, but the current one is carried on.
      const parent = tracing === undefined ? undefined : currentCallContext()?.span;
      const { headers, deadline } = prepare(header, timeoutMs, contextValues, parent);
      const signal = callSignal ?? currentCallContext()?.signal;
      try {
        return await pick().stream(method, signal, Math.max(1, Math.ceil(deadline - Date.now())), headers, input, contextValues);
      } catch (error) {
        throw fromLayerError(error);
      }
    },
  };
}

/**
 * Opens the TCP connection of an HTTP/2 session with Nagle's algorithm off: a call's HEADERS and
 * DATA frames are separate small writes, and Nagle would hold the second back until the peer's
 * delayed ACK, adding tens of milliseconds to every call.
 */
/**
 * Makes a call once the first resolution of its URL's name is done, within the call's own time
 * and as long as its caller waits (helper 131: calls waited on a slow resolver past their deadline,
 * and after their caller had gone); past that, the call goes by name with the time it has left.
 */
async function afterFirstResolution<T>(
  first: Promise<void>,
  signal: AbortSignal | undefined,
  timeoutMs: number | undefined,
  call: (left: number | undefined) => Promise<T>,
): Promise<T> {
  const started = Date.now();
  const wait = timerTimeout(timeoutMs);
  await Promise.race([first, ...(wait === undefined ? [] : [sleep(wait, undefined, { ref: false, signal }).catch(() => undefined)])]);
  if (signal?.aborted === true) throw ConnectError.from(signal.reason, Code.Canceled);
  const left = timeoutMs === undefined ? undefined : timeoutMs - (Date.now() - started);
  if (left !== undefined && left <= 0) throw new ConnectError('the operation timed out', Code.DeadlineExceeded);
  return call(left);
}

function connectWithoutDelay(authority: URL, address?: string): Duplex {
  const host = address ?? authority.hostname.replace(/^\[(.*)\]$/, '$1');
  const socket = connect({ host, port: Number(authority.port === '' ? 80 : authority.port), noDelay: true });
  // A connection to an address that has gone (a pod lost with its node) may hang until the
  // system gives up, minutes on: each call sent to it waited out its deadline (helper 130).
  const timer = setTimeout(() => socket.destroy(Object.assign(new Error(`connect to ${host} timed out`), { code: 'ETIMEDOUT' })), CONNECT_TIMEOUT_MS).unref();
  socket.once('connect', () => clearTimeout(timer));
  socket.once('close', () => clearTimeout(timer));
  return socket;
}

/** How long an internal connection may take to be made. */
const CONNECT_TIMEOUT_MS = 2_000;

/**
 * Only failures to reach a process are retried, never an answer one gave (which would also
 * multiply retries across layers), nor a call whose deadline passed. A refused connection means
 * the request was never sent, so any call may go again; after a lost connection the request may
 * have been carried out, so only calls the contract marks as reads or idempotent writes are.
 */
export function isRetryable(method: DescMethod, error: ConnectError): boolean {
  if (!isTransportFailure(error) || error.code === Code.DeadlineExceeded) return false;
  // Nothing was sent: a refused connection, or one never made (helper 130: an unreachable
  // address among a name's, which the connection by name had let Node's happy eyeballs skip).
  const code = socketErrorCode(error);
  if (code === 'ECONNREFUSED' || code === NOT_CONNECTED) return true;
  return method.idempotency !== Idempotency.IDEMPOTENCY_UNKNOWN;
}
