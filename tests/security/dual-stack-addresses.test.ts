// The server listens on `::` (HOST unset, dual-stack), so an IPv4 client's socket peer is the
// IPv4-mapped `::ffff:a.b.c.d`. Found by an attacking helper (134): it was recorded so, where the
// same client through a proxy, or to a server bound to 0.0.0.0, is `a.b.c.d`; an administrator
// comparing sessions, or searching the audit log for an address, missed half. One form now.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.ts';
import { createLogger } from '../../src/infrastructure/logger.ts';
import { createDualProtocolServer } from '../../src/server.ts';
import { apiClient, PROTOCOLS, type ProtocolName } from '../helpers/protocols.ts';
import { createTestApp, newUser, TEST_ENV, type TestApp } from '../helpers/test-app.ts';

let t: TestApp;
let closeServer: () => Promise<void>;
let port = 0;

beforeAll(async () => {
  t = await createTestApp();
  const config = loadConfig(TEST_ENV);
  const { server, close } = createDualProtocolServer(
    { http1: t.app.http, http2: t.app.http2 },
    { limits: config.server.connections, trustProxy: config.server.trustProxy, logger: createLogger({ level: 'silent' }), bodyLimitBytes: config.server.bodyLimitBytes },
  );
  // As src/start.ts listens without HOST: every address, IPv6 and IPv4.
  await new Promise<void>((resolve) => server.listen({ port: 0 }, resolve));
  const address = server.address();
  port = typeof address === 'object' && address !== null ? address.port : 0;
  expect(typeof address === 'object' && address?.address).toBe('::');
  closeServer = close;
});

afterAll(async () => {
  t.app.drain();
  await closeServer();
  await t.close();
});

describe.each(PROTOCOLS)('a dual-stack listener over %s', (protocol: ProtocolName) => {
  it('when an IPv4 client connects directly, then its session and its audit events record 127.0.0.1, not ::ffff:127.0.0.1', async () => {
    const client = apiClient(protocol, `http://127.0.0.1:${port}`);
    try {
      const user = newUser('dual');
      const registered = await client.register(user);
      expect(registered.code).toBe('ok');
      expect((await client.login({ usernameOrEmail: user.username, password: user.password })).code).toBe('ok');
      expect((await client.login({ usernameOrEmail: user.username, password: 'Wrong-Guess-1!' })).code).toBe('unauthenticated');
      const userId = registered.data?.user.id ?? 0;
      const sessions = await t.sql<{ ip_address: string }>('SELECT ip_address FROM oauth_tokens WHERE user_id = $1', [userId]);
      const events = await t.sql<{ ip_address: string | null }>('SELECT ip_address FROM audit_events WHERE user_id = $1 OR actor_id = $1', [userId]);
      expect(sessions.length + events.length).toBeGreaterThan(1);
      expect([...sessions, ...events].map((row) => row.ip_address)).toEqual([...sessions, ...events].map(() => '127.0.0.1'));
    } finally {
      client.close();
    }
  });
});
