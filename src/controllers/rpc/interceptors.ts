// Cross-cutting RPC behaviour, mirroring the REST middleware: request ids and logs, error
// translation and request validation; and the rate limit, which runs just before them.
import { Code, ConnectError, type HandlerContext, type Interceptor } from '@connectrpc/connect';
import { create, type DescMessage } from '@bufbuild/protobuf';
import { durationFromMs } from '@bufbuild/protobuf/wkt';
import { BadRequestSchema, RetryInfoSchema } from '../../../gen/proto/google/rpc/error_details_pb.js';
import { CONNECT_CODE } from '../../domain/error-codes.ts';
import { AppError, InvalidTokenError, RateLimitedError, retryAfterOf, withoutStack } from '../../domain/errors.ts';
import { unmeteredLine, type Logger } from '../../infrastructure/logger.ts';
import { rpcProtocolOf, type Metrics } from '../../infrastructure/metrics.ts';
import { SpanStatusCode, type Tracing } from '../../infrastructure/tracing.ts';
import { requestIdFrom } from '../../infrastructure/request-id.ts';
import type { RateLimiter } from '../../infrastructure/rate-limiter.ts';
import type { RequestValidator } from './request-validator.ts';
import { peerTrustedKey, requestIdKey } from './rpc-context.ts';
import { callerKey } from '../../rpc/caller.ts';
import { admitsAsHealthCheck, isHealthService } from '../../rpc/call-limits.ts';
import { addressKey } from '../../infrastructure/client-address.ts';
import { bearerChallenge, NO_STORE_HEADERS } from '../../rpc/client-edge.ts';
import { remainingMs, runWithCallContext, timeoutFromHeaders } from '../../infrastructure/call-context.ts';

/** Domain error codes as Connect codes: the RPC twin of the REST status table. */
/** See src/domain/error-codes.ts: one table for every protocol. */
export { CONNECT_CODE };

/**
 * Gives every RPC a request id (the caller's `x-request-id` when sane), returns it in the response
 * headers (or error metadata) and logs one line per call. The id, and the deadline a gRPC or
 * Connect client may set, go with every call the RPC makes to other layers.
 */
export function requestContextInterceptor(logger: Logger, metrics?: Metrics, tracing?: Tracing): Interceptor {
  return (next) => (req) => {
    const requestId = requestIdFrom(req.header.get('x-request-id'));
    req.contextValues.set(requestIdKey, requestId);
    const timeoutMs = timeoutFromHeaders(req.header);
    const started = process.hrtime.bigint();
    const procedure = `${req.service.typeName}/${req.method.name}`;
    const unmetered = isHealthService(req.service);
    const protocol = rpcProtocolOf(req.header.get('content-type'));
    const span = tracing?.startServerSpan(
      procedure,
      (name) => req.header.get(name),
      {
        'rpc.system.name': protocol === 'connect' ? 'connect_rpc' : 'grpc',
        'rpc.method': procedure,
        'arcana.rpc.protocol': protocol,
      },
      req.contextValues.get(peerTrustedKey),
    );
    const log = (code: string) => {
      const durationMs = Number(process.hrtime.bigint() - started) / 1e6;
      metrics?.rpcRequest(procedure, protocol, code, durationMs / 1000);
      if (span !== undefined) {
        span.setAttribute('rpc.response.status_code', code);
        if (code === 'internal' || code === 'unknown' || code === 'unavailable' || code === 'deadlineexceeded') span.setStatus({ code: SpanStatusCode.ERROR, message: code });
        span.end();
      }
      const line = { requestId, procedure, code, durationMs: Math.round(durationMs * 100) / 100, traceId: span?.spanContext().traceId };
      const level = code === 'internal' || code === 'unknown' ? 'error' : 'info';
      // Health checks are charged to no rate limit (probes carry no credentials): as many lines
      // as a client sends calls, so they draw on the budget of such lines (unmeteredLine).
      if (unmetered) unmeteredLine(logger, level, line, 'rpc completed');
      else logger[level](line, 'rpc completed');
    };
    return runWithCallContext({ requestId, deadline: timeoutMs === undefined ? undefined : Date.now() + timeoutMs, signal: req.signal, span }, async () => {
      try {
        const res = await next(req);
        res.header.set('x-request-id', requestId);
        if (req.requestMethod === 'GET') noStore(res.header);
        // A streaming call has only begun: its outcome is known when its messages end.
        if (res.stream) return { ...res, message: loggedAtEnd(res.message, req.signal, log) };
        log('ok');
        return res;
      } catch (error) {
        const connectError = ConnectError.from(error);
        connectError.metadata.set('x-request-id', requestId);
        // Error statuses such as 404 are cacheable by default too.
        if (req.requestMethod === 'GET') noStore(connectError.metadata);
        // A call its client left (or whose deadline passed, or the server's shutdown cut) is
        // logged and counted by why it ended, as a stream is: the work cancelled for it fails as
        // `unavailable`, and any client hanging up inflated the outage code (helper 114).
        log(Code[(req.signal.aborted ? ConnectError.from(req.signal.reason) : connectError).code].toLowerCase());
        throw connectError;
      }
    });
  };
}

/**
 * The messages of a streaming answer, logging its outcome once they end or fail. A stream the call
 * ended (its client went away, its deadline passed) is logged as such, `canceled` or
 * `deadline_exceeded`, whatever error the interrupted write raised. A client that resets a stream
 * can end its requests before the call's signal says it is gone: such a stream may still be logged
 * by what its handler made of that (`ok`, `invalid_argument`).
 */
