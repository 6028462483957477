import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ADMIN, bearer, createTestApp, loginAdmin, newUser, register, type TestApp } from '../helpers/test-app.ts';

let t: TestApp;
let admin: string;

beforeAll(async () => {
  t = await createTestApp();
  admin = await loginAdmin(t);
});

afterAll(async () => {
  await t.close();
});

describe('GET /api/v1/users', () => {
  it('when an admin lists users, then it answers the paginated envelope with filters applied', async () => {
    await register(t);
    await register(t);
    await register(t);
    const res = await t.request.get('/api/v1/users?page=1&perPage=2&role=USER').set(...bearer(admin));
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({ success: true, pagination: { page: 1, perPage: 2 } });
    expect(res.body.items).toHaveLength(2);
    expect((res.body.items as { role: string }[]).every((u) => u.role === 'USER')).toBe(true);
    expect(res.body.pagination.total).toBeGreaterThanOrEqual(3);
    expect(res.body.pagination.totalPages).toBe(Math.ceil(res.body.pagination.total / 2));

    const admins = await t.request.get('/api/v1/users?role=ADMIN').set(...bearer(admin));
    expect((admins.body.items as { username: string }[]).map((u) => u.username)).toEqual([ADMIN.username]);
  });

  it('when a USER lists users, then it answers 403', async () => {
    const user = await register(t);
    const res = await t.request.get('/api/v1/users').set(...bearer(user.accessToken));
    expect(res.status).toBe(403);
    expect(res.body.error.code).toBe('AUTHORIZATION_ERROR');
  });

  it('when paging parameters are out of range or unknown, then it answers 400', async () => {
    for (const query of ['perPage=101', 'page=0', 'page=abc', 'role=KING', 'sort=name']) {
      const res = await t.request.get(`/api/v1/users?${query}`).set(...bearer(admin));
      expect(res.status, query).toBe(400);
      expect(res.body.error.code).toBe('VALIDATION_ERROR');
    }
  });
});

describe('GET /api/v1/users/:userId', () => {
  it('when users read themselves, then 200; another user, then 403 whether or not it exists', async () => {
    const a = await register(t);
    const b = await register(t);
    expect((await t.request.get(`/api/v1/users/${a.id}`).set(...bearer(a.accessToken))).status).toBe(200);
    expect((await t.request.get(`/api/v1/users/${b.id}`).set(...bearer(a.accessToken))).status).toBe(403);
    expect((await t.request.get('/api/v1/users/999999').set(...bearer(a.accessToken))).status).toBe(403);
  });

  it('when an admin reads a missing user, then 404; a non-numeric id, then 400', async () => {
    const missing = await t.request.get('/api/v1/users/999999').set(...bearer(admin));
    expect(missing.status).toBe(404);
    expect(missing.body.error).toMatchObject({ code: 'NOT_FOUND', message: 'User not found' });
    const bad = await t.request.get('/api/v1/users/abc').set(...bearer(admin));
    expect(bad.status).toBe(400);
    expect(bad.body.error.details).toHaveProperty('userId');
  });
});

describe('POST /api/v1/users', () => {
  it('when an admin creates a user with a role, then 201 and the user can log in', async () => {
    const body = { ...newUser(), role: 'GUEST', phone: '+1 555 0100' };
    const res = await t.request
      .post('/api/v1/users')
      .set(...bearer(admin))
      .send(body);
    expect(res.status).toBe(201);
    expect(res.body.data).toMatchObject({ username: body.username, role: 'GUEST', phone: '+1 555 0100' });
    const login = await t.request.post('/api/v1/auth/login').send({ usernameOrEmail: body.username, password: body.password });
    expect(login.status).toBe(200);
  });

  it('when a USER creates a user, then 403 and nothing is stored', async () => {
    const user = await register(t);
    const body = newUser();
    expect(
      (
        await t.request
          .post('/api/v1/users')
          .set(...bearer(user.accessToken))
          .send(body)
      ).status,
    ).toBe(403);
    expect(await t.sql('SELECT 1 FROM users WHERE username = $1', [body.username])).toHaveLength(0);
  });

  it('when the username is taken, then 409', async () => {
    const existing = await register(t);
    const res = await t.request
      .post('/api/v1/users')
      .set(...bearer(admin))
      .send({ ...newUser(), username: existing.username });
    expect(res.status).toBe(409);
    expect(res.body.error.details).toEqual({ username: 'already exists' });
  });
});

