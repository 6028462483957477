// Sessions as an attacker (or a careless proxy) treats them, over every public protocol and in
// every topology:
// - a session refreshed regularly must still end at its absolute lifetime (ASVS 7.3.2);
// - a refresh after logout is a session that ended, not token theft; a replayed rotated token
//   still is theft, and revokes the chain;
// - token answers are never cacheable (RFC 6749 §5.1), and 401s carry the bearer challenge
//   (RFC 6750 §3), with error="invalid_token" when a token was refused;
// - a refresh token signed with the key but naming no chain in a chain's shape (`fam` not a
//   UUID) is an unknown token, not a database error (helper 157);
// - a password change and the end of the other sessions happen together or not at all, even
//   when the database fails between them.
import jwt from 'jsonwebtoken';
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { apiClient, apiClients, closeAll, PROTOCOLS, type ApiClient, type ProtocolName } from '../helpers/protocols.ts';
import { holdRows, newUser, register, startTestServer, TEST_ENV, type RowsHeld, type TestServer } from '../helpers/test-app.ts';

const LIFETIME_SECONDS = 6;

let t: TestServer;
let shortLived: TestServer;

beforeAll(async () => {
  [t, shortLived] = await Promise.all([startTestServer(), startTestServer({ SESSION_ABSOLUTE_LIFETIME_SECONDS: String(LIFETIME_SECONDS) })]);
});

afterAll(async () => {
  await Promise.all([t.close(), shortLived.close()]);
});

/** Audit events of a type for a user, after giving the asynchronous audit writer time to flush. */
async function auditTypes(server: TestServer, userId: number, settle: (types: string[]) => boolean): Promise<string[]> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const rows = await server.sql<{ type: string }>('SELECT type::text AS type FROM audit_events WHERE user_id = $1 ORDER BY id', [userId]);
    const types = rows.map((row) => row.type);
    if (settle(types) || Date.now() > deadline) return types;
    await sleep(100);
  }
}

describe('a password change the database cannot finish', () => {
  it('when the sessions cannot be ended in time, then the password is not changed either, over every protocol at once', async () => {
    // Another transaction holds the users' session rows, so ending the other sessions waits past
    // the write transaction's timeout and fails. The change used to commit the new password first:
    // the owner got an error, the new password was in effect, and a thief's session (made with
    // the old one) lived on; a retry with the old password was then refused as wrong.
    const clients = apiClients(t.baseUrl);
    let held: RowsHeld | undefined;
    try {
      const cases = await Promise.all(
        clients.map(async (client) => {
          const user = await register(t);
          const owner = await client.login({ usernameOrEmail: user.username, password: user.password });
          const thief = await client.login({ usernameOrEmail: user.username, password: user.password });
          return { client, user, owner, thief, newPassword: `Changed-${client.protocol}-Passw0rd!` };
        }),
      );
      held = await holdRows(t, `SELECT id FROM oauth_tokens WHERE user_id IN (${cases.map(({ user }) => user.id).join(', ')}) FOR UPDATE`);
      const sent = performance.now();
      const changes = cases.map(({ client, user, owner, newPassword }) =>
        client.changePassword(owner.data?.tokens.accessToken ?? '', user.id, { oldPassword: user.password, newPassword }),
      );
      const answeredWithin = Promise.all(changes.map((change) => change.then(() => performance.now() - sent)));
      // Past the lock wait's limit (DATABASE_LOCK_TIMEOUT_MS, 5 s) and any internal call's.
      await sleep(8_000);
      await held.release();
      const answers = await Promise.all(changes);
      // Answered while the lock was still held: a lock held elsewhere does not hold requests for
      // as long as it is held (it did, and each held a pooled connection).
      for (const elapsed of await answeredWithin) expect(elapsed).toBeLessThan(7_500);
      for (const [index, { client, user, owner, thief, newPassword }] of cases.entries()) {
        const answer = answers[index];
        // Whatever the answer, the state is one of the two whole ones: a change in effect has
        // ended the thief's session; a change not in effect left the old password working.
        const oldWorks = (await client.login({ usernameOrEmail: user.username, password: user.password })).code === 'ok';
        const newWorks = (await client.login({ usernameOrEmail: user.username, password: newPassword })).code === 'ok';
        const thiefAlive = (await client.me(thief.data?.tokens.accessToken ?? '')).code === 'ok';
        const state = { protocol: client.protocol, answer: answer?.code, oldWorks, newWorks, thiefAlive };
        expect(state, JSON.stringify(answer)).toEqual(oldWorks ? { ...state, newWorks: false, thiefAlive: true } : { ...state, newWorks: true, thiefAlive: false });
        // Never an internal error; an ok answer is a change in effect.
        expect(['ok', 'unavailable', 'deadline_exceeded']).toContain(answer?.code);
        if (answer?.code === 'ok') expect(newWorks).toBe(true);
        // A change that did not happen can be asked for again, and then it ends the thief's session.
        if (oldWorks) {
          const again = await client.changePassword(owner.data?.tokens.accessToken ?? '', user.id, { oldPassword: user.password, newPassword });
          expect(again.code).toBe('ok');
          expect((await client.me(thief.data?.tokens.accessToken ?? '')).code).toBe('unauthenticated');
        }
      }
      // The database failed every one of them: this is what the test is about.
      expect(answers.map((answer) => answer.code).filter((code) => code === 'ok')).toEqual([]);
    } finally {
      await held?.release();
      closeAll(clients);
    }
  }, 60_000);
});

