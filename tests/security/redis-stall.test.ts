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
import { Redis } from 'ioredis';
import { loginKey } from '../../src/services/login-throttle.ts';

const REDIS_URL = new URL(process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379');
const PREFIX = `redis-stall-${randomBytes(4).toString('hex')}:`;
/** LOGIN_MAX_FAILURES's default. */
const MAX_FAILURES = 5;
const WRONG = 'Wrong-Guess-42!';

let proxy: StallingProxy;
let t: TestServer;
let clients: ApiClient[];

beforeAll(async () => {
  proxy = await StallingProxy.inFrontOf(REDIS_URL, 6379);
  t = await startTestServer({ REDIS_URL: proxy.via(REDIS_URL).toString(), REDIS_KEY_PREFIX: PREFIX });
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

  // Found by an attacker (helper 170): a login whose reservation failed gave its slot back once
  // Redis answered again, whether Redis had counted it or not. A reservation Redis refused (the
  // counter full) whose answer was lost, or one never sent (the connection down, ioredis refusing
  // at once), took a slot off a lockout it had never added to: one more comparison each.
  it("when the answer to a locked-out client's refused reservation is lost, then once Redis is back the lockout still refuses the right password, over every protocol", async () => {
    const users = await Promise.all(clients.map(() => register(t)));
    const each = <T>(work: (client: ApiClient, user: (typeof users)[number]) => Promise<T>) =>
      Promise.all(clients.map((client, index) => work(client, users[index] ?? (users[0] as (typeof users)[number]))));
    await each(async (client, user) => {
      for (let i = 0; i < MAX_FAILURES; i += 1) expect((await client.login({ usernameOrEmail: user.username, password: WRONG })).code).toBe('unauthenticated');
      // The account's counter refuses the right password under the other name too.
      expect((await client.login({ usernameOrEmail: user.email, password: user.password })).code).toBe('unauthenticated');
    });
    // Redis refuses each account's reservation (full), and its answer is lost.
    proxy.loseAnswersAfter(...users.map((user) => `login-fail:user:${user.id}|`));
    const lost = await each((client, user) => client.login({ usernameOrEmail: user.email, password: WRONG }));
    for (const outcome of lost) expect(outcome.code).toBe('unavailable');
    proxy.resume({ dropHeld: true });
    // The client reconnects, and a give-back is tried again 2 s after it failed.
    await sleep(3_500);
    const after = await each(async (client, user) => ({ protocol: client.protocol, code: (await client.login({ usernameOrEmail: user.email, password: user.password })).code }));
    for (const outcome of after) expect(outcome).toEqual({ protocol: outcome.protocol, code: 'unauthenticated' });
  }, 60_000);

  it('when logins fail at once while Redis is away (their reservations never sent), then a lockout is as full once Redis is back', async () => {
    const [rest] = clients;
    if (rest === undefined) throw new Error('no client');
    const user = await register(t);
    for (let i = 0; i < MAX_FAILURES; i += 1) expect((await rest.login({ usernameOrEmail: user.username, password: WRONG })).code).toBe('unauthenticated');
    expect(await failuresCounted(user.username)).toBe(MAX_FAILURES);
    proxy.stall();
    const during: string[] = [];
    const until = Date.now() + 3_000;
    while (Date.now() < until) for (const client of clients) during.push((await client.login({ usernameOrEmail: user.username, password: WRONG })).code);
    expect(new Set(during)).toEqual(new Set(['unavailable']));
    proxy.resume({ dropHeld: true });
    await sleep(4_000);
    // The gives-back of every attempt made during the outage have been tried by now: none of them took anything off.
    expect(await failuresCounted(user.username)).toBe(MAX_FAILURES);
  }, 60_000);
});

/** The failures counted under a name typed, over every client address, read through a client of its own. */
async function failuresCounted(name: string): Promise<number> {
  const redis = new Redis(REDIS_URL.toString());
  try {
    // Not the counters' sets: their reservations (#held) and the name's index of them (#keys).
    const keys = (await redis.keys(`${PREFIX}counter:login-fail:${loginKey(name)}|*`)).filter((key) => !key.endsWith('#held') && !key.endsWith('#keys'));
    const values = await Promise.all(keys.map(async (key) => Number(await redis.get(key))));
    return values.reduce((sum, value) => sum + value, 0);
  } finally {
    redis.disconnect();
  }
}
