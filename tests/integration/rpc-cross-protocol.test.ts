// REST and the RPC protocols are two doors into one service: a session ended through one is ended
// for the other, an account suspended through one is locked out of the other, and a client's
// request budget is spent by both alike.
import { Code, ConnectError, createClient, type CallOptions, type Client, type Transport } from '@connectrpc/connect';
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport, Http2SessionManager } from '@connectrpc/connect-node';
import http from 'node:http';
import supertest from 'supertest';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AuthService } from '../../gen/proto/arcana/auth/v1/auth_service_pb.js';
import { UserStatus } from '../../gen/proto/arcana/user/v1/user_pb.js';
import { UserService } from '../../gen/proto/arcana/user/v1/user_service_pb.js';
import { RetryInfoSchema } from '../../gen/proto/google/rpc/error_details_pb.js';
import { ADMIN, bearer, newUser, startTestServer, type TestServer } from '../helpers/test-app.ts';

interface TransportCase {
  name: string;
  make(baseUrl: string, connections: { sessions: Http2SessionManager; agent: http.Agent }): Transport;
}

const transports: TransportCase[] = [
  {
    name: 'connect (HTTP/1.1, JSON)',
    make: (baseUrl, { agent }) => createConnectTransport({ baseUrl, httpVersion: '1.1', useBinaryFormat: false, nodeOptions: { agent } }),
  },
  {
    name: 'connect (HTTP/2, binary)',
    make: (baseUrl, { sessions }) => createConnectTransport({ baseUrl, httpVersion: '2', useBinaryFormat: true, sessionManager: sessions }),
  },
  {
    name: 'grpc (HTTP/2)',
    make: (baseUrl, { sessions }) => createGrpcTransport({ baseUrl, sessionManager: sessions }),
  },
  {
    name: 'grpc-web (HTTP/1.1, binary)',
    make: (baseUrl, { agent }) => createGrpcWebTransport({ baseUrl, httpVersion: '1.1', useBinaryFormat: true, nodeOptions: { agent } }),
  },
];

const as = (token: string): CallOptions => ({ headers: { authorization: `Bearer ${token}` } });

/** The error an RPC fails with; fails the test if the RPC succeeds. */
async function failure(call: Promise<unknown>): Promise<ConnectError> {
  const error = await call.then(
    () => undefined,
    (reason: unknown) => ConnectError.from(reason),
  );
  if (error === undefined) throw new Error('expected the RPC to fail, but it succeeded');
  return error;
}

async function expectRpcError(call: Promise<unknown>, code: Code, message?: string): Promise<ConnectError> {
  const error = await failure(call);
  expect({ code: Code[error.code], message: error.rawMessage }).toEqual({ code: Code[code], message: message ?? error.rawMessage });
  return error;
}

/** Clients for every protocol against one server, and their connections to close. */
function clientsFor(baseUrl: string) {
  const sessions = new Http2SessionManager(baseUrl);
  const agent = new http.Agent({ keepAlive: true });
  const clients = transports.map((tc) => {
    const transport = tc.make(baseUrl, { sessions, agent });
    return { name: tc.name, auth: createClient(AuthService, transport), users: createClient(UserService, transport) };
  });
  return {
    clients,
    close: () => {
      sessions.abort();
      agent.destroy();
    },
  };
}

