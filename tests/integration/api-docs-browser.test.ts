// /docs in a real browser (Debian's chromium, driven by playwright-core): Redoc must render the
// contract and its search must work under the page's Content-Security-Policy, with no request
// leaving the machine and no script refused. The policy's two allowances (inline styles, blob:
// workers) are what this proves necessary and sufficient: a Redoc upgrade that needs more shows
// up here as a CSP violation.
import { existsSync } from 'node:fs';
import { chromium, type Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from '../helpers/test-app.ts';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

// Without a browser on the machine there is nothing to drive (the console's browser tests make
// .ci/run install Debian's chromium).
describe.skipIf(!existsSync(CHROMIUM))('API docs in a browser', () => {
  let t: TestServer;
  let browser: Browser;

  beforeAll(async () => {
    t = await startTestServer();
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
  });

  afterAll(async () => {
    await browser.close();
    await t.close();
  });

  it('when /docs is opened, then Redoc renders every operation and finds one by search, with no script refused and nothing fetched from elsewhere', async () => {
    const page = await browser.newPage();
    const violations: string[] = [];
    const foreign: string[] = [];
    page.on('console', (message) => {
      if (message.type() === 'error' && message.text().includes('Content Security Policy') && !message.text().includes('cdn.redoc.ly/redoc/logo-mini.svg'))
        violations.push(message.text());
    });
    page.on('pageerror', (error) => violations.push(`page error: ${error.message}`));
    page.on('request', (request) => {
      if (!request.url().startsWith(t.baseUrl) && !request.url().startsWith('data:') && !request.url().startsWith('blob:')) foreign.push(request.url());
    });
    await page.goto(`${t.baseUrl}/docs`);
    await page.waitForSelector('h1', { timeout: 20_000 });
    expect(await page.locator('h1').first().textContent()).toContain('Arcana Cloud API');
    // One section per operation of openapi.yaml (Redoc titles each with its summary).
    expect(await page.getByText('Log in', { exact: true }).count()).toBeGreaterThan(0);
    // Search runs in a Web Worker made from a blob: URL, which the policy allows.
    await page.fill('input[placeholder="Search..."]', 'lockout');
    await expect.poll(async () => page.locator('[role="search"] li, [data-role="search:result"]').count(), { timeout: 10_000 }).toBeGreaterThan(0);
    expect(violations).toEqual([]);
    // Only Redoc's "powered by" logo tries a CDN, and the policy refuses it (no request goes out).
    expect(foreign.filter((url) => !url.endsWith('/redoc/logo-mini.svg'))).toEqual([]);
    await page.close();
  });
});
