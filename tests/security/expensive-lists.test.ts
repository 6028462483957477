// Listings as a hostile holder of an administrator's token sends them. A page of users (or of
// audit events) counts every match of its filter, and a search that matches most of a large table
// costs the database a scan per page: a crowd of them, from as many addresses as it takes to stay
// under the per-address rate limit, used to hold every pooled connection, and every other read
// that needed the database waited seconds behind them (README, Security). The process that holds
// the database admits LIST_QUERY_CONCURRENCY listings at once and lets LIST_QUERY_QUEUE_MAX more
// wait; the rest are refused at once with unavailable / 503 and Retry-After. Over every public
// protocol and in every topology: the gate sits in whichever process holds the database, and the
// refusal crosses the internal boundaries to the client.
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { apiClient, PROTOCOLS, type ApiClient, type ProtocolName } from '../helpers/protocols.ts';
import { holdRows, loginAdmin, newUser, startTestServer, TEST_TOPOLOGY, type TestServer } from '../helpers/test-app.ts';

const CONCURRENCY = 1;
const QUEUE = 2;
/** What one administrator's lists may hold of the queue: half (the gate's per-caller share). */
const MINE = Math.ceil(QUEUE / 2);

let t: TestServer;
let admin: string;

beforeAll(async () => {
  // The lists admitted wait on the held table for the whole of a test, seconds on a loaded CI
  // machine: the default 5 s lock wait could end them before the test counts them in pg_stat_activity.
  t = await startTestServer({ LIST_QUERY_CONCURRENCY: String(CONCURRENCY), LIST_QUERY_QUEUE_MAX: String(QUEUE), DATABASE_LOCK_TIMEOUT_MS: '30000' });
  // Each protocol's test below caches the record with its own first call (see cachedAdmin).
  admin = await loginAdmin(t);
  await sleep(2_500);
});

afterAll(async () => {
  await t.close();
});

/**
 * The bootstrap administrator's token, once its record is cached. The login wrote its last login,
 * and for 2 s after a write the profile is not cached again (no fill racing with the write may
 * bring the old one back): past that, its first read caches it, and its calls need no read of the
 * users table, which the tests hold.
 */
async function cachedAdmin(server: TestServer, client: ApiClient): Promise<string> {
  const token = await loginAdmin(server);
  await sleep(2_500);
  expect((await client.me(token)).code).toBe('ok');
  return token;
}

/** A second administrator, made by the first, its record cached (see cachedAdmin). */
async function otherAdmin(client: ApiClient): Promise<string> {
  const body = newUser('lister');
  const created = await client.createUser(admin, { ...body, role: 'ADMIN' });
  expect(created.code).toBe('ok');
  const login = await client.login({ usernameOrEmail: body.username, password: body.password });
  const token = login.data?.tokens.accessToken ?? '';
  await sleep(2_500);
  expect((await client.me(token)).code).toBe('ok');
  return token;
}

/** Holds the users table in another transaction: every listing waits in the database. */
const holdUsers = (server: TestServer) => holdRows(server, 'LOCK TABLE users IN ACCESS EXCLUSIVE MODE');

