// The admin console (/console) attacked in a real browser: Debian's Chromium driven by
// playwright-core, as tests/integration/console-browser.test.ts sets it up. Runs in the
// `monolithic` project only (it starts its own servers).
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { apiClient } from '../helpers/protocols.ts';
import { ADMIN, newUser, register, startTestServer, type TestServer } from '../helpers/test-app.ts';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
/** The access tokens of the server that tests sign-out after a sleep live this long. */
const SHORT_ACCESS_TTL = 3;

let browser: Browser;
let t: TestServer;
let short: TestServer;
/** An API whose CORS_ORIGINS allows the app's origin, on another site (localhost, not 127.0.0.1). */
let api: TestServer;
/** Serves the app's page. */
const appSite = { server: createServer((_req, res) => res.writeHead(200, { 'content-type': 'text/html' }).end('<!doctype html><title>app</title>')), port: 0 };

beforeAll(async () => {
  [browser, t, short] = await Promise.all([
    // With the back-forward cache a real browser has (Playwright turns it off by default).
    chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'], ignoreDefaultArgs: ['--disable-back-forward-cache'] }),
    startTestServer(),
    startTestServer({ JWT_ACCESS_EXPIRES_IN_SECONDS: String(SHORT_ACCESS_TTL) }),
  ]);
  await new Promise<void>((resolve) => appSite.server.listen(0, '127.0.0.1', resolve));
  appSite.port = (appSite.server.address() as AddressInfo).port;
  api = await startTestServer({ CORS_ORIGINS: `http://localhost:${appSite.port}` });
}, 90_000);

afterAll(async () => {
  await browser.close();
  appSite.server.close();
  await Promise.all([t.close(), short.close(), api.close()]);
});

async function see(page: Page, text: string | RegExp, scope = 'body'): Promise<void> {
  await page.locator(scope).getByText(text).first().waitFor({ state: 'visible', timeout: 10_000 });
}

async function signIn(page: Page, server: TestServer, protocol: 'grpc-web' | 'connect'): Promise<void> {
  await page.goto(`${server.baseUrl}/console?protocol=${protocol}`);
  await page.getByLabel('Username or e-mail').fill(ADMIN.username);
  await page.getByLabel('Password').fill(ADMIN.password);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await see(page, 'Users', 'h1');
}

