import type { NextFunction, Request, Response } from 'express';
import { RateLimitedError } from '../../domain/errors.ts';
import type { RateLimiter } from '../../infrastructure/rate-limiter.ts';

/** Applies the limiter per client address and sets the IETF RateLimit headers. */
export function rateLimit(limiter: RateLimiter) {
  return async (req: Request, res: Response, next: NextFunction): Promise<void> => {
    const decision = await limiter.consume(`ip:${req.ip ?? 'unknown'}`);
    res.setHeader('RateLimit-Limit', String(decision.limit));
    res.setHeader('RateLimit-Remaining', String(decision.remaining));
    res.setHeader('RateLimit-Reset', String(decision.resetSeconds));
    if (!decision.allowed) {
      res.setHeader('Retry-After', String(decision.resetSeconds));
      throw new RateLimitedError(decision.resetSeconds);
    }
    next();
  };
}
