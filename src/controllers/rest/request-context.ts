import type { NextFunction, Request, Response } from 'express';
import type { ClientInfo } from '../../domain/actor.ts';
import type { ClientAddressResolver } from '../../infrastructure/client-address.ts';
import type { Logger } from '../../infrastructure/logger.ts';
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
    res.on('finish', () => {
      const durationMs = Number(process.hrtime.bigint() - started) / 1e6;
      // The operation's path template, never the path itself: a label must not take values
      // that clients choose.
      const route = (req as { openapi?: { openApiRoute?: string } }).openapi?.openApiRoute;
      metrics?.httpRequest(route ?? 'unmatched', req.method, res.statusCode, durationMs / 1000);
      if (span !== undefined) {
        if (route !== undefined) {
          span.updateName(`${req.method} ${route}`);
          span.setAttribute('http.route', route);
        }
        span.setAttribute('http.response.status_code', res.statusCode);
        if (res.statusCode >= 500) span.setStatus({ code: SpanStatusCode.ERROR });
        span.end();
      }
      const level = res.statusCode === 503 ? 'warn' : res.statusCode >= 500 ? 'error' : 'info';
      logger[level](
        {
          requestId,
          method: req.method,
          path: req.originalUrl.split('?')[0],
          status: res.statusCode,
          durationMs: Math.round(durationMs * 100) / 100,
          userId: callerId(context.caller),
          traceId: span?.spanContext().traceId,
        },
        'request completed',
      );
    });
    // A client that disconnects before its answer aborts the work done for it (see WorkGate).
    const abandoned = new AbortController();
    res.once('close', () => {
      if (res.writableFinished) return;
      abandoned.abort();
      // No 'finish' will come: the span ends here, as the client left it.
      if (span !== undefined) {
        span.setStatus({ code: SpanStatusCode.ERROR, message: 'client disconnected' });
        span.end();
      }
    });
    context.signal = abandoned.signal;
    runWithCallContext(context, next);
  };
}

/** The user id of a call context's `user:<id>` caller, for the request log. */
function callerId(caller: string | undefined): number | undefined {
  return caller?.startsWith('user:') === true ? Number(caller.slice(5)) : undefined;
}

/** Where the request came from, as requestContext resolved it. */
export function clientOf(res: Response): ClientInfo {
  return res.locals.client ?? {};
}
