// The embedded database path: no DATABASE_URL, a PGlite directory instead.
import { spawn, type ChildProcessByStdio } from 'node:child_process';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import type { Readable, Writable } from 'node:stream';
import { join, resolve } from 'node:path';
import supertest from 'supertest';
import { Prisma } from '../../gen/prisma/client.ts';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { createApplication, type Application } from '../../src/app.ts';
import { loadConfig } from '../../src/config.ts';
import { createLogger } from '../../src/infrastructure/logger.ts';
import { ADMIN, bearer, newUser, TEST_ENV } from '../helpers/test-app.ts';

const LOCK_MODULE = resolve(import.meta.dirname, '../../src/infrastructure/database/data-dir-lock.ts');

let dataDir: string;
let app: Application;

async function start(dir = dataDir): Promise<Application> {
  const config = loadConfig({ ...TEST_ENV, DATA_DIR: dir });
  return createApplication(config, createLogger({ level: 'silent' }));
}

beforeAll(async () => {
  dataDir = await mkdtemp(join(tmpdir(), 'arcana-pglite-'));
  app = await start();
});

afterAll(async () => {
  await app.close();
  await rm(dataDir, { recursive: true, force: true });
});

describe('embedded PGlite database', () => {
  it('when no DATABASE_URL is set, then register → login → me → refresh → logout works and data survives a restart', async () => {
    expect(app.database?.kind).toBe('pglite');
    let request = supertest(app.http);
    const body = newUser('pglite');
    expect((await request.post('/api/v1/auth/register').send(body)).status).toBe(201);
    const login = await request.post('/api/v1/auth/login').send({ usernameOrEmail: body.username, password: body.password });
    expect(login.status).toBe(200);
    const { accessToken, refreshToken } = login.body.data.tokens as { accessToken: string; refreshToken: string };
    expect((await request.get('/api/v1/auth/me').set(...bearer(accessToken))).body.data.username).toBe(body.username);
    const refreshed = await request.post('/api/v1/auth/refresh').send({ refreshToken });
    expect(refreshed.status).toBe(200);
    expect((await request.post('/api/v1/auth/logout').set(...bearer(refreshed.body.data.accessToken as string))).status).toBe(200);

    await app.close();
    app = await start();
    request = supertest(app.http);
    const again = await request.post('/api/v1/auth/login').send({ usernameOrEmail: body.username, password: body.password });
    expect(again.status).toBe(200);
  });

  it('when statements queue for the embedded database, then the server reads what arrived between two of them, not after all of them', async () => {
    // PGlite runs statements on the server's thread, and started each waiting one as the last
    // ended, all in one turn of the event loop: eight 70 ms listings held every answer, /health
    // included, for 0.5–2 s (helper 149).
    const events: string[] = [];
    const slow = (name: string) =>
      // As a listing reads its page: straight through the driver adapter.
      app.database!.readRows(Prisma.sql`SELECT count(*) FROM generate_series(1, 300000)`).then(() => {
        events.push(name);
      });
    const statements = [slow('first'), slow('second'), slow('third')];
    // What a request arriving while the first runs stands for: a timer, due at once.
    setTimeout(() => events.push('meanwhile'), 0);
    await Promise.all(statements);
    await new Promise((resolve) => setTimeout(resolve, 10));
    // Before the second statement (before the first too, when the first waited for its turn).
    expect(events.indexOf('meanwhile')).toBeGreaterThanOrEqual(0);
    expect(events.indexOf('meanwhile')).toBeLessThan(events.indexOf('second'));
  });

  it('when a second server opens the same DATA_DIR, then it refuses to start, naming the process that holds it; a lock left by a dead process is taken over', async () => {
    // Two servers on one directory both ran, handed one id to two users and broke the table's
    // unique index (helper 53).
    await expect(start()).rejects.toThrow(new RegExp(`DATA_DIR .* is in use by process ${process.pid}`));
    expect((await supertest(app.http).get('/health')).status).toBe(200);

    const other = await mkdtemp(join(tmpdir(), 'arcana-pglite-lock-'));
    const sleeper = spawn('sleep', ['30']);
    try {
      // Another process that runs holds it.
      await writeFile(join(other, 'arcana-server.pid'), `${sleeper.pid}\n`);
      await expect(start(other)).rejects.toThrow(new RegExp(`is in use by process ${sleeper.pid}`));
      // One that has died (kill -9 leaves its lock behind) does not.
      sleeper.kill('SIGKILL');
      await once(sleeper, 'exit');
      const second = await start(other);
      // Its pid, and the pid namespace that pid means something in.
      expect(await readFile(join(other, 'arcana-server.pid'), 'utf8')).toMatch(new RegExp(`^${process.pid}\n.+/pid:\\[\\d+\\]\n$`));
      await second.close();
      await expect(readFile(join(other, 'arcana-server.pid'), 'utf8')).rejects.toThrow(/ENOENT/);
    } finally {
      sleeper.kill('SIGKILL');
      await rm(other, { recursive: true, force: true });
    }
  });

  it('when several servers start at once on a DATA_DIR whose lock a dead process left (kill -9), then exactly one takes it over', async () => {
    // Found by an attacker (helper 113): a contender that had read the dead pid found the
    // take-over mark gone once another had taken the lock over, made it again, removed the new
    // holder's lock and wrote its own; two or three of six "held" the directory in most rounds.
    // Three rounds (each starts six processes: five rounds were 14 s of CI's workers).
    const winners: number[] = [];
    for (let round = 0; round < 3; round += 1) {
      const dir = await mkdtemp(join(tmpdir(), 'arcana-lock-race-'));
      try {
        await writeFile(join(dir, 'arcana-server.pid'), '999999\n');
        const startAt = Date.now() + 1_500;
        const got = await lockInChildProcesses(dir, 6, startAt);
        winners.push(got.filter(Boolean).length);
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    }
    expect(winners).toEqual([1, 1, 1]);
  }, 60_000);

  it.skipIf(process.getuid?.() !== 0 || !existsSync('/usr/bin/unshare'))(
    'when servers in two containers (each pid 1 of its own pid namespace) start on one DATA_DIR, then the second refuses while the first lives, and takes the lock once the first is killed',
    async () => {
      // Found by an attacker (helper 199): the image runs the server as pid 1, and the second
      // container read the first one's "1" as its own pid from a previous life, took the lock and
      // ran beside it. Here, a heartbeat of 100 ms and 800 ms to go stale.
      const dir = await mkdtemp(join(tmpdir(), 'arcana-lock-ns-'));
      const holders = namespacedHolders(dir);
      const container = holders.start;
      const first = container();
      try {
        expect(await first.said).toBe('GOT');
        // Once the first holds it (started together, either may win on a loaded machine).
        const second = container();
        expect(await second.said).toMatch(/^NO DATA_DIR .* is in use by process 1 of another container or machine/);
        first.child.kill('SIGKILL');
        await once(first.child, 'exit');
        const third = container();
        expect(await third.said).toBe('GOT');
      } finally {
        await holders.end();
        await rm(dir, { recursive: true, force: true });
      }
    },
    30_000,
  );

  it.skipIf(process.getuid?.() !== 0 || !existsSync('/usr/bin/unshare'))(
    'when a holder in another container is stopped past the heartbeat and its lock taken over, then once resumed it learns it lost the lock, and its release leaves the new holder’s',
    async () => {
      // Found by an attacker (helper 200): the resumed holder served beside the new one, and its
      // release removed the new one's lock (every container's pid is 1), so a third started.
      const dir = await mkdtemp(join(tmpdir(), 'arcana-lock-lost-'));
      const holders = namespacedHolders(dir);
      const container = holders.start;
      try {
        const first = container();
        await first.says('GOT');
        const lock = join(dir, 'arcana-server.pid');
        const firstText = await readFile(lock, 'utf8');
        // The holder in the container is unshare's child, which the stop reaches with the group.
        process.kill(-(first.child.pid ?? 0), 'SIGSTOP');
        const second = container();
        await second.says('GOT');
        const secondText = await readFile(lock, 'utf8');
        expect(secondText).not.toBe(firstText);
        process.kill(-(first.child.pid ?? 0), 'SIGCONT');
        await first.says('LOST');
        first.child.stdin.end();
        await first.says('RELEASED');
        expect(await readFile(lock, 'utf8')).toBe(secondText);
        // A third still finds it held.
        const third = container();
        expect(await third.said).toMatch(/^NO /);
      } finally {
        await holders.end();
        await rm(dir, { recursive: true, force: true });
      }
    },
    30_000,
  );

  it('when admin writes race on PGlite, then the conditional writes and the last-admin transaction hold there too', async () => {
    const request = supertest(app.http);
    const login = await request.post('/api/v1/auth/login').send({ usernameOrEmail: ADMIN.username, password: ADMIN.password });
    expect(login.status).toBe(200);
    const admin = login.body.data.tokens.accessToken as string;
    const adminId = login.body.data.user.id as number;
    const user = await request.post('/api/v1/auth/register').send(newUser('pglite'));
    const userId = user.body.data.user.id as number;
    const verifies = await Promise.all(Array.from({ length: 10 }, () => request.post(`/api/v1/users/${userId}/verify`).set(...bearer(admin))));
    expect(verifies.map((res) => res.status).sort()).toEqual([200, ...Array.from({ length: 9 }, () => 409)]);
    // The interactive transaction with SELECT … FOR UPDATE runs on the embedded database.
    const self = await request
      .put(`/api/v1/users/${adminId}/status`)
      .set(...bearer(admin))
      .send({ status: 'SUSPENDED' });
    expect(self.status).toBe(409);
    expect(self.body.error.code).toBe('LAST_ADMIN');
    const promoted = await request
      .put(`/api/v1/users/${userId}/role`)
      .set(...bearer(admin))
      .send({ role: 'ADMIN' });
    expect(promoted.status).toBe(200);
    expect((await request.delete(`/api/v1/users/${userId}`).set(...bearer(admin))).status).toBe(200);
  });
});

/**
 * Processes that each wait until `startAt` and try to lock `dir` as a server would; resolves to
 * whether each got it. Each holds what it got until all have said, so a process that starts late
 * (its import slow on a loaded machine) cannot find the winner already gone and rightly take over
 * a dead process's lock (one CI run saw [1, 2, 1] that way).
 */
async function lockInChildProcesses(dir: string, count: number, startAt: number): Promise<boolean[]> {
  const script = `
    const { lockDataDir } = await import(${JSON.stringify(LOCK_MODULE)});
    while (Date.now() < ${startAt}) {}
    let got = false;
    try { await lockDataDir(${JSON.stringify(dir)}); got = true; } catch {}
    process.stdout.write(got ? 'GOT' : 'NO');
    process.stdin.resume();
    await new Promise((resolve) => process.stdin.once('end', resolve));`;
  const children = Array.from({ length: count }, () => spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['pipe', 'pipe', 'inherit'] }));
  try {
    return await Promise.all(
      children.map(
        (child) =>
          new Promise<boolean>((resolve) => {
            let out = '';
            child.stdout.on('data', (chunk: Buffer) => {
              out += chunk.toString();
              if (out === 'GOT' || out === 'NO') resolve(out === 'GOT');
            });
            child.once('exit', () => resolve(out === 'GOT'));
          }),
      ),
    );
  } finally {
    for (const child of children) child.stdin.end();
    await Promise.all(children.filter((child) => child.exitCode === null && child.signalCode === null).map((child) => once(child, 'exit')));
  }
}

