import type { NextFunction, Request, Response } from 'express';
import { createHash } from 'node:crypto';

/**
 * A strong entity tag for a body that is the same on every answer (the console's files, the
 * docs page, the contract): computed once where the body is read, sent with each answer, so a
 * client holding it revalidates with a 304. API answers carry no such tag: each envelope has its
 * own requestId and timestamp, so a tag of the body could never match (see rest-app.ts), and a
 * user's tag is its version (envelope.ts).
 */
export function entityTagOf(body: string | Buffer): string {
  return `"${createHash('sha256').update(body).digest('base64url').slice(0, 27)}"`;
}

/**
 * Weakens a strong tag when the answer goes out content-coded: the gzip of a body is another
 * representation than the body (RFC 9110 8.8.1), so the two cannot share a strong tag, which a
 * cache may use to join ranges or answer If-Match. A weak tag still answers If-None-Match with a
 * 304 (weak comparison). Installed before the compression middleware, so that this runs after it
 * has chosen the coding: each wraps the `writeHead` it finds, and the last installed runs first.
 */
export function weakTagWhenEncoded(_req: Request, res: Response, next: NextFunction): void {
  const writeHead = res.writeHead.bind(res) as (...args: unknown[]) => Response;
  res.writeHead = ((...args: unknown[]) => {
    const tag = res.getHeader('etag');
    if (typeof tag === 'string' && tag.startsWith('"') && res.getHeader('content-encoding') !== undefined) res.setHeader('etag', `W/${tag}`);
    return writeHead(...args);
  }) as typeof res.writeHead;
  next();
}
