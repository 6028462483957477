// An administrator's view of a user's sessions, and ending them, as an attacker meets it:
// - a USER must not read or end anyone's sessions through it (its own are under /auth/tokens);
// - an ended session's access and refresh tokens are refused at once, and ending it is not taken
//   for token theft; the user's other sessions go on; a session id of another user is not found;
// - "end every session" must also end the one a thief is refreshing at that very moment: the
//   refresh that commits while the revocation waits must not leave a live successor behind;
// - a suspension and the end of the user's sessions happen together or not at all, even when the
//   database fails between them: a suspended account's sessions must not come back with its
//   reactivation.
// Over every public protocol; also in the split topologies, where the token cache sits in other
// processes than the one that revokes.
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { apiClient, apiClients, closeAll, PROTOCOLS, type ApiClient, type ProtocolName } from '../helpers/protocols.ts';
import { holdRows, loginAdmin, register, startTestServer, type RowsHeld, type TestServer } from '../helpers/test-app.ts';

let t: TestServer;
let admin: string;

beforeAll(async () => {
  t = await startTestServer();
  admin = await loginAdmin(t);
});

afterAll(async () => {
  await t.close();
});

/** The audit events of a type about a user, once at least `expected` have been written. */
async function events(userId: number, type: string, expected: number): Promise<{ actor_id: number | null; details: Record<string, unknown> }[]> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const rows = await t.sql<{ actor_id: number | null; details: Record<string, unknown> }>(
      'SELECT actor_id, details FROM audit_events WHERE user_id = $1 AND type = $2 ORDER BY id',
      [userId, type],
    );
    if (rows.length >= expected || Date.now() > deadline) return rows;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/**
 * A thief refreshing a stolen pair over and over, as fast as answers come; resolves once it has
 * refreshed three times. `stopped` is the code of the first refresh refused, `tokens` its last pair.
 */
async function refreshingInALoop(client: ApiClient, stolen: { accessToken: string; refreshToken: string }) {
  const tokens = { accessToken: stolen.accessToken, refreshToken: stolen.refreshToken };
  let refreshes = 0;
  const stopped = (async () => {
    for (;;) {
      const next = await client.refresh(tokens.refreshToken);
      if (next.code !== 'ok') return next.code;
      refreshes += 1;
      tokens.refreshToken = next.data?.refreshToken ?? '';
      tokens.accessToken = next.data?.accessToken ?? '';
    }
  })();
  while (refreshes < 3) await sleep(5);
  return { stopped, tokens };
}

describe.each(PROTOCOLS)("a user's sessions, administered over %s", (protocol: ProtocolName) => {
  let client: ApiClient;

  beforeAll(() => {
    client = apiClient(protocol, t.baseUrl);
  });

  afterAll(() => {
    client.close();
  });

  it("when a USER lists or ends another user's sessions (or its own, through the admin route), then permission_denied and every session lives on", async () => {
    const victim = await register(t);
    const attacker = await register(t);
    for (const target of [victim.id, attacker.id]) {
      expect((await client.listUserSessions(attacker.accessToken, target)).code).toBe('permission_denied');
      expect((await client.endUserSessions(attacker.accessToken, target)).code).toBe('permission_denied');
      expect((await client.endUserSession(attacker.accessToken, target, 1)).code).toBe('permission_denied');
    }
    expect((await client.me(victim.accessToken)).code).toBe('ok');
    expect((await client.me(attacker.accessToken)).code).toBe('ok');
  });

  it("when an admin ends one session, then its tokens are refused at once without a theft alarm, the user's other session goes on, and another user's session id is not found", async () => {
    const user = await register(t);
    const second = await client.login({ usernameOrEmail: user.username, password: user.password });
    expect(second.code).toBe('ok');
    const listed = await client.listUserSessions(admin, user.id);
    expect(listed.code).toBe('ok');
    expect(listed.data).toHaveLength(2);
    // Sessions are described, never handed out.
    expect(JSON.stringify(listed.data)).not.toContain(user.accessToken);
    expect(JSON.stringify(listed.data)).not.toContain(user.refreshToken);
    const [newest, oldest] = listed.data ?? [];
    expect(newest?.current).toBe(false);

    // Another user's session, named under this user's id: not found, and it lives on.
    const other = await register(t);
    const othersSession = (await client.listUserSessions(admin, other.id)).data?.[0]?.id ?? 0;
    expect((await client.endUserSession(admin, user.id, othersSession)).code).toBe('not_found');
    expect((await client.me(other.accessToken)).code).toBe('ok');

    expect((await client.endUserSession(admin, user.id, oldest?.id ?? 0)).code).toBe('ok');
    expect((await client.me(user.accessToken)).code).toBe('unauthenticated');
    expect((await client.refresh(user.refreshToken)).code).toBe('unauthenticated');
    expect((await client.me(second.data?.tokens.accessToken ?? '')).code).toBe('ok');
    expect((await client.endUserSession(admin, user.id, oldest?.id ?? 0)).code).toBe('not_found');
    expect((await client.listUserSessions(admin, user.id)).data?.map((session) => session.id)).toEqual([newest?.id]);

    const revoked = await events(user.id, 'TOKENS_REVOKED', 1);
    expect(revoked).toHaveLength(1);
    expect(revoked[0]?.details).toMatchObject({ count: 1, sessionId: oldest?.id });
    expect(revoked[0]?.actor_id).not.toBeNull();
    expect(await t.sql('SELECT 1 FROM audit_events WHERE user_id = $1 AND type = $2', [user.id, 'TOKEN_REUSE_DETECTED'])).toHaveLength(0);
  });

  it('when an admin ends a listed session while a thief keeps refreshing it, then the listed id still ends it, no successor survives, and the other session goes on', async () => {
    // A refresh moves a session to a new pair; ending it by the pair id listed before used to
    // answer not_found, so a thief refreshing in a loop dodged 3 to 9 of 12 ends.
    const user = await register(t);
    const second = await client.login({ usernameOrEmail: user.username, password: user.password });
    const stolen = (await client.listUserSessions(admin, user.id)).data?.at(-1)?.id ?? 0;
    const thief = await refreshingInALoop(client, user);

    // Another user's session, refreshed since it was listed, named under this user: not found.
    const other = await register(t);
    const othersListed = (await client.listUserSessions(admin, other.id)).data?.[0]?.id ?? 0;
    const othersNext = await client.refresh(other.refreshToken);
    expect(othersNext.code).toBe('ok');
    expect((await client.endUserSession(admin, user.id, othersListed)).code).toBe('not_found');
    expect((await client.me(othersNext.data?.accessToken ?? '')).code).toBe('ok');

    expect((await client.endUserSession(admin, user.id, stolen)).code).toBe('ok');
    expect(await thief.stopped).toBe('unauthenticated');
    expect((await client.me(thief.tokens.accessToken)).code).toBe('unauthenticated');
    expect((await client.refresh(thief.tokens.refreshToken)).code).toBe('unauthenticated');
    expect((await client.me(second.data?.tokens.accessToken ?? '')).code).toBe('ok');
    expect((await client.listUserSessions(admin, user.id)).data?.map((session) => session.id)).toHaveLength(1);
    expect((await client.endUserSession(admin, user.id, stolen)).code).toBe('not_found');
    expect(await t.sql('SELECT 1 FROM oauth_tokens WHERE user_id = $1 AND NOT is_revoked AND expires_at > now()', [user.id])).toHaveLength(1);
    // Ended by an administrator, not taken for theft.
    expect(await t.sql('SELECT 1 FROM audit_events WHERE user_id = $1 AND type = $2', [user.id, 'TOKEN_REUSE_DETECTED'])).toHaveLength(0);
  });

  it('when an admin ends every session while a thief keeps refreshing a stolen token in parallel, then no session survives', async () => {
    const user = await register(t);
    const thief = await refreshingInALoop(client, user);
    const ended = await client.endUserSessions(admin, user.id);
    expect(ended.code).toBe('ok');
    expect(await thief.stopped).toBe('unauthenticated');
    expect((await client.listUserSessions(admin, user.id)).data).toEqual([]);
    expect((await client.me(thief.tokens.accessToken)).code).toBe('unauthenticated');
    expect((await client.refresh(thief.tokens.refreshToken)).code).toBe('unauthenticated');
    expect((await client.listUserSessions(admin, 2_000_000_000)).code).toBe('not_found');
  });
});

