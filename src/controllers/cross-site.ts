// Requests a browser makes for a page of another site that may not call this API: refused
// before anything is charged for them. Browsers send them whenever a page asks (an `<img>`, a
// form, a `fetch` in `no-cors` mode or to a simple request the CORS policy will not let it read),
// the answers never reach the page, but each cost its client a request of its rate-limit budget,
// so any page an administrator visited could spend the budget of the administrator's address (and
// of everyone behind the same NAT) in a second, locking the console out for the window's hour
// (helper 212: 110 `<img>` tags). Fetch Metadata (`Sec-Fetch-*`, sent by every current browser)
// tells them apart from requests the API serves:
// - no `Sec-Fetch-Site` (not a browser, or one too old to send it), `same-origin` (the console,
//   the docs) or `none` (typed into the address bar): served;
// - from another origin in CORS mode (`fetch` and its preflight): served when the origin is one
//   CORS_ORIGINS allows, refused otherwise (a simple request would be served, then hidden from
//   its page);
// - a top-level GET navigation to one of the API's pages (a link to /docs or the console): served;
//   to anything else (an API path opened in a window the page controls, 35 requests a click:
//   helper 216) refused;
// - anything else from another origin (no-cors subresources, forms, frames, objects): refused.
// Browsers send Fetch Metadata only to a potentially trustworthy origin (HTTPS, or localhost and
// loopback): over plain HTTP to any other address a page's requests arrive without it, and every
// kind above was served and charged (helper 217: 110 images, forms, no-cors fetches and beacons
// to http://<address>:3000 spent a visitor's whole budget). What they do carry there is `Origin`,
// on every request but a GET or HEAD outside CORS: a request without Fetch Metadata that names,
// in `Origin`, a page of another origin than the API's own (its Host, or a trusted proxy's
// X-Forwarded-Host) that CORS_ORIGINS does not allow, or an opaque origin (`null`), is refused.
// An image or a frame (a GET without `Origin`) cannot be told from a non-browser's request there:
// that is why browsers should reach the API over HTTPS.
// Two kinds of request a page can make carry no telling Fetch Metadata, and are refused too
// (helper 216): a WebSocket handshake (browsers send `Origin` but no `Sec-Fetch-*`; this server
// upgrades nothing, so each went on to the REST app and was charged: 636 in 11 s from one page)
// from an origin CORS_ORIGINS does not name, and a speculative prefetch (`Sec-Purpose: prefetch`,
// sent with `Sec-Fetch-Site: none` for a page's speculation rules: 190 in 4 s), which a browser
// makes again for real if the user goes there.
import type { IncomingHttpHeaders } from 'node:http';

export const CROSS_SITE_REFUSAL = 'This API does not serve requests made for pages of other sites';

/**
 * The API's pages, which a link on another site may open: the reference, the protos' index, the
 * contract and the console. Not any path under them: one that names no page goes on to the API's
 * 404, which is charged (helper 217: a click opening ten windows on /docs/x1…x10 cost ten
 * requests; helper 220: the same with /docs/proto/x1.proto…, when any .proto name was admitted).
 */
const PAGE_PATHS = /^\/(?:docs\/?|docs\/proto\/?|console\/?|openapi\.yaml)(?:\?|$)/i;

/** Why a request is refused as cross-site, or undefined when it is served. */
export function crossSiteProblem(method: string | undefined, url: string | undefined, headers: IncomingHttpHeaders, allowedOrigins: ReadonlySet<string>): string | undefined {
  const purpose = headers['sec-purpose'];
  if (typeof purpose === 'string' && purpose.toLowerCase().includes('prefetch')) return CROSS_SITE_REFUSAL;
  if (headers.upgrade !== undefined && headers.origin !== undefined && !allowedOrigins.has(headers.origin)) return CROSS_SITE_REFUSAL;
  const site = headers['sec-fetch-site'];
  if (site === undefined) return foreignOrigin(headers, allowedOrigins) ? CROSS_SITE_REFUSAL : undefined;
  if (site === 'same-origin' || site === 'none') return undefined;
  const mode = headers['sec-fetch-mode'];
  if (mode === 'cors') return allowedOrigins.has(headers.origin ?? '') ? undefined : CROSS_SITE_REFUSAL;
  if (mode === 'navigate' && (method === 'GET' || method === 'HEAD') && headers['sec-fetch-dest'] === 'document' && PAGE_PATHS.test(url ?? '')) return undefined;
  return CROSS_SITE_REFUSAL;
}

/**
 * Whether `Origin` names a page this API does not serve browsers for: an opaque origin (`null`), or
 * one that is neither allowed nor the API's own (the Host the request was sent to, or the first
 * X-Forwarded-Host or `Forwarded: host=`, which a browser's page cannot set: a proxy that rewrites Host keeps the
 * console's own requests served). Scheme and default port aside, as a proxy ending TLS sees
 * `https://` pages on `http://`.
 */
function foreignOrigin(headers: IncomingHttpHeaders, allowedOrigins: ReadonlySet<string>): boolean {
  const origin = headers.origin;
  if (origin === undefined || allowedOrigins.has(origin)) return false;
  let host: string;
  try {
    host = withoutDefaultPort(new URL(origin).host);
  } catch {
    return true;
  }
  if (host === '') return true;
  const forwarded = headers['x-forwarded-host'];
  const own = [headers.host, headers[':authority'], (Array.isArray(forwarded) ? forwarded[0] : forwarded)?.split(',')[0], forwardedHost(headers.forwarded)];
  return !own.some((candidate) => typeof candidate === 'string' && withoutDefaultPort(candidate.trim().toLowerCase()) === host);
}

/** The `host` of the first element of RFC 7239's `Forwarded` header (the proxy nearest the client), quotes taken off. */
function forwardedHost(forwarded: string | undefined): string | undefined {
  const pair = forwarded
    ?.split(',')[0]
    ?.split(';')
    .map((part) => part.trim())
    .find((part) => part.toLowerCase().startsWith('host='));
  return pair?.slice('host='.length).replace(/^"(.*)"$/, '$1');
}

function withoutDefaultPort(host: string): string {
  return host.replace(/:(?:80|443)$/, '');
}