describe('listings waiting their turn', () => {
  it('when more lists wait for the database than an HTTP/2 connection carries streams, then other calls still get through', async () => {
    // Lists wait as long as the test holds the table, however slow a loaded machine makes it.
    const server = await startTestServer({ LIST_QUERY_CONCURRENCY: '1', LIST_QUERY_QUEUE_MAX: '400', INTERNAL_TIMEOUT_MS: '60000' });
    const client = apiClient('grpc', server.baseUrl);
    const token = await cachedAdmin(server, client);
    const held = await holdUsers(server);
    try {
      // 150 over two connections, as many clients would send them: between layers they share one
      // connection, whose streams (100 by default on a public port) they used to fill.
      const crowd = Array.from({ length: 2 }, () => apiClient('grpc', server.baseUrl));
      const lists = crowd.flatMap((member) => Array.from({ length: 75 }, (_, index) => member.listUsers(token, { perPage: 5, page: index + 1 })));
      await sleep(500);
      // The caller's own record is cached: this call needs nothing the held table has, and
      // answers while the table is still held (it used to wait for as long as the lists did).
      const me = await Promise.race([client.me(token), sleep(20_000).then(() => 'stuck behind the lists' as const)]);
      expect(me === 'stuck behind the lists' ? me : me.code).toBe('ok');
      await held.release();
      expect((await Promise.all(lists)).filter((outcome) => outcome.code !== 'ok')).toEqual([]);
      for (const member of crowd) member.close();
    } finally {
      await held.release();
      client.close();
      await server.close();
    }
  }, 60_000);

  it('when an administrator is demoted, or its session ends, while its lists wait their turn, then those that start afterwards are refused, over every protocol at once', async () => {
    // Found by an attacker (helper 88): lists authorized on arrival were answered pages of users up
    // to 1.8 s after their caller's demotion, suspension or deletion had answered.
    const server = await startTestServer({ LIST_QUERY_CONCURRENCY: '1', LIST_QUERY_QUEUE_MAX: '50', INTERNAL_TIMEOUT_MS: '60000' });
    const root = apiClient('rest', server.baseUrl);
    const clients = PROTOCOLS.map((protocol) => apiClient(protocol, server.baseUrl));
    try {
      const rootToken = await loginAdmin(server);
      // One administrator per protocol: the first three are demoted, the fourth's session ends, the fifth keeps its rights.
      const admins = await Promise.all(
        clients.map(async (client, index) => {
          const body = { ...newUser(`lister${index}`), role: 'ADMIN' as const };
          const created = await root.createUser(rootToken, body);
          expect(created.code).toBe('ok');
          const login = await client.login({ usernameOrEmail: body.username, password: body.password });
          return { client, id: created.data?.id ?? 0, token: login.data?.tokens.accessToken ?? '' };
        }),
      );
      // Their records cached (see cachedAdmin): arriving lists need nothing the held table has.
      await sleep(2_500);
      for (const { client, token } of admins) expect((await client.me(token)).code).toBe('ok');
      const held = await holdUsers(server);
      try {
        const lists = admins.flatMap(({ client, token }) => [1, 2].map((page) => client.listUsers(token, { perPage: 5, page })));
        // Every list has arrived, been authorized and waits: one in the database, the rest for the gate.
        await sleep(1_000);
        const [demoted, ended] = [admins.slice(0, 3).map(({ id }) => id), admins[3]?.id ?? 0];
        await held.sql(`UPDATE users SET role = 'USER' WHERE id IN (${demoted.join(', ')})`);
        await held.sql('UPDATE oauth_tokens SET is_revoked = true WHERE user_id = $1', [ended]);
        await held.sql('COMMIT');
        await held.release();
        const codes = (await Promise.all(lists)).map((outcome) => outcome.code);
        const expected = [
          'permission_denied',
          'permission_denied',
          'permission_denied',
          'permission_denied',
          'permission_denied',
          'permission_denied',
          'unauthenticated',
          'unauthenticated',
          'ok',
          'ok',
        ];
        // The one list in the database when the change committed was authorized before it, and answers.
        const differing = codes.flatMap((code, index) => (code === expected[index] ? [] : [{ index, code }]));
        expect(differing.length, JSON.stringify(codes)).toBeLessThanOrEqual(1);
        expect(
          differing.every(({ code }) => code === 'ok'),
          JSON.stringify(codes),
        ).toBe(true);
      } finally {
        await held.release();
      }
    } finally {
      root.close();
      for (const client of clients) client.close();
      await server.close();
    }
  }, 60_000);

  // The gate is the repository process's; in a split cell the test holds only the controller's app.
  it.skipIf(TEST_TOPOLOGY !== 'monolithic')(
    'when the process starts to drain, then the lists waiting that could not be read before the cut are refused at once, not cut off',
    async () => {
      const server = await startTestServer({ LIST_QUERY_CONCURRENCY: '1', LIST_QUERY_QUEUE_MAX: '400' });
      const client = apiClient('rest', server.baseUrl);
      const token = await cachedAdmin(server, client);
      const held = await holdUsers(server);
      try {
        const lists = Array.from({ length: 5 }, (_, index) => client.listUsers(token, { perPage: 5, page: index + 1 }));
        await sleep(500);
        // A cut sooner than one more list could be read.
        server.app.drain(Date.now() + 10);
        const early = await Promise.all(lists.map((list) => Promise.race([list, sleep(3_000).then(() => 'waiting' as const)])));
        expect(early.filter((outcome) => outcome !== 'waiting').map((outcome) => [outcome.code, outcome.error?.message])).toEqual(
          Array.from({ length: 4 }, () => ['unavailable', 'The server is shutting down, please retry shortly']),
        );
        await held.release();
        expect((await Promise.all(lists)).filter((outcome) => outcome.code === 'ok')).toHaveLength(1);
      } finally {
        await held.release();
        client.close();
        await server.close();
      }
    },
  );
});

