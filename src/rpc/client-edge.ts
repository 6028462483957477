// What both public facades (REST and RPC) do alike at the edge of a request: who the client is
// (address, user agent, known-device token), and the response headers of the authentication
// answers. One module, so that the five protocols cannot drift apart on these rules.
import { Buffer } from 'node:buffer';
import { isIP } from 'node:net';
import { USER_AGENT_MAX_LENGTH, type ClientInfo } from '../domain/actor.ts';
import { checkIdempotencyKey, IDEMPOTENCY_KEY_FIELD } from '../domain/idempotency-key.ts';
import type { ClientAddressResolver } from '../infrastructure/client-address.ts';
import { DEVICE_TOKEN_MAX_LENGTH, deviceTokenExpiry } from '../infrastructure/security/device-tokens.ts';

/** The header a known-device token travels in, both ways, on every protocol. */
export const DEVICE_TOKEN_HEADER = 'x-device-token';
/**
 * The cookie that carries the same token for browsers, which cannot read HttpOnly cookies. The
 * `__Host-` prefix makes a browser refuse the name from anywhere but this host, with `Path=/`
 * and no Domain: a sibling host of the site set `arcana_device` for the whole domain with a
 * longer Path, which the browser sent first, and the server read it instead of the owner's, who
 * lost its known device to a crowd of strangers (helper 118). Cookies of the old name are ignored.
 */
export const DEVICE_TOKEN_COOKIE = '__Host-arcana_device';
/** The scheme's realm in WWW-Authenticate challenges. */
const REALM = 'arcana-cloud';

/** Reads one request header (lower-case name) as a single string. */
export type HeaderReader = (name: string) => string | undefined;

/**
 * The client of a request: its address by the TRUST_PROXY rule, user agent and device token.
 * What is kept is bounded (a device token longer than any issued is none), because in a split
 * topology it travels on to the service layer in the internal call's headers (caller.ts).
 */
export function resolveClientInfo(resolve: ClientAddressResolver, socketAddress: string | undefined, header: HeaderReader): ClientInfo {
  const deviceToken = header(DEVICE_TOKEN_HEADER) ?? cookie(header('cookie'), DEVICE_TOKEN_COOKIE);
  return {
    ipAddress: resolve(socketAddress, header('x-forwarded-for')),
    userAgent: cutAt(printable(headerText(header('user-agent'))), USER_AGENT_MAX_LENGTH),
    deviceToken: deviceToken !== undefined && deviceToken.length <= DEVICE_TOKEN_MAX_LENGTH ? deviceToken : undefined,
  };
}

/**
 * Control, format and direction-changing characters, and noncharacters: what a header can carry
 * as obs-text read as Latin-1 (bytes 0x80-0x9F are C1 controls: NEL is a line break and CSI a
 * terminal escape to whoever reads the sessions or the audit log in a terminal, helper 52), and,
 * once its UTF-8 is read as such, every invisible character that reorders or hides text (U+061C,
 * U+202E, tag characters; helper 199). Tab stays.
 */
const UNPRINTABLE = /(?!\t)[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\p{Noncharacter_Code_Point}]/gu;

/**
 * What names refuse as showing as nothing or as a blank (openapi.yaml, SingleLineText) and the
 * classes above do not hold: the combining grapheme joiner, Hangul fillers, Khmer inherent vowels,
 * Mongolian and other variation selectors, the blank Braille pattern (helper 212 found it kept in
 * agents) and the interlinear annotation characters.
 */
const BLANK = /[\u115F\u1160\u2800\u3164\uFFA0\uFFF0-\uFFFB]|\u034F|\u17B4|\u17B5|[\u180B-\u180F]|[\uFE00-\uFE0F]|[\u{E0100}-\u{E01EF}]/gu;

/**
 * A run of more than three combining marks (nonspacing or enclosing, counted across joiners and
 * direction marks): its marks past the third. Names refuse such runs; an agent is stored as it
 * was sent, and 488 acute accents on one letter drew a line from its row in the console's
 * sessions table up through the page's header (helper 212).
 */
