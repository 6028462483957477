// Redis-backed cache, rate limits and login throttling, across two app instances that share one
// database and one Redis, as two processes of a deployment would. Real Redis, real PostgreSQL.
import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RedisCache } from '../../src/infrastructure/cache.ts';
import { createLogger } from '../../src/infrastructure/logger.ts';
import { createRedisClient, deleteByPrefix, waitUntilReady } from '../../src/infrastructure/redis/redis-client.ts';
import { startRedisServer } from '../helpers/redis-server.ts';
import { apiClient, PROTOCOLS, type ApiClient, type ProtocolName } from '../helpers/protocols.ts';
import { bearer, createTestApp, loginAdmin, register, startTestServer, type TestApp, type TestServer, monolithOf } from '../helpers/test-app.ts';

const REDIS_URL = process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';
const prefix = `arcana-test-${randomBytes(4).toString('hex')}:`;
const redis = new Redis(REDIS_URL);

afterAll(async () => {
  await deleteByPrefix(redis, prefix);
  redis.disconnect();
});

/** Two instances on one database and one Redis key space. */
async function pair(env: Record<string, string> = {}, keySpace = `${prefix}${randomBytes(3).toString('hex')}:`) {
  const shared = { REDIS_URL, REDIS_KEY_PREFIX: keySpace, ...env };
  const a = await createTestApp(shared);
  const b = await createTestApp(shared, { sameDatabaseAs: a });
  return {
    a,
    b,
    close: async () => {
      await b.close();
      await a.close();
    },
  };
}

describe('key prefixes', () => {
  it('when REDIS_KEY_PREFIX holds glob characters, then a sweep of its keys reaches exactly its own, not those a glob would match', async () => {
    // Found by an attacker (helper 113): the prefix went into SCAN MATCH as a pattern, so
    // `eu[12]:` matched `eu1:` and `eu2:` (another deployment's keys) and none of its own.
    const space = `${prefix}glob:`;
    const keys = ['eu[12]:a', 'eu[12]:b', 'eu1:a', 'eu2:a', 'e*:a', 'e?:a', 'eu\\:a'].map((key) => `${space}${key}`);
    await Promise.all(keys.map((key) => redis.set(key, '1', 'EX', 60)));
    expect(await deleteByPrefix(redis, `${space}eu[12]:`)).toBe(2);
    expect(await deleteByPrefix(redis, `${space}e*:`)).toBe(1);
    expect(await deleteByPrefix(redis, `${space}e?:`)).toBe(1);
    expect(await deleteByPrefix(redis, `${space}eu\\:`)).toBe(1);
    expect((await redis.keys(`${space}*`)).sort()).toEqual([`${space}eu1:a`, `${space}eu2:a`]);
  });
});

