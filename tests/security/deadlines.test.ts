// Deadlines a client sets (connect-timeout-ms, grpc-timeout), over every RPC protocol and in
// every topology. A deadline longer than a timer can wait (2^31 ms, about 25 days) is valid by
// both specifications: it used to fire after 1 ms (Node's TimeoutOverflowWarning) and, in the
// split topologies, cancel the call to the service layer, answering `unavailable` at once (found
// by an attacking helper).
import { toBinary, create } from '@bufbuild/protobuf';
import { request as httpRequest } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EndUserSessionsRequestSchema, GetCurrentUserRequestSchema, LoginRequestSchema, RefreshTokenRequestSchema } from '../../gen/proto/arcana/auth/v1/auth_service_pb.js';
import { ChangePasswordRequestSchema } from '../../gen/proto/arcana/user/v1/user_service_pb.js';
import { holdRows, loginAdmin, register, startTestServer, type TestServer } from '../helpers/test-app.ts';
import { RawClient, RPC_PROTOCOLS } from './raw-protocols.ts';

let t: TestServer;
let raw: RawClient;

/** The bound on a user's sessions, low so that a login past it has some to end. */
const SESSIONS_PER_USER_MAX = 2;

beforeAll(async () => {
  t = await startTestServer({ SESSIONS_PER_USER_MAX: String(SESSIONS_PER_USER_MAX) });
  raw = new RawClient(t.baseUrl);
});

afterAll(async () => {
  raw.close();
  await t.close();
});