const MARK_RUN = /((?:[\p{Mn}\p{Me}][\u061C\u200C-\u200F]*){3})(?:[\p{Mn}\p{Me}][\u061C\u200C-\u200F]*)+/gu;

/**
 * A header's text as it is stored and shown: each unprintable or blank character becomes U+FFFD,
 * and the marks of a run past its third are one U+FFFD.
 */
function printable(text: string | undefined): string | undefined {
  return text?.replace(UNPRINTABLE, '\uFFFD').replace(BLANK, '\uFFFD').replace(MARK_RUN, '$1\uFFFD');
}

// ignoreBOM: a leading byte order mark is kept (and shown as U+FFFD), as one anywhere else is.
const UTF8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
const NOT_ASCII = /[\u0080-\uFFFF]/;
const NOT_LATIN1 = /[\u0100-\uFFFF]/;

/**
 * A header's bytes as text. Node reads each byte of a header value as one Latin-1 character, on
 * HTTP/1.1 and HTTP/2 alike, so an agent sent in UTF-8 ("Café", bytes C3 A9) was stored and shown
 * as "CafÃ©". Bytes that are well-formed UTF-8 are read as UTF-8; any others stay Latin-1, as
 * they came.
 */
function headerText(text: string | undefined): string | undefined {
  if (text === undefined || !NOT_ASCII.test(text) || NOT_LATIN1.test(text)) return text;
  try {
    return UTF8.decode(Buffer.from(text, 'latin1'));
  } catch {
    return text;
  }
}

/**
 * The first `max` UTF-16 units of `text`, less one when the cut would split a surrogate pair:
 * half a pair is no text (PostgreSQL and MariaDB store it as U+FFFD, and encodeURIComponent, which
 * carries the agent to a service layer, throws on it).
 */
function cutAt(text: string | undefined, max: number): string | undefined {
  if (text === undefined || text.length <= max) return text;
  const last = text.charCodeAt(max - 1);
  return text.slice(0, last >= 0xd800 && last <= 0xdbff ? max - 1 : max);
}

/** Marks an answer that is the stored answer to an earlier request with the same key. */
export const IDEMPOTENT_REPLAYED_HEADER = 'idempotent-replayed';

/**
 * The client's Idempotency-Key (REST header, RPC metadata; register and admin create honour it),
 * or undefined when none was sent. A malformed one is refused as a validation error.
 */
export function idempotencyKeyOf(header: HeaderReader): string | undefined {
  const key = header(IDEMPOTENCY_KEY_FIELD);
  return key === undefined ? undefined : checkIdempotencyKey(key);
}

/** The response headers that hand a client its known-device token: header and cookie, or the cookie alone for a browser (see relayAnswerHeaders). */
export function deviceTokenHeaders(token: string, browser: BrowserCall, now = Date.now()): [string, string][] {
  const maxAgeSeconds = Math.max(0, (deviceTokenExpiry(token) ?? 0) - Math.floor(now / 1000));
  // HttpOnly: scripts never see it (a browser's answer has no header: relayAnswerHeaders);
  // SameSite=Strict: no other site's page can replay it (but see isAnotherSite).
  const cookie = `${DEVICE_TOKEN_COOKIE}=${token}; Max-Age=${maxAgeSeconds}; Path=/; HttpOnly; Secure; SameSite=Strict`;
  return [...(typeof browser.origin === 'string' ? [] : [[DEVICE_TOKEN_HEADER, token] as [string, string]]), ['set-cookie', forBrowser(cookie, browser)]];
}

/** What tells a browser's call apart: its Origin (absent for other clients), and the host it called. */
export interface BrowserCall {
  origin: string | null | undefined;
  host: string | null | undefined;
}

/** The host a call was made to, from its URL as the RPC handler builds it. */
export function hostOf(url: string): string | null {
  return URL.canParse(url) ? new URL(url).host : null;
}

/** The known-device cookie as this browser can keep it (see isAnotherSite); other cookies as they are. */
function forBrowser(cookie: string, browser: BrowserCall): string {
  if (!cookie.startsWith(`${DEVICE_TOKEN_COOKIE}=`) || !isAnotherSite(browser.origin, browser.host)) return cookie;
  return cookie.replace('SameSite=Strict', 'SameSite=None; Partitioned');
}