describe('shared cache', () => {
  let a: TestApp;
  let b: TestApp;
  let close: () => Promise<void>;
  let admin: string;

  beforeAll(async () => {
    ({ a, b, close } = await pair());
    admin = await loginAdmin(a);
  });
  afterAll(() => close());

  it('when a user is suspended through one instance, then the other rejects its cached token on the next request', async () => {
    const user = await register(a);
    expect((await b.request.get('/api/v1/auth/me').set(...bearer(user.accessToken))).status).toBe(200);
    await a.request
      .put(`/api/v1/users/${user.id}/status`)
      .set(...bearer(admin))
      .send({ status: 'SUSPENDED' })
      .expect(200);
    expect((await b.request.get('/api/v1/auth/me').set(...bearer(user.accessToken))).status).toBe(401);
  });

  it('when a session is logged out or revoked through one instance, then the other rejects it at once', async () => {
    const user = await register(a);
    const second = await a.request.post('/api/v1/auth/login').send({ usernameOrEmail: user.username, password: user.password });
    const secondToken = second.body.data.tokens.accessToken as string;
    for (const token of [user.accessToken, secondToken]) {
      expect((await b.request.get('/api/v1/auth/me').set(...bearer(token))).status).toBe(200);
    }
    await a.request
      .post('/api/v1/auth/logout')
      .set(...bearer(user.accessToken))
      .expect(200);
    expect((await b.request.get('/api/v1/auth/me').set(...bearer(user.accessToken))).status).toBe(401);
    expect((await b.request.get('/api/v1/auth/me').set(...bearer(secondToken))).status).toBe(200);
    await a.request
      .post('/api/v1/auth/tokens/revoke-all')
      .set(...bearer(secondToken))
      .expect(200);
    expect((await b.request.get('/api/v1/auth/me').set(...bearer(secondToken))).status).toBe(401);
  });

  it('when a profile changes through one instance, then the other serves the new value', async () => {
    const user = await register(a);
    await b.request
      .get(`/api/v1/users/${user.id}`)
      .set(...bearer(user.accessToken))
      .expect(200);
    await a.request
      .put(`/api/v1/users/${user.id}`)
      .set(...bearer(user.accessToken))
      .send({ firstName: 'Changed' })
      .expect(200);
    const res = await b.request.get(`/api/v1/users/${user.id}`).set(...bearer(user.accessToken));
    expect(res.body.data.firstName).toBe('Changed');
  });

  it('when the session and user are cached, then an authenticated GET user by id sends no database query', async () => {
    const user = await register(a);
    const get = () =>
      b.request
        .get(`/api/v1/users/${user.id}`)
        .set(...bearer(user.accessToken))
        .expect(200);
    const before = monolithOf(b).database.queryCount();
    await get();
    const cold = monolithOf(b).database.queryCount() - before;
    await get();
    const warm = monolithOf(b).database.queryCount() - before - cold;
    expect(cold).toBeGreaterThan(0);
    expect(warm).toBe(0);
  });

  it('when a user is deleted through one instance, then the other rejects its token', async () => {
    const user = await register(a);
    await b.request
      .get('/api/v1/auth/me')
      .set(...bearer(user.accessToken))
      .expect(200);
    await a.request
      .delete(`/api/v1/users/${user.id}`)
      .set(...bearer(admin))
      .expect(200);
    expect((await b.request.get('/api/v1/auth/me').set(...bearer(user.accessToken))).status).toBe(401);
  });
});

describe('cache entries another release wrote', () => {
  it('when a cached profile or session lacks a field, or is not a row at all, then it is a miss: the stored user is answered, with its version', async () => {
    // Old and new processes share Redis during a rolling deploy; an entry in another shape was
    // served as it was: a user without `version` (REST 500 under response validation, RPC
    // `version: 0`), or a JSON string as a user with id 0 (helper 152).
    const keySpace = `${prefix}${randomBytes(3).toString('hex')}:`;
    const { a, close } = await pair({}, keySpace);
    try {
      const user = await register(a);
      const read = () => a.request.get(`/api/v1/users/${user.id}`).set(...bearer(user.accessToken));
      expect((await read()).status).toBe(200);
      const profileKey = `${keySpace}cache:user:${user.id}`;
      const profile = JSON.parse((await redis.get(profileKey)) ?? 'null') as Record<string, unknown>;
      expect(profile).toMatchObject({ id: user.id, version: 1 });
      const sessionKeys = await redis.keys(`${keySpace}cache:session:*`);
      expect(sessionKeys).toHaveLength(1);
      const session = JSON.parse((await redis.get(sessionKeys[0]!)) ?? 'null') as Record<string, unknown>;
      delete profile.version;
      delete session.familyId;
      await redis.set(profileKey, JSON.stringify(profile), 'EX', 60);
      await redis.set(sessionKeys[0]!, JSON.stringify(session), 'EX', 60);
      const answer = await read();
      expect({ status: answer.status, id: answer.body.data?.id, version: answer.body.data?.version }).toEqual({ status: 200, id: user.id, version: 1 });
      await redis.set(profileKey, JSON.stringify('not a profile'), 'EX', 60);
      const again = await read();
      expect({ status: again.status, id: again.body.data?.id, username: again.body.data?.username }).toEqual({ status: 200, id: user.id, username: user.username });
    } finally {
      await close();
    }
  });
});

