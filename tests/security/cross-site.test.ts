// A page of another site spending its visitor's rate-limit budget (helper 212): 110 `<img>` tags
// pointed at the API, opened by an administrator, locked the administrator's address (and its
// NAT) out of the API and the console for the window's hour. Browsers' requests made for pages
// of sites CORS_ORIGINS does not name are refused before they are charged; the API's own pages,
// allowed origins, top-level links and non-browser clients are served as before.
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import { networkInterfaces } from 'node:os';
import http2 from 'node:http2';
import { chromium, type Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from '../helpers/test-app.ts';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const ALLOWED = 'https://app.example.test';
const BUDGET = 30;

let server: TestServer;
let browser: Browser;

beforeAll(async () => {
  [server, browser] = await Promise.all([
    startTestServer({ RATE_LIMIT_MAX: String(BUDGET), CORS_ORIGINS: ALLOWED }),
    chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] }),
  ]);
}, 60_000);

afterAll(async () => {
  await browser.close();
  await server.close();
});

interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** One request over HTTP/1.1 with exactly these headers. */
function h1(method: string, path: string, headers: Record<string, string>, body?: string | Buffer): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = http.request(`${server.baseUrl}${path}`, { method, headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('latin1') }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

/** One gRPC call over h2c: the HTTP status and grpc-status of its answer. */
function grpc(path: string, headers: Record<string, string>): Promise<{ status: number; grpcStatus: string | undefined }> {
  return new Promise((resolve, reject) => {
    const session = http2.connect(server.baseUrl);
    session.on('error', reject);
    const stream = session.request({ ':method': 'POST', ':path': path, 'content-type': 'application/grpc', te: 'trailers', ...headers });
    let status = 0;
    let grpcStatus: string | undefined;
    stream.on('response', (head) => {
      status = Number(head[':status']);
      grpcStatus = head['grpc-status'] as string | undefined;
    });
    stream.on('trailers', (trailers) => (grpcStatus ??= trailers['grpc-status'] as string | undefined));
    stream.on('data', () => undefined);
    stream.on('end', () => {
      session.close();
      resolve({ status, grpcStatus });
    });
    stream.end(Buffer.from([0, 0, 0, 0, 0]));
  });
}

/** What is left of this address's budget, read by a client that is no browser. */
async function budgetLeft(): Promise<number> {
  const answer = await h1('GET', '/public/info', {});
  expect(answer.status).toBe(200);
  return Number(answer.headers['ratelimit-remaining']);
}

const WEBSOCKET = { 'sec-websocket-version': '13', 'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==' };

const crossSite = (mode: string, dest: string, origin = 'https://evil.example.test') => ({
  'sec-fetch-site': 'cross-site',
  'sec-fetch-mode': mode,
  'sec-fetch-dest': dest,
  origin,
});

describe('requests browsers make for pages of other sites', () => {
  it('when a hostile page fires subresources, forms, frames and CORS calls at every protocol at once, then each is refused 403 and none is charged', async () => {
    const before = await budgetLeft();
    const connectLogin = JSON.stringify({ usernameOrEmail: 'root_admin', password: 'wrong-password-1' });
    const answers = await Promise.all([
      ...Array.from({ length: 12 }, () => h1('GET', '/public/info', crossSite('no-cors', 'image'))),
      h1('GET', '/api/v1/auth/me', crossSite('no-cors', 'script')),
      // A form posted across sites, in each shape a form can take.
      h1('POST', '/api/v1/auth/login', { ...crossSite('navigate', 'document'), 'content-type': 'application/x-www-form-urlencoded' }, 'usernameOrEmail=a&password=b'),
      h1('GET', '/api/v1/users', crossSite('navigate', 'iframe')),
      // fetch() from an origin CORS_ORIGINS does not name: a simple request, and a preflight.
      h1('POST', '/arcana.auth.v1.AuthService/Login', { ...crossSite('cors', 'empty'), 'content-type': 'text/plain' }, connectLogin),
      h1('OPTIONS', '/arcana.auth.v1.AuthService/Login', { ...crossSite('cors', 'empty'), 'access-control-request-method': 'POST' }),
      // The same from a site that shares ours (another port, a sibling subdomain) but is no allowed origin.
      h1('GET', '/public/info', { ...crossSite('no-cors', 'image'), 'sec-fetch-site': 'same-site' }),
      // Helper 216: a WebSocket handshake, which browsers send without Fetch Metadata; a
      // speculation rule's prefetch, sent as if typed; an API path opened in a window the page holds.
      h1('GET', '/api/v1/auth/me', { origin: 'https://evil.example.test', connection: 'Upgrade', upgrade: 'websocket', ...WEBSOCKET }),
      h1('GET', '/public/info', { 'sec-fetch-site': 'none', 'sec-fetch-mode': 'navigate', 'sec-fetch-dest': 'document', 'sec-purpose': 'prefetch' }),
      h1('GET', '/api/v1/users?page=1', crossSite('navigate', 'document')),
    ]);
    expect(answers.length).toBe(21);
    for (const answer of answers) {
      expect(answer.status).toBe(403);
      expect(answer.headers['access-control-allow-origin']).toBeUndefined();
    }
    expect(JSON.parse(answers[0].body)).toMatchObject({ success: false, error: { code: 'AUTHORIZATION_ERROR' } });
    // A gRPC-Web call is refused in its own protocol: 7, PERMISSION_DENIED, in a trailers-only answer.
    const grpcWeb = await h1(
      'POST',
      '/arcana.auth.v1.AuthService/Login',
      { ...crossSite('cors', 'empty'), 'content-type': 'application/grpc-web+proto' },
      Buffer.from([0, 0, 0, 0, 0]),
    );
    expect({ status: grpcWeb.status, grpcStatus: grpcWeb.headers['grpc-status'] }).toEqual({ status: 200, grpcStatus: '7' });
    // gRPC over h2c, as a proxy in front that speaks HTTP/2 would forward a browser's request.
    expect(await grpc('/arcana.auth.v1.AuthService/Login', crossSite('no-cors', 'empty'))).toEqual({ status: 200, grpcStatus: '7' });
    // Only the two reads of the budget itself were charged.
    expect(await budgetLeft()).toBe(before - 1);
  });

  it('when the requests come from an allowed origin, the API own pages, a top-level link or no browser, then they are served and charged', async () => {
    const before = await budgetLeft();
    const served = await Promise.all([
      h1('GET', '/public/info', { ...crossSite('cors', 'empty', ALLOWED) }),
      h1('OPTIONS', '/api/v1/auth/login', { ...crossSite('cors', 'empty', ALLOWED), 'access-control-request-method': 'POST', 'access-control-request-headers': 'content-type' }),
      h1('GET', '/public/info', { 'sec-fetch-site': 'same-origin', 'sec-fetch-mode': 'cors', 'sec-fetch-dest': 'empty' }),
      h1('GET', '/public/info', { 'sec-fetch-site': 'none', 'sec-fetch-mode': 'navigate', 'sec-fetch-dest': 'document' }),
      h1('GET', '/docs', crossSite('navigate', 'document')),
      h1('GET', '/public/info', {}),
      // A WebSocket client of an allowed origin, or none at all, reaches the API (which upgrades nothing).
      h1('GET', '/public/info', { origin: ALLOWED, connection: 'Upgrade', upgrade: 'websocket', ...WEBSOCKET }),
      h1('GET', '/public/info', { connection: 'Upgrade', upgrade: 'websocket', ...WEBSOCKET }),
    ]);
    expect(served.map((answer) => answer.status)).toEqual([200, 204, 200, 200, 200, 200, 200, 200]);
    expect(served[0].headers['access-control-allow-origin']).toBe(ALLOWED);
    expect(await budgetLeft()).toBeLessThan(before - 4);
  });

  it('when a hostile page reaches the API over plain HTTP, where browsers send no Fetch Metadata, then what names its origin is refused uncharged, over every protocol', async () => {
    // Helper 217: Chromium sends Sec-Fetch-* only to HTTPS or loopback origins; to
    // http://<address>:3000 a page's forms, no-cors POSTs, beacons, CORS calls and event streams
    // arrive with only `Origin`, and each was served and charged until the budget ran out.
    const before = await budgetLeft();
    const evil = { origin: 'http://evil.example.test' };
    const connectLogin = JSON.stringify({ usernameOrEmail: 'root_admin', password: 'wrong-password-1' });
    const answers = await Promise.all([
      ...Array.from({ length: 8 }, () => h1('POST', '/api/v1/auth/login', { ...evil, 'content-type': 'application/x-www-form-urlencoded' }, 'usernameOrEmail=a&password=b')),
      h1('POST', '/arcana.auth.v1.AuthService/Login', { ...evil, 'content-type': 'text/plain' }, connectLogin),
      h1('POST', '/arcana.auth.v1.AuthService/Login', { ...evil, 'content-type': 'application/json' }, connectLogin),
      h1('OPTIONS', '/arcana.auth.v1.AuthService/Login', { ...evil, 'access-control-request-method': 'POST' }),
      h1('GET', '/api/v1/auth/me', { ...evil, accept: 'text/event-stream' }),
      // A sandboxed frame's or a file's opaque origin; a sibling port of our own host.
      h1('POST', '/api/v1/auth/logout', { origin: 'null', 'content-type': 'text/plain' }, '{}'),
      h1('POST', '/api/v1/auth/logout', { origin: `http://127.0.0.1:${new URL(server.baseUrl).port === '1' ? '2' : '1'}`, 'content-type': 'text/plain' }, '{}'),
    ]);
    expect(answers.map((answer) => answer.status)).toEqual(Array(14).fill(403));
    const grpcWeb = await h1('POST', '/arcana.auth.v1.AuthService/Login', { ...evil, 'content-type': 'application/grpc-web+proto' }, Buffer.from([0, 0, 0, 0, 0]));
    expect({ status: grpcWeb.status, grpcStatus: grpcWeb.headers['grpc-status'] }).toEqual({ status: 200, grpcStatus: '7' });
    expect(await grpc('/arcana.auth.v1.AuthService/Login', evil)).toEqual({ status: 200, grpcStatus: '7' });
    expect(await budgetLeft()).toBe(before - 1);

    // The API's own pages calling it (the console's sign-in), by the Host they were served from or
    // the one a proxy in front forwards, and allowed origins, are served and charged.
    const own = new URL(server.baseUrl).host;
    const served = await Promise.all([
      h1('POST', '/api/v1/auth/login', { origin: `http://${own}`, 'content-type': 'application/json' }, connectLogin),
      h1('POST', '/api/v1/auth/login', { origin: `https://${own}`, 'content-type': 'application/json' }, connectLogin),
      h1('POST', '/api/v1/auth/login', { origin: 'https://api.example.test', 'x-forwarded-host': 'api.example.test', 'content-type': 'application/json' }, connectLogin),
      h1(
        'POST',
        '/api/v1/auth/login',
        { origin: 'https://api.example.test', forwarded: 'for=192.0.2.60;host="api.example.test";proto=https', 'content-type': 'application/json' },
        connectLogin,
      ),
      h1('POST', '/api/v1/auth/login', { origin: ALLOWED, 'content-type': 'application/json' }, connectLogin),
    ]);
    expect(served.map((answer) => answer.status)).toEqual([401, 401, 401, 401, 401]);
  });

  it('when a page of another site opens windows on paths under the API pages that name no page, or the icon the browser then asks for, then nothing is charged', async () => {
    // Helper 217: /docs/x1…x10 were admitted as pages and answered by the API's charged 404, and
    // each refused navigation left a document whose /favicon.ico was a charged 404 too.
    const before = await budgetLeft();
    const navigations = await Promise.all(
      ['/docs/x1', '/console/x2', '/openapi.yaml/x3', '/DOCS/x4', '/docs/assets/nothing', '/docs/proto/x5.proto'].map((path) => h1('GET', path, crossSite('navigate', 'document'))),
    );
    expect(navigations.map((answer) => answer.status)).toEqual([403, 403, 403, 403, 403, 403]);
    const pages = await Promise.all(['/docs/proto/', '/console/', '/openapi.yaml?x=1'].map((path) => h1('GET', path, crossSite('navigate', 'document'))));
    expect(pages.map((answer) => answer.status)).toEqual([200, 200, 200]);
    const icons = await Promise.all(
      Array.from({ length: 5 }, () => h1('GET', '/favicon.ico', { 'sec-fetch-site': 'same-origin', 'sec-fetch-mode': 'no-cors', 'sec-fetch-dest': 'image' })),
    );
    expect(icons.map((answer) => answer.status)).toEqual([204, 204, 204, 204, 204]);
    expect(await budgetLeft()).toBe(before - 1);
  });

  it('when a reader opens the API reference and its files, then its budget is untouched; a path under it that names nothing is charged', async () => {
    // Helper 212: one look at /docs cost five requests of the budget, so about twenty looks an hour
    // locked the reader's address out of the API and the console's sign-in.
    const before = await budgetLeft();
    const pages = await Promise.all(['/docs', '/docs/assets/docs.js', '/docs/assets/redoc.standalone.js', '/openapi.yaml', '/docs/proto/'].map((path) => h1('GET', path, {})));
    expect(pages.map((page) => page.status)).toEqual([200, 200, 200, 200, 200]);
    expect(pages.every((page) => page.headers['ratelimit-remaining'] === undefined)).toBe(true);
    expect(await budgetLeft()).toBe(before - 1);
    expect((await h1('GET', '/docs/nothing-here', {})).status).toBe(404);
    expect(await budgetLeft()).toBe(before - 3);
  });

  it("when an administrator's browser opens a hostile page with a hundred images and no-cors fetches, then the administrator's budget is untouched", async () => {
    const before = await budgetLeft();
    const context = await browser.newContext();
    const page = await context.newPage();
    // Chromium hands a no-cors image or fetch a 403 JSON answer as a failure (opaque response
    // blocking), so the requests are counted as they leave, and the answers it does report.
    let sent = 0;
    const statuses: number[] = [];
    page.on('request', (request) => {
      if (request.url().startsWith(server.baseUrl)) sent += 1;
    });
    page.on('response', (response) => {
      if (response.url().startsWith(server.baseUrl)) statuses.push(response.status());
    });
    const images = Array.from({ length: 100 }, (_, index) => `<img src="${server.baseUrl}/public/info?n=${index}">`).join('');
    // And twenty WebSockets (helper 216), whose handshakes carry no Fetch Metadata.
    const sockets = `Promise.all(Array.from({ length: 20 }, (_, i) => new Promise((done) => { const socket = new WebSocket('${server.baseUrl.replace('http', 'ws')}/api/v1/auth/me?w=' + i); socket.onerror = done; socket.onclose = done; })))`;
    const script = `Promise.all([...Array.from({ length: 20 }, (_, i) => fetch('${server.baseUrl}/api/v1/auth/me?n=' + i, { mode: 'no-cors' }).catch(() => null)), ${sockets}]).then(() => { document.title = 'done'; });`;
    // Another site on this machine (`localhost` is not `127.0.0.1`'s site), served for real: a
    // page from a public address, or one the browser made up, may not reach a loopback server at
    // all (Chromium's Private Network Access).
    const hostile = http.createServer((_req, res) => res.writeHead(200, { 'content-type': 'text/html' }).end(`<!doctype html><body>${images}<script>${script}</script></body>`));
    await new Promise<void>((resolve) => hostile.listen(0, '127.0.0.1', resolve));
    const { port } = hostile.address() as AddressInfo;
    await page.goto(`http://localhost:${port}/`);
    await page.waitForFunction('document.title === "done"', undefined, { timeout: 15_000 });
    await page.waitForLoadState('load');
    await context.close();
    hostile.close();
    expect(sent).toBeGreaterThanOrEqual(120);
    for (const status of statuses) expect(status).toBe(403);
    expect(await budgetLeft()).toBe(before - 1);
  });

  // Over plain HTTP to an address that is not loopback, Chromium sends no Fetch Metadata (helper
  // 217). The API is reached here through a forwarder on this machine's first non-loopback IPv4
  // address, so the server still sees loopback, the budget read above.
  const lanAddress = Object.values(networkInterfaces())
    .flat()
    .find((entry) => entry?.family === 'IPv4' && !entry.internal)?.address;
  it.skipIf(lanAddress === undefined)(
    "when a hostile page posts forms, beacons and event streams at the API over plain HTTP, then the administrator's budget is untouched",
    async () => {
      const forwarder = net.createServer((inbound) => {
        const outbound = net.connect(Number(new URL(server.baseUrl).port), '127.0.0.1');
        inbound.pipe(outbound).pipe(inbound);
        inbound.on('error', () => outbound.destroy());
        outbound.on('error', () => inbound.destroy());
      });
      await new Promise<void>((resolve) => forwarder.listen(0, lanAddress, resolve));
      const api = `http://${lanAddress}:${(forwarder.address() as AddressInfo).port}`;
      const before = await budgetLeft();
      const context = await browser.newContext();
      const page = await context.newPage();
      let sent = 0;
      const fetchMetadata: string[] = [];
      page.on('request', (request) => {
        if (!request.url().startsWith(api)) return;
        sent += 1;
        const site = request.headers()['sec-fetch-site'];
        if (site !== undefined) fetchMetadata.push(site);
      });
      const login = JSON.stringify({ usernameOrEmail: 'root_admin', password: 'wrong-password-1' });
      const script = `Promise.all([
        ...Array.from({ length: 20 }, (_, i) => fetch('${api}/api/v1/auth/login?n=' + i, { method: 'POST', mode: 'no-cors', headers: { 'content-type': 'text/plain' }, body: '${login}' }).catch(() => null)),
        ...Array.from({ length: 10 }, (_, i) => fetch('${api}/arcana.auth.v1.AuthService/Login?n=' + i, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '${login}' }).catch(() => null)),
        ...Array.from({ length: 5 }, (_, i) => new Promise((done) => { const source = new EventSource('${api}/api/v1/auth/me?e=' + i); source.onerror = () => { source.close(); done(); }; })),
        Promise.resolve(Array.from({ length: 10 }, (_, i) => navigator.sendBeacon('${api}/api/v1/auth/logout?b=' + i, '{}'))),
      ]).then(() => new Promise((done) => setTimeout(done, 500))).then(() => { document.title = 'done'; });`;
      const hostile = http.createServer((_req, res) => res.writeHead(200, { 'content-type': 'text/html' }).end(`<!doctype html><body><script>${script}</script></body>`));
      await new Promise<void>((resolve) => hostile.listen(0, '127.0.0.1', resolve));
      try {
        await page.goto(`http://localhost:${(hostile.address() as AddressInfo).port}/`);
        await page.waitForFunction('document.title === "done"', undefined, { timeout: 15_000 });
      } finally {
        await context.close();
        hostile.close();
        forwarder.close();
      }
      // The attack as the issue meets it: requests that left without Fetch Metadata.
      expect(sent).toBeGreaterThanOrEqual(40);
      expect(fetchMetadata).toEqual([]);
      expect(await budgetLeft()).toBe(before - 1);
    },
  );
});
