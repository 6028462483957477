import helmet from 'helmet';

/** What a response must offer to take the security headers. */
interface HeaderTarget {
  setHeader(name: string, value: string): unknown;
}

/**
 * helmet's default headers, worked out once, for every answer the public server gives over
 * HTTP/1.1: REST, the console and the docs (which tighten the CSP for themselves), and Connect and
 * gRPC-Web (a browser reaches RPC as readily as REST, and an answer to it must not be framed or
 * sniffed either). With its defaults every header value is a constant, yet helmet runs a chain of
 * thirteen middlewares per request to set them; this records what that chain sets on one response
 * at start-up and sets the same headers in one loop.
 */
export function securityHeaders(): (res: HeaderTarget) => void {
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
  return (res) => {
    for (const [name, value] of headers) res.setHeader(name, value);
  };
}
