// The known-device cookie (`__Host-arcana_device`) attacked in a real browser (helper 118): Debian's Chromium driven
// by playwright-core, as console-attacks.test.ts sets it up. Runs in the `monolithic` project only
// (it starts its own servers). Hosts under `*.localhost` resolve to loopback in Chromium and are
// secure contexts, so a Secure cookie is kept over plain HTTP, and `arcana.localhost` is a site
// whose sibling hosts (api., evil.) can set cookies for the whole domain, as on any real domain.
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ADMIN, newUser, startTestServer, type TestServer } from '../helpers/test-app.ts';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

let browser: Browser;
/** Strangers' budget of 3 per account; X-Forwarded-For believed from loopback so strangers come from many addresses. */
let t: TestServer;
/** An API whose CORS_ORIGINS allows an app on a sibling host of its own site (app.arcana.localhost). */
let s: TestServer;
/** Serves that app's page. */
const appSite = { server: createServer((_req, res) => res.writeHead(200, { 'content-type': 'text/html' }).end('<!doctype html><title>app</title>')), port: 0 };
/** A sibling host on the same site as the API (a user-content host, a forgotten subdomain): it sets cookies for the parent domain. */
const sibling = {
  server: createServer((req, res) => {
    const tossed = [
      // A more specific Path than the server's `Path=/`: Chromium sends it first, on REST and RPC logins.
      'arcana_device=attacker-chosen; Domain=arcana.localhost; Path=/api/v1/auth; Max-Age=31536000',
      'arcana_device=attacker-chosen; Domain=arcana.localhost; Path=/arcana.auth.v1.AuthService; Max-Age=31536000',
      // The name the server reads now: a browser refuses a __Host- cookie with a Domain.
      '__Host-arcana_device=attacker-chosen; Domain=arcana.localhost; Path=/api/v1/auth; Secure; Max-Age=31536000',
      '__Host-arcana_device=attacker-chosen; Domain=arcana.localhost; Path=/; Secure; Max-Age=31536000',
    ];
    res.writeHead(200, { 'content-type': 'text/html', ...(req.url === '/toss' ? { 'set-cookie': tossed } : {}) }).end('<!doctype html><title>sibling</title>');
  }),
  port: 0,
};

beforeAll(async () => {
  [browser, t] = await Promise.all([
    chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] }),
    startTestServer({ LOGIN_ACCOUNT_RATE_LIMIT_MAX: '3', TRUST_PROXY: 'loopback' }),
  ]);
  await new Promise<void>((resolve) => sibling.server.listen(0, '127.0.0.1', resolve));
  sibling.port = (sibling.server.address() as AddressInfo).port;
  await new Promise<void>((resolve) => appSite.server.listen(0, '127.0.0.1', resolve));
  appSite.port = (appSite.server.address() as AddressInfo).port;
  s = await startTestServer({ CORS_ORIGINS: `http://app.arcana.localhost:${appSite.port}` });
}, 90_000);

afterAll(async () => {
  await browser.close();
  sibling.server.close();
  appSite.server.close();
  await Promise.all([t.close(), s.close()]);
});

const apiUrl = (server = t) => `http://api.arcana.localhost:${server.port}`;

/** A same-origin page of the API (the console's origin) posting JSON, as the console's own scripts do. */
async function post(page: Page, path: string, body: object, server = t): Promise<number> {
  return page.evaluate(async ([url, json]) => (await fetch(url, { method: 'POST', credentials: 'include', headers: { 'content-type': 'application/json' }, body: json })).status, [
    `${apiUrl(server)}${path}`,
    JSON.stringify(body),
  ] as const);
}