// The lifetime test spends some 8 s waiting out the lifetime on a server of its own
// (`shortLived`); the suites on `t` run meanwhile, one after another as before (both groups are
// marked concurrent: Vitest runs consecutive concurrent siblings together, so nothing may stand
// between them).
describe('absolute session lifetime', { concurrent: true }, () => {
  it('when a session is refreshed again and again, then over every protocol it still ends at its absolute lifetime', async () => {
    const clients = apiClients(shortLived.baseUrl);
    try {
      await Promise.all(
        clients.map(async (client) => {
          const user = await register(shortLived);
          const login = await client.login({ usernameOrEmail: user.username, password: user.password });
          expect(login.code).toBe('ok');
          let refreshToken = login.data?.tokens.refreshToken ?? '';
          const started = Date.now();
          // Refresh every half second: each rotation would slide a sliding-only session forever.
          // (Stop well before the end, so that a slow refresh on a loaded machine is not late.)
          while (Date.now() - started < (LIFETIME_SECONDS - 3) * 1000) {
            const refreshed = await client.refresh(refreshToken);
            expect(refreshed.code).toBe('ok');
            // No token is handed out that outlives the chain.
            expect(refreshed.data?.expiresIn).toBeLessThanOrEqual(LIFETIME_SECONDS);
            refreshToken = refreshed.data?.refreshToken ?? '';
            await sleep(500);
          }
          await sleep(LIFETIME_SECONDS * 1000 - (Date.now() - started) + 1_100);
          const ended = await client.refresh(refreshToken);
          expect(ended.code).toBe('unauthenticated');
          // Its end is not mistaken for theft.
          const types = await auditTypes(shortLived, user.id, () => true);
          expect(types).not.toContain('TOKEN_REUSE_DETECTED');
        }),
      );
    } finally {
      closeAll(clients);
    }
  });
});