describe('sessions and accounts across REST and RPC', () => {
  let t: TestServer;
  let rest: ReturnType<typeof supertest>;
  let connections: ReturnType<typeof clientsFor>;
  let admin: string;

  beforeAll(async () => {
    t = await startTestServer();
    // Through the real port, as any outside client would.
    rest = supertest(t.baseUrl);
    connections = clientsFor(t.baseUrl);
    const login = await rest.post('/api/v1/auth/login').send({ usernameOrEmail: ADMIN.username, password: ADMIN.password }).expect(200);
    admin = login.body.data.tokens.accessToken as string;
  });

  afterAll(async () => {
    connections.close();
    await t.close();
  });

  async function restRegister() {
    const body = newUser('cross');
    const res = await rest.post('/api/v1/auth/register').send(body).expect(201);
    return { ...body, id: res.body.data.user.id as number, accessToken: res.body.data.tokens.accessToken as string, refreshToken: res.body.data.tokens.refreshToken as string };
  }

  async function restLogin(user: { username: string; password: string }): Promise<string> {
    const res = await rest.post('/api/v1/auth/login').send({ usernameOrEmail: user.username, password: user.password }).expect(200);
    return res.body.data.tokens.accessToken as string;
  }

  it('when a token works over REST, then it works over every RPC protocol too', async () => {
    const user = await restRegister();
    for (const { name, auth } of connections.clients) {
      expect((await auth.getCurrentUser({}, as(user.accessToken))).user?.id, name).toBe(user.id);
    }
  });

  it('when a session is logged out over REST, then its token is rejected over every RPC protocol', async () => {
    const user = await restRegister();
    await rest
      .post('/api/v1/auth/logout')
      .set(...bearer(user.accessToken))
      .expect(200);
    for (const { auth, users } of connections.clients) {
      await expectRpcError(auth.getCurrentUser({}, as(user.accessToken)), Code.Unauthenticated, 'Token has been revoked');
      await expectRpcError(users.getUser({ userId: user.id }, as(user.accessToken)), Code.Unauthenticated, 'Token has been revoked');
      await expectRpcError(auth.refreshToken({ refreshToken: user.refreshToken }), Code.Unauthenticated);
    }
  });

  it('when all sessions are revoked over REST, then every one of them is rejected over every RPC protocol', async () => {
    const user = await restRegister();
    const second = await restLogin(user);
    const res = await rest
      .post('/api/v1/auth/tokens/revoke-all')
      .set(...bearer(second))
      .expect(200);
    expect(res.body.data).toEqual({ revokedCount: 2 });
    for (const { auth } of connections.clients) {
      for (const token of [user.accessToken, second]) {
        await expectRpcError(auth.getCurrentUser({}, as(token)), Code.Unauthenticated, 'Token has been revoked');
      }
    }
  });

  describe.each(transports.map((tc) => tc.name))('over %s', (name) => {
    const client = () => {
      const found = connections.clients.find((candidate) => candidate.name === name);
      if (found === undefined) throw new Error(`no client for ${name}`);
      return found;
    };

    it('when a session is logged out over RPC, then REST answers 401 for its token and the other session lives on', async () => {
      const user = await restRegister();
      const other = await restLogin(user);
      await client().auth.logout({}, as(user.accessToken));
      const me = await rest.get('/api/v1/auth/me').set(...bearer(user.accessToken));
      expect(me.status).toBe(401);
      expect(me.body.error).toEqual({ code: 'AUTHENTICATION_ERROR', message: 'Token has been revoked' });
      expect((await rest.post('/api/v1/auth/refresh').send({ refreshToken: user.refreshToken })).status).toBe(401);
      expect((await rest.get('/api/v1/auth/me').set(...bearer(other))).status).toBe(200);
    });

    it('when all sessions are revoked over RPC, then REST answers 401 for each', async () => {
      const user = await restRegister();
      const second = await restLogin(user);
      expect((await client().auth.revokeAllTokens({}, as(user.accessToken))).revokedCount).toBe(2);
      for (const token of [user.accessToken, second]) {
        expect((await rest.get('/api/v1/auth/me').set(...bearer(token))).status).toBe(401);
      }
    });

    it('when a pair is rotated over RPC, then REST rejects the old access token and accepts the new one', async () => {
      const user = await restRegister();
      const rotated = await client().auth.refreshToken({ refreshToken: user.refreshToken });
      expect((await rest.get('/api/v1/auth/me').set(...bearer(user.accessToken))).status).toBe(401);
      expect((await rest.get('/api/v1/auth/me').set(...bearer(rotated.tokens?.accessToken ?? ''))).status).toBe(200);
      // Replaying the used refresh token over REST revokes the pair RPC rotated to.
      expect((await rest.post('/api/v1/auth/refresh').send({ refreshToken: user.refreshToken })).status).toBe(401);
      await expectRpcError(client().auth.getCurrentUser({}, as(rotated.tokens?.accessToken ?? '')), Code.Unauthenticated);
    });

    it('when a user is suspended over RPC, then it cannot log in over REST and its REST token is rejected', async () => {
      const user = await restRegister();
      const res = await client().users.updateUserStatus({ userId: user.id, status: UserStatus.SUSPENDED }, as(admin));
      expect(res.user?.status).toBe(UserStatus.SUSPENDED);
      const login = await rest.post('/api/v1/auth/login').send({ usernameOrEmail: user.username, password: user.password });
      expect(login.status).toBe(401);
      expect(login.body.error).toEqual({ code: 'AUTHENTICATION_ERROR', message: 'Invalid credentials' });
      expect((await rest.get('/api/v1/auth/me').set(...bearer(user.accessToken))).status).toBe(401);
    });

    it('when a user is suspended over REST, then it cannot log in over RPC and its token is rejected there', async () => {
      const user = await restRegister();
      await rest
        .put(`/api/v1/users/${user.id}/status`)
        .set(...bearer(admin))
        .send({ status: 'SUSPENDED' })
        .expect(200);
      await expectRpcError(client().auth.login({ usernameOrEmail: user.username, password: user.password }), Code.Unauthenticated, 'Invalid credentials');
      await expectRpcError(client().auth.getCurrentUser({}, as(user.accessToken)), Code.Unauthenticated);
    });
  });
});

