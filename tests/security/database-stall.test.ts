// A database server that stops answering, as an attacker (or a frozen server, a full disk, a
// network partition) presents it: the TCP connections stay open and nothing comes back. Every
// request that needs the database must still be answered, in bounded time, with 503 /
// `unavailable`; connections that waited must not come back into the pool to hang the next
// requests; and the API must work again once the server answers, without a restart. Before,
// each request waited for as long as the database did: a login sent while PostgreSQL was stalled
// was still unanswered after 20 s (found by an attacking helper), and so was everyone's after it,
// queued behind the pool's ten connections.
//
// A proxy between the app (the repository layer, in the split topologies) and the database
// server holds every byte in both directions while stalled, and delivers them when it resumes.
// The same on MariaDB (the mariadb project), whose stalls were unbounded until a round later.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { apiClients, closeAll, type ApiClient } from '../helpers/protocols.ts';
import { holdRows, loginAdmin, newUser, register, startTestServer, TEST_DATABASE_URL, TEST_TOPOLOGY, type TestServer } from '../helpers/test-app.ts';
import { isMysqlUrl } from '../helpers/test-database.ts';
import { StallingProxy } from '../helpers/stalling-proxy.ts';

const QUERY_TIMEOUT_MS = 1_000;
const MYSQL = isMysqlUrl(TEST_DATABASE_URL);
const SERVER = MYSQL ? 'MariaDB' : 'PostgreSQL';

let proxy: StallingProxy;
let t: TestServer;
let clients: ApiClient[];
/**
 * The clients the tests of a lost answer go through. Each such answer is lost between the
 * process that holds the database and the database, and what the request then answers is the
 * service layer's rule, whatever carried it: the monolith on PostgreSQL holds it to every
 * protocol; the MariaDB and split cells, which differ below the facades, to REST and gRPC (all
 * five took 11 s per test there, and CI's run stood at 856 s of its 900).
 */
let lostClients: ApiClient[];

beforeAll(async () => {
  proxy = await StallingProxy.inFrontOf(TEST_DATABASE_URL, MYSQL ? 3306 : 5432);
  t = await startTestServer(
    { DATABASE_QUERY_TIMEOUT_MS: String(QUERY_TIMEOUT_MS), DATABASE_LOCK_TIMEOUT_MS: '1000' },
    {
      databaseUrlAs: (url) => {
        const proxied = proxy.via(url);
        // No lock_timeout: only the statement's own bound can end a wait for a lock. (MariaDB's
        // lock below is a table's, which innodb_lock_wait_timeout does not bound.)
        if (!MYSQL) proxied.searchParams.set('options', '-c lock_timeout=0');
        return proxied.toString();
      },
    },
  );
  clients = apiClients(t.baseUrl);
  lostClients = TEST_TOPOLOGY === 'monolithic' && !MYSQL ? clients : clients.filter((client) => client.protocol === 'rest' || client.protocol === 'grpc');
});

/**
 * The audit events about a user (of one type), once the asynchronous writer has written them:
 * when no new one has come for half a second.
 */
async function auditSettled(userId: number, type?: string): Promise<{ actor_id: number | null; details: Record<string, unknown> | null }[]> {
  const read = () =>
    t.sql<{ actor_id: number | null; details: Record<string, unknown> | null }>(
      `SELECT actor_id, details FROM audit_events WHERE user_id = $1${type === undefined ? '' : ' AND type = $2'} ORDER BY id`,
      type === undefined ? [userId] : [userId, type],
    );
  let rows = await read();
  for (;;) {
    await sleep(500);
    const now = await read();
    if (now.length === rows.length) return now;
    rows = now;
  }
}

/**
 * Each of `bystanders` logs in over its own protocol and reads itself with the new session (read
 * from the database: the cache has not seen it), all at once; each answer must come at once.
 */
async function expectBystandersServed(bystanders: { username: string; password: string }[]): Promise<void> {
  // Twice at most: a loaded CI machine once took 1.7–1.8 s over a single probe with nothing held
  // (0.1–0.4 s here). Held connections do not let go between two probes (the writes behind them
  // wait for the lock timeout, 1 s each, in turns); the first probe took 1.9–2.0 s before the fix.
  for (let attempt = 1; ; attempt += 1) {
    const probes = await probeBystanders(bystanders);
    for (const probe of probes) expect(probe).toEqual({ ...probe, login: 'ok', me: 'ok' });
    if (probes.every((probe) => probe.ms < 1_500)) return;
    if (attempt === 2) {
      for (const probe of probes) expect(probe.ms, JSON.stringify(probes)).toBeLessThan(1_500);
      return;
    }
  }
}