describe('shared rate limit', () => {
  it('when 50 concurrent requests hit two instances with a shared limit of 20, then exactly 30 get 429', async () => {
    const { a, b, close } = await pair({ RATE_LIMIT_MAX: '20', RATE_LIMIT_WINDOW_MS: '60000' });
    try {
      const responses = await Promise.all(Array.from({ length: 50 }, (_, i) => (i % 2 === 0 ? a : b).request.get('/public/info')));
      const statuses = responses.map((res) => res.status);
      expect(statuses.filter((status) => status === 200)).toHaveLength(20);
      expect(statuses.filter((status) => status === 429)).toHaveLength(30);
    } finally {
      await close();
    }
  });
});

describe('login brute-force protection', () => {
  it('when an account fails too often from one address, then even the right password is refused there with the usual 401, but not from another address', async () => {
    const { a, b, close } = await pair({ LOGIN_MAX_FAILURES: '3', TRUST_PROXY: 'true' });
    try {
      const user = await register(a);
      const attempt = (app: TestApp, password: string, ip: string) =>
        app.request.post('/api/v1/auth/login').set('x-forwarded-for', ip).send({ usernameOrEmail: user.username, password });
      for (let i = 0; i < 3; i += 1) expect((await attempt(i % 2 === 0 ? a : b, 'Wrong0ne!', '203.0.113.7')).status).toBe(401);

      const locked = await attempt(b, user.password, '203.0.113.7');
      const wrong = await attempt(b, 'Wrong0ne!', '198.51.100.1');
      expect(locked.status).toBe(401);
      expect(locked.body.error).toEqual(wrong.body.error);
      expect((await attempt(a, user.password, '198.51.100.2')).status).toBe(200);

      // A USER cannot lift it; an administrator can, through either instance.
      const cleared = await b.request.delete(`/api/v1/users/${user.id}/login-failures`).set(...bearer(await loginAdmin(a)));
      expect(cleared.status).toBe(200);
      // The locked address and the one that failed once.
      expect(cleared.body.data).toEqual({ clearedCount: 2 });
      expect((await a.request.delete(`/api/v1/users/${user.id}/login-failures`).set(...bearer(user.accessToken))).status).toBe(403);
      expect((await attempt(a, user.password, '203.0.113.7')).status).toBe(200);

      // Each step left a trace in the audit log, readable by administrators.
      const deadline = Date.now() + 10_000;
      let types: string[] = [];
      while (Date.now() < deadline && !types.includes('LOGIN_FAILURES_CLEARED')) {
        const events = await a.request.get(`/api/v1/audit-events?userId=${user.id}&perPage=100`).set(...bearer(await loginAdmin(a)));
        types = (events.body.items as { type: string }[]).map((event) => event.type);
        if (!types.includes('LOGIN_FAILURES_CLEARED')) await new Promise((resolve) => setTimeout(resolve, 200));
      }
      expect(types).toEqual(expect.arrayContaining(['LOGIN_FAILED', 'LOGIN_SUCCEEDED', 'LOGIN_FAILURES_CLEARED']));
    } finally {
      await close();
    }
  });

  it('when an administrator lifts a lockout while Redis holds many other keys, then the lockout goes at once, without walking every key', async () => {
    // A Redis of its own, so that its command statistics are this test's alone.
    const server = await startRedisServer();
    const own = new Redis(server.url);
    const t = await createTestApp({ REDIS_URL: server.url, REDIS_KEY_PREFIX: prefix, LOGIN_MAX_FAILURES: '3', TRUST_PROXY: 'true' });
    try {
      const user = await register(t);
      const attempt = (password: string, ip: string) => t.request.post('/api/v1/auth/login').set('x-forwarded-for', ip).send({ usernameOrEmail: user.username, password });
      // Other accounts' counters, sessions, cache entries: 20 000 keys the lifting has no business with.
      for (let batch = 0; batch < 20; batch += 1) {
        await own.mset(Object.fromEntries(Array.from({ length: 1_000 }, (_, i) => [`${prefix}other:${batch}:${i}`, '1'])));
      }
      for (let i = 0; i < 3; i += 1) expect((await attempt('Wrong0ne!', '203.0.113.9')).status).toBe(401);
      await attempt('Wrong0ne!', '198.51.100.9');
      expect((await attempt(user.password, '203.0.113.9')).status).toBe(401);

      await own.config('RESETSTAT');
      const cleared = await t.request.delete(`/api/v1/users/${user.id}/login-failures`).set(...bearer(await loginAdmin(t)));
      expect(cleared.status).toBe(200);
      expect(cleared.body.data).toEqual({ clearedCount: 2 });
      // A SCAN of the whole key space took 1.1–1.5 s a pass with 300 000 keys, three passes
      // (helper 213).
      expect(await own.info('commandstats')).not.toMatch(/cmdstat_scan:/);
      expect((await attempt(user.password, '203.0.113.9')).status).toBe(200);
      // No failure counter is left (the login that worked gave its own slot back).
      expect((await own.keys(`${prefix}login-fail:*`)).filter((key) => !key.endsWith('#keys'))).toEqual([]);
    } finally {
      await t.close();
      own.disconnect();
      await server.stop();
    }
  });
});

