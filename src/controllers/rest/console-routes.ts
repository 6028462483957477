import { Router, type NextFunction, type Request, type Response } from 'express';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { StaticBody } from './static-body.ts';

/** Where the committed console build lives (scripts/build-console.ts writes it). */
export const CONSOLE_DIST = join(import.meta.dirname, '..', '..', '..', 'console', 'dist');

/**
 * The console's policy: its own script and stylesheet only, calls to this origin only, no
 * inline script or style, no plugins, never framed, forms and <base> nowhere.
 */
export const CONSOLE_CSP = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self'",
  "connect-src 'self'",
  "font-src 'none'",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

const ASSETS = {
  'index.html': 'text/html; charset=utf-8',
  'console.js': 'text/javascript; charset=utf-8',
  'console.css': 'text/css; charset=utf-8',
} as const;

/**
 * The admin console at /console: one page and its two assets, read once from console/dist. The
 * page talks to the public RPC API of this same process, so it works in every topology whose
 * controller (or monolith) serves it.
 */
export function createConsoleRoutes(dist = CONSOLE_DIST): Router {
  const files = Object.fromEntries(Object.entries(ASSETS).map(([name, type]) => [name, StaticBody.of(readFileSync(join(dist, name)), type)])) as Record<
    keyof typeof ASSETS,
    StaticBody
  >;
  const send = (req: Request, res: Response, next: NextFunction, name: keyof typeof ASSETS) => {
    res.setHeader('content-security-policy', CONSOLE_CSP);
    // Not fingerprinted: revalidate (by ETag) so a new release is picked up at once. The page
    // itself is not stored at all: kept, it may be brought back whole by Back (helper 162).
    res.setHeader('cache-control', name === 'index.html' ? 'no-store' : 'no-cache');
    files[name].send(req, res, next);
  };
  const router = Router({ strict: true });
  router.get(['/console', '/console/'], (req, res, next) => send(req, res, next, 'index.html'));
  router.get('/console/console.js', (req, res, next) => send(req, res, next, 'console.js'));
  router.get('/console/console.css', (req, res, next) => send(req, res, next, 'console.css'));
  return router;
}