async function probeBystanders(bystanders: { username: string; password: string }[]) {
  const started = performance.now();
  return Promise.all(
    clients.map(async (client, i) => {
      const bystander = bystanders[i];
      const login = await client.login({ usernameOrEmail: bystander?.username ?? '', password: bystander?.password ?? '' });
      const me = await client.me(login.data?.tokens.accessToken ?? '');
      return { protocol: client.protocol, login: login.code, me: me.code, ms: Math.round(performance.now() - started) };
    }),
  );
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Rounds over `over` in turn, at least `cases` of them (each round takes the case `index % cases`). */
function roundsOver(over: ApiClient[], cases: number): [index: number, client: ApiClient][] {
  return Array.from({ length: Math.max(over.length, cases) }, (_, index) => [index, over[index % over.length] as ApiClient]);
}

afterAll(async () => {
  closeAll(clients);
  proxy.resume();
  await t.close();
  await proxy.close();
});

describe('a database server that stops answering', () => {
  it(`when ${SERVER} stalls, then every request that needs it, forty at once over every protocol, is answered 503 / unavailable within seconds, and the API works again once it answers`, async () => {
    const admin = await loginAdmin(t);
    const users = await Promise.all(clients.map(() => register(t)));

    proxy.stall();
    try {
      // More requests than the pool has connections: those that wait for one are bounded too.
      const started = Date.now();
      const answers = await Promise.all(
        clients.flatMap((client, index) => {
          const user = users[index];
          if (user === undefined) throw new Error('no user');
          const login = () => client.login({ usernameOrEmail: user.username, password: user.password });
          const read = () => client.getUser(admin, user.id);
          // A refresh locks its pair with a raw statement inside a transaction (helper 102: 500).
          const refresh = () => client.refresh(user.refreshToken);
          return [login, read, refresh, read, login, read, login, read].map(async (call) => {
            const outcome = await call();
            return { protocol: client.protocol, code: outcome.code, status: outcome.status, ms: Date.now() - started };
          });
        }),
      );
      for (const answer of answers) {
        expect(answer).toEqual({ ...answer, code: 'unavailable', status: answer.protocol === 'rest' ? 503 : undefined });
        // The pool's wait (1 s) and then a statement's bound (1 s and a second's margin), with room
        // for a loaded CI machine; unbounded, no answer came at all.
        expect(answer.ms).toBeLessThan(10_000);
      }
    } finally {
      proxy.resume();
    }

    // The connections that waited are gone, not back in the pool: the next requests work.
    const deadline = Date.now() + 10_000;
    for (const [index, client] of clients.entries()) {
      const user = users[index];
      if (user === undefined) throw new Error('no user');
      let outcome = await client.login({ usernameOrEmail: user.username, password: user.password });
      while (outcome.code !== 'ok' && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 200));
        outcome = await client.login({ usernameOrEmail: user.username, password: user.password });
      }
      expect({ protocol: client.protocol, code: outcome.code, user: outcome.data?.user.id }).toEqual({ protocol: client.protocol, code: 'ok', user: user.id });
      expect((await client.getUser(admin, user.id)).data?.username).toBe(user.username);
    }
  }, 60_000);

  it('when a statement runs past DATABASE_QUERY_TIMEOUT_MS on a server that answers, here a write waiting for a row another transaction holds, then each of five at once is 503 / unavailable, nothing is written, and the write works once the row is free', async () => {
    const admin = await loginAdmin(t);
    const user = await register(t);
    // MariaDB's row lock waits are bounded by innodb_lock_wait_timeout (the lock timeout); a
    // table's lock is not, so only max_statement_time ends the wait.
    const held = MYSQL ? await holdRows(t, 'LOCK TABLES users WRITE') : await holdRows(t, 'SELECT id FROM users WHERE id = $1 FOR UPDATE', [user.id]);
    try {
      const started = Date.now();
      const answers = await Promise.all(
        clients.map(async (client) => {
          const outcome = await client.updateUser(admin, user.id, { email: `${client.protocol}-${user.email}` });
          return {
            protocol: client.protocol,
            code: outcome.code,
            status: outcome.status,
            retryAfter: outcome.status === undefined ? null : outcome.headers.get('retry-after'),
            ms: Date.now() - started,
          };
        }),
      );
      for (const answer of answers) {
        expect(answer).toEqual({ ...answer, code: 'unavailable', ...(answer.protocol === 'rest' ? { status: 503, retryAfter: '1' } : {}) });
        expect(answer.ms).toBeLessThan(8_000);
      }
    } finally {
      await held.release();
    }
    const [row] = await t.sql<{ email: string }>('SELECT email FROM users WHERE id = $1', [user.id]);
    expect(row?.email).toBe(user.email);
    const [rest] = clients;
    const updated = await rest?.updateUser(admin, user.id, { email: `after-${user.email}` });
    expect(updated?.data?.email).toBe(`after-${user.email}`);
  }, 30_000);

  it("when forty writes wait at once for one user's row that another transaction holds, then they hold one pooled connection, not all of them: other users' logins and reads over every protocol are answered at once", async () => {
    // Found by an attacker (helper 173): each waiting write held a pooled connection until the
    // lock timeout, the ten were gone, and other users' logins waited up to 10 s or were refused
    // (a user's own 40 revoke-alls did it; so did an administrator's updates).
    // Here the probes took 1.9–2.0 s before the fix, 0.1–0.4 s after.
    const admin = await loginAdmin(t);
    const victim = await register(t);
    const bystanders = await Promise.all(clients.map(() => register(t)));
    const held = await holdRows(t, 'SELECT id FROM users WHERE id = $1 FOR UPDATE', [victim.id]);
    const storm = clients.flatMap((client) =>
      Array.from({ length: 8 }, (_, i) => client.updateUser(admin, victim.id, { firstName: `Waiting${i}` }).then((outcome) => outcome.code)),
    );
    try {
      await sleep(300);
      await expectBystandersServed(bystanders);
    } finally {
      await held.release();
    }
    // The writes themselves waited their turns, each at most as long as the lock timeout allows:
    // refused as busy, or run once the row was free (written, or the documented conflict of
    // concurrent writes without If-Match that found the user changed three times).
    const codes = await Promise.all(storm);
    expect(codes.filter((code) => !['ok', 'unavailable', 'already_exists'].includes(code))).toEqual([]);
  }, 60_000);

  it("when the administrator's own row is held by another transaction, then its updates of forty different users hold one pooled connection, not all of them: other users' logins and reads over every protocol are answered at once", async () => {
    // Found by an attacker (helper 174): each write made for a caller locks the caller's row too,
    // but took its turn under its target's id alone: forty targets were forty turns, forty
    // connections waiting on one administrator's row, and other users' logins were refused.
    const admin = await loginAdmin(t);
    const [adminRow] = await t.sql<{ id: number }>("SELECT id FROM users WHERE role = 'ADMIN' AND status = 'ACTIVE' ORDER BY id LIMIT 1");
    const targets = await Promise.all(Array.from({ length: 40 }, () => register(t)));
    const bystanders = await Promise.all(clients.map(() => register(t)));
    const held = await holdRows(t, 'SELECT id FROM users WHERE id = $1 FOR UPDATE', [adminRow?.id]);
    const storm = targets.map(async (target, i) => {
      const client = clients[i % clients.length];
      return client === undefined ? 'no client' : (await client.updateUser(admin, target.id, { firstName: `Waiting${i}` })).code;
    });
    try {
      await sleep(300);
      await expectBystandersServed(bystanders);
    } finally {
      await held.release();
    }
    const codes = await Promise.all(storm);
    expect(codes.filter((code) => !['ok', 'unavailable'].includes(code))).toEqual([]);
  }, 60_000);

  it("when a login's password matches but its session cannot be stored (the user's row held elsewhere), then it is 503 / unavailable and audited as such, over every protocol", async () => {
    // Found by an attacker (helper 178): the 503 tells a right password from a wrong one's 401
    // while the database struggles, and the attempt left no audit event at all.
    const users = await Promise.all(clients.map(() => register(t)));
    const held = await Promise.all(users.map((user) => holdRows(t, 'SELECT id FROM users WHERE id = $1 FOR UPDATE', [user.id])));
    let outcomes;
    try {
      outcomes = await Promise.all(clients.map((client, i) => client.login({ usernameOrEmail: users[i]?.username ?? '', password: users[i]?.password ?? '' })));
    } finally {
      await Promise.all(held.map((rows) => rows.release()));
    }
    expect(outcomes.map((outcome) => outcome.code)).toEqual(clients.map(() => 'unavailable'));
    const events = await Promise.all(users.map((user) => auditSettled(user.id, 'LOGIN_FAILED')));
    expect(events.map((rows) => rows.map((event) => event.details?.reason))).toEqual(users.map(() => ['unavailable']));
  }, 60_000);

  it(`when a call's deadline passes, or its client leaves, while ${SERVER} holds the call's first read, then the write behind that read is not made once ${SERVER} answers again, over every protocol`, async () => {
    // Each user updates its own profile with its new session, which no cache holds yet: the
    // session's read goes to the database, which holds it. The RPC clients give the call 300 ms,
    // the REST client leaves after 300 ms. The write must not be made behind the back of a client
    // told deadline_exceeded, or gone (the monolith made it, where a split topology's layer
    // boundary refused the repository call: the same request had two outcomes by topology).
    const users = await Promise.all(clients.map(() => register(t)));
    proxy.stall();
    const answers = Promise.all(
      clients.map((client, i) =>
        client.updateUser(
          users[i]?.accessToken ?? '',
          users[i]?.id ?? 0,
          { firstName: 'TooLate' },
          client.protocol === 'rest' ? { signal: AbortSignal.timeout(300) } : { timeoutMs: 300 },
        ),
      ),
    );
    await sleep(600);
    proxy.resume();
    expect((await answers).map((answer, i) => [clients[i]?.protocol, answer.code])).toEqual(
      clients.map((client) => [client.protocol, client.protocol === 'rest' ? 'canceled' : 'deadline_exceeded']),
    );
    // What the held read was followed by has had time to run (it takes milliseconds).
    await sleep(1_500);
    for (const [i, client] of clients.entries()) {
      const [row] = await t.sql<{ first_name: string | null }>('SELECT first_name FROM users WHERE id = $1', [users[i]?.id]);
      expect({ protocol: client.protocol, firstName: row?.first_name ?? null }).toEqual({ protocol: client.protocol, firstName: null });
    }
    // And the same call, in time, is made.
    const again = await Promise.all(clients.map((client, i) => client.updateUser(users[i]?.accessToken ?? '', users[i]?.id ?? 0, { firstName: 'InTime' })));
    expect(again.map((answer) => answer.data?.firstName)).toEqual(clients.map(() => 'InTime'));
  }, 30_000);

  it(`when the network parts in the middle of a refresh's transaction, so that ${SERVER} never hears that the app gave up on it, then the locks it held are freed within seconds and the user's session works again`, async () => {
    // The app's connection is given up after the statement's bound and closed, but the close is
    // lost on the way: the server kept the transaction open with its row locks for as long as it
    // keeps idle sessions (MariaDB: 8 hours), and every refresh, logout or login of the user
    // waited on them and failed (helper 104).
    const [rest] = clients;
    if (rest === undefined) throw new Error('no client');
    const user = await register(t);
    // The refresh's transaction waits inside for the pair's lock, held outside the app (not
    // through the proxy), so that it is open on the server when the network parts.
    const held = await holdRows(t, 'SELECT id FROM oauth_tokens WHERE user_id = $1 FOR UPDATE', [user.id]);
    const refresh = rest.refresh(user.refreshToken);
    // Other files' databases share the server: only this one's sessions (PostgreSQL's statements
    // name the schema; MariaDB's sessions are in the database).
    const own = MYSQL ? new URL(t.databaseUrl).pathname.slice(1) : `%${new URL(t.databaseUrl).searchParams.get('schema')}%`;
    const waiting = MYSQL
      ? "SELECT count(*) AS n FROM information_schema.processlist WHERE db = $1 AND command = 'Execute' AND info LIKE '%oauth_tokens%'"
      : "SELECT count(*) AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE $1";
    const until = Date.now() + 5_000;
    // Asked outside the holder's transaction, which would see one snapshot of the statistics.
    while (Number((await t.sql<{ n: number | string }>(waiting, [own]))[0]?.n) === 0 && Date.now() < until) await new Promise((resolve) => setTimeout(resolve, 20));
    expect(Date.now(), 'the refresh waits for the lock inside its transaction').toBeLessThan(until);
    proxy.stall({ partition: true });
    await held.release();
    // Unanswered; the app gives up on the connection and answers.
    expect((await refresh).code).toBe('unavailable');
    proxy.resume({ dropHeld: true });
    const started = Date.now();
    let outcome = await rest.refresh(user.refreshToken);
    while (outcome.code !== 'ok' && Date.now() - started < 15_000) {
      await new Promise((resolve) => setTimeout(resolve, 250));
      outcome = await rest.refresh(user.refreshToken);
    }
    expect(outcome.code).toBe('ok');
    expect(Date.now() - started).toBeLessThan(10_000);
  }, 40_000);

  it(`when a refresh's COMMIT reaches ${SERVER} but its answer is lost, then it is 503 / unavailable, and its retry with the same token gets a working pair over every protocol, not the end of the session`, async () => {
    // Found by an attacker (helper 104): the retry was taken for a replay of a stolen token, which
    // ended the session and raised the theft alarm, for a rotation that the client never saw.
    for (const client of lostClients) {
      const user = await register(t);
      // The pair's rotation, then the COMMIT that ends its transaction: its answer is lost.
      proxy.loseAnswersAfter('oauth_tokens', 'COMMIT');
      const lost = await client.refresh(user.refreshToken);
      proxy.resume({ dropHeld: true });
      expect({ protocol: client.protocol, code: lost.code }).toEqual({ protocol: client.protocol, code: 'unavailable' });
      // It did commit: the token it presented was rotated.
      const [presented] = await t.sql<{ revoked_reason: string | null }>('SELECT revoked_reason FROM oauth_tokens WHERE user_id = $1 ORDER BY id LIMIT 1', [user.id]);
      expect(presented?.revoked_reason).toBe('rotated');
      const retried = await client.refresh(user.refreshToken);
      expect({ protocol: client.protocol, code: retried.code }).toEqual({ protocol: client.protocol, code: 'ok' });
      const accessToken = retried.data?.accessToken ?? '';
      expect((await client.me(accessToken)).data?.username).toBe(user.username);
      const live = await t.sql<{ n: number | string }>('SELECT count(*) AS n FROM oauth_tokens WHERE user_id = $1 AND is_revoked = false', [user.id]);
      expect(Number(live[0]?.n)).toBe(1);
    }
  }, 60_000);

  it(`when the COMMIT of a logout, of an administrator ending a user's sessions or of a password change reaches ${SERVER} but its answer is lost, then the request still answers that it is done, and the sessions it ended are refused at once, from the cache too, over every protocol`, async () => {
    // Found by an attacker (helper 107): the request answered 503, the revoked sessions kept
    // working from the cache for its minute, and the client's retry, finding nothing live, forgot
    // nothing and answered that all was done.
    const admin = await loginAdmin(t);
    // The clients lose the three COMMITs in turn (the rule is the service layer's,
    // whatever carried the request; all three over every protocol took 25 s of each cell).
    for (const [index, client] of roundsOver(lostClients, 3)) {
      const kind = index % 3;
      if (kind === 0) {
        const user = await register(t);
        // Each session read once, so that it sits in the cache.
        expect((await client.me(user.accessToken)).code).toBe('ok');
        proxy.loseAnswersAfter('oauth_tokens', 'COMMIT');
        const logout = await client.logout(user.accessToken);
        proxy.resume({ dropHeld: true });
        expect({ protocol: client.protocol, code: logout.code }).toEqual({ protocol: client.protocol, code: 'ok' });
        expect({ protocol: client.protocol, code: (await client.me(user.accessToken)).code }).toEqual({ protocol: client.protocol, code: 'unauthenticated' });
        continue;
      }
      if (kind === 1) {
        const other = await register(t);
        expect((await client.me(other.accessToken)).code).toBe('ok');
        proxy.loseAnswersAfter('oauth_tokens', 'COMMIT');
        const ended = await client.endUserSessions(admin, other.id);
        proxy.resume({ dropHeld: true });
        expect({ protocol: client.protocol, code: ended.code, count: ended.data?.endedCount }).toEqual({ protocol: client.protocol, code: 'ok', count: 1 });
        expect({ protocol: client.protocol, code: (await client.me(other.accessToken)).code }).toEqual({ protocol: client.protocol, code: 'unauthenticated' });
        continue;
      }
      // A password change ends the user's other sessions in the same transaction: its retry with
      // the old password was refused as a wrong guess and counted towards a lockout (helper 107).
      const changing = await register(t);
      const elsewhere = await client.login({ usernameOrEmail: changing.username, password: changing.password });
      const elsewhereToken = elsewhere.data?.tokens.accessToken ?? '';
      expect((await client.me(elsewhereToken)).code).toBe('ok');
      const newPassword = `New-${changing.password}`;
      proxy.loseAnswersAfter('password_hash', 'oauth_tokens', 'COMMIT');
      const changed = await client.changePassword(changing.accessToken, changing.id, { oldPassword: changing.password, newPassword });
      proxy.resume({ dropHeld: true });
      expect({ protocol: client.protocol, code: changed.code }).toEqual({ protocol: client.protocol, code: 'ok' });
      expect({ protocol: client.protocol, code: (await client.me(elsewhereToken)).code }).toEqual({ protocol: client.protocol, code: 'unauthenticated' });
      expect((await client.login({ usernameOrEmail: changing.username, password: newPassword })).code).toBe('ok');
    }
  }, 120_000);

  it(`when the claim of an Idempotency-Key reaches ${SERVER} but its answer is lost, then the request still runs and answers, and a retry with the key gets the same answer, over every protocol`, async () => {
    // Found by an attacker (helper 107): the claim was stored with nothing run, and every retry
    // with the key was "still in progress" for the claim's five-minute lease.
    for (const client of lostClients) {
      const body = newUser(`claim_${client.protocol.replace('-', '_')}`);
      const key = { headers: { 'idempotency-key': `lost-claim-${client.protocol}-${body.username}` } };
      proxy.loseAnswersAfter('idempotency_records');
      const first = await client.register(body, key);
      proxy.resume({ dropHeld: true });
      expect({ protocol: client.protocol, code: first.code }).toEqual({ protocol: client.protocol, code: 'ok' });
      const retried = await client.register(body, key);
      expect({ protocol: client.protocol, code: retried.code, user: retried.data?.user.id, replayed: retried.headers.get('idempotent-replayed') }).toEqual({
        protocol: client.protocol,
        code: 'ok',
        user: first.data?.user.id,
        replayed: 'true',
      });
    }
  }, 90_000);

  it(`when the COMMIT of an administrator's change reaches ${SERVER} but its answer is lost, then its audit event was stored with it, once, and the client's retry adds none, over every protocol`, async () => {
    // Found by an attacker (helper 107): the event was recorded only after the write answered, so
    // a suspension, role change, verification, profile edit or deletion whose answer was lost
    // left no trace in the audit log.
    const admin = await loginAdmin(t);
    const [{ id: adminId } = { id: 0 }] = await t.sql<{ id: number }>('SELECT id FROM users WHERE role = $1 ORDER BY id LIMIT 1', ['ADMIN']);
    type Change = [type: string, change: (client: ApiClient, userId: number) => Promise<{ code: string }>, details: Record<string, unknown> | null];
    const changes: Change[] = [
      ['STATUS_CHANGED', (client, id) => client.updateStatus(admin, id, 'SUSPENDED'), { from: 'ACTIVE', to: 'SUSPENDED' }],
      ['ROLE_CHANGED', (client, id) => client.updateRole(admin, id, 'GUEST'), { from: 'USER', to: 'GUEST' }],
      ['USER_VERIFIED', (client, id) => client.verifyUser(admin, id), null],
      ['USER_UPDATED', (client, id) => client.updateUser(admin, id, { firstName: 'Renamed' }), { fields: 'firstName' }],
      ['USER_DELETED', (client, id) => client.deleteUser(admin, id), null],
    ];
    // The clients make the five changes in turn (the rule is the service layer's, whatever
    // carried the request; two each, every change over two protocols, took 33 s of each cell).
    for (const [index, client] of roundsOver(lostClients, changes.length)) {
      const user = await register(t);
      for (const [type, changeOf, details] of [changes[index % changes.length]] as Change[]) {
        const change = () => changeOf(client, user.id);
        await auditSettled(user.id);
        // Every such change locks rows (FOR UPDATE) and commits: the answer to its COMMIT is lost.
        proxy.loseAnswersAfter('UPDATE', 'COMMIT');
        const lost = await change();
        proxy.resume({ dropHeld: true });
        expect({ protocol: client.protocol, type, code: lost.code }).toEqual({ protocol: client.protocol, type, code: expect.stringMatching(/^(ok|unavailable)$/) });
        // The client cannot tell whether it happened, so it asks again; the change is in place, and
        // a verification or deletion already made is refused as such.
        const retried = await change();
        expect(['ok', 'failed_precondition', 'not_found', 'already_exists', 'aborted']).toContain(retried.code);
        const rows = await auditSettled(user.id, type);
        expect({ protocol: client.protocol, type, events: rows }).toEqual({ protocol: client.protocol, type, events: [{ actor_id: adminId, details }] });
      }
    }
  }, 180_000);

  it(`when the INSERT of a queued audit event reaches ${SERVER} but its answer is lost, then the writer's retry does not store it twice, over every protocol`, async () => {
    // Found by an attacker (helper 107): the job runner tried again a batch that had been stored.
    // The writer is the same whatever carried the request: two protocols.
    for (const client of [clients[0], clients.at(-1)] as ApiClient[]) {
      const user = await register(t);
      await auditSettled(user.id);
      proxy.loseAnswersAfter('audit_events');
      expect((await client.logout(user.accessToken)).code).toBe('ok');
      // The lost answer costs the writer its connection after the statement bound, then it retries.
      const deadline = Date.now() + 15_000;
      while ((await t.sql('SELECT 1 FROM audit_events WHERE user_id = $1 AND type = $2', [user.id, 'LOGOUT'])).length === 0 && Date.now() < deadline) await sleep(100);
      proxy.resume({ dropHeld: true });
      await sleep(3 * QUERY_TIMEOUT_MS);
      const rows = await auditSettled(user.id, 'LOGOUT');
      expect({ protocol: client.protocol, events: rows.length }).toEqual({ protocol: client.protocol, events: 1 });
    }
  }, 120_000);

  it(`when the connections to ${SERVER} are cut under statements (a failover, a proxy restart), then each request is 503 / unavailable, not a 500, and the next ones work`, async () => {
    const users = await Promise.all(clients.map(() => register(t)));
    proxy.stall();
    const answers = Promise.all(
      clients.flatMap((client, index) => {
        const user = users[index];
        if (user === undefined) throw new Error('no user');
        return [client.login({ usernameOrEmail: user.username, password: user.password }), client.refresh(user.refreshToken)].map(async (call) => ({
          protocol: client.protocol,
          code: (await call).code,
        }));
      }),
    );
    // Cut once the calls' statements are held: until none has come for 300 ms (a fixed 300 ms
    // after sending was too short on a loaded machine, and a login that had not reached the
    // database yet ran after the cut and succeeded).
    let held = 0;
    for (const until = Date.now() + 5_000; Date.now() < until;) {
      await new Promise((resolve) => setTimeout(resolve, 300));
      const now = proxy.heldConnections();
      if (now > 0 && now === held) break;
      held = now;
    }
    proxy.cut();
    proxy.resume();
    // Each call whose statements were cut is 503 / unavailable, never a 500; one that had not
    // reached the database by then (queued for a connection) may have run after it.
    const codes = (await answers).map((answer) => answer.code);
    expect(codes.filter((code) => code !== 'unavailable' && code !== 'ok')).toEqual([]);
    expect(codes.filter((code) => code === 'unavailable').length).toBeGreaterThanOrEqual(Math.max(1, held));
    const [rest] = clients;
    const user = users[0];
    if (rest === undefined || user === undefined) throw new Error('no client');
    const deadline = Date.now() + 10_000;
    let outcome = await rest.login({ usernameOrEmail: user.username, password: user.password });
    while (outcome.code !== 'ok' && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 200));
      outcome = await rest.login({ usernameOrEmail: user.username, password: user.password });
    }
    expect(outcome.code).toBe('ok');
  }, 30_000);
});
