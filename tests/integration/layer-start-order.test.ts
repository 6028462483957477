// The layers of a split deployment start in no order (a Kubernetes rollout starts every
// Deployment's pods at once). A service layer started with ADMIN_USERNAME / ADMIN_EMAIL /
// ADMIN_PASSWORD (the deployment files pass them on every start) before its repository layer
// exited 1 within a tenth of a second, because the bootstrap check's first repository call
// failed: every service pod crash-looped until the repository pods happened to be up first
// (helper 164). It now serves, not ready, and makes the account once the repository answers.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, expect, it } from 'vitest';
import { freePort } from '../../scripts/topology.ts';
import { TEST_DATABASE_URL } from '../helpers/test-app.ts';

const root = join(import.meta.dirname, '..', '..');
const schema = `start_order_${randomUUID().replaceAll('-', '').slice(0, 12)}`;
const children: ChildProcess[] = [];

afterAll(async () => {
  for (const child of children) child.kill('SIGKILL');
  const admin = new pg.Client({ connectionString: TEST_DATABASE_URL });
  await admin.connect();
  await admin.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
  await admin.end();
});

const common = {
  DEPLOYMENT_MODE: 'layered',
  COMMUNICATION_PROTOCOL: 'grpc',
  HOST: '127.0.0.1',
  JWT_SECRET: 'start-order-'.padEnd(64, 'y'),
  INTERNAL_API_SECRET: 'start-order-internal-'.padEnd(48, 'z'),
  REDIS_URL: '',
  LOG_LEVEL: 'fatal',
};

function start(env: Record<string, string>): { child: ChildProcess; exited: Promise<number | null> } {
  const child = spawn(process.execPath, [join(root, 'src', 'main.js')], { cwd: root, env: { ...process.env, DATABASE_URL: '', ...common, ...env }, stdio: 'ignore' });
  children.push(child);
  return { child, exited: new Promise((resolve) => child.once('exit', (code) => resolve(code))) };
}

async function status(port: number, path: string): Promise<number | undefined> {
  try {
    return (await fetch(`http://127.0.0.1:${port}${path}`, { signal: AbortSignal.timeout(2_000) })).status;
  } catch {
    return undefined;
  }
}

it.skipIf(TEST_DATABASE_URL.startsWith('mysql'))(
  'when a service layer with the bootstrap variables starts before its repository layer, then it waits for it and creates the administrator once it is up',
  async () => {
    const [repositoryPort, servicePort] = [await freePort(), await freePort()];
    const service = start({
      DEPLOYMENT_LAYER: 'service',
      PORT: String(servicePort),
      REPOSITORY_URLS: `http://127.0.0.1:${repositoryPort}`,
      ADMIN_USERNAME: 'start_order_root',
      ADMIN_EMAIL: 'start_order_root@arcana.test',
      ADMIN_PASSWORD: 'Sturdy-Passw0rd!9',
    });
    // The repository pod is scheduled a few seconds later.
    const early = await Promise.race([service.exited, new Promise((resolve) => setTimeout(() => resolve('running'), 3_000))]);
    expect(early, 'the service layer exited before its repository layer was up').toBe('running');

    const url = new URL(TEST_DATABASE_URL);
    url.searchParams.set('schema', schema);
    start({ DEPLOYMENT_LAYER: 'repository', PORT: String(repositoryPort), DATABASE_URL: url.toString() });

    const deadline = Date.now() + 40_000;
    while ((await status(servicePort, '/ready')) !== 200) {
      if (Date.now() > deadline) throw new Error('the service layer never became ready');
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    const client = new pg.Client({ connectionString: TEST_DATABASE_URL });
    await client.connect();
    try {
      // Tried again every second until the repository answers.
      const admins = async () => (await client.query<{ role: string }>(`SELECT role::text AS role FROM "${schema}".users WHERE username = 'start_order_root'`)).rows;
      for (let attempt = 0; attempt < 50 && (await admins()).length === 0; attempt += 1) await new Promise((resolve) => setTimeout(resolve, 100));
      expect(await admins()).toEqual([{ role: 'ADMIN' }]);
    } finally {
      await client.end();
    }
  },
  60_000,
);

it.skipIf(TEST_DATABASE_URL.startsWith('mysql'))(
  "when a layer's INTERNAL_API_SECRET is not the one the layer below takes, then it is not ready, while probes without credentials are still answered",
  async () => {
    // Helper 214: a controller (or service) with a wrong or rotated secret answered /ready 200 and
    // SERVING, because its readiness asked the layer below's health service, which takes calls
    // without the secret; every request it then served failed 500.
    const [repositoryPort, rightPort, wrongPort] = [await freePort(), await freePort(), await freePort()];
    const url = new URL(TEST_DATABASE_URL);
    url.searchParams.set('schema', schema);
    const below = `http://127.0.0.1:${repositoryPort}`;
    start({ DEPLOYMENT_LAYER: 'repository', PORT: String(repositoryPort), DATABASE_URL: url.toString() });
    start({ DEPLOYMENT_LAYER: 'service', PORT: String(rightPort), REPOSITORY_URLS: below });
    start({ DEPLOYMENT_LAYER: 'service', PORT: String(wrongPort), REPOSITORY_URLS: below, INTERNAL_API_SECRET: 'a-rotated-internal-secret-'.padEnd(48, 'q') });
    const deadline = Date.now() + 40_000;
    while ((await status(rightPort, '/ready')) !== 200) {
      if (Date.now() > deadline) throw new Error('the service layer with the right secret never became ready');
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    // Both have been up as long; the one with the wrong secret answers, and says it is not ready.
    while ((await status(wrongPort, '/health')) !== 200) await new Promise((resolve) => setTimeout(resolve, 200));
    expect(await status(wrongPort, '/ready')).toBe(503);
    const check = (authorization?: string) =>
      fetch(`${below}/grpc.health.v1.Health/Check`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...(authorization === undefined ? {} : { authorization }) },
        body: '{}',
      }).then(async (response) => ({ status: response.status, body: await response.json() }));
    // An orchestrator's probe carries no credentials: answered. One that presents a wrong secret is refused.
    expect(await check()).toEqual({ status: 200, body: { status: 'SERVING' } });
    expect(await check(`Bearer ${'a-rotated-internal-secret-'.padEnd(48, 'q')}`)).toMatchObject({ status: 401, body: { code: 'unauthenticated' } });
    expect(await check(`Bearer ${common.INTERNAL_API_SECRET}`)).toEqual({ status: 200, body: { status: 'SERVING' } });
  },
  60_000,
);
