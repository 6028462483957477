import jwt from 'jsonwebtoken';
import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect } from 'node:net';
import { bearer, createTestApp, loginAdmin, newUser, register, startTestServer, TEST_ENV, type TestApp, type TestServer } from '../helpers/test-app.ts';

let t: TestApp;

beforeAll(async () => {
  t = await createTestApp();
});

afterAll(async () => {
  await t.close();
});

const sha256 = (value: string) => createHash('sha256').update(value).digest('hex');

describe('POST /api/v1/auth/register', () => {
  it('when the body is valid, then it answers 201 with the user, a token pair and the envelope', async () => {
    const body = { ...newUser(), firstName: 'Ada', lastName: 'Lovelace' };
    const res = await t.request.post('/api/v1/auth/register').set('x-request-id', 'req-123').send(body);

    expect(res.status).toBe(201);
    expect(res.headers['x-request-id']).toBe('req-123');
    expect(res.body).toMatchObject({
      success: true,
      message: 'User registered successfully',
      requestId: 'req-123',
      data: {
        user: { username: body.username, email: body.email, firstName: 'Ada', role: 'USER', status: 'ACTIVE', isVerified: false },
        tokens: { tokenType: 'Bearer', expiresIn: 3600 },
      },
    });
    expect(Date.parse(res.body.timestamp as string)).not.toBeNaN();
    expect(JSON.stringify(res.body)).not.toMatch(/password/i);
  });

  it('when the e-mail is taken (in any case), then it answers 409 CONFLICT naming the field', async () => {
    const first = newUser();
    await register(t, first);
    const res = await t.request.post('/api/v1/auth/register').send({ ...newUser(), email: first.email.toUpperCase() });
    expect(res.status).toBe(409);
    expect(res.body).toMatchObject({ success: false, error: { code: 'CONFLICT', details: { email: 'already exists' } } });
  });

  it('when an administrator made the account and nobody has signed in to it, then a registration with its name, e-mail and password answers 409 and opens no session', async () => {
    // Found by an attacker (helper 186): it answered 201 with a session, as if it had made the
    // account (taken for a registration whose session had not been stored).
    const admin = await loginAdmin(t);
    const body = newUser('made_by_admin');
    const created = await t.request
      .post('/api/v1/users')
      .set(...bearer(admin))
      .send({ ...body, role: 'USER' });
    expect(created.status).toBe(201);
    const res = await t.request.post('/api/v1/auth/register').send(body);
    expect(res.status).toBe(409);
    expect(res.body.error.code).toBe('CONFLICT');
    expect(await t.sql('SELECT id FROM oauth_tokens WHERE user_id = $1', [created.body.data.id])).toEqual([]);
  });

  it('when fields break the rules, then it answers 400 VALIDATION_ERROR with one detail per field and stores nothing', async () => {
    const res = await t.request.post('/api/v1/auth/register').send({ username: 'a!', email: 'not-an-email', password: 'short' });
    expect(res.status).toBe(400);
    expect(res.body.error.code).toBe('VALIDATION_ERROR');
    expect(Object.keys(res.body.error.details as object)).toEqual(expect.arrayContaining(['username', 'email', 'password']));
    const rows = await t.sql('SELECT 1 FROM users WHERE username = $1', ['a!']);
    expect(rows).toHaveLength(0);
  });

  it('when the body tries to set its own role, then it answers 400 and no admin is created', async () => {
    const body = { ...newUser(), role: 'ADMIN' };
    const res = await t.request.post('/api/v1/auth/register').send(body);
    expect(res.status).toBe(400);
    expect(res.body.error.details).toHaveProperty('role');
    expect(await t.sql('SELECT 1 FROM users WHERE username = $1', [body.username])).toHaveLength(0);
  });

  it('when registrations of one username (in any case) or one e-mail race, then exactly one is made and the rest get the same 409', async () => {
    // The pre-check passes for all of them at once; the unique indexes decide, and their
    // violation must read the same on every database (PostgreSQL 23505, MySQL 1062).
    const base = newUser('race');
    const byName = await Promise.all(
      Array.from({ length: 8 }, (_, i) =>
        t.request.post('/api/v1/auth/register').send({ ...base, username: i % 2 === 0 ? base.username : base.username.toUpperCase(), email: `${i}_${base.email}` }),
      ),
    );
    expect(byName.map((res) => res.status).sort()).toEqual([201, 409, 409, 409, 409, 409, 409, 409]);
    for (const res of byName.filter((each) => each.status === 409)) {
      expect(res.body.error).toMatchObject({ code: 'CONFLICT', details: { username: 'already exists' } });
    }
    expect(await t.sql('SELECT 1 FROM users WHERE username_key = $1', [base.username.toLowerCase()])).toHaveLength(1);

    const other = newUser('race_mail');
    const byEmail = await Promise.all(Array.from({ length: 8 }, (_, i) => t.request.post('/api/v1/auth/register').send({ ...other, username: `${other.username}_${i}` })));
    expect(byEmail.map((res) => res.status).sort()).toEqual([201, 409, 409, 409, 409, 409, 409, 409]);
    for (const res of byEmail.filter((each) => each.status === 409)) {
      expect(res.body.error).toMatchObject({ code: 'CONFLICT', details: { email: 'already exists' } });
    }
  });

  it('when the password is over 72 bytes, then it answers 400 instead of silently truncating', async () => {
    const res = await t.request.post('/api/v1/auth/register').send({ ...newUser(), password: `Aa1!${'é'.repeat(40)}` });
    expect(res.status).toBe(400);
    expect(res.body.error.details).toHaveProperty('password');
  });
});

