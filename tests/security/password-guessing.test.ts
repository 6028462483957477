// Passwords as an attacker probes them, over every public protocol and in every topology:
// - ChangePassword with a stolen access token is a password oracle unless its wrong guesses are
//   throttled and audited like logins;
// - bcrypt reads only 72 bytes, so a login must not accept a longer password that merely starts
//   like the real one;
// - new passwords on breached-password lists are refused, in any letter case, and a registration
//   with such a password (or one past 72 bytes) is refused the same way whether its names are
//   taken or not, so it cannot tell who is registered;
// - the same password typed composed or decomposed (Unicode NFC) is one password;
// - usernames that differ only in case cannot coexist, and log in as the account they name;
// - a login that only looks like a name or e-mail (accents, spaces, zero-width or fullwidth
//   letters, the Kelvin sign that JavaScript lower-cases to `k`) names no account, on MariaDB's
//   accent-insensitive collation as on PostgreSQL.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { apiClient, PROTOCOLS, type ApiClient, type ProtocolName } from '../helpers/protocols.ts';
import { newUser, register, startTestServer, type TestServer } from '../helpers/test-app.ts';

const MAX_FAILURES = 4;

let t: TestServer;

beforeAll(async () => {
  t = await startTestServer({ LOGIN_MAX_FAILURES: String(MAX_FAILURES), TRUST_PROXY: 'true' });
});

afterAll(async () => {
  await t.close();
});

const from = (ip: string) => ({ headers: { 'x-forwarded-for': ip } });

/** The PASSWORD_CHANGE_FAILED events of a user by reason, once `expected` have been written. */
async function changeFailures(userId: number, expected: number): Promise<Record<string, number>> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const rows = await t.sql<{ reason: string; count: string }>(
      `SELECT details->>'reason' AS reason, count(*) AS count FROM audit_events WHERE user_id = $1 AND type = 'PASSWORD_CHANGE_FAILED' GROUP BY 1`,
      [userId],
    );
    const reasons = Object.fromEntries(rows.map((row) => [row.reason, Number(row.count)]));
    if (Object.values(reasons).reduce((sum, count) => sum + count, 0) >= expected || Date.now() > deadline) return reasons;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