describe('PUT /api/v1/users/:userId', () => {
  it('when users update their own profile, then 200 with the changes persisted', async () => {
    const user = await register(t);
    const res = await t.request
      .put(`/api/v1/users/${user.id}`)
      .set(...bearer(user.accessToken))
      .send({ firstName: 'Grace', avatarUrl: 'https://img.example.com/g.png' });
    expect(res.status).toBe(200);
    expect(res.body.data).toMatchObject({ firstName: 'Grace', avatarUrl: 'https://img.example.com/g.png' });
    const [row] = await t.sql<{ first_name: string }>('SELECT first_name FROM users WHERE id = $1', [user.id]);
    expect(row?.first_name).toBe('Grace');
  });

  it('when self-service tries to change role, status, verification or id, then 400 and nothing changes', async () => {
    const user = await register(t);
    for (const body of [{ role: 'ADMIN' }, { status: 'ACTIVE' }, { isVerified: true }, { id: 1 }, { firstName: 'X', role: 'ADMIN' }]) {
      const res = await t.request
        .put(`/api/v1/users/${user.id}`)
        .set(...bearer(user.accessToken))
        .send(body);
      expect(res.status, JSON.stringify(body)).toBe(400);
    }
    const [row] = await t.sql<{ role: string; first_name: string | null }>('SELECT role, first_name FROM users WHERE id = $1', [user.id]);
    expect(row).toEqual({ role: 'USER', first_name: null });
  });

  it('when updating someone else as USER, then 403; to a taken e-mail, then 409; with javascript: avatar, then 400', async () => {
    const a = await register(t);
    const b = await register(t);
    expect(
      (
        await t.request
          .put(`/api/v1/users/${b.id}`)
          .set(...bearer(a.accessToken))
          .send({ firstName: 'x' })
      ).status,
    ).toBe(403);
    expect(
      (
        await t.request
          .put(`/api/v1/users/${a.id}`)
          .set(...bearer(a.accessToken))
          .send({ email: b.email })
      ).status,
    ).toBe(409);
    expect(
      (
        await t.request
          .put(`/api/v1/users/${a.id}`)
          .set(...bearer(a.accessToken))
          .send({ avatarUrl: 'javascript:alert(1)' })
      ).status,
    ).toBe(400);
    expect(
      (
        await t.request
          .put(`/api/v1/users/${a.id}`)
          .set(...bearer(a.accessToken))
          .send({})
      ).status,
    ).toBe(400);
  });

  it('when an admin updates another user, then 200', async () => {
    const user = await register(t);
    const res = await t.request
      .put(`/api/v1/users/${user.id}`)
      .set(...bearer(admin))
      .send({ lastName: 'Hopper' });
    expect(res.status).toBe(200);
    expect(res.body.data.lastName).toBe('Hopper');
  });
});

describe('DELETE /api/v1/users/:userId', () => {
  it('when an admin deletes a user, then 200, its sessions are gone and its token is rejected', async () => {
    const user = await register(t);
    const res = await t.request.delete(`/api/v1/users/${user.id}`).set(...bearer(admin));
    expect(res.status).toBe(200);
    expect(res.body.data).toBeNull();
    expect(await t.sql('SELECT 1 FROM oauth_tokens WHERE user_id = $1', [user.id])).toHaveLength(0);
    expect((await t.request.get('/api/v1/auth/me').set(...bearer(user.accessToken))).status).toBe(401);
    expect((await t.request.delete(`/api/v1/users/${user.id}`).set(...bearer(admin))).status).toBe(404);
  });

  it('when a USER deletes anyone, even itself, then 403', async () => {
    const user = await register(t);
    expect((await t.request.delete(`/api/v1/users/${user.id}`).set(...bearer(user.accessToken))).status).toBe(403);
  });
});