describe('POST /api/v1/auth/login', () => {
  it('when logging in by e-mail, then it answers 200, records the session and the login time', async () => {
    const user = await register(t);
    const res = await t.request.post('/api/v1/auth/login').set('user-agent', 'vitest-agent/1.0').send({ usernameOrEmail: user.email.toUpperCase(), password: user.password });
    expect(res.status).toBe(200);
    expect(res.body.data.user.lastLoginAt).not.toBeNull();
    const [row] = await t.sql<{ user_agent: string }>('SELECT user_agent FROM oauth_tokens WHERE access_token_hash = $1', [sha256(res.body.data.tokens.accessToken as string)]);
    expect(row?.user_agent).toBe('vitest-agent/1.0');
  });

  it('when the user agent is 11 000 bytes outside ASCII, then the login works and the session keeps its first 500 characters', async () => {
    // Legal header bytes (obs-text), sent as bytes (supertest would send UTF-8, twice as many);
    // percent-encoded between layers they used to be 66 000 bytes, past HTTP/2's header list.
    const server = await startTestServer();
    try {
      const user = await register(server);
      expect(await loginWithAgentBytes(server, user, Buffer.alloc(11_000, 0xff))).toEqual({ statusLine: 'HTTP/1.1 200 OK', sessionAgent: '\u00ff'.repeat(500) });
    } finally {
      await server.close();
    }
  });

  it('when the user agent carries C1 controls (a line break, a terminal escape), then the session and the audit log keep U+FFFD in their place', async () => {
    const server = await startTestServer();
    try {
      const user = await register(server);
      // Bytes 0x85 (NEL) and 0x9B (CSI) are legal header bytes, read as Latin-1 C1 controls.
      const agent = Buffer.concat([Buffer.from('Chrome'), Buffer.from([0x85]), Buffer.from('ADMIN NOTE: verified'), Buffer.from([0x9b]), Buffer.from('2J')]);
      expect(await loginWithAgentBytes(server, user, agent)).toEqual({ statusLine: 'HTTP/1.1 200 OK', sessionAgent: 'Chrome\uFFFDADMIN NOTE: verified\uFFFD2J' });
      const audited = await eventuallyRows(() =>
        server.sql<{ user_agent: string }>(`SELECT user_agent FROM audit_events WHERE user_id = $1 AND type = 'LOGIN_SUCCEEDED'`, [user.id]),
      );
      expect(audited.map((event) => event.user_agent)).toEqual(['Chrome\uFFFDADMIN NOTE: verified\uFFFD2J']);
    } finally {
      await server.close();
    }
  });

  it('when the user is unknown, the password wrong or the account inactive, then all three answers are the same 401', async () => {
    const user = await register(t);
    const suspended = await register(t);
    const adminToken = await loginAdmin(t);
    await t.request
      .put(`/api/v1/users/${suspended.id}/status`)
      .set(...bearer(adminToken))
      .send({ status: 'SUSPENDED' })
      .expect(200);

    const answers = await Promise.all([
      t.request.post('/api/v1/auth/login').send({ usernameOrEmail: 'nobody_here', password: 'Passw0rd!' }),
      t.request.post('/api/v1/auth/login').send({ usernameOrEmail: user.username, password: 'Wrong0ne!' }),
      t.request.post('/api/v1/auth/login').send({ usernameOrEmail: suspended.username, password: suspended.password }),
    ]);
    for (const res of answers) {
      expect(res.status).toBe(401);
      expect(res.body.error).toEqual({ code: 'AUTHENTICATION_ERROR', message: 'Invalid credentials' });
    }
  });
});