/** The second administrator of the crowd tests, made once: its lists end with each test. */
let crowdOther: Promise<string> | undefined;

describe.each(PROTOCOLS)('listings under a crowd, over %s', (protocol: ProtocolName) => {
  let client: ApiClient;

  beforeAll(() => {
    client = apiClient(protocol, t.baseUrl);
  });

  afterAll(() => {
    client.close();
  });

  it("when one administrator's lists arrive while those admitted are stuck in the database, then only LIST_QUERY_CONCURRENCY reach it, that administrator holds at most half of LIST_QUERY_QUEUE_MAX, and the rest are refused at once; another administrator's list still finds room", async () => {
    // The administrators' records are cached from here on: only the listings read the table.
    crowdOther ??= otherAdmin(client);
    const other = await crowdOther;
    expect((await client.me(other)).code).toBe('ok');
    expect((await client.me(admin)).code).toBe('ok');
    // Every statement that reads users now waits: the listings admitted stay in the database.
    const held = await holdUsers(t);
    try {
      const holder = (await held.sql<{ pid: number }>('SELECT pg_backend_pid() AS pid'))[0]?.pid;
      const lists = Array.from({ length: 8 }, (_, index) => client.listUsers(admin, { perPage: 5, q: 'a', page: index + 1 }));
      // Refusals come while the lock is held, so at once and not when a turn frees up.
      const early = await Promise.all(lists.map((list) => Promise.race([list, sleep(3_000).then(() => 'waiting' as const)])));
      const refused = early.filter((outcome) => outcome !== 'waiting');
      expect(refused.map((outcome) => outcome.code)).toEqual(Array.from({ length: 8 - CONCURRENCY - MINE }, () => 'unavailable'));
      for (const outcome of refused) expect(Number(outcome.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
      // One administrator's token filled the whole queue, and every other administrator's
      // page was refused (helper 98): the other half is left for them.
      const theirs = client.listUsers(other, { perPage: 5 });
      expect(await Promise.race([theirs, sleep(1_000).then(() => 'waiting' as const)]), 'another administrator is admitted').toBe('waiting');
      // Of the five processes' worth of calls, one statement reached the database.
      const blocked = await t.sql<{ n: string }>('SELECT count(*) AS n FROM pg_stat_activity WHERE $1 = ANY (pg_blocking_pids(pid))', [holder]);
      expect(Number(blocked[0]?.n)).toBe(CONCURRENCY);
      await held.release();
      // Those admitted and queued are answered once the table is free.
      const answered = await Promise.all(lists);
      expect(answered.filter((outcome) => outcome.code === 'ok')).toHaveLength(CONCURRENCY + MINE);
      expect((await theirs).code).toBe('ok');
    } finally {
      await held.release();
    }
    // And the gate is open again.
    expect((await client.listUsers(admin, { perPage: 5 })).code).toBe('ok');
  });
});