/**
 * Lock holders on `dir`, each pid 1 of a pid namespace of its own (a container's view), with a
 * heartbeat of 100 ms and 800 ms to go stale. Each says `GOT` or `NO <why>`, `LOST` if its lock is
 * taken over, and, once its stdin ends, releases it and says `RELEASED`. Each runs in a process
 * group of its own, so that a stop reaches unshare and the holder together.
 */
function namespacedHolders(dir: string) {
  const script = `
    const { lockDataDir } = await import(${JSON.stringify(LOCK_MODULE)});
    let release;
    try { release = await lockDataDir(${JSON.stringify(dir)}, { heartbeatMs: 100, staleAfterMs: 800 }, () => process.stdout.write('LOST\\n')); process.stdout.write('GOT\\n'); }
    catch (error) { process.stdout.write('NO ' + error.message + '\\n'); }
    process.stdin.resume();
    await new Promise((resolve) => process.stdin.once('end', resolve));
    await release?.();
    process.stdout.write('RELEASED\\n');`;
  const children: ChildProcessByStdio<Writable, Readable, null>[] = [];
  const start = () => {
    const child = spawn('/usr/bin/unshare', ['--pid', '--fork', '--kill-child', process.execPath, '--input-type=module', '-e', script], {
      stdio: ['pipe', 'pipe', 'inherit'],
      detached: true,
    });
    children.push(child);
    let out = '';
    child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
    const lines = () => out.split('\n');
    const says = (line: string) => vi.waitFor(() => expect(lines()).toContain(line), { timeout: 10_000, interval: 20 });
    return {
      child,
      says,
      /** Its first line, once said: whether it got the lock. */
      get said() {
        return vi.waitFor(
          () => {
            if (lines().length < 2 && child.exitCode === null) throw new Error('nothing said yet');
            return lines()[0] ?? '';
          },
          { timeout: 10_000, interval: 20 },
        );
      },
    };
  };
  const end = async () => {
    for (const child of children) {
      child.stdin.end();
      if (child.exitCode === null && child.signalCode === null) await once(child, 'exit');
    }
  };
  return { start, end };
}