// One budget per client, whichever door it uses. Each test gets a server of its own with a budget
// of 5 requests per (hour-long) window.
describe.each(transports)('one rate limit for REST and $name', (tc) => {
  let t: TestServer;
  let rest: ReturnType<typeof supertest>;
  let sessions: Http2SessionManager;
  let agent: http.Agent;
  let auth: Client<typeof AuthService>;

  beforeAll(async () => {
    t = await startTestServer({ RATE_LIMIT_MAX: '5' });
    rest = supertest(t.baseUrl);
    sessions = new Http2SessionManager(t.baseUrl);
    agent = new http.Agent({ keepAlive: true });
    auth = createClient(AuthService, tc.make(t.baseUrl, { sessions, agent }));
  });

  afterAll(async () => {
    sessions.abort();
    agent.destroy();
    await t.close();
  });

  const wrongLogin = { usernameOrEmail: 'nobody_here', password: 'Passw0rd!' };

  it('when requests over both facades use up the budget, then both answer the limit, with a retry-after', async () => {
    // 3 over REST and 2 over RPC: the budget of 5 is spent.
    for (let i = 0; i < 3; i++) expect((await rest.post('/api/v1/auth/login').send(wrongLogin)).status).toBe(401);
    for (let i = 0; i < 2; i++) await expectRpcError(auth.login(wrongLogin), Code.Unauthenticated, 'Invalid credentials');

    const limited = await expectRpcError(auth.login(wrongLogin), Code.ResourceExhausted, 'Too many requests, please try again later');
    expect(Number(limited.metadata.get('retry-after'))).toBeGreaterThan(0);
    const [retry] = limited.findDetails(RetryInfoSchema);
    expect(Number(retry?.retryDelay?.seconds ?? 0)).toBeGreaterThan(0);

    const res = await rest.post('/api/v1/auth/login').send(wrongLogin);
    expect(res.status).toBe(429);
    expect(res.body.error.code).toBe('RATE_LIMITED');
    expect(Number(res.headers['retry-after'])).toBeGreaterThan(0);
    expect(res.headers['ratelimit-remaining']).toBe('0');
  });
});
