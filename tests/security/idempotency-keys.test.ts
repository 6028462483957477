// Idempotency keys as a careless client, a racing client and an attacker with a database dump
// meet them, over every public protocol (and, registered in SECURITY_SUITES, in the split
// topologies, where the key crosses from the controller to the service process and the records
// live behind the repository layer's API):
// - parallel requests with one key do the work once, and every retry gets that one answer;
// - a key is bound to its request: another body is refused and does nothing;
// - a malformed key is a validation error, not a 500 and not a silent "no key";
// - nothing in the idempotency table is usable without the server's secret: no key, no token,
//   no password, not even an unkeyed hash of the key;
// - one administrator's keys are not another's.
import { createHash, randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { apiClient, apiClients, closeAll, PROTOCOLS, type ApiClient, type AuthResultData, type Outcome, type ProtocolName } from '../helpers/protocols.ts';
import { ADMIN, loginAdmin, newUser, startTestServer, TEST_DATABASE_URL, type TestServer } from '../helpers/test-app.ts';
import { isMysqlUrl } from '../helpers/test-database.ts';

const REPLAYED = 'idempotent-replayed';

let t: TestServer;
/** Two administrators' access tokens: the bootstrap one, and one it created. */
let adminA: string;
let adminB: string;

beforeAll(async () => {
  t = await startTestServer();
  adminA = await loginAdmin(t);
  const second = newUser('admin_b');
  const created = await t.request
    .post('/api/v1/users')
    .set('authorization', `Bearer ${adminA}`)
    .send({ ...second, role: 'ADMIN' });
  expect(created.status).toBe(201);
  const login = await t.request.post('/api/v1/auth/login').send({ usernameOrEmail: second.username, password: second.password });
  expect(login.status).toBe(200);
  adminB = login.body.data.tokens.accessToken as string;
});

afterAll(async () => {
  await t.close();
});

const withKey = (key: string) => ({ headers: { 'idempotency-key': key } });

async function usersNamed(username: string): Promise<number> {
  const rows = await t.sql<{ count: string }>('SELECT count(*) AS count FROM users WHERE username_key = lower($1)', [username]);
  return Number(rows[0]?.count);
}

/** What a client keeps of a registration's answer: the account and the very tokens. */
const answerOf = (outcome: Outcome<AuthResultData>) => ({ user: outcome.data?.user, tokens: outcome.data?.tokens });

describe.each(PROTOCOLS)('idempotency keys over %s', (protocol: ProtocolName) => {
  let client: ApiClient;

  beforeAll(() => {
    client = apiClient(protocol, t.baseUrl);
  });

  afterAll(() => {
    client.close();
  });

  it('when 10 identical registrations with one key race, then one account is made and every answer, retried, is the same', async () => {
    const body = newUser('race');
    const key = randomUUID();
    const first = await Promise.all(Array.from({ length: 10 }, () => client.register(body, withKey(key))));

    // The work ran once: one fresh answer; the others were told the key was busy, or (if they
    // came after it finished) got the stored answer.
    const fresh = first.filter((outcome) => outcome.code === 'ok' && outcome.headers.get(REPLAYED) === null);
    expect(fresh).toHaveLength(1);
    for (const outcome of first) {
      if (outcome.code === 'ok') continue;
      expect(outcome.code).toBe('already_exists');
      expect(outcome.error?.message).toMatch(/still in progress/);
      if (protocol === 'rest') expect(outcome.status).toBe(409);
    }
    expect(await usersNamed(body.username)).toBe(1);

    // A client told to retry, retries: every one now gets the first answer, tokens included.
    const answers = await Promise.all(first.map(async (outcome) => (outcome.code === 'ok' ? outcome : await client.register(body, withKey(key)))));
    for (const answer of answers) expect(answer.code).toBe('ok');
    const expected = answerOf(fresh[0] as Outcome<AuthResultData>);
    for (const answer of answers) expect(answerOf(answer)).toEqual(expected);
    expect(await usersNamed(body.username)).toBe(1);
  });

  it('when a completed registration is sent again with its key, then the stored answer comes back, marked as a replay', async () => {
    const body = newUser('replay');
    const key = randomUUID();
    const original = await client.register(body, withKey(key));
    expect(original.code).toBe('ok');
    expect(original.headers.get(REPLAYED)).toBeNull();

    const again = await client.register(body, withKey(key));
    expect(again.code).toBe('ok');
    if (protocol === 'rest') expect(again.status).toBe(201);
    expect(again.headers.get(REPLAYED)).toBe('true');
    expect(answerOf(again)).toEqual(answerOf(original));
    // The replayed tokens are the live session's: they work.
    const me = await client.me(again.data?.tokens.accessToken ?? '');
    expect(me.code).toBe('ok');
    expect(me.data?.id).toBe(original.data?.user.id);
  });

  it('when a registration is sent again with its key and the same password in another Unicode form, then it is the same request and replays', async () => {
    // Found by an attacker (helper 111): the password is compared and stored in NFC, but the
    // request's fingerprint took it as sent, so a client that composed "é" differently on its
    // retry was told the key had been used for another request.
    const base = newUser('nfc');
    const body = { ...base, password: `Caf\u00e9-${base.password}` };
    const key = randomUUID();
    const original = await client.register(body, withKey(key));
    expect(original.code).toBe('ok');
    const again = await client.register({ ...body, password: body.password.normalize('NFD') }, withKey(key));
    expect({ code: again.code, replayed: again.headers.get(REPLAYED) }).toEqual({ code: 'ok', replayed: 'true' });
    expect(answerOf(again)).toEqual(answerOf(original));
  });

  it('when the account a registration created has changed its password, or was suspended, then a replay of it is refused and gives out no session', async () => {
    // Found by an attacker: the replay handed back the owner's live session to whoever held the
    // old password and the key, for a day after the password change.
    const changed = newUser('replaypw');
    const changedKey = randomUUID();
    const first = await client.register(changed, withKey(changedKey));
    expect(first.code).toBe('ok');
    const token = first.data?.tokens.accessToken ?? '';
    const id = first.data?.user.id ?? 0;
    expect((await client.changePassword(token, id, { oldPassword: changed.password, newPassword: 'Another-Passw0rd!' })).code).toBe('ok');

    const suspended = newUser('replaysus');
    const suspendedKey = randomUUID();
    const second = await client.register(suspended, withKey(suspendedKey));
    expect(second.code).toBe('ok');
    const admin = (await client.login({ usernameOrEmail: ADMIN.username, password: ADMIN.password })).data?.tokens.accessToken ?? '';
    expect((await client.updateStatus(admin, second.data?.user.id ?? 0, 'SUSPENDED')).code).toBe('ok');

    const replays = await Promise.all([client.register(changed, withKey(changedKey)), client.register(suspended, withKey(suspendedKey))]);
    for (const replay of replays) {
      expect(replay.code).toBe('already_exists');
      expect(replay.error?.message).toMatch(/changed since; please log in/);
      expect(replay.data).toBeUndefined();
      if (protocol === 'rest') expect(replay.status).toBe(409);
    }
    // The owner's session from the first answer is still the owner's alone, and still works.
    expect((await client.me(token)).code).toBe('ok');
  });

  it('when the session a registration opened has ended (a logout, a refresh, a suspension lifted), then a replay of it is refused and gives out no tokens', async () => {
    // Found by an attacker (helper 201): the replay answered 201 with the first answer's tokens,
    // which every endpoint then refused.
    const admin = (await client.login({ usernameOrEmail: ADMIN.username, password: ADMIN.password })).data?.tokens.accessToken ?? '';
    const cases = await Promise.all(
      (['logout', 'refresh', 'reactivated'] as const).map(async (ending) => {
        const body = newUser(`replay${ending.slice(0, 5)}`);
        const key = randomUUID();
        const first = await client.register(body, withKey(key));
        expect(first.code).toBe('ok');
        const tokens = first.data?.tokens ?? { accessToken: '', refreshToken: '' };
        const id = first.data?.user.id ?? 0;
        if (ending === 'logout') expect((await client.logout(tokens.accessToken)).code).toBe('ok');
        if (ending === 'refresh') expect((await client.refresh(tokens.refreshToken)).code).toBe('ok');
        if (ending === 'reactivated') {
          expect((await client.updateStatus(admin, id, 'SUSPENDED')).code).toBe('ok');
          expect((await client.updateStatus(admin, id, 'ACTIVE')).code).toBe('ok');
        }
        return { body, key };
      }),
    );
    const replays = await Promise.all(cases.map(({ body, key }) => client.register(body, withKey(key))));
    for (const replay of replays) {
      expect({ code: replay.code, data: replay.data, message: replay.error?.message }).toEqual({
        code: 'already_exists',
        data: undefined,
        message: expect.stringMatching(/please log in/) as unknown,
      });
      if (protocol === 'rest') expect(replay.status).toBe(409);
    }
    // Each account is still there, and logs in with its password.
    const logins = await Promise.all(cases.map(({ body }) => client.login({ usernameOrEmail: body.username, password: body.password })));
    expect(logins.map((login) => login.code)).toEqual(['ok', 'ok', 'ok']);
  });

  it('when a registration, or a creation, is sent again with its key and the e-mail in other letter case, then it is the same request: the first answer comes back', async () => {
    // The e-mail is stored lower-cased; the fingerprint took it as typed, and a retry spelled so
    // was refused as another request (helper 144).
    const key = randomUUID();
    const body = newUser('spelled');
    const first = await client.register(body, withKey(key));
    expect(first.code).toBe('ok');
    const again = await client.register({ ...body, email: body.email.toUpperCase() }, withKey(key));
    expect({ code: again.code, replayed: again.headers.get(REPLAYED), user: again.data?.user.id }).toEqual({ code: 'ok', replayed: 'true', user: first.data?.user.id });
    const account = newUser('spelled_admin');
    const created = await client.createUser(adminA, { ...account, email: `Spelled.${key}@Example.COM` }, withKey(key));
    expect(created.code).toBe('ok');
    const createdAgain = await client.createUser(adminA, { ...account, email: `spelled.${key}@example.com` }, withKey(key));
    expect({ code: createdAgain.code, replayed: createdAgain.headers.get(REPLAYED), id: createdAgain.data?.id }).toEqual({ code: 'ok', replayed: 'true', id: created.data?.id });
  });

  it('when a key is sent again with another body, then the request is refused with IDEMPOTENCY_KEY_REUSED and nothing is created', async () => {
    const key = randomUUID();
    expect((await client.register(newUser('reuse'), withKey(key))).code).toBe('ok');
    const other = newUser('reuse_other');
    const reused = await client.register(other, withKey(key));
    expect(reused.code).toBe('failed_precondition');
    if (protocol === 'rest') expect(reused.status).toBe(422);
    expect(reused.error?.message).toMatch(/Idempotency-Key was already used/);
    expect(await usersNamed(other.username)).toBe(0);
    // The same body with only the password changed is another request too.
    const samePeople = await client.register({ ...other, password: 'Another-Passw0rd!' }, withKey(key));
    expect(samePeople.code).toBe('failed_precondition');
  });

  it.each([
    ['empty', ''],
    ['longer than 255 characters', 'k'.repeat(256)],
    // Cut to 256 characters for the internal call, it ended in a space that the hop dropped: a
    // valid key in the service layer, and the registration went ahead (helper 143).
    ['longer than 255 characters, the 256th a space', `${'k'.repeat(255)} ${'z'.repeat(44)}`],
    ['not printable ASCII (a tab)', 'tab\there'],
    ['not ASCII', 'cl\u00e9'],
  ])('when the key is %s, then the request is a validation error and nothing is created', async (_what, key) => {
    const body = newUser('badkey');
    const outcome = await client.register(body, withKey(key));
    expect(outcome.code).toBe('invalid_argument');
    if (protocol === 'rest') expect(outcome.status).toBe(400);
    expect(Object.keys(outcome.error?.details ?? {})).toContain('idempotency-key');
    expect(await usersNamed(body.username)).toBe(0);
  });

  it('when the first request with a key fails, then nothing is stored and the same key may be retried', async () => {
    const body = newUser('retry');
    const key = randomUUID();
    // The username is taken: the registration fails with CONFLICT.
    const taker = await client.register(body);
    expect(taker.code).toBe('ok');
    const failed = await client.register(body, withKey(key));
    expect(failed.code).toBe('already_exists');
    expect(failed.error?.message).not.toMatch(/in progress/);

    // Once the name is free, the same key and body do the work: the failure was not replayed.
    expect((await client.deleteUser(adminA, taker.data?.user.id ?? 0)).code).toBe('ok');
    const retried = await client.register(body, withKey(key));
    expect(retried.code).toBe('ok');
    expect(retried.headers.get(REPLAYED)).toBeNull();
    expect(retried.data?.user.id).not.toBe(taker.data?.user.id);
  });

  it.skipIf(protocol === 'rest')(
    'when registrations with keys run out of their deadline at every point of the way, then each key can be retried at once: done once, never "in progress"',
    async () => {
      // Found by an attacker (helper 85), in the split topologies: a claim sent to the repository
      // layer by a call whose deadline then passed could still be stored, and its caller, which got
      // no claim id back, gave nothing back: a retry with the key answered "still in progress" for
      // the claim's 5-minute lease while nothing ran.
      const attempts = Array.from({ length: 16 }, (_, index) => ({ body: newUser(`late${index}`), key: randomUUID(), timeoutMs: 1 + index * 3 }));
      const first = await Promise.all(attempts.map(({ body, key, timeoutMs }) => client.register(body, { ...withKey(key), timeoutMs })));
      expect(first.map((outcome) => outcome.code).filter((code) => !['ok', 'deadline_exceeded', 'unavailable'].includes(code))).toEqual([]);
      // A retry may still meet the first request at work (the server finishes or abandons what it
      // started after the client's deadline): "in progress" for that moment, not for the lease.
      const retry = async ({ body, key }: (typeof attempts)[number]) => {
        const until = Date.now() + 10_000;
        for (;;) {
          const outcome = await client.register(body, withKey(key));
          if (outcome.code === 'ok' || !(outcome.error?.message ?? '').includes('in progress') || Date.now() > until) return outcome;
          await new Promise((resolve) => setTimeout(resolve, 200));
        }
      };
      const retried = await Promise.all(attempts.map(retry));
      expect(retried.map((outcome, index) => ({ index, code: outcome.code, message: outcome.error?.message }))).toEqual(
        attempts.map((_, index) => ({ index, code: 'ok', message: undefined })),
      );
      for (const { body } of attempts) expect(await usersNamed(body.username)).toBe(1);
    },
  );

  it('when a key has expired, then it may be used again, for another request', async () => {
    const key = randomUUID();
    const first = await client.register(newUser('expired'), withKey(key));
    expect(first.code).toBe('ok');
    // 24 hours later, as far as the records know.
    await t.sql(`UPDATE idempotency_records SET expires_at = now() - interval '1 second' WHERE expires_at > now()`);
    const later = newUser('expired_later');
    const reused = await client.register(later, withKey(key));
    expect(reused.code).toBe('ok');
    expect(reused.headers.get(REPLAYED)).toBeNull();
    expect(await usersNamed(later.username)).toBe(1);
  });

  it('when two administrators use one key, then neither replays, nor is blocked by, the other', async () => {
    const key = randomUUID();
    const body = newUser('created');
    const byA = await client.createUser(adminA, body, withKey(key));
    expect(byA.code).toBe('ok');
    expect((await client.createUser(adminA, body, withKey(key))).headers.get(REPLAYED)).toBe('true');

    // B with A's key and body is a new request of B's: the work runs and meets A's user.
    const sameByB = await client.createUser(adminB, body, withKey(key));
    expect(sameByB.code).toBe('already_exists');
    expect(sameByB.error?.message).toMatch(/already exists/);
    expect(sameByB.headers.get(REPLAYED)).toBeNull();
    // B with A's key and another body is not "another body for A's key".
    const other = newUser('created_b');
    const otherByB = await client.createUser(adminB, other, withKey(key));
    expect(otherByB.code).toBe('ok');
    expect(otherByB.headers.get(REPLAYED)).toBeNull();
    expect(await usersNamed(other.username)).toBe(1);

    // Someone who is not an administrator learns nothing from the key either.
    const user = await client.register(newUser('plain'));
    const byUser = await client.createUser(user.data?.tokens.accessToken ?? '', body, withKey(key));
    expect(byUser.code).toBe('permission_denied');
  });
});

describe('what the idempotency table holds', () => {
  it('when registrations and creations were stored, then no key, token, password or unkeyed hash of them is in any row', async () => {
    const client = apiClient('rest', t.baseUrl);
    try {
      const key = `dump-${randomUUID()}`;
      const body = newUser('dump');
      const registered = await client.register(body, withKey(key));
      expect(registered.code).toBe('ok');
      const created = newUser('dump_created');
      expect((await client.createUser(adminA, created, withKey(key))).code).toBe('ok');
      const tokens = registered.data?.tokens;
      const secrets = [key, body.password, created.password, tokens?.accessToken ?? '', tokens?.refreshToken ?? '', ADMIN.password];
      // Whatever a lazy scheme might have stored instead: unkeyed SHA-256 of the key, alone or scoped.
      const sha256 = (text: string) => createHash('sha256').update(text).digest('hex');
      const naiveHashes = [sha256(key), sha256(`register\u0000${key}`), sha256(`register:${key}`), sha256(body.password)];

      const rows = await t.sql<{ key_hash: string; fingerprint: string; answer: Buffer | null }>('SELECT key_hash, fingerprint, answer FROM idempotency_records');
      expect(rows.length).toBeGreaterThanOrEqual(2);
      for (const row of rows) {
        const text = JSON.stringify({ keyHash: row.key_hash, fingerprint: row.fingerprint });
        const answer = row.answer ?? Buffer.alloc(0);
        for (const secret of secrets) {
          expect(text).not.toContain(secret);
          // In the answer's bytes in any encoding a plain copy would use: UTF-8 (JSON, protobuf), base64.
          expect(answer.includes(Buffer.from(secret, 'utf8'))).toBe(false);
          expect(answer.toString('base64')).not.toContain(Buffer.from(secret).toString('base64'));
        }
        for (const hash of naiveHashes) expect(text).not.toContain(hash);
        // Not even the public parts of the answer (the username) are readable.
        expect(answer.includes(Buffer.from(body.username))).toBe(false);
        expect(answer.includes(Buffer.from(created.username))).toBe(false);
      }
    } finally {
      client.close();
    }
  });
});

describe('a registration the database cannot finish', () => {
  // The account and its first session are two writes. When the session's could not be stored
  // (a lock timeout; a pool too busy to start its transaction under a burst), the account stayed
  // behind while the client was told to retry: every retry, with the key or without, then
  // answered 409 "Username already exists" (helper 55; the CI failure of the SIGTERM test in
  // connections.test.ts). The database refuses the session's row here as a lock timeout would,
  // with the lock timeout's own error, from a trigger: a held lock would also hold the undoing.
  const refuseSessions = async () => {
    if (isMysqlUrl(TEST_DATABASE_URL)) {
      await t.sql(
        "CREATE TRIGGER refuse_sessions BEFORE INSERT ON oauth_tokens FOR EACH ROW SIGNAL SQLSTATE 'HY000' SET MYSQL_ERRNO = 1205, MESSAGE_TEXT = 'refused for the test'",
      );
      return () => t.sql('DROP TRIGGER refuse_sessions');
    }
    await t.sql(
      "CREATE FUNCTION refuse_sessions() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused for the test' USING ERRCODE = 'lock_not_available'; END $$",
    );
    await t.sql('CREATE TRIGGER refuse_sessions BEFORE INSERT ON oauth_tokens FOR EACH ROW EXECUTE FUNCTION refuse_sessions()');
    return async () => {
      await t.sql('DROP TRIGGER refuse_sessions ON oauth_tokens');
      await t.sql('DROP FUNCTION refuse_sessions()');
    };
  };

  it('when the session cannot be stored, then no account stays behind, over every protocol at once, and the retry the 503 asks for registers', async () => {
    const clients = apiClients(t.baseUrl);
    let allow: (() => Promise<unknown>) | undefined;
    try {
      const cases = clients.map((client) => ({ client, body: newUser(`half_${client.protocol.replace('-', '_')}`), key: randomUUID() }));
      // Without a key as well: a client that sent none retries the same registration.
      const unkeyed = { client: clients[0] as ApiClient, body: newUser('half_nokey') };
      const registerAll = () => Promise.all([...cases.map(({ client, body, key }) => client.register(body, withKey(key))), unkeyed.client.register(unkeyed.body)]);
      const names = [...cases, unkeyed].map(({ body }) => body.username);
      const accounts = () => t.sql<{ username: string }>('SELECT username FROM users WHERE username IN ($1, $2, $3, $4, $5, $6) ORDER BY username', names);

      allow = await refuseSessions();
      for (const outcome of await registerAll()) expect(outcome.code, JSON.stringify(outcome.error)).toBe('unavailable');
      expect(await accounts()).toEqual([]);
      // No claim is left either: the keys are free for the retries.
      expect(await t.sql('SELECT key_hash FROM idempotency_records WHERE answer IS NULL')).toEqual([]);
      await allow();
      allow = undefined;

      const retried = await registerAll();
      for (const outcome of retried) expect(outcome.code, JSON.stringify(outcome.error)).toBe('ok');
      for (const outcome of retried) expect((await unkeyed.client.me(outcome.data?.tokens.accessToken ?? '')).code).toBe('ok');
      expect(await accounts()).toEqual(names.toSorted().map((username) => ({ username })));
    } finally {
      await allow?.();
      closeAll(clients);
    }
  });

  it.skipIf(isMysqlUrl(TEST_DATABASE_URL))(
    'when the retry completes the account while the first attempt is still storing its session, then the first attempt failing does not delete it under the retry',
    async () => {
      // The first attempt's session stalls, then fails; its undoing deleted the account the retry
      // had just completed, by the version the retry left unchanged: 201 with tokens that were
      // dead at once (helper 61). PostgreSQL only: the stall is a plpgsql trigger.
      const client = apiClient('rest', t.baseUrl);
      await t.sql(
        "CREATE FUNCTION stall_sessions() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF NEW.user_agent = 'stalls-then-fails' THEN PERFORM pg_sleep(1.5); RAISE EXCEPTION 'refused for the test' USING ERRCODE = 'lock_not_available'; END IF; RETURN NEW; END $$",
      );
      await t.sql('CREATE TRIGGER stall_sessions BEFORE INSERT ON oauth_tokens FOR EACH ROW EXECUTE FUNCTION stall_sessions()');
      try {
        const body = newUser('resume_race');
        const first = client.register(body, { headers: { 'user-agent': 'stalls-then-fails' } });
        await new Promise((resolve) => setTimeout(resolve, 500));
        const retry = await client.register(body);
        expect((await first).code).toBe('unavailable');
        expect(retry.code, JSON.stringify(retry.error)).toBe('ok');
        expect((await client.me(retry.data?.tokens.accessToken ?? '')).code).toBe('ok');
        expect(await t.sql('SELECT username FROM users WHERE id = $1', [retry.data?.user.id])).toEqual([{ username: body.username }]);
        // Audited as the login it was.
        const deadline = Date.now() + 10_000;
        let events: { type: string }[] = [];
        while (events.length === 0 && Date.now() < deadline) {
          events = await t.sql<{ type: string }>("SELECT type::text AS type FROM audit_events WHERE user_id = $1 AND type = 'LOGIN_SUCCEEDED'", [retry.data?.user.id]);
          if (events.length === 0) await new Promise((resolve) => setTimeout(resolve, 100));
        }
        expect(events).toEqual([{ type: 'LOGIN_SUCCEEDED' }]);
      } finally {
        await t.sql('DROP TRIGGER stall_sessions ON oauth_tokens');
        await t.sql('DROP FUNCTION stall_sessions()');
        client.close();
      }
    },
  );

  it('when the account was stored but not its session (a layer stalled or died between the two writes), then the same registration sent again completes it, over every protocol at once; another password, or an account signed in to since, stays a conflict', async () => {
    // What the undoing above cannot reach: a repository paused with the account's insert under
    // way committed it after the service had answered 503 (helper 59), and a process that dies
    // between the writes undoes nothing. The registration's own retry then finds the account.
    const clients = apiClients(t.baseUrl);
    try {
      const orphan = async (prefix: string) => {
        const body = newUser(prefix);
        const made = await clients[0]?.register(body);
        const id = made?.data?.user.id ?? 0;
        await t.sql('DELETE FROM oauth_tokens WHERE user_id = $1', [id]);
        return { body, id };
      };
      const cases = await Promise.all(clients.map(async (client) => ({ client, ...(await orphan(`resume_${client.protocol.replace('-', '_')}`)) })));
      // An attacker who knows the name and e-mail but not the password, racing the owner.
      const guesses = cases.map(({ client, body }) => client.register({ ...body, password: 'Wrong-Guess-9x!' }));
      const resumed = await Promise.all(cases.map(({ client, body }) => client.register(body)));
      for (const guess of await Promise.all(guesses)) expect(guess.code).toBe('already_exists');
      for (const [index, outcome] of resumed.entries()) {
        expect(outcome.code, JSON.stringify(outcome.error)).toBe('ok');
        expect(outcome.data?.user.id).toBe(cases[index]?.id);
        expect((await cases[index]?.client.me(outcome.data?.tokens.accessToken ?? ''))?.data?.id).toBe(cases[index]?.id);
      }
      // Now it has a session: sent once more, the registration is the conflict it always was.
      expect((await clients[0]?.register(cases[0]?.body ?? newUser()))?.code).toBe('already_exists');

      // An account whose owner has signed in (a login, not the registration's session) is not resumed.
      const used = await orphan('resume_used');
      expect((await clients[0]?.login({ usernameOrEmail: used.body.username, password: used.body.password }))?.code).toBe('ok');
      await t.sql('DELETE FROM oauth_tokens WHERE user_id = $1', [used.id]);
      expect((await clients[0]?.register(used.body))?.code).toBe('already_exists');
    } finally {
      closeAll(clients);
    }
  });
});
