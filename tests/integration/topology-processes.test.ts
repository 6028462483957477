// Split topologies as real processes: `node src/main.js` per layer, configured only by the
// environment (scripts/topology.ts), talked to over loopback. What a client sees when a lower
// layer dies, stalls or comes back.
import { createClient } from '@connectrpc/connect';
import { createConnectTransport, createGrpcTransport } from '@connectrpc/connect-node';
import { Code, ConnectError } from '@connectrpc/connect';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import http2 from 'node:http2';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AuthService } from '../../gen/proto/arcana/auth/v1/auth_service_pb.js';
import { TokenRepositoryService } from '../../gen/proto/arcana/internal/repository/v1/token_repository_service_pb.js';
import { UserRepositoryService } from '../../gen/proto/arcana/internal/repository/v1/user_repository_service_pb.js';
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from '../../gen/proto/grpc/health/v1/health_pb.js';
import { freePort, startTopology, type LayerProcess, type RunningTopology } from '../../scripts/topology.ts';
import { ADMIN, newUser, TEST_DATABASE_URL, TEST_ENV } from '../helpers/test-app.ts';
import { createMigratedSchema } from '../helpers/test-database.ts';

// Long enough that a request held up on purpose (below) is not also cut off by its deadline on a
// busy CI machine.
const INTERNAL_TIMEOUT_MS = 3_000;
let topology: RunningTopology;
let admin: pg.Client;
let schema: string;

const layer = (name: string): LayerProcess => {
  const found = topology.layers.find((candidate) => candidate.name === name);
  if (found === undefined) throw new Error(`no ${name} layer`);
  return found;
};

