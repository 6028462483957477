// The admin console (/console) in a real browser: Debian's Chromium, driven by playwright-core,
// signs in as the bootstrap administrator and does an operator's work over gRPC-Web and over
// Connect, against the monolith and against a layered-grpc deployment (controller, service and
// repository layers on their own ports). What a user sees is asserted on screen; what changed is
// asserted through the API and in the database. Runs in the `monolithic` vitest project only: it
// starts its own split deployment. One browser for the file, one page per deployment.
//
// CONSOLE_SCREENSHOTS=DIR also writes the README's screenshots to DIR.
import { join } from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CONSOLE_CSP } from '../../src/controllers/rest/console-routes.ts';
import { apiClient } from '../helpers/protocols.ts';
import { ADMIN, newUser, register, startTestServer, type TestServer } from '../helpers/test-app.ts';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const SCREENSHOTS = process.env.CONSOLE_SCREENSHOTS;
// Above the admin's own typos: each protocol's run signs in with a wrong password first, from the
// same address, and an address's failures are not forgiven by a success (a NAT's guesser would be).
const MAX_FAILURES = 8;
/** The split deployment's access tokens live 4 s, so the console must rotate them while it works. */
const SHORT_ACCESS_TTL = 4;

const PROTOCOLS = [
  { name: 'grpc-web', label: 'gRPC-Web', contentType: /^application\/grpc-web\+proto/, api: 'grpc-web' },
  { name: 'connect', label: 'Connect', contentType: /^application\/json/, api: 'connect-json' },
] as const;

interface Deployment {
  name: string;
  server: TestServer;
  page: Page;
  /** The bootstrap administrator's password now: each run changes it. */
  adminPassword: string;
  /** Content types of the RPCs the page sent, and what the browser reported as errors. */
  rpcContentTypes: string[];
  browserErrors: string[];
}

let browser: Browser;
const deployments: Deployment[] = [];

beforeAll(async () => {
  const [launched, monolith, layered] = await Promise.all([
    chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] }),
    startTestServer({ LOGIN_MAX_FAILURES: String(MAX_FAILURES) }),
    startTestServer({ LOGIN_MAX_FAILURES: String(MAX_FAILURES), JWT_ACCESS_EXPIRES_IN_SECONDS: String(SHORT_ACCESS_TTL) }, { topology: 'layered-grpc' }),
  ]);
  browser = launched;
  for (const [name, server] of [
    ['monolithic', monolith],
    ['layered-grpc', layered],
  ] as const) {
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = await context.newPage();
    page.setDefaultTimeout(10_000);
    const deployment: Deployment = { name, server, page, adminPassword: ADMIN.password, rpcContentTypes: [], browserErrors: [] };
    page.on('request', (request) => {
      const type = request.headers()['content-type'];
      if (request.method() === 'POST' && type !== undefined) deployment.rpcContentTypes.push(type);
    });
    page.on('console', (message) => {
      // Connect answers an error with its HTTP status, which Chromium logs as a failed load;
      // anything else (a CSP violation, an exception) is a fault of the page.
      if (message.type() === 'error' && !message.text().startsWith('Failed to load resource')) deployment.browserErrors.push(message.text());
    });
    page.on('pageerror', (error) => deployment.browserErrors.push(String(error)));
    deployments.push(deployment);
  }
}, 90_000);

afterAll(async () => {
  await browser.close();
  await Promise.all(deployments.map((d) => d.server.close()));
});

/** Waits until `text` is on screen (inside `scope`, when given). */
async function see(page: Page, text: string | RegExp, scope = 'body'): Promise<void> {
  await page.locator(scope).getByText(text).first().waitFor({ state: 'visible', timeout: 10_000 });
}

/**
 * Opens a user's page within the running console. A reload would end the session: the tokens
 * live in the page's memory only.
 */
