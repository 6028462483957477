import type { NextFunction, Request, Response } from 'express';
import type { Actor } from '../../domain/actor.ts';
import type { Logger } from '../../infrastructure/logger.ts';
import { requestIdFrom } from '../../infrastructure/request-id.ts';
import { runWithCallContext } from '../../communication/call-context.ts';

declare global {
  // Express's own extension point for typed `res.locals`.
  namespace Express {
    interface Locals {
      requestId?: string;
      actor?: Actor;
    }
  }
}

/**
 * Gives every request an id (the caller's `x-request-id` when it is sane, a new UUID otherwise),
 * echoes it in the response and logs one line per request when it finishes.
 */
export function requestContext(logger: Logger) {
  return (req: Request, res: Response, next: NextFunction): void => {
    const incoming = req.get('x-request-id');
    const requestId = requestIdFrom(incoming);
    res.locals.requestId = requestId;
    res.setHeader('x-request-id', requestId);
    const started = process.hrtime.bigint();
    res.on('finish', () => {
      const durationMs = Number(process.hrtime.bigint() - started) / 1e6;
      const level = res.statusCode === 503 ? 'warn' : res.statusCode >= 500 ? 'error' : 'info';
      logger[level](
        {
          requestId,
          method: req.method,
          path: req.originalUrl.split('?')[0],
          status: res.statusCode,
          durationMs: Math.round(durationMs * 100) / 100,
          userId: res.locals.actor?.userId,
        },
        'request completed',
      );
    });
    // Everything this request does from here, calls to other layers included, carries its id.
    runWithCallContext({ requestId }, next);
  };
}

/** The caller established by `requireAuth`; only call it on routes behind that middleware. */
export function actorOf(res: Response): Actor {
  const actor = res.locals.actor;
  if (actor === undefined) throw new Error('route is missing requireAuth');
  return actor;
}

/** Where the request came from, recorded with sessions it opens. */
export function clientInfoOf(req: Request) {
  return { ipAddress: req.ip, userAgent: req.get('user-agent') };
}
