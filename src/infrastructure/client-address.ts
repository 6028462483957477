// Who is calling, by network address: one rule for every protocol. REST, Connect, gRPC-Web and
// gRPC requests all arrive as HTTP requests on one port, so the address is resolved the same way
// for each (Express's `trust proxy` semantics, through the same proxy-addr package Express uses),
// once per request at the edge, and everything downstream (rate limits, login lockouts, the
// address recorded with a session) reads that one value.
import ipaddr from 'ipaddr.js';
import type { IncomingMessage } from 'node:http';
import { isIPv4, isIPv6 } from 'node:net';
import proxyaddr from 'proxy-addr';

/** TRUST_PROXY as configured: false, true, a hop count, or a comma list of addresses/subnets. */
export type TrustProxySetting = boolean | number | string;

/** Whether the hop at `address`, `index` hops from the server, is a proxy to believe. */
export type TrustFunction = (address: string, index: number) => boolean;

/** Resolves a request's client address from its socket peer and its X-Forwarded-For header. */
export type ClientAddressResolver = (socketAddress: string | undefined, forwardedFor: string | readonly string[] | undefined) => string | undefined;

/** The trust predicate Express builds from the same setting (`app.set('trust proxy', …)`). */
export function compileTrust(setting: TrustProxySetting): TrustFunction {
  if (setting === true) return () => true;
  if (setting === false) return () => false;
  if (typeof setting === 'number') return (_address, index) => index < setting;
  const trusted = proxyaddr.compile(
    setting
      .split(',')
      .map((part) => part.trim())
      .filter((part) => part.length > 0),
  );
  // A hop is judged by its address, whatever a proxy wrote around it: proxy-addr took
  // `10.0.0.1:34567` or `[fd00::1]:443` for no address, and so for no proxy of ours, and the walk
  // stopped there: the proxy became the client, and every client behind it shared its rate limit
  // and lockout counters (helper 134).
  return (address, index) => trusted(bareAddress(address), index);
}

/** An address without the port or brackets a proxy may have written around it. */
function bareAddress(entry: string): string {
  const bare = WITH_PORT.exec(entry);
  return bare === null ? entry : (bare[1] ?? bare[2] ?? entry);
}

/**
 * A socket peer in the form sessions and the audit log record: an IPv4 client of a dual-stack
 * listener (`::`, the default) is `::ffff:1.2.3.4` to Node, recorded as 1.2.3.4 as it is when it
 * comes through a proxy (helper 134: one client, two forms, and a search by address missed half).
 */
function peerAddress(socketAddress: string): string {
  if (!socketAddress.startsWith('::ffff:')) return socketAddress;
  const ipv4 = socketAddress.slice(7);
  return isIPv4(ipv4) ? ipv4 : socketAddress;
}

/**
 * Whether the socket peer is one of `proxies` (TRACE_TRUSTED_PROXIES: addresses, subnets or
 * proxy-addr's names, never "every peer"). Such a peer's trace context is continued (tracing.ts);
 * any other's starts a trace of ours.
 */
export function createPeerTrust(proxies: string | false): (socketAddress: string | undefined) => boolean {
  if (proxies === false) return () => false;
  const trust = compileTrust(proxies);
  return (socketAddress) => socketAddress !== undefined && trust(socketAddress, 0);
}

/** The longest address text kept: 45 characters (IPv6 with an IPv4 tail), plus a short zone id. */
const MAX_ADDRESS_LENGTH = 64;

/**
 * The client address rule: the socket peer, or, when the peer is a trusted proxy, the nearest
 * X-Forwarded-For entry not itself trusted. Without TRUST_PROXY the header is ignored, so a
 * client cannot choose its own address.
 */
export function createClientAddressResolver(setting: TrustProxySetting): ClientAddressResolver {
  const trust = compileTrust(setting);
  return (socketAddress, forwardedFor) => {
    if (socketAddress === undefined) return undefined;
    // Without the header there is nothing to trust: the kernel's peer address needs no check
    // (parsing it on every request was 4% of a controller's CPU under load).
    if (forwardedFor === undefined) return peerAddress(socketAddress);
    const header = typeof forwardedFor === 'string' ? forwardedFor : forwardedFor.join(', ');
    // proxy-addr reads only these two properties of the request.
    const request = { socket: { remoteAddress: socketAddress }, headers: { 'x-forwarded-for': header } };
    const resolved = proxyaddr(request as unknown as IncomingMessage, trust);
    // A trusted proxy passes on whatever the client wrote first; an entry that is not an
    // address is recorded as no address rather than as text the client chose. So is one longer
    // than any address is written (ipaddr.js takes zone ids and zero-padded parts of any length):
    // the address travels on in an internal call's headers in split topologies.
    if (resolved === socketAddress) return peerAddress(resolved);
    return resolved.length <= MAX_ADDRESS_LENGTH ? canonicalAddress(resolved) : undefined;
  };
}