/** An app on a redis-server of its own, with a user whose session and profile are cached by one GET. */
/** Runs `check` over every protocol with a client on each of two instances, and closes them. */
async function overEveryProtocol(a: TestServer, b: TestServer, check: (onA: ApiClient, onB: ApiClient, protocol: ProtocolName) => Promise<void>): Promise<void> {
  for (const protocol of PROTOCOLS) {
    const onA = apiClient(protocol, a.baseUrl);
    const onB = apiClient(protocol, b.baseUrl);
    try {
      await check(onA, onB, protocol);
    } finally {
      onA.close();
      onB.close();
    }
  }
}

async function appOnItsOwnRedis() {
  const server = await startRedisServer();
  const t = await createTestApp({ REDIS_URL: server.url, REDIS_KEY_PREFIX: prefix });
  const user = await register(t);
  const get = () => t.request.get(`/api/v1/users/${user.id}`).set(...bearer(user.accessToken));
  await get().expect(200);
  return { server, t, user, get };
}

/** Logs in until it works again (the client reconnects on its own), for at most 15 s; the last status. */
async function loginOnceRedisIsBack(t: TestApp, user: { username: string; password: string }): Promise<number> {
  const deadline = Date.now() + 15_000;
  let status = 0;
  while (Date.now() < deadline && status !== 200) {
    status = (await t.request.post('/api/v1/auth/login').send({ usernameOrEmail: user.username, password: user.password })).status;
    if (status !== 200) await new Promise((resolve) => setTimeout(resolve, 200));
  }
  return status;
}

describe('when Redis goes away', () => {
  it('then the API keeps serving from the database, login fails closed with 503, and the cache is used again once Redis is back', async () => {
    const { server, t, user, get } = await appOnItsOwnRedis();
    try {
      await server.stop();
      expect((await get()).status).toBe(200);
      expect((await t.request.get('/api/v1/auth/me').set(...bearer(user.accessToken))).status).toBe(200);
      const login = await t.request.post('/api/v1/auth/login').send({ usernameOrEmail: user.username, password: user.password });
      expect(login.status).toBe(503);
      expect(login.body.error.code).toBe('SERVICE_UNAVAILABLE');
      expect(login.headers['retry-after']).toBe('2');

      await server.start();
      expect(await loginOnceRedisIsBack(t, user)).toBe(200);
      // The login wrote the user's row: its profile refuses cache fills for two seconds, and the
      // flush on reconnect refuses every fill for three.
      await new Promise((resolve) => setTimeout(resolve, 3_100));
      await get().expect(200);
      const before = monolithOf(t).database.queryCount();
      await get().expect(200);
      expect(monolithOf(t).database.queryCount() - before).toBe(0);
    } finally {
      await t.close();
      await server.stop();
    }
  }, 60_000);
});

