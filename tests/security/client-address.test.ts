// The client address behind a proxy, as every protocol must resolve it: with TRUST_PROXY the
// address the proxy saw (X-Forwarded-For), without it the socket peer whatever the client claims.
// Attacks: RPC clients behind an ingress sharing one budget (anyone could exhaust the RPC rate
// limit for all), a client forging X-Forwarded-For to escape its limit, and an IPv6 host hopping
// through the 2^64 addresses of its /64.
import { Buffer } from 'node:buffer';
import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../../src/infrastructure/logger.ts';
import { apiClient, apiClients, closeAll, PROTOCOLS, type ApiClient, type ProtocolName } from '../helpers/protocols.ts';
import { loginAdmin, newUser, startTestServer, type TestServer } from '../helpers/test-app.ts';

const LIMIT = 6;

let behindProxy: TestServer;
let direct: TestServer;
/** Default limits, and every line logged at warn or above, in every layer. */
let roomy: TestServer;
const roomyLog: string[] = [];

beforeAll(async () => {
  const logger = createLogger({ level: 'warn', destination: { write: (line: string) => void roomyLog.push(line) } });
  [behindProxy, direct, roomy] = await Promise.all([
    startTestServer({ RATE_LIMIT_MAX: String(LIMIT), TRUST_PROXY: 'true' }),
    startTestServer({ RATE_LIMIT_MAX: String(LIMIT) }),
    startTestServer({ TRUST_PROXY: 'true' }, { logger }),
  ]);
});

afterAll(async () => {
  await Promise.all([behindProxy.close(), direct.close(), roomy.close()]);
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

  it('when a trusted proxy passes on an address in another form, then sessions and the audit log record it in one form', async () => {
    // Found by an attacker: the forwarded text was recorded as written, so ::ffff:1.2.3.4 and
    // 1.2.3.4 were two addresses to an administrator reading sessions, a zone id carried 45
    // characters of the client's choosing, and an entry with a port was no address at all.
    const onRoomy = apiClient(protocol, roomy.baseUrl);
    try {
      const forms: [string, string][] = [
        [`198.51.100.${index}:51234`, `198.51.100.${index}`],
        [`[::ffff:198.51.100.${index}]:443`, `198.51.100.${index}`],
        [`::ffff:198.51.100.${index}`, `198.51.100.${index}`],
        [`2001:0DB8:0:${index}::7%chosenbytheclient0123456789`, index === 0 ? '2001:db8::7' : `2001:db8:0:${index}::7`],
      ];
      for (const [sent, recorded] of forms) {
        const registered = await onRoomy.register(newUser(), from(sent));
        expect(registered.code, sent).toBe('ok');
        const userId = registered.data?.user.id ?? 0;
        const [session] = await roomy.sql<{ ip_address: string }>('SELECT ip_address FROM oauth_tokens WHERE user_id = $1', [userId]);
        expect(session?.ip_address, sent).toBe(recorded);
      }
    } finally {
      onRoomy.close();
    }
  });

  it('when guesses from entries that are no address fill their shared counter, then a client whose proxy writes its port still logs in', async () => {
    // Found by an attacker: `ip:port` (as some proxies write it) and IPv6 with an IPv4 tail were no
    // address, so every such client shared the one counter of entries that are not addresses,
    // and six wrong guesses from `junk1`…`junk6` locked them all out.
    const onRoomy = apiClient(protocol, roomy.baseUrl);
    try {
      const user = newUser();
      expect((await onRoomy.register(user, from(`198.51.110.${index}`))).code).toBe('ok');
      for (let i = 1; i <= 6; i += 1) expect((await onRoomy.login({ usernameOrEmail: user.username, password: 'Wrong-Guess-1!' }, from(`junk${i}`))).code).toBe('unauthenticated');
      for (const entry of [`198.51.111.${index}:51234`, `64:ff9b::198.51.112.${index}`]) {
        expect((await onRoomy.login({ usernameOrEmail: user.username, password: user.password }, from(entry))).code, entry).toBe('ok');
      }
    } finally {
      onRoomy.close();
    }
  });

  it('when no proxy is trusted, then a forged X-Forwarded-For buys no fresh budget', async () => {
    // Every client of this server is 127.0.0.1; protocols take turns so as not to share a window.
    const forged = await Promise.all(Array.from({ length: LIMIT + 3 }, (_, i) => straight.me('not-a-token', from(`192.0.2.${i + 1}`))));
    expect(forged.filter((outcome) => outcome.code === 'resource_exhausted').length).toBeGreaterThanOrEqual(3);
  });
});

