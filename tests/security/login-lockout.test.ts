// Password guessing against login, the way an attacker does it: many guesses at once, from one
// address and from many, over every public protocol, through a proxy (TRUST_PROXY with
// X-Forwarded-For), in every topology (the counters live in Redis or, split without Redis, in the
// repository process). What must hold:
// - at most LOGIN_MAX_FAILURES passwords are ever compared per account, address and window, however
//   many guesses arrive together (the ZITADEL GHSA-7h8m-vrxx-vr4m class of bug);
// - a locked-out address cannot spend the account's budget by repeating, so the owner can log in
//   from anywhere else;
// - a client that has logged in before (known-device token) still logs in when strangers have
//   spent the account's budget.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { apiClient, PROTOCOLS, type ApiClient, type ProtocolName } from '../helpers/protocols.ts';
import { register, startTestServer, type TestServer } from '../helpers/test-app.ts';

const MAX_FAILURES = 5;
const ACCOUNT_BUDGET = 12;
const WRONG = 'Wrong-Guess-42!';

let t: TestServer;

beforeAll(async () => {
  t = await startTestServer({
    LOGIN_MAX_FAILURES: String(MAX_FAILURES),
    LOGIN_ACCOUNT_RATE_LIMIT_MAX: String(ACCOUNT_BUDGET),
    TRUST_PROXY: 'true',
    // A page of another site that may call the API (the device cookie's cross-site case below).
    CORS_ORIGINS: 'http://localhost:3000,http://app.example',
  });
});

afterAll(async () => {
  await t.close();
});

/** Headers of a request that reached the server through the trusted proxy from `ip`. */
const from = (ip: string, extra: Record<string, string> = {}) => ({ headers: { 'x-forwarded-for': ip, ...extra } });

/** The LOGIN_FAILED events of a user by reason, once `expected` of them have been written. */
async function failureReasons(userId: number, expected: number): Promise<Record<string, number>> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const rows = await t.sql<{ reason: string; count: string }>(
      `SELECT details->>'reason' AS reason, count(*) AS count FROM audit_events WHERE user_id = $1 AND type = 'LOGIN_FAILED' GROUP BY 1`,
      [userId],
    );
    const reasons = Object.fromEntries(rows.map((row) => [row.reason, Number(row.count)]));
    const total = Object.values(reasons).reduce((sum, count) => sum + count, 0);
    if (total >= expected || Date.now() > deadline) return reasons;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

