// Every security event the services report reaches the audit log, readable through the API.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bearer, createTestApp, loginAdmin, newUser, register, type TestApp } from '../helpers/test-app.ts';

let t: TestApp;

beforeAll(async () => {
  t = await createTestApp();
});

afterAll(async () => {
  await t.close();
});

async function eventTypes(admin: string, userId: number, expected: string[]): Promise<string[]> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const res = await t.request.get(`/api/v1/audit-events?userId=${userId}&perPage=100`).set(...bearer(admin));
    expect(res.status).toBe(200);
    const types = (res.body.items as { type: string }[]).map((event) => event.type);
    if (expected.every((type) => types.includes(type)) || Date.now() > deadline) return types;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

describe('audit log', () => {
  it('when a user goes through its lifecycle, then each security event is recorded against it', async () => {
    const admin = await loginAdmin(t);
    const user = await register(t);
    const login = (password: string) => t.request.post('/api/v1/auth/login').send({ usernameOrEmail: user.username, password });

    await login('Wrong0ne!').expect(401);
    const session = (await login(user.password).expect(200)).body.data.tokens as { accessToken: string; refreshToken: string };
    const rotated = await t.request.post('/api/v1/auth/refresh').send({ refreshToken: session.refreshToken }).expect(200);
    await t.request.post('/api/v1/auth/refresh').send({ refreshToken: session.refreshToken }).expect(401);
    await t.request
      .post('/api/v1/auth/logout')
      .set(...bearer(user.accessToken))
      .expect(200);
    const again = (await login(user.password).expect(200)).body.data.tokens.accessToken as string;
    await t.request
      .put(`/api/v1/users/${user.id}/password`)
      .set(...bearer(again))
      .send({ oldPassword: user.password, newPassword: 'N3w-Passw0rd' })
      .expect(200);
    await t.request
      .post('/api/v1/auth/tokens/revoke-all')
      .set(...bearer(again))
      .expect(200);
    await t.request
      .put(`/api/v1/users/${user.id}/status`)
      .set(...bearer(admin))
      .send({ status: 'SUSPENDED' })
      .expect(200);
    await t.request
      .delete(`/api/v1/users/${user.id}/login-failures`)
      .set(...bearer(admin))
      .expect(200);
    await t.request
      .delete(`/api/v1/users/${user.id}`)
      .set(...bearer(admin))
      .expect(200);
    expect(rotated.body.data.accessToken).toBeDefined();

    const expected = [
      'LOGIN_FAILED',
      'LOGIN_SUCCEEDED',
      'TOKEN_REUSE_DETECTED',
      'LOGOUT',
      'PASSWORD_CHANGED',
      'TOKENS_REVOKED',
      'STATUS_CHANGED',
      'LOGIN_FAILURES_CLEARED',
      'USER_DELETED',
    ];
    // The events outlive the deleted user.
    expect(await eventTypes(admin, user.id, expected)).toEqual(expect.arrayContaining(expected));
  });

  it('when an admin creates a user with a role, then the grant is recorded as a role change', async () => {
    const admin = await loginAdmin(t);
    const created = await t.request
      .post('/api/v1/users')
      .set(...bearer(admin))
      .send({ ...newUser(), role: 'ADMIN' })
      .expect(201);
    expect(await eventTypes(admin, created.body.data.id as number, ['ROLE_CHANGED'])).toContain('ROLE_CHANGED');
  });

  it('when a USER asks for the audit log, then 403', async () => {
    const user = await register(t);
    expect((await t.request.get('/api/v1/audit-events').set(...bearer(user.accessToken))).status).toBe(403);
  });
});
