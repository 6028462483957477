import type { NextFunction, Request, Response } from 'express';
import { RateLimitedError } from '../../domain/errors.ts';
import { addressKey } from '../../infrastructure/client-address.ts';
import type { RateLimiter } from '../../infrastructure/rate-limiter.ts';
import { clientOf } from './request-context.ts';

/** Applies the limiter per client address and sets the IETF RateLimit headers. */
export function rateLimit(limiter: RateLimiter) {
  return async (_req: Request, res: Response, next: NextFunction): Promise<void> => {
    const decision = await limiter.consume(`ip:${addressKey(clientOf(res).ipAddress)}`);
    res.setHeader('RateLimit-Limit', String(decision.limit));
    res.setHeader('RateLimit-Remaining', String(decision.remaining));
    res.setHeader('RateLimit-Reset', String(decision.resetSeconds));
    // Charged, the request is logged as any; refused, it is one of as many as the client sends.
    res.locals.unmetered = !decision.allowed;
    if (!decision.allowed) {
      res.setHeader('Retry-After', String(decision.resetSeconds));
      throw new RateLimitedError(decision.resetSeconds);
    }
    next();
  };
}
