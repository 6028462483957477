import type { NextFunction, Request, Response } from 'express';
import type { ClientInfo } from '../../domain/actor.ts';
import type { ClientAddressResolver } from '../../infrastructure/client-address.ts';
import { unmeteredLine, type Logger } from '../../infrastructure/logger.ts';
import type { Metrics } from '../../infrastructure/metrics.ts';
import { SpanStatusCode, type Tracing } from '../../infrastructure/tracing.ts';
import { resolveClientInfo } from '../../rpc/client-edge.ts';
import { requestIdFrom } from '../../infrastructure/request-id.ts';
import { runWithCallContext, type CallContext } from '../../infrastructure/call-context.ts';

declare global {
  // Express's own extension point for typed `res.locals`.
  namespace Express {
    interface Locals {
      requestId?: string;
      /** The request's bearer token, on routes that need one (see requireBearer); checked by the service layer. */
      accessToken?: string;
      /** Who is calling, resolved once at the edge (address, user agent, device token). */
      client?: ClientInfo;
      /** Charged to no rate limit (a probe, a static file, a refusal of a client over its limit): logged within unmeteredLine's budget. */
      unmetered?: boolean;
    }
  }
}

/**
 * Gives every request an id (the caller's `x-request-id` when it is sane, a new UUID otherwise),
 * resolves its client by the same rule as the RPC facade, echoes the id in the response and logs
 * one line per request when it finishes.
 */
export function requestContext(
  logger: Logger,
  resolveClient: ClientAddressResolver,
  metrics?: Metrics,
  tracing?: Tracing,
  peerTrusted: (socketAddress: string | undefined) => boolean = () => false,
  routeOf: (method: string, path: string) => string | undefined = () => undefined,
) {
  return (req: Request, res: Response, next: NextFunction): void => {
    const incoming = req.get('x-request-id');
    const requestId = requestIdFrom(incoming);
    res.locals.requestId = requestId;
    res.locals.client = resolveClientInfo(resolveClient, req.socket.remoteAddress, (name) => req.get(name));
    res.setHeader('x-request-id', requestId);
    const started = process.hrtime.bigint();
    // A `traceparent` is continued when a trusted proxy passed it on; a client's is linked to.
    const span = tracing?.startServerSpan(req.method, (name) => req.get(name), { 'http.request.method': req.method, 'url.path': req.path }, peerTrusted(req.socket.remoteAddress));
    // Everything this request does from here, calls to other layers included, carries its id;
    // the service layer records in it who the caller turned out to be.
    const context: CallContext = { requestId, span };
    // One line and one sample per request, when its answer has gone out or its client has left
    // without it (a request whose client hung up used to leave neither, though its work went on
    // and could commit: helper 114). The latter is logged as nginx does, 499.
    let recorded = false;
    const record = (abandonedByClient: boolean) => {
      if (recorded) return;
      recorded = true;
      const durationMs = Number(process.hrtime.bigint() - started) / 1e6;
      const status = abandonedByClient ? CLIENT_CLOSED_REQUEST : res.statusCode;
      // The operation's path template, never the path itself: a label must not take values
      // that clients choose.
      // A request refused before the validator matched it (the rate limit, a body that does not
      // parse) is labelled with its operation's template all the same: it was `unmatched`, the
      // label of paths no operation has, and a login flood showed as noise (helper 133).
      const route = (req as { openapi?: { openApiRoute?: string } }).openapi?.openApiRoute ?? routeOf(req.method, req.path);
      metrics?.httpRequest(route ?? 'unmatched', req.method, status, durationMs / 1000);
      if (span !== undefined) {
        if (route !== undefined) {
          span.updateName(`${req.method} ${route}`);
          span.setAttribute('http.route', route);
        }
        if (abandonedByClient) {
          span.setStatus({ code: SpanStatusCode.ERROR, message: 'client disconnected' });
        } else {
          span.setAttribute('http.response.status_code', status);
          if (status >= 500) span.setStatus({ code: SpanStatusCode.ERROR });
        }
        span.end();
      }
      const level = status === 503 ? 'warn' : status >= 500 ? 'error' : 'info';
      const line = {
        requestId,
        method: req.method,
        ...loggedPath(req.originalUrl.split('?')[0] ?? ''),
        status,
        durationMs: Math.round(durationMs * 100) / 100,
        userId: callerId(context.caller),
        traceId: span?.spanContext().traceId,
      };
      const message = abandonedByClient ? 'request abandoned by its client' : 'request completed';
      if (res.locals.unmetered === true) unmeteredLine(logger, level, line, message);
      else logger[level](line, message);
    };
    res.on('finish', () => record(false));
    // A client that disconnects before its answer aborts the work done for it (see WorkGate).
    const abandoned = new AbortController();
    res.once('close', () => {
      if (res.writableFinished) return;
      abandoned.abort();
      record(true);
    });
    context.signal = abandoned.signal;
    runWithCallContext(context, next);
  };
}

/** The status a request whose client closed the connection before its answer is logged with (nginx's). */
const CLIENT_CLOSED_REQUEST = 499;

/** Longest path a log line carries, as a span's attributes are cut (tracing.ts). */
const LOGGED_PATH_MAX = 1024;

/**
 * The path as a log line carries it: cut, and said to be, past LOGGED_PATH_MAX. A 16 KB path made
 * a 16 KB line, which Docker's and containerd's log drivers split into partial records that
 * collectors then read as two broken ones, the second starting with the client's bytes (helper 114).
 */
export function loggedPath(path: string): { path: string; pathTruncated?: true } {
  return path.length <= LOGGED_PATH_MAX ? { path } : { path: path.slice(0, LOGGED_PATH_MAX), pathTruncated: true };
}

/** The user id of a call context's `user:<id>` caller, for the request log. */
function callerId(caller: string | undefined): number | undefined {
  return caller?.startsWith('user:') === true ? Number(caller.slice(5)) : undefined;
}

/** Where the request came from, as requestContext resolved it. */
export function clientOf(res: Response): ClientInfo {
  return res.locals.client ?? {};
}

/**
 * The operation template (`/api/v1/users/{userId}`) a request falls under, by the contract's
 * paths and their methods, as Express routes it: the path in any case with an optional trailing
 * slash, and a method the path has an operation for (HEAD with GET, and OPTIONS, a CORS
 * preflight's). For requests refused before the validator matched them; undefined for any other,
 * which is `unmatched`. The method counts: any of the 34 methods Node's parser takes, on any
 * path, multiplied the series clients could make (helper 138: 3,300 series and a 5.7 MB
 * `/metrics` from 5,000 unauthenticated requests).
 */
export function routeMatcher(paths: Readonly<Record<string, unknown>>): (method: string, path: string) => string | undefined {
  const routes = Object.entries(paths).map(([template, item]) => {
    const methods = new Set(Object.keys(item ?? {}).map((key) => key.toUpperCase()));
    if (methods.has('GET')) methods.add('HEAD');
    methods.add('OPTIONS');
    const pattern = new RegExp(`^${template.replace(/[.*+?^$()|[\]\\]/g, '\\$&').replace(/\\?\{[^}]+\\?\}/g, '[^/]+')}/?$`, 'i');
    return { template, methods, pattern };
  });
  return (method, path) => routes.find((route) => route.methods.has(method) && route.pattern.test(path))?.template;
}