describe('when Redis stops answering with its connections open', () => {
  it('then one command waits out the timeout, the rest fail at once: reads are served from the database, login fails closed quickly, and all comes back when Redis does', async () => {
    // A frozen Redis (SIGSTOP here; a stalled host or VM) raises no error and closes nothing:
    // every command used to wait its whole 1 s timeout in turn, 5.9 s for one /auth/me, and an
    // RPC with an 800 ms deadline was answered 200 after 5 s (helper 62).
    const { server, t, user, get } = await appOnItsOwnRedis();
    try {
      server.pause();
      const timed = async <T>(call: () => Promise<T>) => {
        const started = performance.now();
        const result = await call();
        return { result, ms: performance.now() - started };
      };
      // The first request meets the timeout once (1 s), not once per command.
      const first = await timed(() => get());
      expect(first.result.status).toBe(200);
      expect(first.ms).toBeLessThan(1_900);
      const after = await timed(async () => {
        const reads = [];
        for (let i = 0; i < 5; i += 1) reads.push((await get()).status, (await t.request.get('/api/v1/auth/me').set(...bearer(user.accessToken))).status);
        return reads;
      });
      expect(after.result).toEqual(Array.from({ length: 10 }, () => 200));
      expect(after.ms).toBeLessThan(1_000);
      const login = await timed(() => t.request.post('/api/v1/auth/login').send({ usernameOrEmail: user.username, password: user.password }));
      expect(login.result.status).toBe(503);
      expect(login.ms).toBeLessThan(1_000);

      server.resume();
      expect(await loginOnceRedisIsBack(t, user)).toBe(200);
    } finally {
      server.resume();
      await t.close();
      await server.stop();
    }
  }, 60_000);
});

describe('when this process is too busy to read what Redis answered', () => {
  it('then the answer is read and the connection kept, where a frozen Redis would be given up', async () => {
    // Helper 77: a service process kept busy for more than the command timeout by a flood of
    // lists took its own late reading for a frozen Redis, dropped a healthy connection (one
    // warning per pending command) and sent its reads to an already loaded database. The
    // timeout's timer runs before the event loop reads its sockets; the answer was there.
    const logLines: string[] = [];
    const logger = createLogger({ level: 'warn', destination: { write: (line: string) => void logLines.push(line) } });
    const client = createRedisClient({ url: REDIS_URL, logger, name: 'busy-test' });
    try {
      expect(await waitUntilReady(client, 5_000)).toBe(true);
      // Redis takes 50 ms to answer; the process is busy for 1.5 s from the moment it was sent.
      const answer = client.eval("local t = redis.call('TIME') repeat local n = redis.call('TIME') until (n[1] - t[1]) * 1000000 + n[2] - t[2] > 50000 return 'answered'", 0);
      await new Promise((resolve) => setImmediate(resolve));
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1_500);
      expect(await answer).toBe('answered');
      expect(client.status).toBe('ready');
      expect(await client.ping()).toBe('PONG');
      expect(logLines.filter((line) => line.includes('redis stopped answering'))).toEqual([]);
    } finally {
      client.disconnect();
    }
  });

  it('when Redis itself stops answering with many commands pending, then the connection is given up once, with one warning', async () => {
    const server = await startRedisServer();
    const logLines: string[] = [];
    const logger = createLogger({ level: 'warn', destination: { write: (line: string) => void logLines.push(line) } });
    const client = createRedisClient({ url: server.url, logger, name: 'frozen-test' });
    try {
      expect(await waitUntilReady(client, 5_000)).toBe(true);
      server.pause();
      const started = performance.now();
      const outcomes = await Promise.allSettled(Array.from({ length: 50 }, (_, i) => client.get(`frozen-${i}`)));
      expect(outcomes.every((outcome) => outcome.status === 'rejected')).toBe(true);
      expect(performance.now() - started).toBeLessThan(1_900);
      expect(logLines.filter((line) => line.includes('redis stopped answering'))).toHaveLength(1);
    } finally {
      server.resume();
      client.disconnect();
      await server.stop();
    }
  }, 30_000);
});

