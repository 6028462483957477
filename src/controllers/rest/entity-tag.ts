import type { NextFunction, Request, Response } from 'express';
import { createHash } from 'node:crypto';

/**
 * A weak entity tag for a body that is the same on every answer (the console's files, the docs
 * page, the contract): computed once where the body is read, sent with each answer, so a client
 * holding it revalidates with a 304. Weak because the answer goes out gzipped to some and not to
 * others, and the two representations cannot share a strong tag (RFC 9110 8.8.1): it was strong,
 * weakened when the compression middleware coded the answer, but a 304 is never coded, so the
 * revalidation of a gzipped copy answered the strong tag (helper 171), and a cache refreshing
 * its stored headers from it held gzip bytes under a strong tag. If-None-Match compares weakly,
 * so either representation revalidates with it. API answers carry no such tag: each envelope has
 * its own requestId and timestamp, so a tag of the body could never match (see rest-app.ts), and
 * a user's tag is its version (envelope.ts).
 */
export function entityTagOf(body: string | Buffer): string {
  return `W/"${createHash('sha256').update(body).digest('base64url').slice(0, 27)}"`;
}

/**
 * Says that the answer varies by Accept-Encoding, whether or not this one is coded: the
 * compression middleware says so only on the answers it codes, so a 304 (never coded) dropped
 * what the 200 to the same request said (RFC 9110 §15.4.5; helper 171).
 */
export function varyByEncoding(_req: Request, res: Response, next: NextFunction): void {
  res.vary('Accept-Encoding');
  next();
}