describe.each(PROTOCOLS)('login guessing over %s', (protocol: ProtocolName) => {
  let client: ApiClient;
  // Each protocol's attacks come from addresses of their own.
  const ip = (host: number) => `198.51.${100 + PROTOCOLS.indexOf(protocol)}.${host}`;

  beforeAll(() => {
    client = apiClient(protocol, t.baseUrl);
  });

  afterAll(() => {
    client.close();
  });

  it('when the owner mistypes LOGIN_MAX_FAILURES − 1 times and then logs in again and again from that address, then every login with the right password succeeds', async () => {
    // Found by an attacker (helper 175): without Redis, a counter that had once been full kept
    // later reservations uncounted for release, so each success kept its slot, and the owner's
    // third login was refused with the right password for the rest of the window.
    const user = await register(t);
    for (let i = 0; i < MAX_FAILURES - 1; i += 1) expect((await client.login({ usernameOrEmail: user.username, password: WRONG }, from(ip(80)))).code).toBe('unauthenticated');
    for (let i = 0; i < 4; i += 1) expect((await client.login({ usernameOrEmail: user.username, password: user.password }, from(ip(80)))).code, `success ${i + 1}`).toBe('ok');
  });

  it('when 20 wrong passwords for one account arrive at once from one address, then only LOGIN_MAX_FAILURES are compared, all 20 get the same 401, and that address is locked out', async () => {
    const user = await register(t);
    const guesses = await Promise.all(Array.from({ length: 20 }, () => client.login({ usernameOrEmail: user.username, password: WRONG }, from(ip(1)))));

    expect(guesses.map((guess) => guess.code)).toEqual(Array(20).fill('unauthenticated'));
    // A throttled attempt looks exactly like a wrong password.
    expect(new Set(guesses.map((guess) => guess.error?.message))).toEqual(new Set(['Invalid credentials']));
    // Every attempt is audited; only LOGIN_MAX_FAILURES of them reached a password comparison.
    expect(await failureReasons(user.id, 20)).toEqual({ wrong_password: MAX_FAILURES, throttled: 20 - MAX_FAILURES });

    expect((await client.login({ usernameOrEmail: user.username, password: user.password }, from(ip(1)))).code).toBe('unauthenticated');
    // The lockout is the address's, not the account's: the owner logs in from elsewhere, and the
    // session records the address the proxy saw, on RPC as on REST.
    const elsewhere = await client.login({ usernameOrEmail: user.username, password: user.password }, from(ip(2)));
    expect(elsewhere.code).toBe('ok');
    const sessions = await t.sql<{ ip_address: string }>('SELECT ip_address FROM oauth_tokens WHERE user_id = $1 ORDER BY id DESC LIMIT 1', [user.id]);
    expect(sessions[0]?.ip_address).toBe(ip(2));
  });

  it('when a stolen token changes the e-mail between rounds of guesses at it, then no more than LOGIN_MAX_FAILURES passwords are compared from one address', async () => {
    // Found by an attacker, against counters kept by the name typed alone: e-mail is a
    // self-service field, and each new e-mail was a fresh allowance (200 compared in 2 s).
    const user = await register(t);
    for (let round = 0; round < 3; round += 1) {
      const email = `churn${round}.${user.email}`;
      expect((await client.updateUser(user.accessToken, user.id, { email })).code).toBe('ok');
      await Promise.all(Array.from({ length: MAX_FAILURES + 1 }, () => client.login({ usernameOrEmail: email, password: WRONG }, from(ip(45)))));
    }
    expect(await failureReasons(user.id, 3 * (MAX_FAILURES + 1))).toEqual({ wrong_password: MAX_FAILURES, throttled: 3 * (MAX_FAILURES + 1) - MAX_FAILURES });
  });

  it("when a locked-out address keeps guessing, then its refused attempts do not spend the account's budget and the owner still logs in from another address", async () => {
    const user = await register(t);
    for (let i = 0; i < MAX_FAILURES; i += 1) await client.login({ usernameOrEmail: user.username, password: WRONG }, from(ip(3)));
    // Far more refused attempts than the account's whole budget, all at once.
    const refused = await Promise.all(Array.from({ length: 3 * ACCOUNT_BUDGET }, () => client.login({ usernameOrEmail: user.username, password: WRONG }, from(ip(3)))));
    expect(refused.every((attempt) => attempt.code === 'unauthenticated')).toBe(true);

    expect((await client.login({ usernameOrEmail: user.username, password: user.password }, from(ip(4)))).code).toBe('ok');
  });

  it('when a browser logs in (its request has an Origin), then the known-device token comes as the HttpOnly cookie only, never in a header its scripts can read', async () => {
    // Found by an attacker (helper 90): the header carried the very token the cookie keeps from
    // scripts, and CORS exposed it to every allowed origin.
    const user = await register(t);
    // A page of the API's own origin (the console): the cookie stays SameSite=Strict.
    const browser = await client.login({ usernameOrEmail: user.username, password: user.password }, from(ip(6), { origin: new URL(t.baseUrl).origin }));
    expect(browser.code).toBe('ok');
    expect(browser.headers.get('x-device-token')).toBeNull();
    expect(browser.headers.get('access-control-expose-headers') ?? '').not.toMatch(/x-device-token/i);
    const cookie = /^__Host-arcana_device=([^;]+);.*HttpOnly;.*SameSite=Strict/.exec(browser.headers.get('set-cookie') ?? '');
    expect(cookie?.[1]).toMatch(/^\d+\.[\w-]+\.\d+\.[\w-]+\.[\w-]+$/);
    // The cookie is the token: sent back, it is a known device's.
    expect((await client.login({ usernameOrEmail: user.username, password: user.password }, from(ip(7), { cookie: `__Host-arcana_device=${cookie?.[1] ?? ''}` }))).code).toBe('ok');
    // A page on another host (an allowed origin of another site) gets it as SameSite=None and
    // Partitioned, which a browser stores from a cross-site answer (helper 112; the browser itself
    // in console-attacks), never in a header either.
    const elsewhere = await client.login({ usernameOrEmail: user.username, password: user.password }, from(ip(8), { origin: 'http://app.example' }));
    expect(elsewhere.headers.get('x-device-token')).toBeNull();
    expect(elsewhere.headers.get('set-cookie')).toMatch(/^__Host-arcana_device=[^;]+;.*HttpOnly; Secure; SameSite=None; Partitioned$/);
  });

  it("when strangers have spent the account's budget, then the owner's known device still logs in from a new address, and a stranger with the right password does not", async () => {
    const user = await register(t);
    const first = await client.login({ usernameOrEmail: user.username, password: user.password }, from(ip(5)));
    expect(first.code).toBe('ok');
    const deviceToken = first.headers.get('x-device-token');
    expect(deviceToken).toMatch(/^\d+\.[\w-]+\.\d+\.[\w-]+\.[\w-]+$/);
    expect(first.headers.get('set-cookie')).toMatch(/^__Host-arcana_device=[^;]+;.*HttpOnly;.*SameSite=Strict/);

    // Several addresses, each staying under its own lockout, together spend the account's budget.
    const attackers = Array.from({ length: Math.ceil(ACCOUNT_BUDGET / (MAX_FAILURES - 1)) }, (_, i) => ip(10 + i));
    await Promise.all(
      attackers.flatMap((attacker) => Array.from({ length: MAX_FAILURES - 1 }, () => client.login({ usernameOrEmail: user.username, password: WRONG }, from(attacker)))),
    );
    const stranger = await client.login({ usernameOrEmail: user.username, password: user.password }, from(ip(30)));
    expect(stranger.code).toBe('unauthenticated');

    const known = await client.login({ usernameOrEmail: user.username, password: user.password }, from(ip(31), { 'x-device-token': deviceToken ?? '' }));
    expect(known.code).toBe('ok');
    // The cookie a browser would send back works the same as the header.
    const viaCookie = await client.login({ usernameOrEmail: user.username, password: user.password }, from(ip(32), { cookie: `__Host-arcana_device=${deviceToken}` }));
    expect(viaCookie.code).toBe('ok');

    // A device token is bound to its account: presented for another account, it is a stranger's.
    const other = await register(t);
    for (const attacker of attackers) {
      await Promise.all(Array.from({ length: MAX_FAILURES - 1 }, () => client.login({ usernameOrEmail: other.username, password: WRONG }, from(attacker))));
    }
    const borrowed = await client.login({ usernameOrEmail: other.username, password: other.password }, from(ip(33), { 'x-device-token': deviceToken ?? '' }));
    expect(borrowed.code).toBe('unauthenticated');
  });

  it("when the owner logs in between a guesser's rounds from the same address (one NAT), then the owner's success gives the guesser no fresh guesses", async () => {
    // A success frees only its own slot: clearing the failures before it handed whoever shares
    // the owner's address LOGIN_MAX_FAILURES more comparisons at every one of the owner's logins.
    const user = await register(t);
    const shared = ip(50);
    const owner: string[] = [];
    for (let round = 0; round < 3; round += 1) {
      await Promise.all(Array.from({ length: MAX_FAILURES - 1 }, () => client.login({ usernameOrEmail: user.username, password: WRONG }, from(shared))));
      owner.push((await client.login({ usernameOrEmail: user.username, password: user.password }, from(shared))).code);
    }
    // Round one: four compared, then the owner in. Round two: one more compared fills the window,
    // and from then on every attempt from that address is refused, the owner's too.
    expect(owner).toEqual(['ok', 'unauthenticated', 'unauthenticated']);
    expect(await failureReasons(user.id, 3 * (MAX_FAILURES - 1) + 2)).toEqual({ wrong_password: MAX_FAILURES, throttled: 2 * (MAX_FAILURES - 1) - 1 + 2 });
    // The owner's other clients are untouched.
    expect((await client.login({ usernameOrEmail: user.username, password: user.password }, from(ip(51)))).code).toBe('ok');
  });

  it("when someone holding a copy of the owner's device token guesses between the owner's logins from that device, then the owner's successes give it no fresh guesses", async () => {
    // Found by an attacker: a known device's success cleared the device's whole counter, so a
    // copied token (a shared browser profile, a copied cookie) got four more comparisons at each of
    // the owner's logins: 16 in four rounds.
    const user = await register(t);
    const first = await client.login({ usernameOrEmail: user.username, password: user.password }, from(ip(60)));
    const device = { 'x-device-token': first.headers.get('x-device-token') ?? '' };
    for (let round = 0; round < 3; round += 1) {
      await Promise.all(Array.from({ length: MAX_FAILURES - 1 }, () => client.login({ usernameOrEmail: user.username, password: WRONG }, from(ip(61), device))));
      await client.login({ usernameOrEmail: user.username, password: user.password }, from(ip(60), device));
    }
    expect((await failureReasons(user.id, 3 * (MAX_FAILURES - 1))).wrong_password).toBe(MAX_FAILURES);
  });

  it('when the password has changed since device tokens were issued, then those tokens count as none: one address, one budget', async () => {
    // Found by an attacker: device tokens outlived a password change, and each kept its own five
    // guesses per window for 90 days, so someone who once knew the password could collect them.
    const user = await register(t);
    const collected: string[] = [];
    for (const host of [70, 71]) {
      const login = await client.login({ usernameOrEmail: user.username, password: user.password }, from(ip(host)));
      collected.push(login.headers.get('x-device-token') ?? '');
    }
    const changed = await client.changePassword(user.accessToken, user.id, { oldPassword: user.password, newPassword: 'Brand-New-Passw0rd!' });
    expect(changed.code).toBe('ok');
    for (const token of collected) {
      for (let i = 0; i < MAX_FAILURES; i += 1) await client.login({ usernameOrEmail: user.username, password: WRONG }, from(ip(72), { 'x-device-token': token }));
    }
    expect((await failureReasons(user.id, 2 * MAX_FAILURES)).wrong_password).toBe(MAX_FAILURES);
  });

  it("when a known device guesses wrong too often, then that device is locked out on its own, without touching the owner's other clients", async () => {
    const user = await register(t);
    const first = await client.login({ usernameOrEmail: user.username, password: user.password }, from(ip(40)));
    const deviceToken = first.headers.get('x-device-token') ?? '';
    const guesses = await Promise.all(
      Array.from({ length: 10 }, () => client.login({ usernameOrEmail: user.username, password: WRONG }, from(ip(40), { 'x-device-token': deviceToken }))),
    );
    expect(guesses.every((guess) => guess.code === 'unauthenticated')).toBe(true);
    expect((await failureReasons(user.id, 10)).wrong_password).toBe(MAX_FAILURES);
    expect((await client.login({ usernameOrEmail: user.username, password: user.password }, from(ip(40), { 'x-device-token': deviceToken }))).code).toBe('unauthenticated');
    expect((await client.login({ usernameOrEmail: user.username, password: user.password }, from(ip(41)))).code).toBe('ok');
  });
});