describe.each(PROTOCOLS)('passwords over %s', (protocol: ProtocolName) => {
  let client: ApiClient;
  const ip = (host: number) => `192.0.2.${10 * PROTOCOLS.indexOf(protocol) + host}`;

  beforeAll(() => {
    client = apiClient(protocol, t.baseUrl);
  });

  afterAll(() => {
    client.close();
  });

  it('when a stolen token guesses the current password in parallel, then only LOGIN_MAX_FAILURES are compared, the rest are throttled, and every guess is audited', async () => {
    const user = await register(t);
    const guesses = await Promise.all(
      Array.from({ length: 10 }, (_, i) =>
        client.changePassword(user.accessToken, user.id, { oldPassword: `Guess-${i}-Passw0rd!`, newPassword: 'Taken-0ver-Passw0rd!' }, from(ip(1))),
      ),
    );
    const codes = guesses.map((guess) => guess.code).sort();
    expect(codes).toEqual([...Array(10 - MAX_FAILURES).fill('resource_exhausted'), ...Array(MAX_FAILURES).fill('unauthenticated')]);
    const throttled = guesses.find((guess) => guess.code === 'resource_exhausted');
    expect(Number(throttled?.headers.get('retry-after'))).toBeGreaterThan(0);
    expect(await changeFailures(user.id, 10)).toEqual({ wrong_password: MAX_FAILURES, throttled: 10 - MAX_FAILURES });

    // Locked for that address even with the right password; the password is unchanged.
    const locked = await client.changePassword(user.accessToken, user.id, { oldPassword: user.password, newPassword: 'Fresh-Passw0rd-99!' }, from(ip(1)));
    expect(locked.code).toBe('resource_exhausted');
    expect((await client.login({ usernameOrEmail: user.username, password: user.password }, from(ip(2)))).code).toBe('ok');
    // The owner, elsewhere, can still change it.
    const owner = await client.changePassword(user.accessToken, user.id, { oldPassword: user.password, newPassword: 'Fresh-Passw0rd-99!' }, from(ip(3)));
    expect(owner.code).toBe('ok');
  });

  it('when a login password is longer than 72 bytes but starts with the real one, then it is refused like any wrong password', async () => {
    // 38 characters, 72 bytes: within every length rule, yet at bcrypt's limit.
    const password = `Ab1!${'\u00e9'.repeat(34)}`;
    expect(Buffer.byteLength(password)).toBe(72);
    const user = await register(t, { ...newUser('long'), password });
    const longer = await client.login({ usernameOrEmail: user.username, password: `${password}-anything` }, from(ip(4)));
    expect(longer.code).toBe('unauthenticated');
    expect(longer.error?.message).toBe('Invalid credentials');
    expect((await client.login({ usernameOrEmail: user.username, password }, from(ip(4)))).code).toBe('ok');
  });

  it('when a new password is a well-known breached one, in any letter case, then registration and password changes refuse it by field', async () => {
    for (const common of ['Password1!', 'P@SSW0RD']) {
      const refused = await client.register({ ...newUser('common'), password: common });
      expect(refused.code).toBe('invalid_argument');
      expect(Object.keys(refused.error?.details ?? {})).toEqual(['password']);
    }
    const user = await register(t);
    const change = await client.changePassword(user.accessToken, user.id, { oldPassword: user.password, newPassword: 'Password1!' }, from(ip(5)));
    expect(change.code).toBe('invalid_argument');
    expect(Object.keys(change.error?.details ?? {})).toEqual([protocol === 'rest' ? 'newPassword' : 'new_password']);
  });

  it('when a registration names a taken username or e-mail with a password no account could have, then it is refused for the password, as for free names: it tells nothing about who is registered', async () => {
    const taken = await register(t);
    // 44 characters, so the schema takes it; 84 bytes, past what bcrypt reads.
    const tooLong = `Aa1!${'é'.repeat(40)}`;
    const answers = [];
    for (const names of [{ username: taken.username, email: newUser('free').email }, { username: newUser('free').username, email: taken.email.toUpperCase() }, newUser('free')]) {
      for (const password of [tooLong, 'Password1!']) {
        const refused = await client.register({ ...names, password });
        answers.push({ code: refused.code, fields: Object.keys(refused.error?.details ?? {}), message: refused.error?.message });
      }
    }
    const expected = [tooLong, 'Password1!'].map(() => ({ code: 'invalid_argument', fields: ['password'], message: 'Validation failed' }));
    expect(answers).toEqual([...expected, ...expected, ...expected]);
  });

  it('when a password is registered decomposed and typed composed, then it logs in', async () => {
    const user = await register(t, { ...newUser('nfc'), password: 'Cafe\u0301-Cr3me!' });
    expect((await client.login({ usernameOrEmail: user.username, password: 'Caf\u00e9-Cr3me!' }, from(ip(6)))).code).toBe('ok');
  });

  it('when a username differs from a taken one only in case, then it is refused; logging in by any case reaches the one account', async () => {
    const original = newUser(`Case${protocol.replace('-', '')}`);
    const user = await register(t, original);
    const twins = await Promise.all([original.username.toUpperCase(), original.username.toLowerCase()].map((username) => client.register({ ...newUser('twin'), username })));
    expect(twins.map((twin) => twin.code)).toEqual(['already_exists', 'already_exists']);
    const login = await client.login({ usernameOrEmail: original.username.toUpperCase(), password: user.password }, from(ip(7)));
    expect(login.code).toBe('ok');
    // The spelling given at registration is kept.
    expect(login.data?.user.username).toBe(original.username);
    expect(login.data?.user.id).toBe(user.id);
  });

  it('when a login differs from the name or e-mail by an accent, a trailing space, a zero-width, a fullwidth letter or a Kelvin sign, then it is refused like an unknown account', async () => {
    const user = await register(t, newUser(`look${protocol.replace('-', '')}`));
    const email = user.email.toLowerCase();
    const lookalikes = [
      `ĺ${user.username.slice(1)}`,
      `${user.username} `,
      `${user.username}\u200b`,
      // Usernames are ASCII: each letter's fullwidth form is 0xFEE0 above it.
      user.username.replace(/[!-~]/g, (char) => String.fromCharCode(char.charCodeAt(0) + 0xfee0)),
      `${email} `,
      `é${email.slice(1)}`,
      email.replace('@', '\u200b@'),
      // U+212A, the one non-ASCII character whose toLowerCase() is ASCII (`k`).
      user.username.replace('k', '\u212a'),
      email.replace('k', '\u212a'),
    ];
    const outcomes = await Promise.all(lookalikes.map((usernameOrEmail) => client.login({ usernameOrEmail, password: user.password }, from(ip(8)))));
    // A zero-width space is refused before any account is looked up, as no single-line text
    // may carry one: that says nothing about the account either.
    expect(outcomes.map((outcome) => outcome.code)).toEqual(lookalikes.map((login) => (login.includes('\u200b') ? 'invalid_argument' : 'unauthenticated')));
    // The account itself is not locked by them: they named no account.
    expect((await client.login({ usernameOrEmail: user.username, password: user.password }, from(ip(8)))).code).toBe('ok');
  });
});
