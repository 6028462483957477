import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import packageJson from '../../package.json' with { type: 'json' };
import { ADMIN, createTestApp, TEST_TOPOLOGY, type TestApp } from '../helpers/test-app.ts';

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
