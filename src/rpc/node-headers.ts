// Node's header objects and the Fetch API's Headers, converted both ways for the RPC paths that
// work on Node's HTTP/2 objects directly (the unary gRPC server and client paths).
import type { IncomingHttpHeaders } from 'node:http';

/** Node's headers as Fetch-API headers, without HTTP/2's pseudo-headers (`:path`, `:status`…). */
export function webHeadersFromNode(fields: IncomingHttpHeaders): Headers {
  const headers = new Headers();
  for (const [name, value] of Object.entries(fields)) {
    if (name.startsWith(':') || value === undefined) continue;
    if (Array.isArray(value)) for (const item of value) headers.append(name, item);
    else headers.append(name, value);
  }
  return headers;
}

/** Fetch-API headers as Node's header object (set-cookie, which may repeat, as a list). */
export function nodeHeadersFromWeb(header: Headers): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  header.forEach((value, name) => {
    if (name !== 'set-cookie') out[name] = value;
  });
  const cookies = header.getSetCookie();
  if (cookies.length > 0) out['set-cookie'] = cookies;
  return out;
}