async function knownDeviceFlags(userId: number, count: number, server = t): Promise<(boolean | undefined)[]> {
  let events: { details: { knownDevice?: boolean } }[] = [];
  for (let tries = 0; tries < 50 && events.length < count; tries += 1) {
    events = await server.sql<{ details: { knownDevice?: boolean } }>(
      `SELECT details FROM audit_events WHERE user_id = $1 AND type = 'LOGIN_SUCCEEDED' AND NOT (details ? 'viaRegistration') ORDER BY id`,
      [userId],
    );
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return events.map((event) => event.details.knownDevice);
}

/** The owner registers and logs in from one browser (a known device), maybe opens the sibling's page, strangers spend the budget, the owner logs in again. */
async function ownerLoginAfterStrangers(toss: boolean) {
  const user = newUser(toss ? 'cdt_toss' : 'cdt_ctrl');
  const context = await browser.newContext();
  const page = await context.newPage();
  try {
    await page.goto(`${apiUrl()}/console`);
    const registerStatus = await post(page, '/api/v1/auth/register', user);
    const row = await t.sql<{ id: number }>('SELECT id FROM users WHERE username = $1', [user.username]);
    const userId = row[0]?.id ?? 0;
    // A known device: the first login presents the cookie registration handed out.
    const before = await post(page, '/api/v1/auth/login', { usernameOrEmail: user.username, password: user.password });
    if (toss) {
      // The owner opens any page of a sibling host; it tosses its own arcana_device cookie.
      const other = await context.newPage();
      await other.goto(`http://evil.arcana.localhost:${sibling.port}/toss`);
      await other.close();
    }
    // Strangers spend the account's budget, from four addresses.
    for (const ip of ['203.0.113.1', '203.0.113.2', '203.0.113.3', '203.0.113.4']) {
      await t.request.post('/api/v1/auth/login').set('x-forwarded-for', ip).send({ usernameOrEmail: user.username, password: 'Wrong-Passw0rd!' });
    }
    // The owner's browser, which has logged in to this account before, logs in with the right password.
    const after = await post(page, '/api/v1/auth/login', { usernameOrEmail: user.username, password: user.password });
    const sentCookies = (await context.cookies(`${apiUrl()}/api/v1/auth/login`)).map((cookie) => `${cookie.name} Path=${cookie.path}`);
    const flags = await knownDeviceFlags(userId, after === 200 ? 2 : 1);
    return { registerStatus, before, firstLoginKnownDevice: flags[0], after, secondLoginKnownDevice: flags[1], sentCookies };
  } finally {
    await context.close();
  }
}

describe('the known-device cookie in a browser, against a sibling host of the same site (cookie tossing)', () => {
  it('lets the owner in while strangers have spent the budget (no sibling page opened: the control)', async () => {
    expect(await ownerLoginAfterStrangers(false)).toEqual({
      registerStatus: 201,
      before: 200,
      firstLoginKnownDevice: true,
      after: 200,
      secondLoginKnownDevice: true,
      sentCookies: ['__Host-arcana_device Path=/'],
    });
  }, 60_000);

  it("stays the owner's: a sibling's arcana_device cookie with a longer Path does not take the owner's known device away, and the owner still gets in while strangers have spent the budget", async () => {
    expect(await ownerLoginAfterStrangers(true)).toEqual({
      registerStatus: 201,
      before: 200,
      firstLoginKnownDevice: true,
      after: 200,
      secondLoginKnownDevice: true,
      // The sibling's cookie is still in the jar (the server cannot clear it); what matters is that the owner's counts.
      sentCookies: expect.any(Array),
    });
  }, 60_000);
});

describe("the known-device cookie of an allowed app on a sibling host (SameSite=None; Partitioned) beside the console's (Strict)", () => {
  it("counts the app's user as a known device though the same browser signed an administrator in to the console before", async () => {
    const user = newUser('cdt_two');
    const context = await browser.newContext();
    try {
      // An operator signs in to the console (the API's own origin): a Strict cookie with the admin's token.
      const consolePage = await context.newPage();
      await consolePage.goto(`${apiUrl(s)}/console`);
      const adminLogin = await post(consolePage, '/api/v1/auth/login', { usernameOrEmail: ADMIN.username, password: ADMIN.password }, s);
      // The same browser uses the company's app on app.arcana.localhost with a personal account:
      // registration hands it its own cookie, partitioned, beside the console's.
      const appPage = await context.newPage();
      await appPage.goto(`http://app.arcana.localhost:${appSite.port}/`);
      const registerStatus = await post(appPage, '/api/v1/auth/register', user, s);
      const row = await s.sql<{ id: number }>('SELECT id FROM users WHERE username = $1', [user.username]);
      const logins = [
        await post(appPage, '/api/v1/auth/login', { usernameOrEmail: user.username, password: user.password }, s),
        await post(appPage, '/api/v1/auth/login', { usernameOrEmail: user.username, password: user.password }, s),
      ];
      const jar = (await context.cookies(apiUrl(s))).map((cookie) => `${cookie.name}; SameSite=${cookie.sameSite}`).sort();
      const flags = await knownDeviceFlags(row[0]?.id ?? 0, 2, s);
      // Both cookies go with the app's calls (the Strict one too: the app is same-site); the
      // server reads the first, the console's older one, an administrator's token: none for this account.
      expect({ adminLogin, registerStatus, logins, jar, knownDevice: flags }).toEqual({
        adminLogin: 200,
        registerStatus: 201,
        logins: [200, 200],
        // One cookie: a sibling host of the API's own site gets the Strict one, as the console does.
        jar: ['__Host-arcana_device; SameSite=Strict'],
        knownDevice: [true, true],
      });
    } finally {
      await context.close();
    }
  }, 60_000);
});