describe('GET /api/v1/auth/me', () => {
  it('when the token is valid, then it returns the caller without any password field', async () => {
    const user = await register(t);
    const res = await t.request.get('/api/v1/auth/me').set(...bearer(user.accessToken));
    expect(res.status).toBe(200);
    expect(res.body.data).toMatchObject({ id: user.id, username: user.username });
    expect(res.body.data).not.toHaveProperty('passwordHash');
  });

  it('when there is no token, then it answers 401', async () => {
    const res = await t.request.get('/api/v1/auth/me');
    expect(res.status).toBe(401);
    expect(res.body.error.code).toBe('AUTHENTICATION_ERROR');
  });

  it('when the token is forged, of the wrong type, audience or algorithm, then it answers 401', async () => {
    const user = await register(t);
    const secret = TEST_ENV.JWT_SECRET ?? '';
    const claims = { tokenType: 'access' };
    const options = { subject: String(user.id), issuer: 'arcana-cloud', audience: 'arcana-cloud-api', expiresIn: 60 } as const;
    const forged = [
      jwt.sign(claims, 'some-other-secret-of-sufficient-length-123', options),
      jwt.sign(claims, secret, { ...options, audience: 'someone-else' }),
      jwt.sign(claims, secret, { ...options, algorithm: 'HS512' }),
      jwt.sign(claims, secret, { ...options, expiresIn: -10 }),
      user.refreshToken,
      'not-a-jwt',
    ];
    for (const token of forged) {
      const res = await t.request.get('/api/v1/auth/me').set(...bearer(token));
      expect(res.status, token).toBe(401);
    }
    // A correctly signed token that was never issued (no session) is rejected too.
    const unissued = jwt.sign(claims, secret, { ...options, jwtid: 'x' });
    expect((await t.request.get('/api/v1/auth/me').set(...bearer(unissued))).status).toBe(401);
  });
});

describe('POST /api/v1/auth/refresh', () => {
  it('when a refresh token is used, then the pair rotates and the old access token stops working', async () => {
    const user = await register(t);
    const res = await t.request.post('/api/v1/auth/refresh').send({ refreshToken: user.refreshToken });
    expect(res.status).toBe(200);
    expect(res.body.data.refreshToken).not.toBe(user.refreshToken);
    expect((await t.request.get('/api/v1/auth/me').set(...bearer(res.body.data.accessToken as string))).status).toBe(200);
    expect((await t.request.get('/api/v1/auth/me').set(...bearer(user.accessToken))).status).toBe(401);
  });

  it('when a used refresh token is replayed, then it answers 401 and its successor is revoked too', async () => {
    const user = await register(t);
    const first = await t.request.post('/api/v1/auth/refresh').send({ refreshToken: user.refreshToken });
    const second = await t.request.post('/api/v1/auth/refresh').send({ refreshToken: first.body.data.refreshToken });
    expect(second.status).toBe(200);

    const replay = await t.request.post('/api/v1/auth/refresh').send({ refreshToken: user.refreshToken });
    expect(replay.status).toBe(401);
    expect(replay.body.error.code).toBe('AUTHENTICATION_ERROR');

    expect((await t.request.get('/api/v1/auth/me').set(...bearer(second.body.data.accessToken as string))).status).toBe(401);
    expect((await t.request.post('/api/v1/auth/refresh').send({ refreshToken: second.body.data.refreshToken })).status).toBe(401);
  });

  it('when the same refresh token is sent twice at once, then exactly one rotation succeeds', async () => {
    const user = await register(t);
    const results = await Promise.all([
      t.request.post('/api/v1/auth/refresh').send({ refreshToken: user.refreshToken }),
      t.request.post('/api/v1/auth/refresh').send({ refreshToken: user.refreshToken }),
    ]);
    expect(results.map((r) => r.status).sort()).toEqual([200, 401]);
  });

  it('when given an access token or garbage, then it answers 401; when the body is empty, 400', async () => {
    const user = await register(t);
    expect((await t.request.post('/api/v1/auth/refresh').send({ refreshToken: user.accessToken })).status).toBe(401);
    expect((await t.request.post('/api/v1/auth/refresh').send({ refreshToken: 'garbage' })).status).toBe(401);
    expect((await t.request.post('/api/v1/auth/refresh').send({})).status).toBe(400);
  });
});