/**
 * Answers that carry tokens must not be stored by any cache (RFC 6749 §5.1); `Pragma` for
 * HTTP/1.0 caches.
 */
export const NO_STORE_HEADERS: readonly [string, string][] = [
  ['cache-control', 'no-store'],
  ['pragma', 'no-cache'],
];

/**
 * The headers of a service-layer answer that belong to the client's answer, whichever facade
 * relays it: no-store, the known-device token (header and cookie) and the replay mark. Anything
 * else on the answer (content type, protocol headers) is the transport's, not the client's.
 */
const ANSWER_HEADERS: readonly string[] = ['cache-control', 'pragma', DEVICE_TOKEN_HEADER, IDEMPOTENT_REPLAYED_HEADER];

/**
 * Relays the client's part of a service-layer answer's headers through `set` (and `append` for
 * cookies). A browser's request (one with an Origin, as a browser sends with every POST) gets the
 * known-device token as its HttpOnly cookie only: in the header too, the console's scripts, and
 * any allowed origin's, could read what the cookie keeps from them (helper 90).
 */
export function relayAnswerHeaders(from: Headers, to: { set(name: string, value: string): void; append(name: string, value: string): void }, browser: BrowserCall): void {
  for (const name of ANSWER_HEADERS) {
    if (typeof browser.origin === 'string' && name === DEVICE_TOKEN_HEADER) continue;
    const value = from.get(name);
    if (value !== null) to.set(name, value);
  }
  for (const value of from.getSetCookie()) to.append('set-cookie', forBrowser(value, browser));
}

/**
 * Whether a browser's request comes from a page of another site than the API's: an app on an
 * allowed origin (CORS_ORIGINS) of another site, whose answers a browser stores no SameSite=Strict
 * cookie from and would send none with. Its known-device cookie is SameSite=None instead (still
 * HttpOnly and Secure; Partitioned, as browsers that block third-party cookies keep only those, per
 * top-level site): it authenticates nothing, and a page of an origin not allowed cannot send
 * a login (JSON, gRPC-Web and Connect bodies need a preflight it fails; form and text bodies are
 * refused with 415). Before, such an app's users never counted as known devices (helper 112). A
 * sibling host of the API's own site gets the Strict cookie, the one the console gets: given a
 * partitioned one beside it, the browser sent both with the sibling's same-site calls, and the
 * server read the console's (helper 118). The site of a name is taken as its last two labels (an
 * address, or a name of one label, is its own): without the public-suffix list, two sites under
 * `co.uk` look like one, and such an app gets the Strict cookie, so no known device, never more.
 */
function isAnotherSite(origin: string | null | undefined, host: string | null | undefined): boolean {
  if (typeof origin !== 'string' || typeof host !== 'string' || !URL.canParse(origin) || !URL.canParse(`http://${host}`)) return false;
  return siteOf(new URL(origin).hostname) !== siteOf(new URL(`http://${host}`).hostname);
}

function siteOf(hostname: string): string {
  const name = hostname.toLowerCase().replace(/\.$/, '');
  if (isIP(name.replace(/^\[|\]$/g, '')) !== 0 || !name.includes('.')) return name;
  return name.split('.').slice(-2).join('.');
}

/**
 * The WWW-Authenticate challenge of a 401 (RFC 6750 §3): `error="invalid_token"` when the request
 * presented an access token that was refused, the bare challenge otherwise (no token, or a
 * password that did not match).
 */
export function bearerChallenge(tokenRejected: boolean, description?: string): string {
  if (!tokenRejected) return `Bearer realm="${REALM}"`;
  const detail = description === undefined ? '' : `, error_description="${description.replace(/["\\]/g, '')}"`;
  return `Bearer realm="${REALM}", error="invalid_token"${detail}`;
}

/** A cookie's value from a Cookie header, or undefined. */
function cookie(header: string | undefined, name: string): string | undefined {
  if (header === undefined) return undefined;
  for (const part of header.split(';')) {
    const separator = part.indexOf('=');
    if (separator > 0 && part.slice(0, separator).trim() === name) return part.slice(separator + 1).trim();
  }
  return undefined;
}