describe('when Redis loses an invalidation', () => {
  // Found by an attacker: an invalidation that Redis did not take was only logged, so a session
  // logged out or a role taken away stayed in the cache, and in force, for the cache's TTL.
  const settle = () => new Promise((resolve) => setTimeout(resolve, 1_000));

  it('when Redis closes the connections right before a logout or a demotion, then over every protocol the old token is refused once Redis is back', async () => {
    const server = await startRedisServer();
    const t = await startTestServer({ REDIS_URL: server.url, REDIS_KEY_PREFIX: prefix });
    const control = new Redis(server.url);
    const admin = await loginAdmin(t);
    try {
      for (const protocol of PROTOCOLS) {
        const client = apiClient(protocol, t.baseUrl);
        try {
          const user = await register(t);
          expect((await client.me(user.accessToken)).code).toBe('ok');
          await control.client('KILL', 'TYPE', 'normal', 'SKIPME', 'yes');
          expect((await client.logout(user.accessToken)).code).toBe('ok');
          await settle();
          expect((await client.me(user.accessToken)).code, `${protocol}: logged out`).toBe('unauthenticated');

          const promoted = await register(t);
          expect((await client.updateRole(admin, promoted.id, 'ADMIN')).code).toBe('ok');
          expect((await client.listUsers(promoted.accessToken, {})).code).toBe('ok');
          await control.client('KILL', 'TYPE', 'normal', 'SKIPME', 'yes');
          expect((await client.updateRole(admin, promoted.id, 'USER')).code).toBe('ok');
          await settle();
          expect((await client.listUsers(promoted.accessToken, {})).code, `${protocol}: demoted`).toBe('permission_denied');
        } finally {
          client.close();
        }
      }
    } finally {
      control.disconnect();
      await t.close();
      await server.stop();
    }
  }, 60_000);

  it("when Redis closes one instance's connection right before a logout or a demotion there, then the other instance refuses the old token as soon as the write is answered, over every protocol", async () => {
    // Found by an attacker: the writing instance answered at once and retried its invalidation
    // in the background, and the other instance, whose connection was fine, kept reading the old
    // entry from Redis for 90-190 ms after the logout's 200.
    const server = await startRedisServer();
    const env = { REDIS_URL: server.url, REDIS_KEY_PREFIX: prefix };
    const control = new Redis(server.url);
    /** The ids of the cache connections open now. */
    const cacheConnections = async () =>
      String(await control.call('CLIENT', 'LIST', 'TYPE', 'normal'))
        .split('\n')
        .filter((line) => line.includes(' name=arcana-cache '))
        .map((line) => /\bid=(\d+)/.exec(line)?.[1] ?? '');
    const a = await startTestServer(env);
    const ofA = new Set(await cacheConnections());
    const b = await startTestServer(env, { sameDatabaseAs: a });
    const ofB = (await cacheConnections()).filter((id) => !ofA.has(id));
    expect(ofB).toHaveLength(1);
    /** Closes A's cache connection from the Redis side; B's stays up. */
    const dropA = async () => {
      for (const id of await cacheConnections()) if (!ofB.includes(id)) await control.client('KILL', 'ID', id);
    };
    const admin = await loginAdmin(a);
    try {
      await overEveryProtocol(a, b, async (onA, onB, protocol) => {
        const user = await register(a);
        expect((await onB.me(user.accessToken)).code).toBe('ok');
        await dropA();
        expect((await onA.logout(user.accessToken)).code).toBe('ok');
        expect((await onB.me(user.accessToken)).code, `${protocol}: logged out on A, asked B`).toBe('unauthenticated');

        const promoted = await register(a);
        expect((await onA.updateRole(admin, promoted.id, 'ADMIN')).code).toBe('ok');
        expect((await onB.listUsers(promoted.accessToken, {})).code).toBe('ok');
        await dropA();
        expect((await onA.updateRole(admin, promoted.id, 'USER')).code).toBe('ok');
        expect((await onB.listUsers(promoted.accessToken, {})).code, `${protocol}: demoted on A, asked B`).toBe('permission_denied');
      });
    } finally {
      control.disconnect();
      await b.close();
      await a.close();
      await server.stop();
    }
  }, 60_000);

  it('when Redis answers reads but refuses writes (min-replicas-to-write unmet, or a replica) during a logout or a demotion on one instance, then the other instance refuses the old token, over every protocol', async () => {
    // Found by an attacker (helper 88): every instance failed to invalidate, and the others kept
    // reading the old entry from Redis, a suspended administrator's token accepted for the
    // cache's TTL. Cache reads are now refused by Redis exactly when it refuses writes.
    const server = await startRedisServer();
    const env = { REDIS_URL: server.url, REDIS_KEY_PREFIX: prefix };
    const control = new Redis(server.url);
    const a = await startTestServer(env);
    const b = await startTestServer(env, { sameDatabaseAs: a });
    const admin = await loginAdmin(a);
    const refusingWrites = [
      { name: 'min-replicas-to-write unmet', refuse: () => control.config('SET', 'min-replicas-to-write', '1'), allow: () => control.config('SET', 'min-replicas-to-write', '0') },
      // A replica of a primary that is not there keeps serving its data (replica-serve-stale-data).
      { name: 'a replica', refuse: () => control.call('REPLICAOF', '127.0.0.1', '1'), allow: () => control.call('REPLICAOF', 'NO', 'ONE') },
    ];
    try {
      for (const state of refusingWrites)
        await overEveryProtocol(a, b, async (onA, onB, protocol) => {
          const label = `${protocol}, ${state.name}`;
          const user = await register(a);
          const promoted = await register(a);
          expect((await onA.updateRole(admin, promoted.id, 'ADMIN')).code).toBe('ok');
          // Both cached on B.
          expect((await onB.me(user.accessToken)).code).toBe('ok');
          expect((await onB.listUsers(promoted.accessToken, {})).code).toBe('ok');
          await state.refuse();
          try {
            expect(await control.set(`${prefix}probe`, '1').catch((error: unknown) => String(error))).toMatch(/NOREPLICAS|READONLY/);
            expect((await onA.logout(user.accessToken)).code).toBe('ok');
            expect((await onA.updateRole(admin, promoted.id, 'USER')).code).toBe('ok');
            expect((await onB.me(user.accessToken)).code, `${label}: logged out on A, asked B`).toBe('unauthenticated');
            expect((await onB.listUsers(promoted.accessToken, {})).code, `${label}: demoted on A, asked B`).toBe('permission_denied');
          } finally {
            await state.allow();
          }
          await settle();
          expect((await onB.me(user.accessToken)).code, `${label}: once Redis takes writes again`).toBe('unauthenticated');
          expect((await onB.listUsers(promoted.accessToken, {})).code, `${label}: once Redis takes writes again`).toBe('permission_denied');
        });
    } finally {
      control.disconnect();
      await b.close();
      await a.close();
      await server.stop();
    }
  }, 90_000);

  it('when Redis refuses writes during a logout and the instance that logged out stops before Redis takes writes again, then the other instance still refuses the old token', async () => {
    // Found by an attacker (helper 94): the invalidation waited in the memory of the instance
    // that stopped, and the other one served the old entry for the TTL once writes came back.
    const server = await startRedisServer();
    const env = { REDIS_URL: server.url, REDIS_KEY_PREFIX: prefix };
    const control = new Redis(server.url);
    // B owns the test database, so that A can stop first.
    const b = await startTestServer(env);
    const a = await startTestServer(env, { sameDatabaseAs: b });
    let aClosed = false;
    try {
      const user = await register(a);
      const me = () => b.request.get('/api/v1/auth/me').set(...bearer(user.accessToken));
      await me().expect(200);
      await control.config('SET', 'min-replicas-to-write', '1');
      try {
        await a.request
          .post('/api/v1/auth/logout')
          .set(...bearer(user.accessToken))
          .expect(200);
        expect((await me()).status).toBe(401);
        await a.close();
        aClosed = true;
      } finally {
        await control.config('SET', 'min-replicas-to-write', '0');
      }
      for (let check = 0; check < 4; check += 1) {
        await new Promise((resolve) => setTimeout(resolve, 500));
        expect((await me()).status, `${(check + 1) * 500} ms after Redis takes writes again`).toBe(401);
      }
    } finally {
      control.disconnect();
      if (!aClosed) await a.close();
      await b.close();
      await server.stop();
    }
  }, 60_000);

  it('when Redis is full (noeviction) during a logout, then the old token is refused, also after memory is freed', async () => {
    const server = await startRedisServer();
    const t = await startTestServer({ REDIS_URL: server.url, REDIS_KEY_PREFIX: prefix });
    const control = new Redis(server.url);
    try {
      const user = await register(t);
      const me = () => t.request.get('/api/v1/auth/me').set(...bearer(user.accessToken));
      await me().expect(200);
      await control.config('SET', 'maxmemory-policy', 'noeviction');
      await control.config('SET', 'maxmemory', '1');
      try {
        await t.request
          .post('/api/v1/auth/logout')
          .set(...bearer(user.accessToken))
          .expect(200);
        expect((await me()).status).toBe(401);
      } finally {
        await control.config('SET', 'maxmemory', '0');
      }
      await settle();
      expect((await me()).status).toBe(401);
    } finally {
      control.disconnect();
      await t.close();
      await server.stop();
    }
  }, 60_000);

  it('when more invalidations fail than it tracks one by one (a long outage), then the whole cache is bypassed, and used again once Redis has been flushed', async () => {
    // This server keeps its data across the restart, so `kept` is back in Redis when the client
    // reconnects; the cache must not trust it, whether or not its flush has landed by the read.
    const server = await startRedisServer({ keepData: true });
    const logLines: string[] = [];
    const logger = createLogger({ level: 'warn', destination: { write: (line: string) => void logLines.push(line) } });
    const client = createRedisClient({ url: server.url, logger, name: 'unconfirmed-test' });
    const cache = new RedisCache(client, 'unconfirmed:', logger);
    try {
      expect(await waitUntilReady(client, 5_000)).toBe(true);
      await cache.set('kept', { id: 1 }, 60);
      expect(await cache.get('kept')).toEqual({ id: 1 });
      await server.stop();
      for (let key = 0; key < 10_001; key += 100)
        await cache.forget(
          Array.from({ length: 100 }, (_, index) => `gone${key + index}`),
          60,
        );
      // Redis comes back refusing SCAN, so the client's flush cannot land until it is allowed.
      await server.start(['--user', 'default', 'on', 'nopass', '~*', '&*', '+@all', '-scan']);
      const direct = new Redis(server.url);
      expect(await direct.exists('unconfirmed:kept')).toBe(1);
      await new Promise((resolve) => setTimeout(resolve, 500));
      expect(await cache.get('kept')).toBeUndefined();
      await direct.acl('SETUSER', 'default', '+scan');
      const deadline = Date.now() + 10_000;
      while (Date.now() < deadline && (await direct.exists('unconfirmed:kept')) === 1) await new Promise((resolve) => setTimeout(resolve, 100));
      direct.disconnect();
      expect(await cache.get('kept')).toBeUndefined();
      await cache.set('kept', { id: 2 }, 60);
      expect(await cache.get('kept')).toEqual({ id: 2 });
      // One warning per failed invalidation, not one per retry.
      expect(logLines.filter((line) => line.includes('cache invalidation failed')).length).toBeLessThanOrEqual(101);
    } finally {
      client.disconnect();
      await server.stop();
    }
  }, 60_000);

  it('when the cache is flushed after a reconnect, then a fill from a read made before a revocation does not bring the entry back', async () => {
    // Suspected by the re-attack: the flush also deletes the marks that refuse such fills.
    const logger = createLogger({ level: 'silent' });
    const client = createRedisClient({ url: REDIS_URL, logger, name: 'flush-test' });
    const cache = new RedisCache(client, `${prefix}flush:`, logger);
    try {
      expect(await waitUntilReady(client, 5_000)).toBe(true);
      const stale = { id: 7, revoked: false };
      await cache.forget(['session:7'], 60);
      await cache.flush();
      await cache.add('session:7', stale, 60);
      expect(await cache.get('session:7')).toBeUndefined();

      // Another process sharing the cache (a split topology's service layer) does not know of
      // this one's flush: the flush leaves marks in Redis, which refuse its fills too, and keeps
      // the longer life of a revocation's own mark.
      const other = new RedisCache(client, `${prefix}flush:`, logger);
      await cache.set('user:8', { id: 8, role: 'ADMIN' }, 60);
      await cache.flush();
      await other.add('user:8', { id: 8, role: 'ADMIN' }, 60);
      await other.add('session:7', stale, 60);
      expect([await other.get('user:8'), await other.get('session:7')]).toEqual([undefined, undefined]);
      const direct = new Redis(REDIS_URL);
      expect(await direct.pttl(`${prefix}flush:session:7`)).toBeGreaterThan(50_000);
      direct.disconnect();
    } finally {
      client.disconnect();
    }
  });
});
