// Google's grpc-web client (the `grpc-web` runtime that protoc-gen-grpc-web's stubs call) in a real
// browser: its default text mode and its binary mode, with method descriptors that serialize
// with protobuf-es instead of generated google-protobuf classes (the runtime takes any functions).
// The page is served from the API's own origin (intercepted by the browser, not by the server),
// so no CORS policy is involved.
import { build } from 'esbuild';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { newUser, startTestServer, type TestServer } from '../helpers/test-app.ts';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

/** The page's script: `window.grpcWebCall(format, method, request, metadata)` resolves to the outcome. */
const PAGE_ENTRY = `
import { GrpcWebClientBase, MethodDescriptor, MethodType } from 'grpc-web';
import { create, fromBinary, toBinary } from '@bufbuild/protobuf';
import { AuthService } from './gen/proto/arcana/auth/v1/auth_service_pb.js';

window.grpcWebCall = (format, name, init, metadata) =>
  new Promise((resolve) => {
    const method = AuthService.method[name.charAt(0).toLowerCase() + name.slice(1)];
    const descriptor = new MethodDescriptor('/arcana.auth.v1.AuthService/' + name, MethodType.UNARY, Object, Object,
      (message) => toBinary(method.input, message), (bytes) => fromBinary(method.output, bytes));
    const client = new GrpcWebClientBase(format === undefined ? {} : { format });
    client.rpcCall(location.origin + '/arcana.auth.v1.AuthService/' + name, create(method.input, init), metadata, descriptor, (error, response) =>
      resolve(error ? { code: error.code, message: error.message } : { code: 0, username: response.user?.username, accessToken: response.tokens?.accessToken }));
  });
`;

interface CallOutcome {
  code: number;
  message?: string;
  username?: string;
  accessToken?: string;
}

let server: TestServer;
let browser: Browser;
let page: Page;
const contentTypes: string[] = [];

beforeAll(async () => {
  const [started, launched, bundle] = await Promise.all([
    startTestServer(),
    chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] }),
    build({ stdin: { contents: PAGE_ENTRY, resolveDir: process.cwd(), loader: 'js' }, bundle: true, write: false, format: 'iife', platform: 'browser', logLevel: 'warning' }),
  ]);
  server = started;
  browser = launched;
  page = await browser.newPage();
  page.on('request', (request) => {
    if (request.url().includes('/arcana.auth.v1.AuthService/')) contentTypes.push(request.headers()['content-type'] ?? '');
  });
  const script = (bundle.outputFiles[0]?.text ?? '').replaceAll('</script', '<\\/script');
  await page.route(`${server.baseUrl}/grpc-web-page`, (route) => route.fulfill({ contentType: 'text/html', body: `<!doctype html><script>${script}</script>` }));
  await page.goto(`${server.baseUrl}/grpc-web-page`);
}, 60_000);

afterAll(async () => {
  await browser.close();
  await server.close();
});

function call(format: 'text' | 'binary' | undefined, name: string, request: Record<string, unknown>, metadata: Record<string, string> = {}): Promise<CallOutcome> {
  return page.evaluate(([f, n, r, m]) => (globalThis as unknown as { grpcWebCall: (...args: unknown[]) => Promise<CallOutcome> }).grpcWebCall(f, n, r, m), [
    format,
    name,
    request,
    metadata,
  ] as const);
}

describe("Google's grpc-web client in Chromium", () => {
  it.each([
    ['its default (text) mode', undefined, 'application/grpc-web-text'],
    ['binary mode', 'binary', 'application/grpc-web+proto'],
  ] as const)('when it registers, logs in and reads itself in %s, then each call answers, and a wrong password is unauthenticated', async (_name, format, contentType) => {
    contentTypes.length = 0;
    const body = newUser(`gw_${format ?? 'text'}`);
    expect(await call(format, 'Register', body)).toMatchObject({ code: 0, username: body.username });
    const login = await call(format, 'Login', { usernameOrEmail: body.username, password: body.password });
    expect(login).toMatchObject({ code: 0, username: body.username });
    expect(await call(format, 'GetCurrentUser', {}, { authorization: `Bearer ${login.accessToken ?? ''}` })).toMatchObject({ code: 0, username: body.username });
    // 16: UNAUTHENTICATED, with the server's message.
    expect(await call(format, 'Login', { usernameOrEmail: body.username, password: 'Wrong-Passw0rd!' })).toEqual({ code: 16, message: 'Invalid credentials' });
    expect(new Set(contentTypes)).toEqual(new Set([contentType]));
  });

  it('when the page fires twenty wrong logins for one account at once in text mode, then each is refused with a code the client reads, none unknown', async () => {
    const body = newUser('gw_parallel');
    expect(await call(undefined, 'Register', body)).toMatchObject({ code: 0 });
    const outcomes = await page.evaluate(
      ([username]) =>
        Promise.all(
          Array.from({ length: 20 }, () =>
            (globalThis as unknown as { grpcWebCall: (...args: unknown[]) => Promise<CallOutcome> }).grpcWebCall(
              undefined,
              'Login',
              { usernameOrEmail: username, password: 'Wrong-Passw0rd!' },
              {},
            ),
          ),
        ),
      [body.username] as const,
    );
    // 16 wrong password; 8 (RESOURCE_EXHAUSTED) once the account's lockout or the rate limit answers.
    for (const outcome of outcomes) expect([16, 8]).toContain(outcome.code);
    expect(outcomes.filter((outcome) => outcome.code === 16).length).toBeGreaterThan(0);
  });
});