describe('a suspension the database cannot finish', () => {
  it('when the sessions cannot be ended in time, then the user is not suspended either, over every protocol at once; a retry suspends and is audited, and reactivation brings no session back', async () => {
    // Another transaction holds the users' session rows past the write transaction's timeout.
    // The suspension used to commit first: the admin got 503 with the account suspended and its
    // sessions alive, which came back the moment the account was reactivated, and the retry the
    // 503 asked for found the account suspended already and audited nothing.
    const clients = apiClients(t.baseUrl);
    let held: RowsHeld | undefined;
    try {
      const cases = await Promise.all(
        clients.map(async (client) => {
          const user = await register(t);
          const login = await client.login({ usernameOrEmail: user.username, password: user.password });
          return { client, user, login };
        }),
      );
      held = await holdRows(t, `SELECT id FROM oauth_tokens WHERE user_id IN (${cases.map(({ user }) => user.id).join(', ')}) FOR UPDATE`);
      const suspensions = cases.map(({ client, user }) => client.updateStatus(admin, user.id, 'SUSPENDED'));
      // Past the write transaction's 5 s timeout (Prisma's default) and any internal call's.
      await sleep(7_000);
      await held.release();
      const answers = await Promise.all(suspensions);
      for (const [index, { client, user, login }] of cases.entries()) {
        const answer = answers[index];
        expect(['unavailable', 'deadline_exceeded'], JSON.stringify(answer)).toContain(answer?.code);
        // Whatever the answer, the state is one of the two whole ones.
        const [row] = await t.sql<{ status: string }>('SELECT status::text AS status FROM users WHERE id = $1', [user.id]);
        const live = await t.sql<{ id: number }>('SELECT id FROM oauth_tokens WHERE user_id = $1 AND NOT is_revoked', [user.id]);
        const state = { protocol: client.protocol, status: row?.status, liveSessions: live.length };
        expect(state).toEqual(row?.status === 'ACTIVE' ? { ...state, liveSessions: 2 } : { ...state, status: 'SUSPENDED', liveSessions: 0 });
        // The administrator does what the answer says: tries again, later reactivates.
        expect((await client.updateStatus(admin, user.id, 'SUSPENDED')).code).toBe('ok');
        expect((await client.updateStatus(admin, user.id, 'ACTIVE')).code).toBe('ok');
        for (const token of [user.accessToken, login.data?.tokens.accessToken ?? '']) expect((await client.me(token)).code).toBe('unauthenticated');
        expect((await client.refresh(login.data?.tokens.refreshToken ?? '')).code).toBe('unauthenticated');
        const changes = await events(user.id, 'STATUS_CHANGED', 2);
        expect(changes.map(({ details }) => [details.from, details.to])).toEqual([
          ['ACTIVE', 'SUSPENDED'],
          ['SUSPENDED', 'ACTIVE'],
        ]);
      }
    } finally {
      await held?.release();
      closeAll(clients);
    }
  }, 60_000);
});