describe('the largest headers a client may send, carried to the service layer', () => {
  // Within the public header limits, but more than an internal call may carry once the agent is
  // percent-encoded: in split topologies these were 500s (Connect/HTTP between layers) and 503s
  // (gRPC between layers; retried twice, each logged) where the monolith answered 401 or 200.
  const agent = '\u00e9'.repeat(500);
  const device = 'd'.repeat(13_000);
  // HTTP/1.1 takes 16 KiB of headers; over HTTP/2 (gRPC here) the public edge takes 64 KiB, as
  // the internal gRPC hop does.
  const forged = (protocol: ProtocolName) => 'a'.repeat(protocol === 'grpc' ? 64_000 : 13_000);

  it("when every protocol sends a huge token, device token, forwarded address or Idempotency-Key with a non-ASCII agent, at once, then the answers are the monolith's", async () => {
    const clients = apiClients(roomy.baseUrl);
    try {
      const outcomes = await Promise.all(
        clients.map(async (client) => {
          const user = newUser('big');
          expect((await client.register(user)).code, client.protocol).toBe('ok');
          const headers = { 'user-agent': agent, 'x-device-token': device };
          const [stranger, login, wrong] = await Promise.all([
            client.me(forged(client.protocol), { headers: { 'user-agent': agent } }),
            client.login({ usernameOrEmail: user.username, password: user.password }, { headers }),
            client.login({ usernameOrEmail: user.username, password: `${user.password}x` }, { headers }),
          ]);
          const token = login.data?.tokens.accessToken ?? '';
          // And what else crosses: a forwarded address (a proxy is trusted here) and an
          // Idempotency-Key, each as long as the limits allow, which the monolith ignores here.
          const big = forged(client.protocol).length;
          const [me, forwarded, keyed, registration] = await Promise.all([
            client.me(token, { headers }),
            client.me(token, { headers: { 'user-agent': agent, 'x-forwarded-for': `fe80::1%${'a'.repeat(big)}` } }),
            client.me(token, { headers: { 'user-agent': agent, 'idempotency-key': 'k'.repeat(big) } }),
            client.register(newUser('bigkey'), { headers: { 'user-agent': agent, 'idempotency-key': 'k'.repeat(big) } }),
          ]);
          const refusal = Object.keys(registration.error?.details ?? {}).join(',');
          return [
            client.protocol,
            stranger.code,
            login.code,
            wrong.code,
            me.code,
            me.data?.username === user.username,
            forwarded.code,
            keyed.code,
            registration.code,
            refusal,
          ].join(' ');
        }),
      );
      expect(outcomes).toEqual(PROTOCOLS.map((protocol) => `${protocol} unauthenticated ok unauthenticated ok true ok ok invalid_argument idempotency-key`));
      expect(roomyLog.filter((line) => /"level":"(error|fatal)"|internal call failed/.test(line))).toEqual([]);
    } finally {
      closeAll(clients);
    }
  });
});

