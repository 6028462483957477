// Redis as a failover, a lost NAT entry or a frozen host leaves it: the connections a process
// holds stop answering while they stay open, and new ones work. Logins fail closed while the
// login counters cannot be reached (503); once Redis answers new connections, they must work
// again within seconds, over every protocol, without a restart. Before, a client that had
// reconnected during the outage waited for ever on the connection's first command (ioredis's
// ready check, which no timeout covered), and every login was refused for as long as the kernel
// kept that socket: about fifteen minutes (found by an attacking helper).
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { apiClient, apiClients, closeAll, type ApiClient } from '../helpers/protocols.ts';
import { register, startTestServer, type TestServer } from '../helpers/test-app.ts';
import { StallingProxy } from '../helpers/stalling-proxy.ts';

const REDIS_URL = new URL(process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379');

let proxy: StallingProxy;
let t: TestServer;
let clients: ApiClient[];

beforeAll(async () => {
  proxy = await StallingProxy.inFrontOf(REDIS_URL, 6379);
  t = await startTestServer({ REDIS_URL: proxy.via(REDIS_URL).toString(), REDIS_KEY_PREFIX: `redis-stall-${randomBytes(4).toString('hex')}:` });
  clients = apiClients(t.baseUrl);
});

afterAll(async () => {
  closeAll(clients);
  await t.close();
  await proxy.close();
});

describe('a Redis whose connections go dead', () => {
  it('when the connections held during an outage stay dead after Redis is back, then logins over every protocol work again within seconds', async () => {
    const users = await Promise.all(clients.map(() => register(t)));
    const login = (index: number) => {
      const client = clients[index];
      const user = users[index];
      if (client === undefined || user === undefined) throw new Error('no client');
      return client.login({ usernameOrEmail: user.username, password: user.password });
    };
    for (const [index] of clients.entries()) expect((await login(index)).code).toBe('ok');

    proxy.stall();
    // Each process finds Redis gone at a command's timeout, drops its connection and connects
    // again: the new connection's first command is held too.
    const during = await Promise.all(clients.map((_, index) => login(index)));
    for (const outcome of during) expect(outcome.code).toBe('unavailable');
    await sleep(1_500);

    proxy.resume({ dropHeld: true });
    const started = Date.now();
    for (const [index, client] of clients.entries()) {
      let outcome = await login(index);
      while (outcome.code !== 'ok' && Date.now() - started < 15_000) {
        await sleep(250);
        outcome = await login(index);
      }
      expect({ protocol: client.protocol, code: outcome.code }).toEqual({ protocol: client.protocol, code: 'ok' });
    }
    // The audit events of those logins go through the BullMQ queue, whose connections went dead
    // too: they are written once the workers have replaced theirs.
    const healed = new Date(started).toISOString();
    let written = 0;
    while (written < clients.length && Date.now() - started < 40_000) {
      await sleep(500);
      const [row] = await t.sql<{ n: number }>("SELECT count(DISTINCT user_id)::int AS n FROM audit_events WHERE type = 'LOGIN_SUCCEEDED' AND created_at >= $1", [healed]);
      written = row?.n ?? 0;
    }
    expect(written).toBe(clients.length);
  }, 90_000);

  it('when Redis stalls under the audit queue, then an event recorded by a call whose deadline is short is still written, after the call has answered (layered over gRPC)', async () => {
    const layeredProxy = await StallingProxy.inFrontOf(REDIS_URL, 6379);
    const layered = await startTestServer(
      { REDIS_URL: layeredProxy.via(REDIS_URL).toString(), REDIS_KEY_PREFIX: `redis-stall-${randomBytes(4).toString('hex')}:` },
      { topology: 'layered-grpc' },
    );
    const client = apiClient('connect-json', layered.baseUrl);
    try {
      const user = await register(layered);
      layeredProxy.stall();
      // The cache finds Redis gone (a command's second) and falls back from then on; the
      // queue's producer, idle meanwhile, still takes its connection for a live one.
      await client.me(user.accessToken);
      // The queue's producer waits its command timeout (5 s) before the event is written
      // directly: well after this call's deadline. The event is the request's record, not part
      // of its answer; it used to be cut off with the deadline, and lost.
      expect((await client.logout(user.accessToken, { timeoutMs: 3_000 })).code).toBe('ok');
      const deadline = Date.now() + 20_000;
      let events = 0;
      while (events === 0 && Date.now() < deadline) {
        await sleep(500);
        const [row] = await layered.sql<{ n: number }>("SELECT count(*)::int AS n FROM audit_events WHERE type = 'LOGOUT' AND user_id = $1", [user.id]);
        events = row?.n ?? 0;
      }
      expect(events).toBe(1);
    } finally {
      client.close();
      layeredProxy.resume();
      await layered.close();
      await layeredProxy.close();
    }
  }, 90_000);
});
