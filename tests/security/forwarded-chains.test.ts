// A chain of trusted proxies where one hop writes its peer with a port or in brackets (as Azure
// Application Gateway, some Envoy/HAProxy set-ups and IPv6 proxies do), over every protocol.
// Found by an attacking helper (134): only the resolved client was stripped of its port; the
// trust walk (proxy-addr) took `10.0.0.1:34567` or `[fd00::1]:443` for no address, so for no proxy
// of ours, and stopped there: every client behind that proxy became the proxy, one shared rate
// limit and lockout counter, and the proxy's address recorded on every session.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { apiClient, PROTOCOLS, type ApiClient, type ProtocolName } from '../helpers/protocols.ts';
import { newUser, startTestServer, type TestServer } from '../helpers/test-app.ts';

const LIMIT = 6;
const TRUSTED = 'loopback, 10.0.0.0/8, fd00::/8';

let recording: TestServer;
let limited: TestServer;

beforeAll(async () => {
  [recording, limited] = await Promise.all([startTestServer({ TRUST_PROXY: TRUSTED }), startTestServer({ TRUST_PROXY: TRUSTED, RATE_LIMIT_MAX: String(LIMIT) })]);
});

afterAll(async () => {
  await Promise.all([recording.close(), limited.close()]);
});

const from = (chain: string) => ({ headers: { 'x-forwarded-for': chain } });

describe.each(PROTOCOLS)('a chain of trusted proxies over %s', (protocol: ProtocolName) => {
  const index = PROTOCOLS.indexOf(protocol);
  let onRecording: ApiClient;
  let onLimited: ApiClient;

  beforeAll(() => {
    onRecording = apiClient(protocol, recording.baseUrl);
    onLimited = apiClient(protocol, limited.baseUrl);
  });
  afterAll(() => {
    onRecording.close();
    onLimited.close();
  });

  it('when the inner trusted proxy is written with a port or in brackets, then the session records the client, not the proxy', async () => {
    const chains: [string, string][] = [
      [`203.0.113.${index + 10}, 10.0.${index}.1:34567`, `203.0.113.${index + 10}`],
      [`2001:db8:${index + 1}::9, [fd00::${index + 1}]:443`, `2001:db8:${index + 1}::9`],
      [`198.51.100.${index + 10}, [10.0.${index}.2]`, `198.51.100.${index + 10}`],
    ];
    const recorded: string[] = [];
    for (const [chain] of chains) {
      const registered = await onRecording.register(newUser('chain'), from(chain));
      expect(registered.code, chain).toBe('ok');
      const [session] = await recording.sql<{ ip_address: string }>('SELECT ip_address FROM oauth_tokens WHERE user_id = $1', [registered.data?.user.id ?? 0]);
      recorded.push(session?.ip_address ?? '');
    }
    expect(recorded).toEqual(chains.map(([, client]) => client));
  });

  it('when one client behind the inner proxy exhausts its rate limit, then the next client behind it is untouched', async () => {
    const inner = `10.1.${index}.1`;
    const attacker = await Promise.all(Array.from({ length: LIMIT + 2 }, (_, i) => onLimited.me('not-a-token', from(`203.0.114.${index}, ${inner}:${40000 + i}`))));
    expect(attacker.filter((outcome) => outcome.code === 'resource_exhausted')).toHaveLength(2);
    const victim = await onLimited.me('not-a-token', from(`203.0.115.${index}, ${inner}:50000`));
    expect(victim.code).toBe('unauthenticated');
  });
});
