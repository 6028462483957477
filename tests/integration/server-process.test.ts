// The real entry point as a user starts it: `npm start` with no DATABASE_URL (embedded database),
// talked to over real HTTP, then stopped with SIGTERM, as a supervisor or `timeout` stops it.
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { once } from 'node:events';
import { mkdir, mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { newUser } from '../helpers/test-app.ts';

const root = join(import.meta.dirname, '..', '..');
let dataDir: string;
/** The server's TMPDIR: in it, the node-compile-cache another local user made first. */
let sharedTmp: string;
let server: ChildProcessWithoutNullStreams;
let baseUrl: string;
const logLines: string[] = [];

beforeAll(async () => {
  dataDir = await mkdtemp(join(tmpdir(), 'arcana-server-'));
  sharedTmp = await mkdtemp(join(tmpdir(), 'arcana-shared-tmp-'));
  // Node's default compile cache directory, made first (and writable) by someone else.
  await mkdir(join(sharedTmp, 'node-compile-cache'), { mode: 0o777 });
  // npm runs the script through sh; --silent keeps its banner off the JSON log lines.
  server = spawn('npm', ['start', '--silent'], {
    cwd: root,
    // A process group of its own, so that afterAll can end whatever npm started.
    detached: true,
    // No HOST, as `npm start` runs it: every address, IPv6 and IPv4.
    env: { PATH: process.env.PATH ?? '', PORT: '0', DATA_DIR: dataDir, BCRYPT_ROUNDS: '4', LOG_LEVEL: 'info' },
  });
  baseUrl = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start:\n${logLines.join('\n')}`)), 60_000);
    createInterface({ input: server.stdout }).on('line', (line) => {
      logLines.push(line);
      if (!line.startsWith('{')) return;
      const entry = JSON.parse(line) as { msg?: string; address?: string };
      if (entry.msg === 'arcana-cloud listening') {
        clearTimeout(timer);
        resolve(`http://127.0.0.1:${(entry.address ?? '').split(':').at(-1) ?? ''}`);
      }
    });
    server.stderr.on('data', (chunk: Buffer) => logLines.push(chunk.toString()));
    server.once('exit', (code) => reject(new Error(`server exited with ${code}:\n${logLines.join('\n')}`)));
  });
});

afterAll(async () => {
  try {
    if (server.pid !== undefined) process.kill(-server.pid, 'SIGKILL');
  } catch {
    // The group has ended.
  }
  await rm(dataDir, { recursive: true, force: true });
  await rm(sharedTmp, { recursive: true, force: true });
});

async function call(method: string, path: string, body?: unknown, token?: string) {
  const res = await fetch(`${baseUrl}${path}`, {
    method,
    headers: { 'content-type': 'application/json', ...(token === undefined ? {} : { authorization: `Bearer ${token}` }) },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  return { status: res.status, body: (await res.json()) as { data: Record<string, never> & { tokens: { accessToken: string; refreshToken: string } } } };
}

describe('npm start', () => {
  it("when started without HOST, then it answers on IPv6 as on IPv4, as a probe at a pod's IPv6 address reaches it", async () => {
    // Found by an attacker (helper 128): the default, and the image's and manifests' HOST, was
    // 0.0.0.0, IPv4 only; on a cluster whose pods have IPv6 addresses nothing answered the probes.
    const port = new URL(baseUrl).port;
    const answers = await Promise.all(
      [`http://127.0.0.1:${port}/health`, `http://[::1]:${port}/health`].map((url) =>
        fetch(url).then(
          (res) => res.status,
          (error: unknown) => String((error as { cause?: { code?: string } }).cause?.code ?? error),
        ),
      ),
    );
    expect(answers).toEqual([200, 200]);
  });

  it("when another local user made the temporary directory's node-compile-cache first, then the server neither reads nor writes it: its compiled code is cached with the project's own", async () => {
    // Helper 195: Node's default cache is $TMPDIR/node-compile-cache, whoever owns it. Its entries
    // (type-stripped source, checked by CRC32 only) planted there ran in the server at the next
    // start. The entry point turns the cache on first: a start that then stops at a bad setting
    // has already chosen its directory. (Not through npm, which caches its own code there.)
    const child = spawn(process.execPath, [join(root, 'src', 'main.js')], {
      cwd: root,
      env: { PATH: process.env.PATH ?? '', TMPDIR: sharedTmp, PORT: 'no port' },
      stdio: 'ignore',
    });
    const [code] = (await once(child, 'exit')) as [number | null];
    expect(code).toBe(1);
    expect(await readdir(join(sharedTmp, 'node-compile-cache'))).toEqual([]);
    // Node makes the directory of its version when the cache is turned on, and writes the
    // entries as the process exits.
    expect(await readdir(join(root, 'node_modules', '.cache', 'node-compile-cache'))).toContainEqual(expect.stringMatching(/^v\d+\./));
  });

  it('when used as the README shows, then register → login → me → refresh → logout all succeed', async () => {
    const user = newUser('readme');
    expect((await call('POST', '/api/v1/auth/register', user)).status).toBe(201);
    const login = await call('POST', '/api/v1/auth/login', { usernameOrEmail: user.username, password: user.password });
    expect(login.status).toBe(200);
    const me = await call('GET', '/api/v1/auth/me', undefined, login.body.data.tokens.accessToken);
    expect(me.status).toBe(200);
    const refreshed = await call('POST', '/api/v1/auth/refresh', { refreshToken: login.body.data.tokens.refreshToken });
    expect(refreshed.status).toBe(200);
    const newAccess = (refreshed.body.data as unknown as { accessToken: string }).accessToken;
    expect((await call('POST', '/api/v1/auth/logout', undefined, newAccess)).status).toBe(200);
    expect((await call('GET', '/api/v1/auth/me', undefined, newAccess)).status).toBe(401);
  });

  it('then no log line carries a password, a hash or a token', () => {
    const logs = logLines.join('\n');
    expect(logs).not.toMatch(/Passw0rd|\$2[aby]\$|eyJ/);
    expect(logs).toContain('request completed');
  });

  it('when npm is sent SIGTERM, then the server drains and exits with code 0, and npm with it', async () => {
    // npm passes the signal to its script's process, which was sh: node, sh's child, never heard
    // it and kept serving, orphaned, while npm exited 143 (helper 191). The script execs node.
    const exited = new Promise<number | null>((resolve) => server.once('exit', resolve));
    server.kill('SIGTERM');
    expect(await exited).toBe(0);
    expect(logLines.join('\n')).toContain('shutdown complete');
    expect(
      await fetch(`${baseUrl}/health`).then(
        (res) => res.status,
        () => 'refused',
      ),
    ).toBe('refused');
  });
});
