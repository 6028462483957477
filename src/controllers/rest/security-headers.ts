import type { NextFunction, Request, Response } from 'express';
import helmet from 'helmet';

/**
 * helmet's default headers, worked out once. With its defaults every header value is a constant,
 * yet helmet runs a chain of thirteen middlewares per request to set them; this records what that
 * chain sets on one response at start-up and sets the same headers in one loop.
 */
export function securityHeaders(): (req: Request, res: Response, next: NextFunction) => void {
  const headers: [string, string][] = [];
  const recorder = {
    setHeader: (name: string, value: string) => headers.push([name, value]),
    removeHeader: () => undefined,
  };
  let failure: unknown;
  helmet()({} as never, recorder as never, (error?: unknown) => (failure = error));
  // Only constant options are recorded: a per-request value (a CSP nonce function) would be an
  // error here rather than a header silently frozen.
  if (failure !== undefined || headers.length === 0) throw new Error('helmet did not produce constant headers', { cause: failure });
  return (_req, res, next) => {
    for (const [name, value] of headers) res.setHeader(name, value);
    next();
  };
}
