// console/dist is committed so that `npm start` serves the console without devDependencies; this
// fails when it is not what scripts/build-console.ts builds from console/ and gen/ now (run
// `npm run build:console`), and when the page would need inline code or another origin.
import { execFileSync } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import express from 'express';
import supertest from 'supertest';
import { describe, expect, it } from 'vitest';
import { CONSOLE_CSP, CONSOLE_DIST, createConsoleRoutes } from '../../src/controllers/rest/console-routes.ts';

const root = join(import.meta.dirname, '..', '..');

describe('the console bundle', () => {
  it('when rebuilt from console/ and gen/, then it equals the committed console/dist', async () => {
    const out = await mkdtemp(join(tmpdir(), 'arcana-console-'));
    try {
      execFileSync(process.execPath, [join(root, 'scripts', 'build-console.ts'), '--out', out, '--quiet'], { cwd: root, stdio: 'pipe' });
      const fresh = (await readdir(out)).sort();
      expect((await readdir(CONSOLE_DIST)).sort()).toEqual(fresh);
      for (const name of fresh) {
        expect(await readFile(join(CONSOLE_DIST, name), 'utf8'), `console/dist/${name} is stale: npm run build:console`).toBe(await readFile(join(out, name), 'utf8'));
      }
    } finally {
      await rm(out, { recursive: true, force: true });
    }
  }, 120_000);

  it("when the README states the bundle size, then it is the committed bundle's", async () => {
    const bundle = await readFile(join(CONSOLE_DIST, 'console.js'));
    const readme = await readFile(join(root, 'README.md'), 'utf8');
    const size = (bytes: number) => bytes.toLocaleString('en-US');
    expect(readme).toContain(`\`console.js\` ${size(bundle.length)} bytes (${size(gzipSync(bundle, { level: 9 }).length)} gzipped`);
  });

  it('when the page is read, then it loads only its own script and stylesheet, with nothing inline', async () => {
    const html = await readFile(join(CONSOLE_DIST, 'index.html'), 'utf8');
    const sources = [...html.matchAll(/<(?:script|link)\b[^>]*\b(?:src|href)="([^"]+)"/g)].map((match) => match[1]);
    expect(sources.sort()).toEqual(['/console/console.css', '/console/console.js']);
    expect(html).not.toMatch(/<script(?![^>]*\bsrc=)[^>]*>/);
    expect(html).not.toMatch(/<style|\sstyle=|\son[a-z]+=/i);
    // The bundle reaches no other origin and builds no code from strings.
    const bundle = await readFile(join(CONSOLE_DIST, 'console.js'), 'utf8');
    expect(bundle).not.toMatch(/https?:\/\/(?!www\.w3\.org)[a-z]/i);
    expect(bundle).not.toMatch(/\beval\(|new Function\(|\.innerHTML\s*=/);
  });

  it('when /console and its assets are requested, then each is served with the strict CSP; other paths are not', async () => {
    const app = express().use(createConsoleRoutes());
    const request = supertest(app);
    for (const [path, type] of [
      ['/console', 'text/html'],
      ['/console/', 'text/html'],
      ['/console/console.js', 'text/javascript'],
      ['/console/console.css', 'text/css'],
    ] as const) {
      const res = await request.get(path);
      expect(res.status, path).toBe(200);
      expect(res.headers['content-type']).toContain(type);
      expect(res.headers['content-security-policy']).toBe(CONSOLE_CSP);
    }
    expect((await request.get('/console/index.html')).status).toBe(404);
    expect((await request.get('/console/../package.json')).status).toBe(404);
    for (const directive of ["default-src 'self'", "script-src 'self'", "style-src 'self'", "connect-src 'self'", "frame-ancestors 'none'", "object-src 'none'"]) {
      expect(CONSOLE_CSP).toContain(directive);
    }
    expect(CONSOLE_CSP).not.toMatch(/unsafe|https?:|\*/);
  });
});