async function* loggedAtEnd<T>(messages: AsyncIterable<T>, signal: AbortSignal, log: (code: string) => void): AsyncIterable<T> {
  const codeOf = (error: unknown) => Code[ConnectError.from(error).code].toLowerCase();
  let code: string | undefined;
  try {
    yield* messages;
    code = 'ok';
  } catch (error) {
    code = codeOf(signal.aborted ? signal.reason : error);
    throw error;
  } finally {
    // Returned early (the client stopped reading): no outcome of its own.
    log(code ?? (signal.aborted ? codeOf(signal.reason) : 'canceled'));
  }
}

/**
 * Marks an answer uncacheable. A Connect GET is the one RPC a browser or proxy would cache, and
 * its answer is about the caller, as every API answer is (REST sends the same).
 */
function noStore(headers: Headers): void {
  for (const [name, value] of NO_STORE_HEADERS) headers.set(name, value);
}

/**
 * Translates domain errors into Connect errors with the same message as REST, field violations
 * as google.rpc.BadRequest and a retry delay for rate limits. Anything unexpected becomes a bare
 * `internal` (logged here) so no stack or internals reach the client.
 */
export function errorInterceptor(options: { logger: Logger; exposeInternals: boolean }): Interceptor {
  return (next) => async (req) => {
    const deadlinePassed = () => (req.signal.aborted && ConnectError.from(req.signal.reason).code === Code.DeadlineExceeded) || (remainingMs() ?? 1) <= 0;
    try {
      const res = await next(req);
      // An answer made after the client's deadline is not sent as one: a client that kept waiting
      // is told its deadline passed, as grpc-go's server tells it, and as the split topologies,
      // whose internal call fails at the deadline, told it while the monolith answered `ok`
      // (helper 187). What the call wrote stays written: DEADLINE_EXCEEDED means "maybe done".
      if (!res.stream && deadlinePassed()) throw new ConnectError('the deadline passed before the call completed', Code.DeadlineExceeded);
      return res;
    } catch (error) {
      // Whatever failed once the client's own deadline had passed (in a split topology the
      // cancelled internal call reads as unavailable), the client's answer is that its deadline passed.
      if (deadlinePassed()) throw new ConnectError('the deadline passed before the call completed', Code.DeadlineExceeded);
      if (error instanceof AppError) {
        const connectError = toConnectError(error, req.method.input);
        // The RPC twin of REST's 401 challenge, for clients that read it (RFC 6750 §3).
        if (connectError.code === Code.Unauthenticated) {
          connectError.metadata.set('www-authenticate', bearerChallenge(error instanceof InvalidTokenError, error.message));
          for (const [name, value] of NO_STORE_HEADERS) connectError.metadata.set(name, value);
        }
        throw connectError;
      }
      if (error instanceof ConnectError && error.code !== Code.Internal && error.code !== Code.Unknown) throw error;
      options.logger.error({ err: error, requestId: req.contextValues.get(requestIdKey) }, 'rpc failed');
      const message = options.exposeInternals && error instanceof Error ? error.message : 'Internal server error';
      throw new ConnectError(message, Code.Internal);
    }
  };
}

/** A domain error as the Connect error clients see; also used by the gate in front of the interceptors. */
export function toConnectError(error: AppError, input: DescMessage): ConnectError {
  const details = [];
  if (error.details !== undefined) {
    // The services name fields as JSON does (newPassword); RPC clients know them by their proto
    // names (new_password).
    const protoName = (field: string) => input.fields.find((candidate) => candidate.jsonName === field)?.name ?? field;
    details.push({
      desc: BadRequestSchema,
      value: create(BadRequestSchema, {
        fieldViolations: Object.entries(error.details).map(([field, description]) => ({ field: protoName(field), description })),
      }),
    });
  }
  const metadata = new Headers();
  const retryAfter = retryAfterOf(error);
  if (retryAfter !== undefined) {
    metadata.set('retry-after', String(retryAfter));
    details.push({
      desc: RetryInfoSchema,
      value: create(RetryInfoSchema, { retryDelay: durationFromMs(retryAfter * 1000) }),
    });
  }
  const code = CONNECT_CODE[error.code];
  const outgoing = [...details];
  return withoutStack(() => new ConnectError(error.message, code, metadata, outgoing, error));
}

/**
 * The same per-client budget as REST: one limiter, one key per client address (none when rate
 * limiting is off; health calls are still held to HEALTH_READ_MAX_BYTES). It runs in the
 * gate before a call's body is read (see rpc-node-handler.ts), not as an interceptor, so that a
 * request connect-es could not decode is counted too, and a refused client costs no decoding.
 */
export function rateLimitGate(limiter: RateLimiter | undefined): (context: HandlerContext) => Promise<void> {
  return async (context) => {
    // Health checking is the probes' protocol (Kubernetes gRPC probes, load balancers): exempt,
    // as /health and /ready are, and so held to the few bytes a health check needs.
    if (admitsAsHealthCheck(context)) return;
    if (limiter === undefined) return;
    const decision = await limiter.consume(`ip:${addressKey(context.values.get(callerKey).client.ipAddress)}`);
    if (!decision.allowed) throw new RateLimitedError(decision.resetSeconds);
  };
}

/**
 * Validates requests against openapi.yaml's rules and the edge's own (see RequestValidator): a
 * unary request before the handler, each message of a stream as the handler takes it. Streams
 * were not checked at all: Health/Watch started a watch for a service name with a NUL, or a
 * message with fields HealthCheckRequest does not have, which Check refuses (helper 169).
 */
export function validationInterceptor(validator: RequestValidator): Interceptor {
  return (next) => async (req) => {
    if (!req.stream) {
      validator.check(req.method.input, req.message);
      return next(req);
    }
    const { input } = req.method;
    const messages = req.message;
    async function* checked() {
      for await (const message of messages) {
        validator.check(input, message);
        yield message;
      }
    }
    return next({ ...req, message: checked() });
  };
}