async function openUser(page: Page, id: number, username: string): Promise<void> {
  await page.evaluate(`location.hash = ${JSON.stringify(`#/users/${id}`)}`);
  await see(page, username, 'h1');
}

describe.each(['grpc-web', 'connect'] as const)('the admin console over %s', (protocol) => {
  it('when the operator leaves it for another page without signing out and Back is pressed, then the sign-in form shows, and the session is ended on the server', async () => {
    // The page went into the browser's back-forward cache whole, tokens included: Back handed the
    // next person at the browser the signed-in console (helper 162).
    const context = await browser.newContext();
    const page = await context.newPage();
    try {
      await signIn(page, t, protocol);
      const sessionsBefore = await t.sql<{ count: string }>(
        'SELECT count(*)::text AS count FROM oauth_tokens t JOIN users u ON u.id = t.user_id WHERE u.username = $1 AND NOT t.is_revoked',
        [ADMIN.username],
      );
      await page.goto(`http://127.0.0.1:${appSite.port}/`);
      await page.goBack({ waitUntil: 'commit' });
      await page.getByLabel('Username or e-mail').waitFor({ state: 'visible', timeout: 10_000 });
      expect({ signOutShown: await page.getByRole('button', { name: 'Sign out' }).isVisible() }).toEqual({ signOutShown: false });
      // The pair it held is revoked (the request leaves as the page goes; it may land a moment later).
      let live = Number(sessionsBefore[0]?.count);
      for (let attempt = 0; attempt < 50 && live >= Number(sessionsBefore[0]?.count); attempt += 1) {
        await new Promise((resolve) => setTimeout(resolve, 100));
        live = Number(
          (
            await t.sql<{ count: string }>('SELECT count(*)::text AS count FROM oauth_tokens t JOIN users u ON u.id = t.user_id WHERE u.username = $1 AND NOT t.is_revoked', [
              ADMIN.username,
            ])
          )[0]?.count,
        );
      }
      expect(live).toBe(Number(sessionsBefore[0]?.count) - 1);
    } finally {
      await context.close();
    }
  }, 60_000);

  it("lets an administrator save the profile of any user the API registered (an e-mail the browser's own <input type=email> refuses blocks the form)", async () => {
    const context = await browser.newContext();
    const page = await context.newPage();
    try {
      // Anyone can register this address: the API takes a 64-character domain label (RFC 1035
      // allows 63, and so does Chromium's e-mail input).
      const base = newUser(`cbx_${protocol.replace('-', '')}`);
      const victim = await register(t, { ...base, email: `${base.username}@${'b'.repeat(64)}.com` });
      await signIn(page, t, protocol);
      await openUser(page, victim.id, victim.username);
      const profile = page.locator('[data-section="profile"]');
      // The operator only fixes the user's first name.
      await profile.getByLabel('First name').fill('Fixed');
      await profile.getByRole('button', { name: 'Save profile' }).click();
      const saved = await page
        .getByText('Profile saved.')
        .first()
        .waitFor({ timeout: 5_000 })
        .then(() => true)
        .catch(() => false);
      const api = apiClient('rest', t.baseUrl);
      const admin = await api.login({ usernameOrEmail: ADMIN.username, password: ADMIN.password });
      const stored = await api.getUser(admin.data?.tokens.accessToken ?? '', victim.id);
      api.close();
      expect({ saved, firstName: stored.data?.firstName }).toEqual({ saved: true, firstName: 'Fixed' });
    } finally {
      await context.close();
    }
  }, 30_000);

  it('ends its session on the server when the operator signs out after the tab slept past the access token', async () => {
    const context = await browser.newContext();
    const page = await context.newPage();
    try {
      const [{ last }] = (await short.sql('SELECT coalesce(max(id), 0) AS last FROM oauth_tokens')) as [{ last: number }];
      // Over Connect (JSON) the login's answer shows the refresh token the console keeps in memory.
      let refreshToken: string | undefined;
      page.on('response', (response) => {
        if (response.url().endsWith('/arcana.auth.v1.AuthService/Login') && response.ok())
          void response
            .json()
            .then((body: { tokens?: { refreshToken?: string } }) => (refreshToken = body.tokens?.refreshToken))
            .catch(() => undefined);
      });
      // A tab whose timers were held back (a laptop asleep, a background tab throttled): the
      // page's clock stands still while the server's runs on past the access token's expiry.
      await page.clock.install();
      await signIn(page, short, protocol);
      await page.clock.pauseAt(Date.now() + 500);
      await page.waitForTimeout((SHORT_ACCESS_TTL + 1) * 1000);
      await page.getByRole('button', { name: 'Sign out' }).click();
      await see(page, 'Signed out.');
      const live = await short.sql(
        `SELECT t.id FROM oauth_tokens t JOIN users u ON u.id = t.user_id
         WHERE u.username = $1 AND t.id > $2 AND NOT t.is_revoked AND t.expires_at > now() AND t.user_agent LIKE '%Chrome%'`,
        [ADMIN.username, last],
      );
      let refreshedAfterSignOut: string | undefined;
      if (refreshToken !== undefined) {
        const api = apiClient('connect-json', short.baseUrl);
        refreshedAfterSignOut = (await api.refresh(refreshToken)).code;
        api.close();
      }
      // Signing out must leave no live session: the refresh token the console dropped was still
      // good on the server (for JWT_REFRESH_EXPIRES_IN_SECONDS, 30 days by default).
      expect({ live, refreshedAfterSignOut }).toEqual({ live: [], refreshedAfterSignOut: protocol === 'connect' ? 'unauthenticated' : undefined });
    } finally {
      await context.close();
    }
  }, 30_000);
});

describe('a browser app on an allowed origin of another site (CORS_ORIGINS)', () => {
  it("gets its known-device cookie, so that its owner's next login counts as a known device", async () => {
    const user = await register(api, newUser('cbx_cors'));
    const context = await browser.newContext();
    const page = await context.newPage();
    try {
      // The app's page on that origin: it only runs fetch calls.
      await page.goto(`http://localhost:${appSite.port}/app`);
      const login = (body: object) =>
        page.evaluate(
          async ([url, json]) => {
            const response = await fetch(url, { method: 'POST', credentials: 'include', headers: { 'content-type': 'application/json' }, body: json });
            return response.status;
          },
          [`${api.baseUrl}/api/v1/auth/login`, JSON.stringify(body)] as const,
        );
      expect(await login({ usernameOrEmail: user.username, password: user.password })).toBe(200);
      expect(await login({ usernameOrEmail: user.username, password: user.password })).toBe(200);
      const cookies = (await context.cookies(api.baseUrl)).map((cookie) => `${cookie.name}; SameSite=${cookie.sameSite}`);
      let events: { details: { knownDevice?: boolean } }[] = [];
      for (let tries = 0; tries < 50 && events.length < 2; tries += 1) {
        events = await api.sql<{ details: { knownDevice?: boolean } }>(
          `SELECT details FROM audit_events WHERE user_id = $1 AND type = 'LOGIN_SUCCEEDED' AND NOT (details ? 'viaRegistration') ORDER BY id`,
          [user.id],
        );
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      // The first login hands the browser the cookie; the second presents it. Chromium stores no
      // SameSite=Strict cookie from a cross-site answer (nor would it send one), so every login of
      // the app's users draws on the strangers' budget an attacker can spend.
      expect({ cookies, secondLoginKnownDevice: events[1]?.details.knownDevice }).toEqual({
        cookies: [expect.stringMatching(/^__Host-arcana_device; SameSite=None/)],
        secondLoginKnownDevice: true,
      });
    } finally {
      await context.close();
    }
  }, 30_000);
});