describe('client deadlines', () => {
  it('when a deadline is longer than a timer can wait, then it is no deadline: every call is answered, in parallel over every RPC protocol', async () => {
    const user = await register(t);
    const procedure = 'arcana.auth.v1.AuthService/GetCurrentUser';
    const deadlines = [
      { connect: '2147483648', grpc: '2147484S' },
      { connect: '9999999999', grpc: '99999999S' },
      { connect: '2147483647', grpc: '99999999H' },
    ];
    const calls = RPC_PROTOCOLS.flatMap((protocol) =>
      deadlines.map(async (deadline) => {
        const headers: Record<string, string> = { authorization: `Bearer ${user.accessToken}` };
        if (protocol.startsWith('connect')) headers['connect-timeout-ms'] = deadline.connect;
        else headers['grpc-timeout'] = deadline.grpc;
        const payload = protocol === 'connect-json' ? new TextEncoder().encode('{}') : toBinary(GetCurrentUserRequestSchema, create(GetCurrentUserRequestSchema));
        return { protocol, deadline: headers['connect-timeout-ms'] ?? headers['grpc-timeout'], code: (await raw.rpc(protocol, procedure, payload, { headers })).code };
      }),
    );
    for (const answer of await Promise.all(calls)) expect(answer).toEqual({ ...answer, code: 'ok' });
  });

  it('when a gRPC deadline is given in microseconds or nanoseconds, as grpc-go and grpc-java send every deadline under 100 s, then each call is answered as a whole-millisecond one is', async () => {
    // Found by an attacking helper (120): a deadline of a fraction of a millisecond was carried
    // to the service layer over Connect/HTTP as `connect-timeout-ms: 4999.0009765625`, which the
    // service process refused as a malformed header: in layered-http every such call was `internal`.
    // What grpc-go writes for deadlines of 5 s, 10 s and 30 s (a deadline in nanoseconds is at
    // most 100 ms, too short to be sure of a login in a split topology under a parallel test run).
    const deadlines = ['4999876u', '9999999u', '30000001u'];
    const protocols = RPC_PROTOCOLS.filter((protocol) => !protocol.startsWith('connect'));
    const me = toBinary(GetCurrentUserRequestSchema, create(GetCurrentUserRequestSchema));
    const calls = protocols.flatMap((protocol) =>
      deadlines.map(async (deadline) => {
        // A user each: parallel logins of one account are held to its lockout's reservations.
        const user = await register(t);
        const login = toBinary(LoginRequestSchema, create(LoginRequestSchema, { usernameOrEmail: user.username, password: user.password }));
        const headers = { 'grpc-timeout': deadline };
        const [loggedIn, read] = await Promise.all([
          raw.rpc(protocol, 'arcana.auth.v1.AuthService/Login', login, { headers }),
          raw.rpc(protocol, 'arcana.auth.v1.AuthService/GetCurrentUser', me, { headers: { ...headers, authorization: `Bearer ${user.accessToken}` } }),
        ]);
        return { protocol, deadline, login: `${loggedIn.code} ${loggedIn.message}`.trim(), read: `${read.code} ${read.message}`.trim() };
      }),
    );
    expect(await Promise.all(calls)).toEqual(protocols.flatMap((protocol) => deadlines.map((deadline) => ({ protocol, deadline, login: 'ok', read: 'ok' }))));
  });

  it("when a call carries the other protocol's deadline header, already passed, then it means nothing: every call is answered, over every RPC protocol", async () => {
    // A Connect call with `grpc-timeout: 0n`, or a gRPC call with `connect-timeout-ms: 0`: the
    // monolith served them, the split topologies cut them short as deadline_exceeded (helper 143).
    const user = await register(t);
    const payload = (protocol: string) =>
      protocol === 'connect-json' ? new TextEncoder().encode('{}') : toBinary(GetCurrentUserRequestSchema, create(GetCurrentUserRequestSchema));
    const answers = await Promise.all(
      RPC_PROTOCOLS.map(async (protocol) => {
        const foreign: Record<string, string> = protocol.startsWith('connect') ? { 'grpc-timeout': '0n' } : { 'connect-timeout-ms': '0' };
        const answer = await raw.rpc(protocol, 'arcana.auth.v1.AuthService/GetCurrentUser', payload(protocol), { token: user.accessToken, headers: foreign });
        return { protocol, answer: `${answer.code} ${answer.message}`.trim() };
      }),
    );
    expect(answers).toEqual(RPC_PROTOCOLS.map((protocol) => ({ protocol, answer: 'ok' })));
    // The protocol by its content type in any case, as connect-es reads it: `application/GRPC` was
    // served as gRPC with Connect's deadline header (helper 146).
    const capitals = await Promise.all(
      ['application/GRPC', 'Application/grpc+proto'].map(async (contentType) => {
        const answer = await raw.rpc('grpc', 'arcana.auth.v1.AuthService/GetCurrentUser', payload('grpc'), {
          token: user.accessToken,
          headers: { 'content-type': contentType, 'connect-timeout-ms': '0' },
        });
        return { contentType, answer: `${answer.code} ${answer.message}`.trim() };
      }),
    );
    expect(capitals).toEqual([
      { contentType: 'application/GRPC', answer: 'ok' },
      { contentType: 'Application/grpc+proto', answer: 'ok' },
    ]);
  });

  it('when a deadline has passed before the work could start, then the answer is deadline_exceeded, over every RPC protocol', async () => {
    const user = await register(t);
    const procedure = 'arcana.auth.v1.AuthService/Login';
    const answers = await Promise.all(
      RPC_PROTOCOLS.map(async (protocol) => {
        const headers: Record<string, string> = protocol.startsWith('connect') ? { 'connect-timeout-ms': '0' } : { 'grpc-timeout': '1n' };
        const login = { usernameOrEmail: user.username, password: user.password };
        const payload = protocol === 'connect-json' ? new TextEncoder().encode(JSON.stringify(login)) : toBinary(LoginRequestSchema, create(LoginRequestSchema, login));
        return { protocol, code: (await raw.rpc(protocol, procedure, payload, { headers })).code };
      }),
    );
    // Not `unavailable` (the split topologies' cancelled internal call) nor a login made anyway.
    expect(answers).toEqual(RPC_PROTOCOLS.map((protocol) => ({ protocol, code: 'deadline_exceeded' })));
  });

  it('when a deadline of zero is sent, then the call is deadline_exceeded without being carried out, over every RPC protocol, a read and a logout alike', async () => {
    // A zero deadline's timer fired after a fast call had been answered: a cached GetCurrentUser
    // came back OK (helper 67), and a write would have been done.
    const user = await register(t);
    const zero = (protocol: string, grpcUnit: string): Record<string, string> =>
      protocol.startsWith('connect') ? { 'connect-timeout-ms': '0' } : { 'grpc-timeout': `0${grpcUnit}` };
    const calls = RPC_PROTOCOLS.flatMap((protocol) =>
      ['n', 'm'].flatMap((unit) =>
        ['GetCurrentUser', 'Logout'].map(async (name) => {
          const payload = protocol === 'connect-json' ? new TextEncoder().encode('{}') : toBinary(GetCurrentUserRequestSchema, create(GetCurrentUserRequestSchema));
          const answer = await raw.rpc(protocol, `arcana.auth.v1.AuthService/${name}`, payload, { token: user.accessToken, headers: zero(protocol, unit) });
          return { protocol, name, code: answer.code };
        }),
      ),
    );
    for (const answer of await Promise.all(calls)) expect(answer).toEqual({ ...answer, code: 'deadline_exceeded' });
    // None of the logouts was carried out: the session is alive.
    expect(
      (await raw.rpc('grpc', 'arcana.auth.v1.AuthService/GetCurrentUser', toBinary(GetCurrentUserRequestSchema, create(GetCurrentUserRequestSchema)), { token: user.accessToken }))
        .code,
    ).toBe('ok');
  });

  it('when many calls carry deadlines of 1 to 8 ms at once, over every RPC protocol, then each is answered or deadline_exceeded, never unavailable', async () => {
    // In the split topologies the call to the service layer and the request ran out of time
    // together, and whichever timer fired first decided: 1 to 5 of 12 such calls answered 503
    // "temporarily unavailable", telling the client to retry a service that was up (found by an
    // attacking helper).
    const user = await register(t);
    const procedure = 'arcana.auth.v1.AuthService/GetCurrentUser';
    const calls = RPC_PROTOCOLS.flatMap((protocol) =>
      [1, 2, 3, 5, 8].flatMap((ms) =>
        Array.from({ length: 6 }, async () => {
          const headers: Record<string, string> = { authorization: `Bearer ${user.accessToken}` };
          if (protocol.startsWith('connect')) headers['connect-timeout-ms'] = String(ms);
          else headers['grpc-timeout'] = `${ms}m`;
          const payload = protocol === 'connect-json' ? new TextEncoder().encode('{}') : toBinary(GetCurrentUserRequestSchema, create(GetCurrentUserRequestSchema));
          return `${protocol} ${(await raw.rpc(protocol, procedure, payload, { headers })).code}`;
        }),
      ),
    );
    const answers = await Promise.all(calls);
    expect(answers.filter((answer) => !/ (ok|deadline_exceeded)$/.test(answer))).toEqual([]);
  });
});