async function openUser(page: Page, id: number, username: string): Promise<void> {
  await page.getByRole('link', { name: 'My account' }).click();
  await see(page, 'My account', 'h1');
  await page.evaluate(`location.hash = ${JSON.stringify(`#/users/${id}`)}`);
  await see(page, username, 'h1');
}

/** The text of a fact on a user's page (Role, Status, …). */
const fact = (page: Page, name: string) => page.locator(`[data-fact="${name}"]`).textContent();

/** Re-runs the audit filter until the event is listed: audit events are written in the background. */
async function seeAuditEvent(page: Page, userId: number, type: string, text: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    await page.getByLabel('User id').fill(String(userId));
    await page.getByLabel('Type').selectOption(type);
    await page.getByRole('button', { name: 'Filter' }).click();
    await page.locator('.pager').waitFor();
    const row = page.locator('table.audit tbody tr').filter({ hasText: type }).filter({ hasText: text });
    if ((await row.count()) > 0) return;
    if (Date.now() > deadline) throw new Error(`no ${type} event with "${text}" for user ${userId} on screen`);
    await page.waitForTimeout(200);
  }
}

// The two deployments are driven side by side (each its own server, browser context and page,
// and each test's users its own), the protocols on one deployment one after the other: the
// tests of a protocol build on each other, and so do the protocols (the admin's password).
describe.each(['monolithic', 'layered-grpc'])('the admin console on %s', { concurrent: true }, (deploymentName) => {
  describe.each(PROTOCOLS)('over $name', { concurrent: false }, (protocol) => {
    let d: Deployment;
    let page: Page;
    let t: TestServer;

    beforeAll(() => {
      const found = deployments.find((candidate) => candidate.name === deploymentName);
      if (found === undefined) throw new Error(`no ${deploymentName} deployment`);
      d = found;
      ({ page, server: t } = d);
      d.rpcContentTypes.length = 0;
    });

    it('serves the page with a strict CSP, and signs the bootstrap admin in with the chosen protocol', async () => {
      const response = await page.goto(`${t.baseUrl}/console`);
      expect(response?.status()).toBe(200);
      const csp = response?.headers()['content-security-policy'];
      expect(csp).toBe(CONSOLE_CSP);
      expect(csp).toContain("connect-src 'self'");
      expect(csp).not.toContain('unsafe-inline');
      // Static assets are not charged to the API's rate limit.
      expect(response?.headers()['ratelimit-limit']).toBeUndefined();

      // A wrong password: the API's code and message, as it gave them.
      await page.getByLabel('Username or e-mail').fill(ADMIN.username);
      await page.getByLabel('Password').fill('Not-The-Passw0rd!');
      await page.getByLabel('Protocol').selectOption(protocol.name);
      await page.getByRole('button', { name: 'Sign in' }).click();
      await see(page, '[unauthenticated]', '.error');

      await page.getByLabel('Password').fill(d.adminPassword);
      await page.getByRole('button', { name: 'Sign in' }).click();
      await see(page, 'Users', 'h1');
      await see(page, `${ADMIN.username} · ${protocol.name}`, 'header');
      // Every RPC so far went over the chosen protocol.
      expect(d.rpcContentTypes.length).toBeGreaterThanOrEqual(3);
      for (const type of d.rpcContentTypes) expect(type).toMatch(protocol.contentType);
    });

    let target: Awaited<ReturnType<typeof register>>;
    let other: Awaited<ReturnType<typeof register>>;

    let prefix: string;

    it("finds a user by search and suspends it; that user's own token is then refused", async () => {
      prefix = `cb_${protocol.name.replace('-', '')}_${deploymentName.replace('-', '')}_${Date.now().toString(36)}`;
      // The longest e-mail and names the API takes (anyone can register them): they pushed every
      // row's role and status 1,800 px past the right edge of the list (helper 60).
      const local = `${prefix}_a`.padEnd(64, 'x');
      const longest = { email: `${local}@${'b'.repeat(63)}.${'c'.repeat(63)}.${'d'.repeat(57)}.com`, firstName: 'W'.repeat(50), lastName: 'M'.repeat(50) };
      target = await register(t, { ...newUser(`${prefix}_a`), ...longest });
      other = await register(t, newUser(`${prefix}_b`));
      const api = apiClient(protocol.api, t.baseUrl);
      expect((await api.me(target.accessToken)).code).toBe('ok');

      await page.getByLabel('Search').fill(`${prefix}_a`);
      await page.getByRole('button', { name: 'Search' }).click();
      // The search's own answer: the list shown at sign-in may hold one user too (the admin).
      await see(page, target.username, 'table.users');
      await see(page, 'Page 1 of 1 (1 user)');
      const rows = page.locator('table.users tbody tr');
      expect(await rows.count()).toBe(1);
      const viewport = page.viewportSize()?.width ?? 0;
      expect(await page.evaluate('document.documentElement.scrollWidth')).toBeLessThanOrEqual(viewport);
      const status = await rows.first().locator('td').nth(5).boundingBox();
      expect((status?.x ?? Infinity) + (status?.width ?? 0)).toBeLessThanOrEqual(viewport);
      // Only the e-mail and the name wrap: the other columns were squeezed into pieces of one to
      // four characters ("A/D/MI/N") on every row (helper 212). Lines a cell's text takes:
      const lines = await page.evaluate<number[]>(
        `[...document.querySelectorAll('table.users tbody tr:first-child td')].map((cell) => { const range = document.createRange(); range.selectNodeContents(cell); return new Set([...range.getClientRects()].map((rect) => Math.round(rect.top))).size; })`,
      );
      expect([0, 1, 4, 5, 6, 7].map((column) => lines[column])).toEqual([1, 1, 1, 1, 1, 1]);
      expect(lines[2]).toBeGreaterThan(1);
      await rows.first().getByRole('link', { name: target.username }).click();
      await see(page, target.username, 'h1');
      expect(await fact(page, 'Status')).toBe('ACTIVE');

      if (SCREENSHOTS !== undefined && deploymentName === 'monolithic' && protocol.name === 'grpc-web') {
        for (const [first, last] of [
          ['Ada', 'Lovelace'],
          ['Grace', 'Hopper'],
          ['Alan', 'Turing'],
          ['Edsger', 'Dijkstra'],
          ['Barbara', 'Liskov'],
        ] as const) {
          const username = `${first}_${last}`.toLowerCase();
          await register(t, { username, email: `${username}@example.com`, password: 'Sturdy-Passw0rd!', firstName: first, lastName: last } as ReturnType<typeof newUser>);
        }
        await page.evaluate(`location.hash = '#/users?sort=-createdAt'`);
        await see(page, /Page 1 of/);
        await page.screenshot({ path: join(SCREENSHOTS, 'console-users.png') });
        await openUser(page, target.id, target.username);
      }

      await page.getByLabel('Status').selectOption('SUSPENDED');
      await page.getByRole('button', { name: 'Set status' }).click();
      await see(page, 'Status set to SUSPENDED.');
      expect(await fact(page, 'Status')).toBe('SUSPENDED');
      const [row] = await t.sql<{ status: string }>('SELECT status FROM users WHERE id = $1', [target.id]);
      expect(row?.status).toBe('SUSPENDED');
      expect((await api.me(target.accessToken)).code).toBe('unauthenticated');
    });

    it('pages, filters and sorts the user list', async () => {
      const group = `pg_${protocol.name.replace('-', '')}_${deploymentName.replace('-', '')}_${Date.now().toString(36)}`;
      const members: string[] = [];
      for (let i = 0; i < 21; i += 1) members.push((await register(t, newUser(group))).username);
      const rows = page.locator('table.users tbody tr');
      const search = async (filters: { q?: string; role?: string; status?: string; sort?: string }) => {
        await page.getByLabel('Search').fill(filters.q ?? '');
        await page.getByLabel('Role').selectOption(filters.role ?? '');
        await page.getByLabel('Status').selectOption(filters.status ?? '');
        await page.getByLabel('Sort').selectOption(filters.sort ?? 'id');
        await page.getByRole('button', { name: 'Search' }).click();
      };
      await page.getByRole('link', { name: 'Users' }).click();
      await see(page, 'Users', 'h1');

      // Each listing is waited for by a row only it has: the previous one may say the same.
      const showing = (username: string | undefined) =>
        rows
          .filter({ hasText: username ?? '?' })
          .first()
          .waitFor();
      await search({ q: group, sort: '-createdAt' });
      await showing(members[20]);
      await see(page, 'Page 1 of 2 (21 users)');
      expect(await rows.count()).toBe(20);
      expect(await rows.first().locator('td').nth(1).textContent()).toBe(members[20]);
      await page.getByRole('button', { name: 'Next →' }).click();
      await showing(members[0]);
      await see(page, 'Page 2 of 2 (21 users)');
      expect(await rows.count()).toBe(1);
      expect(await rows.first().locator('td').nth(1).textContent()).toBe(members[0]);

      await search({ q: prefix, status: 'SUSPENDED' });
      await showing(target.username);
      await see(page, 'Page 1 of 1 (1 user)');
      expect(await rows.first().locator('td').nth(1).textContent()).toBe(target.username);
      await search({ role: 'ADMIN' });
      await showing(ADMIN.username);
      await see(page, 'Page 1 of 1 (1 user)');
      expect(await rows.first().locator('td').nth(1).textContent()).toBe(ADMIN.username);
      await search({ q: `${group}_nobody` });
      await see(page, 'No users match.');
    });

    it("changes a role, and a stale write shows the API's error", async () => {
      await openUser(page, other.id, other.username);
      await page.getByLabel('Role').selectOption('GUEST');
      await page.getByRole('button', { name: 'Set role' }).click();
      await see(page, 'Role set to GUEST.');
      expect(await fact(page, 'Role')).toBe('GUEST');
      const [row] = await t.sql<{ role: string }>('SELECT role FROM users WHERE id = $1', [other.id]);
      expect(row?.role).toBe('GUEST');

      // Changed elsewhere since the page read it: the version check refuses, as the API says.
      await t.sql('UPDATE users SET version = version + 1 WHERE id = $1', [other.id]);
      await page.getByLabel('Role').selectOption('USER');
      await page.getByRole('button', { name: 'Set role' }).click();
      await see(page, '[aborted]', '[data-section="access"] .error');
      const [after] = await t.sql<{ role: string }>('SELECT role FROM users WHERE id = $1', [other.id]);
      expect(after?.role).toBe('GUEST');
    });

    it('clears a login lockout, after which the user logs in again', async () => {
      const api = apiClient(protocol.api, t.baseUrl);
      const login = (password: string) => api.login({ usernameOrEmail: other.username, password });
      for (let i = 0; i < MAX_FAILURES; i += 1) expect((await login('Wrong-Guess-42!')).code).toBe('unauthenticated');
      expect((await login(other.password)).code).toBe('unauthenticated');

      await openUser(page, other.id, other.username);
      await page.getByRole('button', { name: 'Clear login lockouts' }).click();
      await see(page, /Login lockouts cleared \(\d+ address(es)?\)\./);
      expect((await login(other.password)).code).toBe('ok');
    });

    it("lists and ends the user's sessions", async () => {
      await openUser(page, other.id, other.username);
      const sessions = page.locator('[data-section="sessions"] tbody tr');
      await sessions.first().waitFor();
      const before = await sessions.count();
      expect(before).toBeGreaterThanOrEqual(2);
      if (SCREENSHOTS !== undefined && deploymentName === 'monolithic' && protocol.name === 'grpc-web') {
        await page.screenshot({ path: join(SCREENSHOTS, 'console-user.png'), fullPage: true });
      }
      await sessions.first().getByRole('button', { name: 'End' }).click();
      await see(page, /Ended session #\d+\./);
      expect(await sessions.count()).toBe(before - 1);
      await page.getByRole('button', { name: 'End all sessions' }).click();
      await see(page, `Ended ${before - 1} session`);
      await see(page, 'No live sessions.', '[data-section="sessions"]');
      expect((await apiClient(protocol.api, t.baseUrl).me(other.accessToken)).code).toBe('unauthenticated');
    });

    it("deletes a user after confirmation; deleting the last active admin is refused with the API's error", async () => {
      await openUser(page, target.id, target.username);
      await page.getByRole('button', { name: 'Delete user…' }).click();
      await see(page, `Delete ${target.username} and end all of its sessions?`);
      await page.getByRole('button', { name: `Yes, delete ${target.username}` }).click();
      await see(page, 'Users', 'h1');
      expect(await t.sql('SELECT 1 FROM users WHERE id = $1', [target.id])).toHaveLength(0);

      const [admin] = await t.sql<{ id: number }>('SELECT id FROM users WHERE username = $1', [ADMIN.username]);
      if (admin === undefined) throw new Error('no bootstrap admin');
      await openUser(page, admin.id, ADMIN.username);
      await page.getByRole('button', { name: 'Delete user…' }).click();
      await page.getByRole('button', { name: `Yes, delete ${ADMIN.username}` }).click();
      await see(page, '[failed_precondition]', '[data-section="delete"] .error');
      expect(await t.sql('SELECT 1 FROM users WHERE id = $1', [admin.id])).toHaveLength(1);
    });

    it('reads the matching audit events', async () => {
      await page.getByRole('link', { name: 'Audit log' }).click();
      await see(page, 'Audit log', 'h1');
      await seeAuditEvent(page, target.id, 'STATUS_CHANGED', 'from=ACTIVE, to=SUSPENDED');
      await seeAuditEvent(page, other.id, 'ROLE_CHANGED', 'from=USER, to=GUEST');
      await seeAuditEvent(page, other.id, 'LOGIN_FAILURES_CLEARED', 'cleared=');
      await seeAuditEvent(page, other.id, 'TOKENS_REVOKED', '');
      await seeAuditEvent(page, target.id, 'USER_DELETED', '');
      // A link naming no event type, not even one every object inherits, gets the server's answer.
      await page.goto(`${page.url().split('#')[0]}#/audit?type=constructor`);
      await see(page, '[invalid_argument]', '.error');
      // A user's page under something that is no user id leads to the list, not to the client's
      // encoding error ("[internal] … invalid int32: NaN", helper 81).
      for (const notAnId of ['constructor', '0', '2147483648', '1e3']) {
        await page.goto(`${page.url().split('#')[0]}#/users/${notAnId}`);
        await page.waitForURL(/#\/users$/);
        await see(page, 'Users', 'h1');
        expect((await page.locator('.error').allTextContents()).filter((text) => text !== '')).toEqual([]);
      }
      // Nor do filters naming what every object inherits, or pages past an int32 (helper 90): the
      // server's violation beside the field, or the page.
      for (const [link, answer] of [
        ['#/users?role=constructor', '[invalid_argument]'],
        ['#/users?status=__proto__', '[invalid_argument]'],
        ['#/users?page=1e400', 'Page 2147483647'],
        ['#/audit?page=99999999999', 'Page 2147483647'],
      ] as const) {
        await page.goto(`${page.url().split('#')[0]}${link}`);
        await see(page, answer);
        expect(
          (await page.locator('.error').allTextContents()).filter((text) => text.includes('[internal]')),
          link,
        ).toEqual([]);
      }
    });

    it("shows field violations beside their fields, and changes the admin's own password", async () => {
      await page.getByRole('link', { name: 'My account' }).click();
      await see(page, 'Change password', 'h2');
      await see(page, '(this one)', '[data-section="my-sessions"]');
      const form = page.locator('[data-section="password"]');
      await form.getByLabel('Current password').fill(d.adminPassword);
      await form.getByLabel('New password').fill('weak');
      await form.getByRole('button', { name: 'Change password' }).click();
      await see(page, '[invalid_argument]', '[data-section="password"] .error');
      expect(await form.locator('[data-violation="new_password"]').textContent()).not.toBe('');
      expect(await form.locator('[data-violation="old_password"]').textContent()).toBe('');

      const next = `Console-${protocol.name}-${Date.now()}!A1`;
      await form.getByLabel('New password').fill(next);
      await form.getByRole('button', { name: 'Change password' }).click();
      await see(page, 'Password changed.');
      const api = apiClient(protocol.api, t.baseUrl);
      expect((await api.login({ usernameOrEmail: ADMIN.username, password: d.adminPassword })).code).toBe('unauthenticated');
      expect((await api.login({ usernameOrEmail: ADMIN.username, password: next })).code).toBe('ok');
      d.adminPassword = next;
    });

    it('keeps the session alive by refreshing before expiry, and signs out', async () => {
      if (deploymentName === 'layered-grpc') {
        // The access token lives SHORT_ACCESS_TTL seconds: wait for a rotation, then keep working.
        await page.waitForTimeout(SHORT_ACCESS_TTL * 1000);
        await page.getByRole('link', { name: 'Users' }).click();
        await see(page, /Page 1 of \d+/);
        await page.getByRole('link', { name: 'My account' }).click();
        await see(page, /Token pair rotated [1-9]\d* times? in this tab\./);
      }
      await page.getByRole('button', { name: 'Sign out' }).click();
      await see(page, 'Signed out.');
      await page.getByLabel('Username or e-mail').waitFor();
      // Signing out ended the console's session on the server, however often it was rotated.
      const live = await t.sql(
        `SELECT t.id FROM oauth_tokens t JOIN users u ON u.id = t.user_id
         WHERE u.username = $1 AND NOT t.is_revoked AND t.expires_at > now() AND t.user_agent LIKE '%Chrome%'`,
        [ADMIN.username],
      );
      expect(live).toEqual([]);
      for (const type of d.rpcContentTypes) expect(type).toMatch(protocol.contentType);
      expect(d.browserErrors).toEqual([]);
    });

    it('shows a non-admin only its own account, where it revokes all of its sessions', async () => {
      const api = apiClient(protocol.api, t.baseUrl);
      const elsewhere = await api.login({ usernameOrEmail: other.username, password: other.password });
      if (elsewhere.data === undefined) throw new Error(`login failed: ${elsewhere.code}`);
      const elsewhereToken = elsewhere.data.tokens.accessToken;
      await page.getByLabel('Username or e-mail').fill(other.username);
      await page.getByLabel('Password').fill(other.password);
      await page.getByRole('button', { name: 'Sign in' }).click();
      await see(page, 'My account', 'h1');
      await see(page, `${other.username} (${other.email}), GUEST`);
      expect(await page.locator('header nav a').allTextContents()).toEqual(['My account']);
      // The administrators' pages lead a USER to its account: its own user page offered role,
      // status and delete controls the API then refused (helper 90).
      for (const link of [`#/users/${other.id}`, '#/users', '#/audit']) {
        await page.goto(`${page.url().split('#')[0]}${link}`);
        await page.waitForURL(/#\/account$/);
        await see(page, 'My account', 'h1');
        expect(await page.locator('[data-section="access"], [data-section="delete"]').count()).toBe(0);
      }
      const mine = page.locator('[data-section="my-sessions"] tbody tr');
      await mine.first().waitFor();
      expect(await mine.count()).toBe(2);

      await page.getByRole('button', { name: 'Revoke all my sessions' }).click();
      await see(page, 'Revoked 2 sessions, this one included. Sign in again.');
      await page.getByLabel('Username or e-mail').waitFor();
      expect((await api.me(elsewhereToken)).code).toBe('unauthenticated');
      expect(d.browserErrors).toEqual([]);
    });
  });
});
