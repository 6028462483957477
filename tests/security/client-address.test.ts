// The client address behind a proxy, as every protocol must resolve it: with TRUST_PROXY the
// address the proxy saw (X-Forwarded-For), without it the socket peer whatever the client claims.
// Attacks: RPC clients behind an ingress sharing one budget (anyone could exhaust the RPC rate
// limit for all), a client forging X-Forwarded-For to escape its limit, and an IPv6 host hopping
// through the 2^64 addresses of its /64.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { apiClient, PROTOCOLS, type ApiClient, type ProtocolName } from '../helpers/protocols.ts';
import { startTestServer, type TestServer } from '../helpers/test-app.ts';

const LIMIT = 6;

let behindProxy: TestServer;
let direct: TestServer;

beforeAll(async () => {
  [behindProxy, direct] = await Promise.all([startTestServer({ RATE_LIMIT_MAX: String(LIMIT), TRUST_PROXY: 'true' }), startTestServer({ RATE_LIMIT_MAX: String(LIMIT) })]);
});

afterAll(async () => {
  await Promise.all([behindProxy.close(), direct.close()]);
});

const from = (ip: string) => ({ headers: { 'x-forwarded-for': ip } });

/** `count` calls at once from `ip`, each answered unauthenticated (no token) unless limited. */
async function burst(client: ApiClient, ip: string, count: number): Promise<string[]> {
  const outcomes = await Promise.all(Array.from({ length: count }, () => client.me('not-a-token', from(ip))));
  return outcomes.map((outcome) => outcome.code).sort();
}

describe.each(PROTOCOLS)('client addresses over %s', (protocol: ProtocolName) => {
  let viaProxy: ApiClient;
  let straight: ApiClient;
  const index = PROTOCOLS.indexOf(protocol);

  beforeAll(() => {
    viaProxy = apiClient(protocol, behindProxy.baseUrl);
    straight = apiClient(protocol, direct.baseUrl);
  });

  afterAll(() => {
    viaProxy.close();
    straight.close();
  });

  it('when clients behind a trusted proxy share its socket, then each forwarded address has its own rate limit', async () => {
    const first = `203.0.${index}.1`;
    const second = `203.0.${index}.2`;
    const attacker = await burst(viaProxy, first, LIMIT + 4);
    expect(attacker.filter((code) => code === 'resource_exhausted')).toHaveLength(4);
    // The next client behind the same proxy is untouched by the first one's exhaustion.
    expect(await burst(viaProxy, second, LIMIT)).toEqual(Array(LIMIT).fill('unauthenticated'));
  });

  it('when an IPv6 client moves around its /64, then it is still one client; the next /64 is another', async () => {
    const prefix = `2001:db8:${index + 1}:1`;
    const hops = await Promise.all(Array.from({ length: LIMIT + 2 }, (_, i) => viaProxy.me('not-a-token', from(`${prefix}::${(i + 1).toString(16)}`))));
    expect(hops.filter((outcome) => outcome.code === 'resource_exhausted')).toHaveLength(2);
    expect(await burst(viaProxy, `2001:db8:${index + 1}:2::1`, 1)).toEqual(['unauthenticated']);
  });

  it('when no proxy is trusted, then a forged X-Forwarded-For buys no fresh budget', async () => {
    // Every client of this server is 127.0.0.1; protocols take turns so as not to share a window.
    const forged = await Promise.all(Array.from({ length: LIMIT + 3 }, (_, i) => straight.me('not-a-token', from(`192.0.2.${i + 1}`))));
    expect(forged.filter((outcome) => outcome.code === 'resource_exhausted').length).toBeGreaterThanOrEqual(3);
  });
});