describe('logout, sessions and revoke-all', () => {
  it('when logging out, then that access token is rejected at once but other sessions live on', async () => {
    const user = await register(t);
    const other = await t.request.post('/api/v1/auth/login').send({ usernameOrEmail: user.username, password: user.password });

    const res = await t.request.post('/api/v1/auth/logout').set(...bearer(user.accessToken));
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({ success: true, data: null, message: 'Logout successful' });

    expect((await t.request.get('/api/v1/auth/me').set(...bearer(user.accessToken))).status).toBe(401);
    expect((await t.request.post('/api/v1/auth/refresh').send({ refreshToken: user.refreshToken })).status).toBe(401);
    expect((await t.request.get('/api/v1/auth/me').set(...bearer(other.body.data.tokens.accessToken as string))).status).toBe(200);
  });

  it('when listing tokens, then each live session is shown once, the current one marked, no token value exposed', async () => {
    const user = await register(t);
    await t.request.post('/api/v1/auth/login').set('user-agent', 'second-device').send({ usernameOrEmail: user.username, password: user.password });
    const res = await t.request.get('/api/v1/auth/tokens').set(...bearer(user.accessToken));
    expect(res.status).toBe(200);
    expect(res.body.data).toHaveLength(2);
    const sessions = res.body.data as { current: boolean; userAgent: string }[];
    expect(sessions.filter((s) => s.current)).toHaveLength(1);
    expect(sessions.map((s) => s.userAgent)).toContain('second-device');
    expect(JSON.stringify(res.body)).not.toContain(user.accessToken);
  });

  it('when revoking all, then it reports the count and every session of the user dies', async () => {
    const user = await register(t);
    const other = await t.request.post('/api/v1/auth/login').send({ usernameOrEmail: user.username, password: user.password });
    const res = await t.request.post('/api/v1/auth/tokens/revoke-all').set(...bearer(user.accessToken));
    expect(res.status).toBe(200);
    expect(res.body.data).toEqual({ revokedCount: 2 });
    expect((await t.request.get('/api/v1/auth/me').set(...bearer(user.accessToken))).status).toBe(401);
    expect((await t.request.get('/api/v1/auth/me').set(...bearer(other.body.data.tokens.accessToken as string))).status).toBe(401);
  });
});

describe('what the database holds', () => {
  it('when tokens are issued, then only their SHA-256 hashes are stored and passwords are bcrypt hashes', async () => {
    const user = await register(t);
    const rows = await t.sql<Record<string, unknown>>('SELECT * FROM oauth_tokens WHERE user_id = $1', [user.id]);
    expect(rows).toHaveLength(1);
    const stored = JSON.stringify(rows);
    expect(stored).not.toContain(user.accessToken);
    expect(stored).not.toContain(user.refreshToken);
    expect(rows[0]).toMatchObject({ access_token_hash: sha256(user.accessToken), refresh_token_hash: sha256(user.refreshToken) });
    const [account] = await t.sql<{ password_hash: string }>('SELECT password_hash FROM users WHERE id = $1', [user.id]);
    expect(account?.password_hash).toMatch(/^\$2[aby]\$04\$/);
  });
});

/**
 * Logs `user` in over a raw HTTP/1.1 connection whose User-Agent is `agent`, sent as bytes
 * (supertest would send UTF-8): the status line, and the user agent its session stored.
 */
async function loginWithAgentBytes(server: TestServer, user: { username: string; password: string }, agent: Buffer) {
  const body = JSON.stringify({ usernameOrEmail: user.username, password: user.password });
  const head = `POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\nConnection: close\r\nUser-Agent: `;
  const answer = await rawExchange(server.port, Buffer.concat([Buffer.from(head), agent, Buffer.from(`\r\n\r\n${body}`)]));
  const statusLine = answer.split('\r\n')[0];
  if (statusLine !== 'HTTP/1.1 200 OK') return { statusLine, sessionAgent: undefined };
  const tokens = (JSON.parse(answer.slice(answer.indexOf('\r\n\r\n') + 4)) as { data: { tokens: { accessToken: string } } }).data.tokens;
  const [row] = await server.sql<{ user_agent: string }>('SELECT user_agent FROM oauth_tokens WHERE access_token_hash = $1', [sha256(tokens.accessToken)]);
  return { statusLine, sessionAgent: row?.user_agent };
}

/** Sends `request` as it is on a new connection and reads the answer until the server closes it. */
function rawExchange(port: number, request: Buffer): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1', () => socket.write(request));
    let answer = '';
    socket.on('data', (chunk: Buffer) => (answer += chunk.toString('latin1')));
    socket.on('close', () => resolve(answer));
    socket.on('error', reject);
  });
}

/** The rows `read` finds once there are some (audit events are written off the request path). */
async function eventuallyRows<T>(read: () => Promise<T[]>): Promise<T[]> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const rows = await read();
    if (rows.length > 0 || Date.now() > deadline) return rows;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}