async function rest(method: string, path: string, body?: unknown, token?: string) {
  const res = await fetch(`${topology.baseUrl}${path}`, {
    method,
    headers: { 'content-type': 'application/json', ...(token === undefined ? {} : { authorization: `Bearer ${token}` }) },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  return {
    status: res.status,
    retryAfter: res.headers.get('retry-after'),
    body: (await res.json()) as { success: boolean; data?: Record<string, unknown>; error?: { code: string; message: string } },
  };
}

async function registerUser() {
  const user = newUser('topo');
  const res = await rest('POST', '/api/v1/auth/register', user);
  expect(res.status).toBe(201);
  const data = res.body.data as { user: { id: number }; tokens: { accessToken: string } };
  return { ...user, id: data.user.id, accessToken: data.tokens.accessToken };
}

beforeAll(async () => {
  schema = `test_topo_${Date.now()}_${randomBytes(3).toString('hex')}`;
  admin = new pg.Client({ connectionString: TEST_DATABASE_URL });
  await admin.connect();
  await createMigratedSchema(admin, schema);
  const url = new URL(TEST_DATABASE_URL);
  url.searchParams.set('schema', schema);
  topology = await startTopology({
    name: 'layered-grpc',
    env: {
      PATH: process.env.PATH,
      ...TEST_ENV,
      OPENAPI_VALIDATE_RESPONSES: 'false',
      LOG_LEVEL: 'warn',
      DATABASE_URL: url.toString(),
      INTERNAL_TIMEOUT_MS: String(INTERNAL_TIMEOUT_MS),
      SHUTDOWN_TIMEOUT_MS: '5000',
    },
  });
});

afterAll(async () => {
  // beforeAll may have failed before assigning it.
  await (topology as RunningTopology | undefined)?.stop();
  await admin.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
  await admin.end();
});

describe('layered/grpc as three processes', () => {
  it('when every layer is up, then each answers /health, /ready and gRPC health, and the API works end to end', async () => {
    for (const process of topology.layers) {
      expect((await fetch(`${process.url}/health`)).status).toBe(200);
      const ready = await fetch(`${process.url}/ready`);
      expect(ready.status).toBe(200);
      const health = createClient(Health, createGrpcTransport({ baseUrl: process.url }));
      expect((await health.check({ service: '' })).status).toBe(ServingStatus.SERVING);
    }
    expect(await (await fetch(`${layer('controller').url}/ready`)).json()).toEqual({ status: 'ready', checks: { service: 'ok' } });
    expect(await (await fetch(`${layer('service').url}/ready`)).json()).toEqual({ status: 'ready', checks: { repository: 'ok' } });
    expect(await (await fetch(`${layer('repository').url}/ready`)).json()).toEqual({ status: 'ready', checks: { database: 'ok' } });

    const user = await registerUser();
    const me = await rest('GET', '/api/v1/auth/me', undefined, user.accessToken);
    expect(me.status).toBe(200);
    expect(me.body.data).toMatchObject({ id: user.id, username: user.username });
    const login = await rest('POST', '/api/v1/auth/login', { usernameOrEmail: ADMIN.username, password: ADMIN.password });
    expect(login.status).toBe(200);
  });

  it('when something other than the layer above calls an internal API, then it is refused without the shared secret', async () => {
    const direct = createClient(UserRepositoryService, createGrpcTransport({ baseUrl: layer('repository').url }));
    const refused = await direct.findUserByLogin({ usernameOrEmail: ADMIN.username }).catch((error: unknown) => ConnectError.from(error));
    expect(refused).toBeInstanceOf(ConnectError);
    expect((refused as ConnectError).code).toBe(Code.Unauthenticated);
    const wrong = await direct
      .findUserByLogin({ usernameOrEmail: ADMIN.username }, { headers: { authorization: 'Bearer not-the-secret-not-the-secret-000' } })
      .catch((error: unknown) => ConnectError.from(error));
    expect((wrong as ConnectError).code).toBe(Code.Unauthenticated);
    const allowed = await direct.findUserByLogin({ usernameOrEmail: ADMIN.username }, { headers: { authorization: `Bearer ${TEST_ENV.INTERNAL_API_SECRET}` } });
    expect(allowed.user?.username).toBe(ADMIN.username);
  });

  it('when callers without the secret send bodies, then each is refused from its headers: before its body has come, and without a word about it', async () => {
    // The check used to run after the body was read, decompressed and decoded (up to 16 MiB per
    // call, for anyone): a 16 KB gzip bomb took the repository from 0.8 to 4.3 GB, and a garbled
    // body was told which fields were wrong.
    const { origin } = new URL(layer('repository').url);
    const path = `/${UserRepositoryService.typeName}/FindUserByLogin`;
    const session = http2.connect(origin);
    session.on('error', () => undefined);
    try {
      const stalled = Array.from({ length: 5 }, async () => {
        const started = performance.now();
        const stream = session.request({ ':method': 'POST', ':path': path, 'content-type': 'application/grpc', te: 'trailers' }, { endStream: false });
        stream.on('error', () => undefined);
        // A 16 MiB message announced, five bytes of it sent, the rest never.
        stream.write(Buffer.from([0, 0, 255, 255, 255]));
        stream.resume();
        const status = await new Promise<unknown>((resolve) => {
          stream.once('response', (headers) => headers['grpc-status'] !== undefined && resolve(headers['grpc-status']));
          stream.once('trailers', (trailers) => resolve(trailers['grpc-status']));
          stream.once('close', () => resolve('closed without a status'));
        });
        stream.close();
        return { status, ms: performance.now() - started };
      });
      // Its failure, if any, is taken at once: it is awaited only after the stalled calls.
      const garbled = fetch(`${origin}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"noSuchField":1}' }).then(
        (response) => response,
        (error: unknown) => ({ status: `fetch failed: ${String(error)}`, json: () => Promise.resolve(null) }),
      );
      for (const { status, ms } of await Promise.all(stalled)) {
        expect(status).toBe(String(Code.Unauthenticated));
        expect(ms).toBeLessThan(INTERNAL_TIMEOUT_MS);
      }
      const answer = await garbled;
      expect(answer.status).toBe(401);
      expect(await answer.json()).toMatchObject({ code: 'unauthenticated' });
    } finally {
      session.close();
    }
  });

  it('when a caller without the secret holds health checks open by the hundred, then no more than 32 are admitted at once from its address, and the layer above is still served', async () => {
    // Health checks need no secret (probes carry none) and had no cap on a layer's port: one
    // client held 40 000 open without their end, 13 KB each, 744 MB of RSS against a 512 Mi pod,
    // until the request timeout (helper 150).
    const { origin } = new URL(layer('repository').url);
    const session = http2.connect(origin, { settings: { enablePush: false } });
    session.on('error', () => undefined);
    try {
      const outcomes = await Promise.all(
        Array.from({ length: 200 }, () => {
          const stream = session.request({ ':method': 'POST', ':path': '/grpc.health.v1.Health/Check', 'content-type': 'application/grpc', te: 'trailers' }, { endStream: false });
          stream.on('error', () => undefined);
          return new Promise<string>((resolve) => {
            // Refused streams close at once; admitted ones wait for a body that never comes.
            const timer = setTimeout(() => resolve('held'), 1_000);
            stream.once('close', () => {
              clearTimeout(timer);
              resolve(stream.rstCode === http2.constants.NGHTTP2_REFUSED_STREAM ? 'refused' : `closed ${stream.rstCode}`);
            });
          });
        }),
      );
      const held = outcomes.filter((outcome) => outcome === 'held').length;
      expect(held).toBeGreaterThan(0);
      expect(held).toBeLessThanOrEqual(32);
      expect(outcomes.filter((outcome) => outcome !== 'held' && outcome !== 'refused')).toEqual([]);
      // The layer above presents the secret, and is served all the while.
      const user = await registerUser();
      expect((await rest('GET', '/api/v1/auth/me', undefined, user.accessToken)).status).toBe(200);
    } finally {
      session.destroy();
    }
  });

  it('when a request fails in the repository layer, then the client gets the same code and message as from a monolith', async () => {
    const user = await registerUser();
    const again = await rest('POST', '/api/v1/auth/register', { ...newUser('topo'), username: user.username });
    expect(again.status).toBe(409);
    expect(again.body.error).toEqual({ code: 'CONFLICT', message: 'Username already exists', details: { username: 'already exists' } });
  });

  it('when the repository process is killed during requests, then the API answers 503 / unavailable, writes nothing half-way, and recovers when it is back without restarting the others', async () => {
    const user = await registerUser();
    const before = { service: layer('service').pid, controller: layer('controller').pid };
    const rpc = createClient(AuthService, createGrpcTransport({ baseUrl: topology.baseUrl }));

    // A stream of registrations, four at a time; the repository process dies in the middle of it.
    const attempts: ReturnType<typeof newUser>[] = [];
    const outcomes: { status: number }[] = [];
    let killed: Promise<number | null> | undefined;
    const worker = async () => {
      for (let i = 0; i < 8; i += 1) {
        const body = newUser('crash');
        attempts.push(body);
        const outcome = await rest('POST', '/api/v1/auth/register', body);
        outcomes[attempts.indexOf(body)] = outcome;
        if (killed === undefined && outcomes.filter((o) => o.status === 201).length >= 4) killed = layer('repository').stop('SIGKILL');
      }
    };
    await Promise.all([worker(), worker(), worker(), worker()]);
    await killed;
    const statuses = outcomes.map((outcome) => outcome.status);
    expect(statuses).toContain(201);
    expect(statuses).toContain(503);
    for (const status of statuses) expect([201, 503]).toContain(status);

    const down = await rest('GET', '/api/v1/auth/me', undefined, user.accessToken);
    expect(down.status).toBe(503);
    expect(down.body).toMatchObject({ success: false, error: { code: 'SERVICE_UNAVAILABLE', message: 'The service is temporarily unavailable, please try again shortly' } });
    // A layer that cannot be reached may be back in a moment: the client is told when to retry.
    expect(down.retryAfter).toBe('1');
    const rpcDown = await rpc.getCurrentUser({}, { headers: { authorization: `Bearer ${user.accessToken}` } }).catch((error: unknown) => ConnectError.from(error));
    expect(rpcDown).toBeInstanceOf(ConnectError);
    expect((rpcDown as ConnectError).code).toBe(Code.Unavailable);
    expect((rpcDown as ConnectError).metadata.get('retry-after')).toBe('1');
    expect((await fetch(`${layer('controller').url}/health`)).status).toBe(200);
    expect((await fetch(`${layer('service').url}/ready`)).status).toBe(503);
    const refused = await rest('POST', '/api/v1/auth/register', newUser('crash'));
    expect(refused.status).toBe(503);

    await layer('repository').start();
    const up = await rest('GET', '/api/v1/auth/me', undefined, user.accessToken);
    expect(up.status).toBe(200);
    expect((await rpc.getCurrentUser({}, { headers: { authorization: `Bearer ${user.accessToken}` } })).user?.id).toBe(user.id);
    expect({ service: layer('service').pid, controller: layer('controller').pid }).toEqual(before);

    // Every account whose registration was answered 201 is whole: its row and its session.
    // One answered 503 may or may not exist (the repository may have committed just before it
    // died), but any row there is complete, and the account can log in.
    const usernames = attempts.map((attempt) => attempt.username);
    const rows = await admin.query<{ username: string; sessions: string }>(
      `SELECT u.username, count(t.id) AS sessions FROM users u LEFT JOIN oauth_tokens t ON t.user_id = u.id WHERE u.username = ANY($1) GROUP BY u.username`,
      [usernames],
    );
    const stored = new Map(rows.rows.map((row) => [row.username, Number(row.sessions)]));
    outcomes.forEach((outcome, index) => {
      const attempt = attempts[index];
      if (attempt === undefined) return;
      if (outcome.status === 201) expect(stored.get(attempt.username)).toBe(1);
    });
    for (const username of stored.keys()) {
      const attempt = attempts.find((candidate) => candidate.username === username);
      const login = await rest('POST', '/api/v1/auth/login', { usernameOrEmail: username, password: attempt?.password });
      expect(login.status).toBe(200);
    }
  });

  it('when the repository stalls, then calls end at their deadline with 503, and succeed again once it resumes', async () => {
    const user = await registerUser();
    const repository = layer('repository');
    process.kill(repository.pid as number, 'SIGSTOP');
    try {
      const started = Date.now();
      const stalled = await rest('GET', '/api/v1/auth/me', undefined, user.accessToken);
      const elapsed = Date.now() - started;
      expect(stalled.status).toBe(503);
      expect(stalled.body.error?.code).toBe('SERVICE_UNAVAILABLE');
      expect(elapsed).toBeGreaterThanOrEqual(INTERNAL_TIMEOUT_MS - 100);
      expect(elapsed).toBeLessThan(INTERNAL_TIMEOUT_MS + 2_000);
    } finally {
      process.kill(repository.pid as number, 'SIGCONT');
    }
    expect((await rest('GET', '/api/v1/auth/me', undefined, user.accessToken)).status).toBe(200);
  });

  it('when the repository stalls past the deadline of writes sent to it, over gRPC and Connect on HTTP/1.1, then it does not carry them out when it resumes', async () => {
    const users = [await registerUser(), await registerUser()];
    const families = await Promise.all(
      users.map(async (user) => (await admin.query<{ family_id: string }>('SELECT family_id FROM oauth_tokens WHERE user_id = $1', [user.id])).rows[0]?.family_id ?? ''),
    );
    const repository = layer('repository');
    const secret = { authorization: `Bearer ${TEST_ENV.INTERNAL_API_SECRET}` };
    // As the service layer calls the repository: HTTP/2 (gRPC), and Connect over HTTP/1.1.
    const transports = [createGrpcTransport({ baseUrl: repository.url }), createConnectTransport({ baseUrl: repository.url, httpVersion: '1.1' })];
    process.kill(repository.pid as number, 'SIGSTOP');
    let outcomes;
    try {
      // Each call reaches the repository's socket and waits there, unread, past its deadline.
      outcomes = await Promise.all(
        transports.map((transport, i) =>
          createClient(TokenRepositoryService, transport)
            .revokeTokenFamily({ familyId: families[i], reason: 'logout' }, { headers: secret, timeoutMs: 500 })
            .then(() => 'ok')
            .catch((error: unknown) => Code[ConnectError.from(error).code]),
        ),
      );
      // Resumed a while after the callers gave up, as after a long pause of its machine.
      await new Promise((resolve) => setTimeout(resolve, 1_000));
    } finally {
      process.kill(repository.pid as number, 'SIGCONT');
    }
    expect(outcomes).toEqual([Code[Code.DeadlineExceeded], Code[Code.DeadlineExceeded]]);
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    // Carried out ~2 s after the caller had given up, before (helper 50).
    const revoked = await admin.query('SELECT user_id FROM oauth_tokens WHERE user_id = ANY($1) AND is_revoked', [users.map((user) => user.id)]);
    expect(revoked.rows).toEqual([]);
    for (const user of users) expect((await rest('GET', '/api/v1/auth/me', undefined, user.accessToken)).status).toBe(200);
  });

  it('when the service layer is sent SIGTERM, then it finishes the request in flight, exits 0, and the controller answers 503 until it is back', async () => {
    const user = await registerUser();
    const repository = layer('repository');
    // Hold a request inside the service layer: it waits on the stalled repository. A login is
    // one call to the service layer (a draining process takes no new calls, so a request that
    // needs a second call to it would rightly fail over to another replica, and here there is none).
    process.kill(repository.pid as number, 'SIGSTOP');
    const inFlight = rest('POST', '/api/v1/auth/login', { usernameOrEmail: user.username, password: user.password });
    // Time for the login to reach the service layer even on a loaded machine.
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    const exited = layer('service').stop('SIGTERM');
    await new Promise((resolve) => setTimeout(resolve, 300));
    process.kill(repository.pid as number, 'SIGCONT');
    expect((await inFlight).status).toBe(200);
    expect(await exited).toBe(0);

    expect((await rest('GET', '/api/v1/auth/me', undefined, user.accessToken)).status).toBe(503);
    expect((await fetch(`${layer('controller').url}/ready`)).status).toBe(503);
    await layer('service').start();
    expect((await rest('GET', '/api/v1/auth/me', undefined, user.accessToken)).status).toBe(200);
  });
});

describe('npm run start:layered, stopped from a terminal', () => {
  it("when Ctrl-C reaches the terminal's process group with registrations in flight, then the layers stop top down: every registration is answered 201 and npm exits 0", async () => {
    // Helper 193: the layers shared the runner's process group, so a terminal's SIGINT reached
    // every layer at once; the repository was gone first and requests in flight got 503s.
    const runSchema = `test_topo_run_${Date.now()}_${randomBytes(3).toString('hex')}`;
    await createMigratedSchema(admin, runSchema);
    const url = new URL(TEST_DATABASE_URL);
    url.searchParams.set('schema', runSchema);
    // The runner puts the layers on PORT, PORT + 1 and PORT + 2 (and refuses to start if one is taken).
    const port = await freePort();
    const npm = spawn('npm', ['run', 'start:layered', '--silent'], {
      cwd: join(import.meta.dirname, '..', '..'),
      // Its own process group, as a terminal's foreground job is.
      detached: true,
      env: { PATH: process.env.PATH, ...TEST_ENV, LOG_LEVEL: 'warn', DATABASE_URL: url.toString(), PORT: String(port), BCRYPT_ROUNDS: '12', REDIS_URL: '' },
    });
    const exited = new Promise<number | null>((resolve) => npm.once('exit', resolve));
    let output = '';
    try {
      await new Promise<void>((resolve, reject) => {
        npm.stdout.on('data', (chunk: Buffer) => {
          output += chunk.toString();
          if (output.includes('is up')) resolve();
        });
        npm.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
        void exited.then((code) => reject(new Error(`npm exited ${code}:\n${output}`)));
      });
      const baseUrl = `http://127.0.0.1:${port}`;
      // Each hash at cost 12 takes ~250 ms: these are in flight when the signal comes.
      const registrations = Array.from({ length: 4 }, () =>
        fetch(`${baseUrl}/api/v1/auth/register`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(newUser('ctrl_c')) }).then(
          (res) => res.status,
          (error: unknown) => String(error),
        ),
      );
      await sleep(150);
      process.kill(-(npm.pid ?? 0), 'SIGINT');
      expect(await Promise.all(registrations)).toEqual([201, 201, 201, 201]);
      expect(await exited, output).toBe(0);
    } finally {
      try {
        process.kill(-(npm.pid ?? 0), 'SIGKILL');
      } catch {
        // Already gone.
      }
      await admin.query(`DROP SCHEMA IF EXISTS "${runSchema}" CASCADE`);
    }
  }, 90_000);
});

/** `node scripts/topology.ts layered-grpc` on a migrated schema of its own, in a process group of its own. */
async function runRunner(label: string) {
  const runSchema = `test_topo_${label}_${Date.now()}_${randomBytes(3).toString('hex')}`;
  await createMigratedSchema(admin, runSchema);
  const url = new URL(TEST_DATABASE_URL);
  url.searchParams.set('schema', runSchema);
  // The runner puts the layers on PORT, PORT + 1 and PORT + 2.
  const port = await freePort();
  const runner = spawn(process.execPath, [join(import.meta.dirname, '..', '..', 'scripts', 'topology.ts'), 'layered-grpc'], {
    detached: true,
    env: { PATH: process.env.PATH, ...TEST_ENV, LOG_LEVEL: 'info', DATABASE_URL: url.toString(), PORT: String(port), REDIS_URL: '' },
  });
  const exited = new Promise<number | null>((resolve) => runner.once('exit', resolve));
  let output = '';
  const seen = (text: string) =>
    new Promise<void>((resolve, reject) => {
      const look = () => {
        if (!output.includes(text)) return false;
        resolve();
        return true;
      };
      if (look()) return;
      runner.stdout.on('data', look);
      void exited.then((code) => reject(new Error(`the runner exited ${code} before "${text}":\n${output}`)));
    });
  runner.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
  runner.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const ports = [port, port + 1, port + 2];
  const answering = async () => {
    const answers = await Promise.all(
      ports.map((layerPort) =>
        fetch(`http://127.0.0.1:${layerPort}/health`).then(
          () => layerPort,
          () => undefined,
        ),
      ),
    );
    return answers.filter((layerPort) => layerPort !== undefined);
  };
  const cleanUp = async () => {
    try {
      process.kill(-(runner.pid ?? 0), 'SIGKILL');
    } catch {
      // Already gone.
    }
    await admin.query(`DROP SCHEMA IF EXISTS "${runSchema}" CASCADE`);
  };
  return { runner, exited, output: () => output, seen, answering, cleanUp, repositoryUrl: `http://127.0.0.1:${port + 2}` };
}

describe('the topology runner, stopped from outside', () => {
  it('when its caller starts stopping while a layer comes up, then no later layer is spawned', async () => {
    // Helper 197: a signal as the service answered /health let the start go on to spawn the
    // controller, which the runner's stop (of the layers it knew at the signal) never stopped:
    // it was left serving after the runner exited 0.
    const url = new URL(TEST_DATABASE_URL);
    url.searchParams.set('schema', schema);
    const stopping = new AbortController();
    const spawned: LayerProcess[] = [];
    const starting = startTopology({
      name: 'layered-grpc',
      env: { PATH: process.env.PATH, ...TEST_ENV, LOG_LEVEL: 'warn', DATABASE_URL: url.toString() },
      signal: stopping.signal,
      onLayer: (layer) => {
        spawned.push(layer);
        // The caller starts stopping while the repository comes up; that one is the caller's to stop.
        if (layer.name === 'repository') stopping.abort();
      },
    });
    try {
      await expect(starting).rejects.toThrow(/stopped while starting, before service/);
      expect(spawned.map((layer) => layer.name)).toEqual(['repository']);
    } finally {
      await Promise.all(spawned.map((layer) => layer.stop()));
    }
  }, 60_000);

  it('when its terminal closes (SIGHUP), then it stops every layer, each draining, and exits 0', async () => {
    // Helper 196: the runner had no SIGHUP handler; it died and left the three layers (process
    // groups of their own) serving, orphaned, and their ports taken.
    const run = await runRunner('hup');
    try {
      await run.seen('is up');
      run.runner.kill('SIGHUP');
      expect(await run.exited, run.output()).toBe(0);
      expect(run.output().match(/"shutdown complete"/g)?.length, run.output()).toBe(3);
      expect(await run.answering()).toEqual([]);
    } finally {
      await run.cleanUp();
    }
  }, 90_000);

  it('when SIGTERM comes while the layers are starting, then the layers already up drain and stop, none is killed, and none is left running', async () => {
    // Helper 196: the layer being started died of the signal, and the failed start then killed
    // every layer it had started, the repository in the middle of its drain.
    const run = await runRunner('term');
    try {
      // The repository answers; the runner then spawns the service, which loads for a second or
      // more before it listens and handles signals.
      while (
        !(await fetch(`${run.repositoryUrl}/health`).then(
          (res) => res.ok,
          () => false,
        ))
      )
        await sleep(50);
      await sleep(300);
      run.runner.kill('SIGTERM');
      // 0, or 1 if the service was still too young to drain (killed by the signal).
      expect([0, 1]).toContain(await run.exited);
      expect(run.output(), run.output()).toMatch(/\[repository\] \{[^\n]*"shutdown complete"/);
      expect(await run.answering()).toEqual([]);
    } finally {
      await run.cleanUp();
    }
  }, 90_000);
});