/** A forwarded entry with a port (`1.2.3.4:5678`, `[2001:db8::1]:443`) or in brackets: the address part. */
const WITH_PORT = /^(?:\[([^\]]+)\](?::\d{1,5})?|(\d{1,3}(?:\.\d{1,3}){3}):\d{1,5})$/;
/** An IPv6 address whose last 32 bits are written as IPv4 (`64:ff9b::1.2.3.4`). */
const DOTTED_TAIL = /^(.*:)(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;

/**
 * A forwarded entry as sessions and the audit log record it, and as the counters key it; undefined
 * when it is not an address. Addresses are read as Node's `net.isIP` reads them, strictly: IPv4 in
 * four decimal parts (ipaddr.js also took `010.0.0.1` as octal 8.0.0.1 and `1.2.3.09` as 1.2.3.0,
 * someone else's address), a port or brackets as proxies write them, IPv6 with an IPv4 tail. One
 * address is one text: IPv4-mapped IPv6 as IPv4, IPv6 as RFC 5952 writes it, without its zone id.
 * Entries with a port or an IPv4 tail used to be no address, so that every client of a proxy
 * writing ports shared one counter, which anyone could fill to lock them all out.
 */
function canonicalAddress(entry: string): string | undefined {
  const bare = WITH_PORT.exec(entry);
  const address = bare === null ? entry : (bare[1] ?? bare[2] ?? '');
  if (isIPv4(address)) return address;
  if (!isIPv6(address)) return undefined;
  const withoutZone = address.split('%')[0] ?? '';
  const tail = DOTTED_TAIL.exec(withoutZone);
  const hex = tail === null ? withoutZone : `${tail[1]}${((Number(tail[2]) << 8) | Number(tail[3])).toString(16)}:${((Number(tail[4]) << 8) | Number(tail[5])).toString(16)}`;
  // Node and ipaddr.js may disagree at the edges: what ipaddr.js cannot read is no address.
  if (!ipaddr.IPv6.isValid(hex)) return undefined;
  const ipv6 = ipaddr.IPv6.parse(hex);
  if (ipv6.isIPv4MappedAddress()) return ipv6.toIPv4Address().toString();
  return rfc5952(ipv6.parts);
}

/** An IPv6 address's eight parts as RFC 5952 §4 writes them: the longest run of two or more zero parts (the first of equals) as `::`. */
function rfc5952(parts: readonly number[]): string {
  let start = -1;
  let length = 0;
  for (let i = 0; i < parts.length;) {
    let end = i;
    while (end < parts.length && parts[end] === 0) end += 1;
    if (end - i > length && end - i >= 2) [start, length] = [i, end - i];
    i = end === i ? i + 1 : end;
  }
  const hex = parts.map((part) => part.toString(16));
  return start < 0 ? hex.join(':') : `${hex.slice(0, start).join(':')}::${hex.slice(start + length).join(':')}`;
}

/**
 * The key that counts a client's requests and failures: its IPv4 address, or the /64 network of
 * an IPv6 one. One IPv6 host is normally given a whole /64, so keying by full address would give
 * an attacker 2^64 fresh budgets. IPv4-mapped IPv6 addresses count as the IPv4 address.
 */
export function addressKey(address: string | undefined): string {
  if (address === undefined || !ipaddr.isValid(address)) return 'unknown';
  const parsed = ipaddr.parse(address);
  if (parsed.kind() === 'ipv4') return parsed.toString();
  const { parts } = parsed as ipaddr.IPv6;
  // IPv4 hosts written into IPv6 (IPv4-mapped ::ffff:0:0/96, NAT64's 64:ff9b::/96, SIIT's
  // ::ffff:0:0:0/96, the old ::/96) are their IPv4 address: keyed by /64, every IPv4 client behind
  // such a gateway shared one counter.
  if (EMBEDS_IPV4.some((prefix) => prefix.every((part, index) => parts[index] === part))) return ipv4Of(parts[6], parts[7]);
  // 6to4 (2002:V4ADDR::/48) gives each IPv4 host 65 536 /64s, and a Teredo address (2001:0::/32)
  // holds its client's public IPv4 address, inverted, in its last 32 bits, beside flags and a port
  // the client chooses: keyed by /64, one IPv4 host had 65 536 budgets, and every Teredo client of
  // one server shared one (helper 137). Both are their IPv4 host.
  if (parts[0] === 0x2002) return ipv4Of(parts[1], parts[2]);
  if (parts[0] === 0x2001 && parts[1] === 0) return ipv4Of(~(parts[6] ?? 0) & 0xffff, ~(parts[7] ?? 0) & 0xffff);
  return `${parts
    .slice(0, 4)
    .map((part) => part.toString(16))
    .join(':')}::/64`;
}

/**
 * Places held at once per client (addressKey), at most `max` each: `take` gives a release for a
 * place (call it once), or undefined when the client's are all held.
 */
export function placesPerAddress(max: number): { take(address: string | undefined): (() => void) | undefined } {
  const held = new Map<string, number>();
  return {
    take(address) {
      const key = addressKey(address);
      const open = held.get(key) ?? 0;
      if (open >= max) return undefined;
      held.set(key, open + 1);
      return () => {
        const left = (held.get(key) ?? 1) - 1;
        if (left > 0) held.set(key, left);
        else held.delete(key);
      };
    },
  };
}

/** The IPv4 address of two 16-bit parts. */
function ipv4Of(high = 0, low = 0): string {
  return [high >> 8, high & 0xff, low >> 8, low & 0xff].join('.');
}

/** The first six parts of the /96 prefixes that carry an IPv4 address in their last 32 bits. */
const EMBEDS_IPV4: readonly (readonly number[])[] = [
  [0, 0, 0, 0, 0, 0xffff],
  [0x64, 0xff9b, 0, 0, 0, 0],
  [0, 0, 0, 0, 0xffff, 0],
  [0, 0, 0, 0, 0, 0],
];

/**
 * The peer address of a request's socket. Kept tolerant of a socket that wraps a stream (the
 * address is then the stream's), as Node's HTTP/2 request socket does for non-native streams.
 */
export function remoteAddressOf(socket: unknown): string | undefined {
  const direct = (socket as { remoteAddress?: string } | undefined)?.remoteAddress;
  if (direct !== undefined) return direct;
  return (socket as { stream?: { remoteAddress?: string } } | undefined)?.stream?.remoteAddress;
}