describe('sessions on a server without the short lifetime', { concurrent: true }, () => {
  describe.each(PROTOCOLS)('sessions over %s', { concurrent: false }, (protocol: ProtocolName) => {
    let client: ApiClient;

    beforeAll(() => {
      client = apiClient(protocol, t.baseUrl);
    });

    afterAll(() => {
      client.close();
    });

    it("when a logged-out session's refresh token is presented, then it is refused without a theft alarm; a replayed rotated token still raises one", async () => {
      const user = await register(t);
      const login = await client.login({ usernameOrEmail: user.username, password: user.password });
      expect((await client.logout(login.data?.tokens.accessToken ?? '')).code).toBe('ok');
      const afterLogout = await client.refresh(login.data?.tokens.refreshToken ?? '');
      expect(afterLogout.code).toBe('unauthenticated');

      const second = await client.login({ usernameOrEmail: user.username, password: user.password });
      const rotated = await client.refresh(second.data?.tokens.refreshToken ?? '');
      expect(rotated.code).toBe('ok');
      const replay = await client.refresh(second.data?.tokens.refreshToken ?? '');
      expect(replay.code).toBe('unauthenticated');
      // The chain is gone: the successor no longer works either.
      expect((await client.refresh(rotated.data?.refreshToken ?? '')).code).toBe('unauthenticated');

      const types = await auditTypes(t, user.id, (seen) => seen.includes('TOKEN_REUSE_DETECTED'));
      expect(types.filter((type) => type === 'TOKEN_REUSE_DETECTED')).toHaveLength(1);
    });

    it("when a thief refreshes a stolen token and logs out before the owner's copy comes back, then the owner's replay still raises the alarm, once", async () => {
      // Found by an attacker (helper 94): only a replay that ended a live chain raised the alarm,
      // so a thief that ended the chain itself first raised none.
      const user = await register(t);
      const login = await client.login({ usernameOrEmail: user.username, password: user.password });
      const stolen = await client.refresh(login.data?.tokens.refreshToken ?? '');
      expect(stolen.code).toBe('ok');
      expect((await client.logout(stolen.data?.accessToken ?? '')).code).toBe('ok');
      for (let replay = 0; replay < 3; replay += 1) expect((await client.refresh(login.data?.tokens.refreshToken ?? '')).code).toBe('unauthenticated');
      const types = await auditTypes(t, user.id, (seen) => seen.includes('TOKEN_REUSE_DETECTED'));
      await sleep(300);
      expect(types.filter((type) => type === 'TOKEN_REUSE_DETECTED')).toHaveLength(1);
      const settled = await auditTypes(t, user.id, () => true);
      expect(settled.filter((type) => type === 'TOKEN_REUSE_DETECTED')).toHaveLength(1);
    });

    it('when a session is refreshed while its owner changes the password, then the refreshed session lives on and the others end', async () => {
      // The password change ends the caller's other sessions; a refresh of the caller's own session
      // that commits while the change is under way has moved it to a new pair of the same chain,
      // which must be spared. The change is sent first so that it usually authenticates before the
      // refresh retires the access token it presents; when the refresh wins that race the change is
      // refused (that token is dead) and nothing changes, which is right too but tests nothing, so
      // rounds go on until three have raced both ways through.
      let raced = 0;
      for (let round = 0; round < 10 && raced < 3; round += 1) {
        const user = await register(t);
        const current = await client.login({ usernameOrEmail: user.username, password: user.password });
        const other = await client.login({ usernameOrEmail: user.username, password: user.password });
        const newPassword = `Changed-${round}-Passw0rd!`;
        const [changed, refreshed] = await Promise.all([
          client.changePassword(current.data?.tokens.accessToken ?? '', user.id, { oldPassword: user.password, newPassword }),
          client.refresh(current.data?.tokens.refreshToken ?? ''),
        ]);
        expect(refreshed.code).toBe('ok');
        expect((await client.me(refreshed.data?.accessToken ?? '')).code).toBe('ok');
        expect((await client.refresh(refreshed.data?.refreshToken ?? '')).code).toBe('ok');
        if (changed.code === 'unauthenticated') {
          expect((await client.me(other.data?.tokens.accessToken ?? '')).code).toBe('ok');
          continue;
        }
        expect(changed.code).toBe('ok');
        expect((await client.me(other.data?.tokens.accessToken ?? '')).code).toBe('unauthenticated');
        raced += 1;
      }
      expect(raced).toBe(3);
    });

    it('when logins with the old password race a password change, then none of them holds a live session once the change has answered', async () => {
      // An attacker who knows the password keeps logging in while the owner changes it. A login
      // that had compared the old password when the change ended the other sessions used to
      // store its session afterwards, alive for the whole refresh chain. The window is narrow, so
      // only some rounds race through it (the attacker saw 3–5 in 12); tests/unit/service-rules
      // puts the change in the window every time. Here the rule is checked end to end.
      for (let round = 0; round < 3; round += 1) {
        const user = await register(t);
        const owner = await client.login({ usernameOrEmail: user.username, password: user.password });
        const logins = Array.from({ length: 6 }, () => client.login({ usernameOrEmail: user.username, password: user.password }));
        // The owner's known device has login slots of its own, which the attacker's guesses do not take.
        const changed = await client.changePassword(
          owner.data?.tokens.accessToken ?? '',
          user.id,
          { oldPassword: user.password, newPassword: `Changed-${round}-Passw0rd!` },
          { headers: { 'x-device-token': owner.headers.get('x-device-token') ?? '' } },
        );
        expect(changed, JSON.stringify(changed)).toMatchObject({ code: 'ok' });
        for (const login of await Promise.all(logins)) {
          if (login.code !== 'ok') continue;
          expect((await client.me(login.data?.tokens.accessToken ?? '')).code).toBe('unauthenticated');
          expect((await client.refresh(login.data?.tokens.refreshToken ?? '')).code).toBe('unauthenticated');
        }
        expect((await client.me(owner.data?.tokens.accessToken ?? '')).code).toBe('ok');
      }
    });

    it('when a logout races a refresh of the same session, then the session has ended whichever committed first', async () => {
      // As above, some rounds race through (the refresh commits between the logout's authentication
      // and its revocation); service-rules forces that order.
      for (let round = 0; round < 4; round += 1) {
        const user = await register(t);
        const login = await client.login({ usernameOrEmail: user.username, password: user.password });
        const [loggedOut, refreshed] = await Promise.all([client.logout(login.data?.tokens.accessToken ?? ''), client.refresh(login.data?.tokens.refreshToken ?? '')]);
        // A refresh that committed before the logout authenticated retired the token it presents,
        // but not the session: that logout ends it too (helper 224: it was refused, and the
        // refreshed pair lived on).
        expect(loggedOut.code).toBe('ok');
        if (refreshed.code !== 'ok') continue;
        // The refresh committed first and handed out a new pair of the same session: it is over too.
        expect((await client.me(refreshed.data?.accessToken ?? '')).code).toBe('unauthenticated');
        expect((await client.refresh(refreshed.data?.refreshToken ?? '')).code).toBe('unauthenticated');
      }
    });

    it("when a session's pair has been replaced by a refresh (another tab, or a thief holding the refresh token), then a logout with the replaced access token ends the session, audited", async () => {
      const user = await register(t);
      const login = await client.login({ usernameOrEmail: user.username, password: user.password });
      const old = login.data?.tokens.accessToken ?? '';
      // Someone else refreshes, twice: the session now lives in a pair the owner has never seen.
      const first = await client.refresh(login.data?.tokens.refreshToken ?? '');
      const replaced = await client.refresh(first.data?.refreshToken ?? '');
      expect([first.code, replaced.code]).toEqual(['ok', 'ok']);
      expect((await client.me(old)).code).toBe('unauthenticated');
      // The owner signs out with what it holds, from two tabs at once.
      const loggedOut = await Promise.all([client.logout(old), client.logout(old)]);
      // One of them ends it; the other finds it ended (or ends it alongside).
      expect(loggedOut.map((answer) => answer.code)).toContain('ok');
      for (const answer of loggedOut) expect(['ok', 'unauthenticated']).toContain(answer.code);
      expect((await client.me(replaced.data?.accessToken ?? '')).code).toBe('unauthenticated');
      expect((await client.refresh(replaced.data?.refreshToken ?? '')).code).toBe('unauthenticated');
      // Once over, the old token ends nothing more, and says so.
      expect((await client.logout(old)).code).toBe('unauthenticated');
      const events = await t.sql<{ type: string }>("SELECT type FROM audit_events WHERE user_id = $1 AND type IN ('LOGOUT', 'TOKEN_REUSE_DETECTED') ORDER BY id", [user.id]);
      expect(events.map((event) => event.type)).toContain('LOGOUT');
      expect(events.map((event) => event.type)).not.toContain('TOKEN_REUSE_DETECTED');
    });

    it('when tokens are handed out or refused, then no cache may store the answer', async () => {
      const user = await register(t);
      const login = await client.login({ usernameOrEmail: user.username, password: user.password });
      const refreshed = await client.refresh(login.data?.tokens.refreshToken ?? '');
      const refused = await client.login({ usernameOrEmail: user.username, password: 'Not-The-Passw0rd!' });
      for (const answer of [login, refreshed, refused]) expect(answer.headers.get('cache-control')).toBe('no-store');
      // Nor answers about the caller, or refusals: a browser kept /auth/me, the user list and
      // the session list, and served them after logout to a request without a token.
      const token = refreshed.data?.accessToken ?? '';
      // REST GETs, and Connect GETs (the RPCs marked free of side effects); RPCs sent as POST are
      // not cached by default.
      if (protocol === 'rest') {
        const answers = await Promise.all([client.me(token), client.getUser(token, user.id), client.getUser(token, user.id + 1_000_000)]);
        // A user answer is never content-coded either (its ETag is strong: admin-writes).
        expect(answers.map((answer) => [answer.code, answer.headers.get('cache-control')])).toEqual([
          ['ok', 'no-store, no-transform'],
          ['ok', 'no-store, no-transform'],
          ['permission_denied', 'no-store'],
        ]);
      } else {
        const get = (procedure: string, message: unknown) =>
          fetch(`${t.baseUrl}/${procedure}?connect=v1&encoding=json&message=${encodeURIComponent(JSON.stringify(message))}`, { headers: { authorization: `Bearer ${token}` } });
        const answers = await Promise.all([
          get('arcana.auth.v1.AuthService/GetCurrentUser', {}),
          get('arcana.user.v1.UserService/GetUser', { userId: user.id }),
          get('arcana.user.v1.UserService/GetUser', { userId: user.id + 1_000_000 }),
        ]);
        expect(answers.map((answer) => [answer.status, answer.headers.get('cache-control')])).toEqual([
          [200, 'no-store'],
          [200, 'no-store'],
          [403, 'no-store'],
        ]);
      }
    });

    it('when a 401 is answered, then it carries the bearer challenge, with invalid_token only when a token was refused', async () => {
      const user = await register(t);
      const forged = await client.me(`${user.accessToken.slice(0, -4)}AAAA`);
      expect(forged.code).toBe('unauthenticated');
      expect(forged.headers.get('www-authenticate')).toMatch(/^Bearer realm="arcana-cloud", error="invalid_token"/);

      const login = await client.login({ usernameOrEmail: user.username, password: 'Not-The-Passw0rd!' });
      expect(login.headers.get('www-authenticate')).toBe('Bearer realm="arcana-cloud"');
    });
  });
});