describe('PUT /api/v1/users/:userId/password', () => {
  it('when the old password is right, then 200, the new one works, the old one not, and other sessions end', async () => {
    const user = await register(t);
    const other = await t.request.post('/api/v1/auth/login').send({ usernameOrEmail: user.username, password: user.password });
    const res = await t.request
      .put(`/api/v1/users/${user.id}/password`)
      .set(...bearer(user.accessToken))
      .send({ oldPassword: user.password, newPassword: 'N3w-Passw0rd' });
    expect(res.status).toBe(200);
    expect((await t.request.post('/api/v1/auth/login').send({ usernameOrEmail: user.username, password: user.password })).status).toBe(401);
    expect((await t.request.post('/api/v1/auth/login').send({ usernameOrEmail: user.username, password: 'N3w-Passw0rd' })).status).toBe(200);
    expect((await t.request.get('/api/v1/auth/me').set(...bearer(user.accessToken))).status).toBe(200);
    expect((await t.request.get('/api/v1/auth/me').set(...bearer(other.body.data.tokens.accessToken as string))).status).toBe(401);
  });

  it('when the old password is wrong, then 401; for another user (even as admin), then 403; weak new password, then 400', async () => {
    const user = await register(t);
    const wrong = await t.request
      .put(`/api/v1/users/${user.id}/password`)
      .set(...bearer(user.accessToken))
      .send({ oldPassword: 'Nope1234!', newPassword: 'N3w-Passw0rd' });
    expect(wrong.status).toBe(401);
    expect(wrong.body.error.message).toBe('Current password is incorrect');
    const asAdmin = await t.request
      .put(`/api/v1/users/${user.id}/password`)
      .set(...bearer(admin))
      .send({ oldPassword: user.password, newPassword: 'N3w-Passw0rd' });
    expect(asAdmin.status).toBe(403);
    const weak = await t.request
      .put(`/api/v1/users/${user.id}/password`)
      .set(...bearer(user.accessToken))
      .send({ oldPassword: user.password, newPassword: 'alllowercase' });
    expect(weak.status).toBe(400);
    expect(weak.body.error.details).toHaveProperty('newPassword');
  });
});

describe('POST /api/v1/users/:userId/verify', () => {
  it('when an admin verifies, then 200 with isVerified; a second time, then 409; as USER, then 403', async () => {
    const user = await register(t);
    expect((await t.request.post(`/api/v1/users/${user.id}/verify`).set(...bearer(user.accessToken))).status).toBe(403);
    const res = await t.request.post(`/api/v1/users/${user.id}/verify`).set(...bearer(admin));
    expect(res.status).toBe(200);
    expect(res.body.data.isVerified).toBe(true);
    expect((await t.request.post(`/api/v1/users/${user.id}/verify`).set(...bearer(admin))).status).toBe(409);
    expect((await t.request.post('/api/v1/users/999999/verify').set(...bearer(admin))).status).toBe(404);
  });
  it('when a verified user changes its e-mail address, then it is no longer verified; a change of name or the same address in other case, then it stays verified', async () => {
    // Found by an attacker (helper 93): what the administrator verified was the old address.
    const user = await register(t);
    await t.request
      .post(`/api/v1/users/${user.id}/verify`)
      .set(...bearer(admin))
      .expect(200);
    const put = (body: object) =>
      t.request
        .put(`/api/v1/users/${user.id}`)
        .set(...bearer(user.accessToken))
        .send(body);
    expect((await put({ firstName: 'Renamed', email: user.email.toUpperCase() })).body.data.isVerified).toBe(true);
    const changed = await put({ email: `other-${user.email}` });
    expect(changed.status).toBe(200);
    expect(changed.body.data).toMatchObject({ email: `other-${user.email}`, isVerified: false });
    const stored = await t.request.get(`/api/v1/users/${user.id}`).set(...bearer(admin));
    expect(stored.body.data.isVerified).toBe(false);
    expect((await t.request.post(`/api/v1/users/${user.id}/verify`).set(...bearer(admin))).status).toBe(200);
  });
});

describe('PUT /api/v1/users/:userId/status', () => {
  it('when an admin suspends a user, then its tokens stop working at once and it cannot log in; reactivated, it can', async () => {
    const user = await register(t);
    const res = await t.request
      .put(`/api/v1/users/${user.id}/status`)
      .set(...bearer(admin))
      .send({ status: 'SUSPENDED' });
    expect(res.status).toBe(200);
    expect(res.body.data).toMatchObject({ status: 'SUSPENDED', isActive: false });
    expect((await t.request.get('/api/v1/auth/me').set(...bearer(user.accessToken))).status).toBe(401);
    expect((await t.request.post('/api/v1/auth/refresh').send({ refreshToken: user.refreshToken })).status).toBe(401);

    await t.request
      .put(`/api/v1/users/${user.id}/status`)
      .set(...bearer(admin))
      .send({ status: 'ACTIVE' })
      .expect(200);
    expect((await t.request.post('/api/v1/auth/login').send({ usernameOrEmail: user.username, password: user.password })).status).toBe(200);
  });

  it('when a USER changes a status, even its own, then 403; an unknown status, then 400', async () => {
    const user = await register(t);
    expect(
      (
        await t.request
          .put(`/api/v1/users/${user.id}/status`)
          .set(...bearer(user.accessToken))
          .send({ status: 'ACTIVE' })
      ).status,
    ).toBe(403);
    expect(
      (
        await t.request
          .put(`/api/v1/users/${user.id}/status`)
          .set(...bearer(admin))
          .send({ status: 'BANNED' })
      ).status,
    ).toBe(400);
  });
});
