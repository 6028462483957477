import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import packageJson from '../../package.json' with { type: 'json' };
import { ADMIN, createTestApp, holdRows, loginAdmin, register, TEST_TOPOLOGY, type TestApp } from '../helpers/test-app.ts';

let t: TestApp;

/** What the public process depends on: its database, or the service-layer processes it calls. */
const READINESS_CHECKS = {
  monolithic: { database: 'ok' },
  'layered-http': { service: 'ok' },
  'layered-grpc': { service: 'ok' },
  'microservices-http': { 'auth-service': 'ok', 'user-service': 'ok' },
  'microservices-grpc': { 'auth-service': 'ok', 'user-service': 'ok' },
}[TEST_TOPOLOGY];

beforeAll(async () => {
  t = await createTestApp();
});

afterAll(async () => {
  await t.close();
});

describe('system endpoints', () => {
  it('when asked, /health answers ok and /ready reports what the process depends on', async () => {
    expect((await t.request.get('/health')).body).toEqual({ status: 'ok' });
    const ready = await t.request.get('/ready');
    expect(ready.status).toBe(200);
    expect(ready.body).toEqual({ status: 'ready', checks: READINESS_CHECKS });
  });

  it('when asked, /public/info names the service, its version and deployment mode', async () => {
    const res = await t.request.get('/public/info');
    expect(res.status).toBe(200);
    expect(res.body.data).toEqual({ name: 'arcana-cloud', version: packageJson.version, deploymentMode: TEST_TOPOLOGY.split('-')[0] });
  });
});

describe('bootstrap administrator', () => {
  it('when ADMIN_* are set, then exactly one ADMIN with that username and e-mail exists', async () => {
    const rows = await t.sql<{ role: string; email: string }>('SELECT role, email FROM users WHERE username = $1', [ADMIN.username]);
    expect(rows).toEqual([{ role: 'ADMIN', email: ADMIN.email }]);
  });
});

describe('readiness under load', () => {
  // The check is the monolith's own (split processes ask the layer below); on MariaDB too, whose
  // pool is reported since helper 104 found /ready failing there the same way.
  it.skipIf(TEST_TOPOLOGY !== 'monolithic')(
    'when every pooled connection waits on a locked row, then /ready still answers ready at once: busy is not down',
    async () => {
      // Found by an attacker (helper 98): the probe's query queued behind 40 logins waiting on one
      // locked row and answered 503 after 2 s; an orchestrator pulls every replica for one row.
      const admin = await loginAdmin(t);
      const user = await register(t);
      const held = await holdRows(t, 'SELECT id FROM users WHERE id = $1 FOR UPDATE', [user.id]);
      let writes: Promise<unknown>[] = [];
      try {
        writes = Array.from({ length: 14 }, (_, i) =>
          t.request
            .put(`/api/v1/users/${user.id}`)
            .set('authorization', `Bearer ${admin}`)
            .send({ firstName: `Waiting${i}` })
            .then((res) => res.status),
        );
        await new Promise((resolve) => setTimeout(resolve, 500));
        const started = performance.now();
        const ready = await t.request.get('/ready');
        expect(ready.status).toBe(200);
        expect(performance.now() - started).toBeLessThan(1_000);
      } finally {
        await held.release();
        await Promise.all(writes);
      }
    },
    30_000,
  );
});