describe('the same registration sent many times at once', () => {
  it('when twenty identical registrations arrive at once over every protocol, then one is answered as having made the account and opened one session; the rest are conflicts', async () => {
    // Found by an attacker (helper 218): registrations that lost the insert each took the account
    // for one their first attempt left without a session and opened one, so up to four were
    // answered 201, each with a session and told it had made the account.
    const clients = apiClients(t.baseUrl);
    try {
      for (let round = 0; round < 3; round += 1) {
        const body = newUser('same');
        const outcomes = await Promise.all(Array.from({ length: 20 }, (_, index) => (clients[index % clients.length] as ApiClient).register(body)));
        const codes = outcomes.map((outcome) => outcome.code);
        expect(codes.filter((code) => code === 'ok')).toHaveLength(1);
        expect(codes.filter((code) => !['ok', 'CONFLICT', 'already_exists'].includes(code))).toEqual([]);
        const sessions = await t.sql('SELECT t.id FROM oauth_tokens t JOIN users u ON u.id = t.user_id WHERE u.username = $1', [body.username]);
        expect(sessions).toHaveLength(1);
      }
    } finally {
      closeAll(clients);
    }
  });
});

describe('sessions per user', () => {
  const LIMIT = 5;
  let bounded: TestServer;

  beforeAll(async () => {
    bounded = await startTestServer({ SESSIONS_PER_USER_MAX: String(LIMIT) });
  });

  afterAll(async () => {
    await bounded.close();
  });

  it('when one user logs in again and again, in parallel over every protocol, then only the newest SESSIONS_PER_USER_MAX sessions live and the list stays that long', async () => {
    // Found by an attacker: with no bound, 108 000 logins made one ListTokens answer 74 MB and
    // took the process to 1.15 GB; eight such lists at once held /health up for seconds.
    const clients = apiClients(bounded.baseUrl);
    try {
      const user = await register(bounded);
      const first = await Promise.all(clients.map((client) => client.login({ usernameOrEmail: user.username, password: user.password })));
      const second = await Promise.all(clients.map((client) => client.login({ usernameOrEmail: user.username, password: user.password })));
      expect([...first, ...second].map((outcome) => outcome.code)).toEqual(Array(2 * clients.length).fill('ok'));
      const newest = await (clients[0] as ApiClient).login({ usernameOrEmail: user.username, password: user.password });
      expect(newest.code).toBe('ok');
      const token = newest.data?.tokens.accessToken ?? '';

      const live = await bounded.sql<{ id: number }>('SELECT id FROM oauth_tokens WHERE user_id = $1 AND is_revoked = false', [user.id]);
      expect(live).toHaveLength(LIMIT);
      const listed = await bounded.request.get('/api/v1/auth/tokens').set('authorization', `Bearer ${token}`);
      expect(listed.status).toBe(200);
      expect(listed.body.data).toHaveLength(LIMIT);
      // The oldest (the registration's) has ended, the newest lives, over every protocol.
      for (const client of clients) {
        expect((await client.me(user.accessToken)).code).toBe('unauthenticated');
        expect((await client.me(token)).code).toBe('ok');
      }
      const ended = await bounded.sql<{ reason: string }>(
        "SELECT revoked_reason AS reason FROM oauth_tokens WHERE user_id = $1 AND is_revoked = true AND revoked_reason = 'superseded'",
        [user.id],
      );
      expect(ended).toHaveLength(1 + 2 * clients.length + 1 - LIMIT);
      // Each eviction is audited with the address of the login that caused it, in that login's
      // one event: a login past the bound recorded TOKENS_REVOKED beside it, two rows for one
      // request, where the per-address rate limit is to bound the log's growth (helper 121).
      const logins = 2 * clients.length + 1;
      const deadline = Date.now() + 10_000;
      interface Event {
        type: string;
        ip: string | null;
        details: string | { supersededSessions?: number };
      }
      let events: Event[] = [];
      while (events.filter((event) => event.type === 'LOGIN_SUCCEEDED').length < logins && Date.now() < deadline) {
        await sleep(100);
        events = await bounded.sql<Event>('SELECT type, ip_address AS ip, details FROM audit_events WHERE user_id = $1', [user.id]);
      }
      expect(events.map((event) => event.type)).toEqual(Array(logins).fill('LOGIN_SUCCEEDED'));
      // MySQL hands the JSON column back as its text.
      const superseded = events.map(
        (event) => (typeof event.details === 'string' ? (JSON.parse(event.details) as { supersededSessions?: number }) : event.details).supersededSessions,
      );
      const evictions = events.filter((_, index) => superseded[index] !== undefined);
      expect(superseded.reduce<number>((sum, count) => sum + (count ?? 0), 0)).toBe(ended.length);
      expect(evictions.every((event) => event.ip !== null)).toBe(true);
    } finally {
      closeAll(clients);
    }
  });
});