describe('when the writes of a request commit after its deadline has passed, or its client has gone', () => {
  // Found by an attacking helper (187): a request cut while its first write waited (here, on a
  // user's row another transaction holds) had that write commit, and the writes that belong with
  // it refused or skipped. A replay ended the owner's session with no theft alarm, then or at the
  // next replay; a refresh's retry was taken for a replay and ended the session; a logout's, and
  // an administrator's end of a user's sessions, stored no audit event (split topologies); a
  // login left its user over the bound on sessions.
  const DEADLINE_MS = 800;
  const HOLD_MS = 1_800;

  /** A REST POST whose client leaves (its socket destroyed) after DEADLINE_MS. */
  const restCut = (path: string, body: unknown, token?: string, method = 'POST') =>
    new Promise<string>((resolve) => {
      const text = JSON.stringify(body);
      const headers: Record<string, string> = { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(text)) };
      if (token !== undefined) headers.authorization = `Bearer ${token}`;
      const req = httpRequest(`${t.baseUrl}${path}`, { method, headers });
      req.on('response', (res) => {
        res.resume();
        resolve(`answered ${res.statusCode}`);
      });
      req.on('error', () => resolve('left'));
      req.end(text);
      setTimeout(() => req.destroy(), DEADLINE_MS);
    });
  const grpcCut = async (procedure: string, payload: Uint8Array, token?: string) =>
    (
      await raw.rpc('grpc', procedure.includes('/') ? procedure : `arcana.auth.v1.AuthService/${procedure}`, payload, {
        ...(token === undefined ? {} : { token }),
        headers: { 'grpc-timeout': `${DEADLINE_MS}m` },
      })
    ).code;
  const refreshOf = (refreshToken: string) => toBinary(RefreshTokenRequestSchema, create(RefreshTokenRequestSchema, { refreshToken }));
  const refresh = (refreshToken: string) => t.request.post('/api/v1/auth/refresh').send({ refreshToken });
  const pairs = (userId: number) =>
    t.sql<{ family_id: string; is_revoked: boolean; revoked_reason: string | null }>(
      'SELECT family_id, is_revoked, revoked_reason FROM oauth_tokens WHERE user_id = $1 ORDER BY id',
      [userId],
    );
  const events = (userId: number, type: string) =>
    t.sql<{ actor_id: number | null; details: Record<string, unknown> | null }>('SELECT actor_id, details FROM audit_events WHERE user_id = $1 AND type = $2', [userId, type]);

  for (const via of ['gRPC deadline', 'REST client gone'] as const) {
    it(`then whatever the first write began is finished with it, and audited (${via})`, async () => {
      const admin = await loginAdmin(t);
      const replayed = await register(t);
      expect((await refresh(replayed.refreshToken)).status).toBe(200);
      const refreshing = await register(t);
      const leaving = await register(t);
      const ended = await register(t);
      const signingIn = await register(t);
      expect((await t.request.post('/api/v1/auth/login').send({ usernameOrEmail: signingIn.username, password: signingIn.password })).status).toBe(200);
      const changing = await register(t);
      const users = [replayed, refreshing, leaving, ended, signingIn, changing];
      const change = { userId: changing.id, oldPassword: changing.password, newPassword: `${changing.password}-2` };

      // Each request's first write waits on its user's row until long after the request is cut.
      const held = await holdRows(
        t,
        `SELECT id FROM users WHERE id IN (${users.map((_, i) => `$${i + 1}`).join(', ')}) FOR UPDATE`,
        users.map((user) => user.id),
      );
      let answers: Promise<string>[];
      try {
        const login = { usernameOrEmail: signingIn.username, password: signingIn.password };
        answers =
          via === 'gRPC deadline'
            ? [
                grpcCut('RefreshToken', refreshOf(replayed.refreshToken)),
                grpcCut('RefreshToken', refreshOf(refreshing.refreshToken)),
                grpcCut('Logout', new Uint8Array(), leaving.accessToken),
                grpcCut('EndUserSessions', toBinary(EndUserSessionsRequestSchema, create(EndUserSessionsRequestSchema, { userId: ended.id })), admin),
                grpcCut('Login', toBinary(LoginRequestSchema, create(LoginRequestSchema, login))),
                grpcCut('arcana.user.v1.UserService/ChangePassword', toBinary(ChangePasswordRequestSchema, create(ChangePasswordRequestSchema, change)), changing.accessToken),
              ]
            : [
                restCut('/api/v1/auth/refresh', { refreshToken: replayed.refreshToken }),
                restCut('/api/v1/auth/refresh', { refreshToken: refreshing.refreshToken }),
                restCut('/api/v1/auth/logout', {}, leaving.accessToken),
                new Promise<string>((resolve) => {
                  const req = httpRequest(`${t.baseUrl}/api/v1/users/${ended.id}/sessions`, { method: 'DELETE', headers: { authorization: `Bearer ${admin}` } });
                  req.on('response', (res) => resolve(`answered ${res.statusCode}`)).on('error', () => resolve('left'));
                  req.end();
                  setTimeout(() => req.destroy(), DEADLINE_MS);
                }),
                restCut('/api/v1/auth/login', login),
                restCut(`/api/v1/users/${changing.id}/password`, { oldPassword: change.oldPassword, newPassword: change.newPassword }, changing.accessToken, 'PUT'),
              ];
        await sleep(HOLD_MS);
      } finally {
        await held.release();
      }
      // Nobody was answered: each client had given up.
      expect(await Promise.all(answers)).toEqual(users.map(() => (via === 'gRPC deadline' ? 'deadline_exceeded' : 'left')));

      // The replay ended the chain, the owner's live pair with it, and raised the alarm.
      await expect.poll(async () => (await events(replayed.id, 'TOKEN_REUSE_DETECTED')).length, { timeout: 5_000 }).toBe(1);
      expect((await pairs(replayed.id)).map((pair) => pair.revoked_reason)).toEqual(['reuse', 'reuse']);

      // The refresh committed after its client gave up: the client's retry with the token it
      // still holds moves the session on, not ends it as stolen.
      await expect.poll(async () => (await pairs(refreshing.id)).length, { timeout: 5_000 }).toBe(2);
      const retried = await refresh(refreshing.refreshToken);
      expect(retried.status, JSON.stringify(retried.body)).toBe(200);
      expect(await events(refreshing.id, 'TOKEN_REUSE_DETECTED')).toEqual([]);

      // The logout and the administrator's end of the sessions are done, and each has its event.
      await expect.poll(async () => (await pairs(leaving.id)).map((pair) => pair.revoked_reason), { timeout: 5_000 }).toEqual(['logout']);
      expect(await events(leaving.id, 'LOGOUT')).toHaveLength(1);
      await expect.poll(async () => (await pairs(ended.id)).map((pair) => pair.revoked_reason), { timeout: 5_000 }).toEqual(['revoked']);
      expect(await events(ended.id, 'TOKENS_REVOKED')).toEqual([{ actor_id: expect.any(Number) as number, details: { count: 1 } }]);

      // The login stored its session and ended the oldest beyond the bound.
      await expect.poll(async () => (await pairs(signingIn.id)).length, { timeout: 5_000 }).toBe(3);
      await expect
        .poll(async () => new Set((await pairs(signingIn.id)).filter((pair) => !pair.is_revoked).map((pair) => pair.family_id)).size, { timeout: 5_000 })
        .toBe(SESSIONS_PER_USER_MAX);

      // The password change is made; its client's retry is answered as made, not refused as a
      // wrong current password (and counted as a guess), also after the session was refreshed,
      // and once: asked again, the question is a guess as any other.
      await expect.poll(async () => (await events(changing.id, 'PASSWORD_CHANGED')).length, { timeout: 5_000 }).toBe(1);
      const refreshed = await refresh(changing.refreshToken);
      expect(refreshed.status).toBe(200);
      const retryChange = () =>
        t.request
          .put(`/api/v1/users/${changing.id}/password`)
          .set('authorization', `Bearer ${(refreshed.body as { data: { accessToken: string } }).data.accessToken}`)
          .send({ oldPassword: change.oldPassword, newPassword: change.newPassword });
      const again = await retryChange();
      expect(again.status, JSON.stringify(again.body)).toBe(200);
      expect(await events(changing.id, 'PASSWORD_CHANGE_FAILED')).toEqual([]);
      expect((await retryChange()).status).toBe(401);
      expect((await t.request.post('/api/v1/auth/login').send({ usernameOrEmail: changing.username, password: change.newPassword })).status).toBe(200);
    });
  }
});
