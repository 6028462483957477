// The API reference as a reader gets it: /docs renders openapi.yaml with Redoc served from this
// process (no CDN) under a policy without inline script, /openapi.yaml is the file itself, and
// the RPC reference lists the public .proto files with their comments.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OPENAPI_PATH } from '../../src/app.ts';
import { protoServices, publicProtoFiles } from '../../src/controllers/rest/docs-routes.ts';
import { bearer, capturingLogger, createTestApp, loginAdmin, type TestApp } from '../helpers/test-app.ts';

let t: TestApp;
const log = capturingLogger();

beforeAll(async () => {
  t = await createTestApp({}, { logger: log.logger });
});

afterAll(async () => {
  await t.close();
});

/** The directives of a Content-Security-Policy header, by name. */
function directives(header: string | undefined): Map<string, string[]> {
  return new Map(
    (header ?? '')
      .split(';')
      .map((part) => part.trim().split(/\s+/))
      .filter((words) => words[0] !== '')
      .map(([name, ...values]) => [name ?? '', values]),
  );
}

describe('API docs', () => {
  it('when /docs is opened, then the page loads Redoc and its starter from this origin, under a policy that refuses inline and foreign script', async () => {
    const res = await t.request.get('/docs');
    expect(res.status).toBe(200);
    expect(res.headers['content-type']).toMatch(/^text\/html/);
    const csp = directives(res.headers['content-security-policy']);
    expect(csp.get('script-src')).toEqual(["'self'"]);
    expect(csp.get('default-src')).toEqual(["'none'"]);
    expect(csp.get('connect-src')).toEqual(["'self'"]);
    expect(csp.get('frame-ancestors')).toEqual(["'none'"]);
    // No inline script in the page: every <script> has a same-origin src and no body.
    const scripts = [...res.text.matchAll(/<script([^>]*)>([\s\S]*?)<\/script>/g)];
    expect(scripts.map((m) => /src="([^"]+)"/.exec(m[1] ?? '')?.[1])).toEqual(['/docs/assets/redoc.standalone.js', '/docs/assets/docs.js']);
    expect(scripts.every((m) => (m[2] ?? '').trim() === '')).toBe(true);
    expect(res.text).not.toMatch(/https?:\/\//);
    expect(res.text).toContain('data-spec-url="/openapi.yaml"');
  });

  it("when the page's scripts are fetched, then they are Redoc's bundle from node_modules and the starter that points it at /openapi.yaml", async () => {
    const bundle = await t.request.get('/docs/assets/redoc.standalone.js');
    expect(bundle.status).toBe(200);
    expect(bundle.headers['content-type']).toMatch(/javascript/);
    const fromNodeModules = await readFile(join(import.meta.dirname, '..', '..', 'node_modules', 'redoc', 'bundles', 'redoc.standalone.js'), 'utf8');
    expect(bundle.text).toBe(fromNodeModules);
    const starter = await t.request.get('/docs/assets/docs.js');
    expect(starter.status).toBe(200);
    expect(starter.text).toContain('Redoc.init(');
    expect((await t.request.get('/docs/assets/nothing.js')).status).toBe(404);
  });

  it('when /openapi.yaml is fetched, then it is the contract file, byte for byte', async () => {
    const res = await t.request
      .get('/openapi.yaml')
      .buffer(true)
      .parse((response, done) => {
        let text = '';
        response.setEncoding('utf8');
        response.on('data', (chunk: string) => (text += chunk));
        response.on('end', () => done(null, text));
      });
    expect(res.status).toBe(200);
    expect(res.headers['content-type']).toMatch(/^application\/yaml/);
    expect(res.body).toBe(await readFile(OPENAPI_PATH, 'utf8'));
  });

  it('when a reader holds the ETag of the docs page, the contract, the RPC index or a console file, then it is answered 304 without a body', async () => {
    for (const path of ['/docs', '/openapi.yaml', '/docs/proto/', '/console', '/console/console.js', '/console/console.css']) {
      const first = await t.request.get(path).set('accept-encoding', 'identity');
      expect(first.status, path).toBe(200);
      const tag = String(first.headers.etag);
      // Weak: the answer goes out gzipped to some and not to others (RFC 9110 8.8.1).
      expect(tag, path).toMatch(/^W\/"[\w-]{27}"$/);
      // The tag is the body's: the same on the next answer, and on the gzipped one.
      expect((await t.request.get(path).set('accept-encoding', 'identity')).headers.etag, path).toBe(tag);
      expect((await t.request.get(path).set('accept-encoding', 'gzip')).headers.etag, path).toBe(tag);
      // The tag, weak or written strong, revalidates either representation (If-None-Match compares
      // weakly); the 304 carries the tag and the Vary the 200 would have (helper 171: it said a
      // strong tag and dropped Accept-Encoding from Vary).
      for (const [held, coding] of [
        [tag, 'identity'],
        [tag, 'gzip'],
        [tag.slice(2), 'gzip'],
      ] as const) {
        const revalidated = await t.request.get(path).set('if-none-match', held).set('accept-encoding', coding);
        expect(revalidated.status, `${path} ${held} ${coding}`).toBe(304);
        expect(revalidated.text, path).toBe('');
        expect(revalidated.headers.etag, path).toBe(tag);
        expect(String(revalidated.headers.vary), path).toMatch(/accept-encoding/i);
      }
      expect((await t.request.get(path).set('if-none-match', '"stale"')).status, path).toBe(200);
    }
    // At least the large ones do go out gzipped, so both representations were seen.
    expect((await t.request.get('/docs/proto/').set('accept-encoding', 'gzip')).headers['content-encoding']).toBe('gzip');
  });

  it('when one address asks for the console script and the Redoc bundle at once in every coding, then each answer is the file, and one taking only deflate gets it plain: nothing is coded per request', async () => {
    // Found by an attacker (helper 202): these paths are outside the rate limit, and every answer
    // was coded anew (the console script with Brotli: 7.6–12.6 ms of CPU and megabytes of memory
    // per 120-byte request; the Redoc bundle, 55 ms). Now each coding is made once (StaticBody,
    // tests/unit/static-body.test.ts); deflate is not one of them, and was coded per request.
    const files = {
      '/console/console.js': await readFile(join(import.meta.dirname, '..', '..', 'console', 'dist', 'console.js'), 'utf8'),
      '/docs/assets/redoc.standalone.js': await readFile(join(import.meta.dirname, '..', '..', 'node_modules', 'redoc', 'bundles', 'redoc.standalone.js'), 'utf8'),
    };
    const codings = [
      ['br', 'br'],
      ['gzip', 'gzip'],
      ['gzip, deflate, br', 'br'],
      ['deflate', undefined],
      ['identity', undefined],
    ] as const;
    const answers = await Promise.all(
      Object.keys(files).flatMap((path) =>
        Array.from({ length: 4 }, () =>
          codings.map(async ([accept, expected]) => {
            const res = await t.request.get(path).set('accept-encoding', accept);
            return {
              path,
              accept,
              expected,
              status: res.status,
              encoding: res.headers['content-encoding'],
              same: res.text === files[path as keyof typeof files],
            };
          }),
        ).flat(),
      ),
    );
    for (const { path, accept, expected, status, encoding, same } of answers) {
      expect({ path, accept, status, encoding, same }).toEqual({ path, accept, status: 200, encoding: expected, same: true });
    }
  });

  it("when the docs' files are asked for with a Range, If-Match or If-Unmodified-Since, then Range is ignored and a failed precondition is a 412 that no cache keeps, never a 500", async () => {
    // Found by an attacker (helper 123): `send`'s 416 and 412 reached the error handler as a 500,
    // logged with a stack for any anonymous request, and the error kept the asset's
    // `cache-control: public, max-age=3600`: a shared cache could serve it as Redoc for an hour.
    const files = ['/docs/assets/redoc.standalone.js', '/docs/assets/docs.js', '/docs/assets/proto.css', '/docs/proto/arcana/user/v1/user.proto'];
    const before = log.lines.length;
    const answers = await Promise.all(
      files.flatMap((path) =>
        [
          { range: 'bytes=99999999-' },
          { range: 'bytes=5-1' },
          { range: 'bytes=0-0' },
          { 'if-match': '"not-this-file"' },
          { 'if-unmodified-since': 'Mon, 01 Jan 2001 00:00:00 GMT' },
        ].map(async (headers) => {
          const res = await t.request.get(path).set(headers).set('accept-encoding', 'identity');
          return { path, headers, status: res.status, cache: res.headers['cache-control'], range: res.headers['content-range'], code: res.body?.error?.code as unknown };
        }),
      ),
    );
    for (const answer of answers) {
      if ('range' in answer.headers) expect(answer, 'served whole').toMatchObject({ status: 200, range: undefined });
      else expect(answer, 'a failed precondition').toMatchObject({ status: 412, cache: 'no-store', range: undefined, code: 'PRECONDITION_FAILED' });
    }
    expect(log.lines.slice(before).filter((line) => line.level === 'error' || line.level === 'fatal')).toEqual([]);
  });

  it('when an API answer carries its own requestId, then it carries no tag of its body; a user read carries its version as tag', async () => {
    const token = await loginAdmin(t);
    const page = await t.request.get('/api/v1/users').set(...bearer(token));
    expect(page.status).toBe(200);
    expect(page.headers.etag).toBeUndefined();
    const me = await t.request.get('/api/v1/auth/me').set(...bearer(token));
    expect(me.headers.etag).toMatch(/^"\d+"$/);
    const user = await t.request.get(`/api/v1/users/${(me.body as { data: { id: number } }).data.id}`).set(...bearer(token));
    expect(user.headers.etag).toMatch(/^"\d+"$/);
  });

  it("when the RPC reference is opened, then it lists every public .proto file with its services' and RPCs' comments, and serves each file", async () => {
    const index = await t.request.get('/docs/proto/');
    expect(index.status).toBe(200);
    expect(index.headers['content-security-policy']).toContain("default-src 'none'");
    const files = publicProtoFiles();
    expect(files).toContain('arcana/user/v1/user_service.proto');
    expect(files.some((file) => file.startsWith('arcana/internal/'))).toBe(false);
    for (const file of files) expect(index.text).toContain(`href="${file}"`);
    // A comment from the .proto, rendered beside its RPC.
    expect(index.text).toContain('rpc GetUser(GetUserRequest) returns (GetUserResponse)');
    expect(index.text).toContain('Returns one user. Self or ADMIN.');

    const proto = await t.request.get('/docs/proto/arcana/user/v1/user_service.proto');
    expect(proto.status).toBe(200);
    expect(proto.headers['content-type']).toMatch(/^text\/plain/);
    expect(proto.text).toBe(await readFile(join(import.meta.dirname, '..', '..', 'proto', 'arcana', 'user', 'v1', 'user_service.proto'), 'utf8'));
    // Internal contracts, paths out of proto/ and unknown files are not served.
    expect((await t.request.get('/docs/proto/arcana/internal/service/v1/stored_answers.proto')).status).toBe(404);
    expect((await t.request.get('/docs/proto/..%2f..%2fpackage.json.proto')).status).toBe(404);
    expect((await t.request.get('/docs/proto/%2e%2e/%2e%2e/openapi.proto')).status).toBe(404);
  });

  it('when the references are opened without or with a trailing slash, or in another case, then every link on them resolves', async () => {
    // The index links relatively: opened as /docs/proto, its links would point into /docs/.
    const bare = await t.request.get('/docs/proto');
    expect(bare.status).toBe(301);
    expect(bare.headers.location).toBe('/docs/proto/');
    const slashed = await t.request.get('/docs/');
    expect(slashed.status).toBe(301);
    expect(slashed.headers.location).toBe('/docs');
    // Opened in capitals, the index's links (relative to where it was opened) still resolve.
    const shouted = await t.request.get('/DOCS/PROTO/');
    expect(shouted.status).toBe(200);
    const links = [...shouted.text.matchAll(/href="([^"]+)"/g)].map((match) => new URL(match[1] ?? '', 'http://host/DOCS/PROTO/').pathname);
    expect(links.length).toBeGreaterThan(3);
    for (const link of links) {
      const answer = await t.request.get(link);
      expect([200, 301], link).toContain(answer.status);
      if (answer.status === 301) expect((await t.request.get(String(answer.headers.location))).status, link).toBe(200);
    }
  });

  it('when a .proto is read for the reference, then services and RPCs get the comment lines just above them', () => {
    const services = protoServices(['// Not attached.', '', '// Does things.', '// Twice.', 'service S {', '  // One.', '  rpc A(AReq) returns (ARes);', '}'].join('\n'));
    expect(services).toEqual([{ name: 'S', comment: 'Does things.\nTwice.', rpcs: [{ name: 'A', signature: '(AReq) returns (ARes)', comment: 'One.' }] }]);
  });
});