describe('a signed refresh token whose chain claim is not a UUID', () => {
  /** A refresh token as another deployment sharing JWT_SECRET (or a stolen key) could sign it. */
  const signRefresh = (userId: number, fam: string) =>
    jwt.sign({ tokenType: 'refresh', fam }, TEST_ENV.JWT_SECRET ?? '', {
      algorithm: 'HS256',
      subject: String(userId),
      issuer: 'arcana-cloud',
      audience: 'arcana-cloud-api',
      expiresIn: 60,
      jwtid: randomUUID(),
    });

  it('when it is presented over every protocol at once, then each is refused as unauthenticated, as a UUID naming no chain is, and the user’s session lives on', async () => {
    const user = await register(t);
    const clients = apiClients(t.baseUrl);
    try {
      const outcomes = await Promise.all(
        clients.flatMap((client) =>
          [randomUUID(), 'not-a-uuid', '', randomUUID().toUpperCase()].map((fam, kind) =>
            client.refresh(signRefresh(user.id, fam)).then((answer) => `${client.protocol} ${kind}: ${answer.code}`),
          ),
        ),
      );
      expect(outcomes).toEqual(clients.flatMap((client) => [0, 1, 2, 3].map((kind) => `${client.protocol} ${kind}: unauthenticated`)));
      expect((await clients[0]?.me(user.accessToken))?.code).toBe('ok');
    } finally {
      closeAll(clients);
    }
  });
});