describe('user agents in other scripts', () => {
  /**
   * A login over `protocol` whose User-Agent is `agent`'s bytes, exactly. Node's HTTP/2 client
   * writes each character of a header as one byte (Latin-1), so the test clients carry the bytes
   * as their Latin-1 view; over HTTP/1.1 they write the header block in UTF-8 (and refuse what
   * is past Latin-1), so REST and Connect JSON go as raw requests. gRPC-Web over HTTP/1.1 meets the
   * same server code as Connect JSON.
   */
  async function loginWithAgent(client: ApiClient, credentials: { usernameOrEmail: string; password: string }, agent: Buffer): Promise<string> {
    if (client.protocol === 'grpc' || client.protocol === 'connect-binary') return (await client.login(credentials, { headers: { 'user-agent': agent.toString('latin1') } })).code;
    const path = client.protocol === 'rest' ? '/api/v1/auth/login' : '/arcana.auth.v1.AuthService/Login';
    const { hostname, port } = new URL(roomy.baseUrl);
    const payload = Buffer.from(JSON.stringify(credentials));
    const head = `POST ${path} HTTP/1.1\r\nHost: ${hostname}:${port}\r\nContent-Type: application/json\r\nContent-Length: ${payload.length}\r\nConnection: close\r\nUser-Agent: `;
    const socket = connect(Number(port), hostname);
    // Written, not ended: a client's FIN before its answer abandons the request.
    socket.write(Buffer.concat([Buffer.from(head, 'latin1'), agent, Buffer.from('\r\n\r\n', 'latin1'), payload]));
    let answer = '';
    for await (const chunk of socket) answer += (chunk as Buffer).toString('latin1');
    return answer.startsWith('HTTP/1.1 200 ') ? 'ok' : answer.slice(0, 200);
  }

  it('when clients send user agents in UTF-8 over every protocol at once, then their sessions and the audit log keep the text, not its bytes read as Latin-1, with invisible characters shown as U+FFFD; a Latin-1 agent stays as it came, and an agent cut at the limit keeps no half character', async () => {
    // And characters that reorder or hide text, which show as U+FFFD (helper 199): an Arabic
    // letter mark and a tag character.
    // And (helper 212) forty acute accents on one letter, which drew over the console's page,
    // kept to three, and the blank Braille pattern, which names refuse too.
    const utf8 = `Mozilla/5.0 (Café; 日本語; ☕) Überclient/1.0 \u{1F680} \u061C\u{E0001} X${'\u0301'.repeat(40)}\u2800 प्रिया`;
    const shown = 'Mozilla/5.0 (Café; 日本語; ☕) Überclient/1.0 \u{1F680} \uFFFD\uFFFD X\u0301\u0301\u0301\uFFFD\uFFFD प्रिया';
    const latin1 = 'Caf\u00e9-Client/1.0 (\u00e0 la carte)';
    // 499 characters and a rocket, whose surrogate pair the cut at 500 would split.
    const long = `${'a'.repeat(499)}\u{1F680}`;
    const admin = await loginAdmin(roomy);
    // gRPC-Web is left out: see loginWithAgent.
    const clients = apiClients(roomy.baseUrl).filter((client) => client.protocol !== 'grpc-web');
    try {
      const seen = await Promise.all(
        clients.map(async (client) => {
          const user = newUser('agent');
          const registered = await client.register(user, { headers: { 'user-agent': 'registration' } });
          const userId = registered.data?.user.id ?? 0;
          const credentials = { usernameOrEmail: user.username, password: user.password };
          const logins = await Promise.all([
            loginWithAgent(client, credentials, Buffer.from(utf8, 'utf8')),
            loginWithAgent(client, credentials, Buffer.from(long, 'utf8')),
            // A byte 0xE9 alone, which is no UTF-8.
            loginWithAgent(client, credentials, Buffer.from(latin1, 'latin1')),
          ]);
          const sessions = await client.listUserSessions(admin, userId);
          let stored: (string | null)[] = [];
          for (const until = Date.now() + 10_000; Date.now() < until; await new Promise((resolve) => setTimeout(resolve, 100))) {
            const rows = await roomy.sql<{ user_agent: string | null }>('SELECT user_agent FROM audit_events WHERE user_id = $1 AND type = $2', [userId, 'LOGIN_SUCCEEDED']);
            stored = rows.map((row) => row.user_agent);
            if (stored.length >= 3) break;
          }
          const logins3 = (agents: (string | null | undefined)[]) => agents.filter((agent) => agent !== 'registration').sort();
          return { protocol: client.protocol, logins, sessions: logins3((sessions.data ?? []).map((session) => session.userAgent)), stored: logins3(stored) };
        }),
      );
      const expected = [latin1, shown, 'a'.repeat(499)].sort();
      expect(seen).toEqual(clients.map(({ protocol }) => ({ protocol, logins: ['ok', 'ok', 'ok'], sessions: expected, stored: expected })));
    } finally {
      closeAll(clients);
    }
  });
});
