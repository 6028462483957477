// The public RPC API (arcana.auth.v1.AuthService and arcana.user.v1.UserService) over every
// protocol the server speaks, against the real app on a real port: the same rules as the REST
// suites (auth-api, users-api), with domain errors as Connect codes, field violations as a
// google.rpc.BadRequest detail named by proto field, and no `internal` for any bad input.
import { create, toJsonString } from '@bufbuild/protobuf';
import { WireType } from '@bufbuild/protobuf/wire';
import { Code, ConnectError, createClient, type CallOptions, type Client, type Transport } from '@connectrpc/connect';
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport, Http2SessionManager } from '@connectrpc/connect-node';
import { createHash } from 'node:crypto';
import http from 'node:http';
import type { Socket } from 'node:net';
import { setTimeout as delay } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AuthService, ListTokensResponseSchema, RegisterRequestSchema } from '../../gen/proto/arcana/auth/v1/auth_service_pb.js';
import { UserRole, UserStatus } from '../../gen/proto/arcana/user/v1/user_pb.js';
import { UserService } from '../../gen/proto/arcana/user/v1/user_service_pb.js';
import { BadRequestSchema } from '../../gen/proto/google/rpc/error_details_pb.js';
import { createDualProtocolServer } from '../../src/server.ts';
import { ADMIN, bearer, createTestApp, newUser, startTestServer, type TestServer } from '../helpers/test-app.ts';

let t: TestServer;

beforeAll(async () => {
  t = await startTestServer();
});

afterAll(async () => {
  await t.close();
});

interface TransportCase {
  name: string;
  /** Whether the transport runs over HTTP/2 (a session manager) or HTTP/1.1 (an agent). */
  http2: boolean;
  make(baseUrl: string, connections: { sessions: Http2SessionManager; agent: http.Agent }): Transport;
}

const transports: TransportCase[] = [
  {
    name: 'connect (HTTP/1.1, JSON)',
    http2: false,
    make: (baseUrl, { agent }) => createConnectTransport({ baseUrl, httpVersion: '1.1', useBinaryFormat: false, nodeOptions: { agent } }),
  },
  {
    name: 'connect (HTTP/2, binary)',
    http2: true,
    make: (baseUrl, { sessions }) => createConnectTransport({ baseUrl, httpVersion: '2', useBinaryFormat: true, sessionManager: sessions }),
  },
  {
    name: 'grpc (HTTP/2)',
    http2: true,
    make: (baseUrl, { sessions }) => createGrpcTransport({ baseUrl, sessionManager: sessions }),
  },
  {
    name: 'grpc-web (HTTP/1.1, binary)',
    http2: false,
    make: (baseUrl, { agent }) => createGrpcWebTransport({ baseUrl, httpVersion: '1.1', useBinaryFormat: true, nodeOptions: { agent } }),
  },
];

const sha256 = (value: string) => createHash('sha256').update(value).digest('hex');

/** Call options carrying an access token. */
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

/** Asserts the code (by name, for readable diffs) and, when given, the exact message. */
async function expectRpcError(call: Promise<unknown>, code: Code, message?: string): Promise<ConnectError> {
  const error = await failure(call);
  expect({ code: Code[error.code], message: error.rawMessage }).toEqual({
    code: Code[code],
    message: message ?? error.rawMessage,
  });
  return error;
}

/** The google.rpc.BadRequest field violations of an error, field → description. */
function violations(error: ConnectError): Record<string, string> {
  return Object.fromEntries(error.findDetails(BadRequestSchema).flatMap((detail) => detail.fieldViolations.map((v) => [v.field, v.description])));
}

/** Asserts invalid_argument ('Validation failed') naming exactly these proto fields (at least). */
async function expectViolations(call: Promise<unknown>, fields: string[]): Promise<Record<string, string>> {
  const error = await expectRpcError(call, Code.InvalidArgument, 'Validation failed');
  const found = violations(error);
  expect(Object.keys(found)).toEqual(expect.arrayContaining(fields));
  return found;
}

async function userRow(id: number) {
  const [row] = await t.sql<{
    username: string;
    email: string;
    role: string;
    status: string;
    first_name: string | null;
    avatar_url: string | null;
    is_verified: boolean;
    is_active: boolean;
    last_login_at: Date | null;
  }>('SELECT username, email, role, status, first_name, avatar_url, is_verified, is_active, last_login_at FROM users WHERE id = $1', [id]);
  return row;
}

/**
 * A server of its own, like startTestServer's, that can still be shut down when a connection is
 * stuck: close() waits `graceMs` for a graceful close, then destroys the remaining sockets.
 * It resolves whether the graceful close made it in time.
 */
async function startDisposableServer(): Promise<{ baseUrl: string; close(graceMs: number): Promise<boolean> }> {
  const app = await createTestApp();
  const { server, close } = createDualProtocolServer({ http1: app.app.http, http2: app.app.http2 });
  const sockets = new Set<Socket>();
  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  const port = typeof address === 'object' && address !== null ? address.port : 0;
  return {
    baseUrl: `http://127.0.0.1:${port}`,
    close: async (graceMs) => {
      const closed = close();
      const graceful = await Promise.race([closed.then(() => true), delay(graceMs, false)]);
      if (!graceful) {
        for (const socket of sockets) socket.destroy();
        await closed;
      }
      await app.close();
      return graceful;
    },
  };
}

const countUsers = async (username: string) => (await t.sql('SELECT 1 FROM users WHERE username = $1', [username])).length;

describe.each(transports)('over $name', (tc) => {
  let sessions: Http2SessionManager;
  let agent: http.Agent;
  let auth: Client<typeof AuthService>;
  let users: Client<typeof UserService>;
  let admin: string;
  let adminId: number;

  beforeAll(async () => {
    sessions = new Http2SessionManager(t.baseUrl);
    agent = new http.Agent({ keepAlive: true });
    const transport = tc.make(t.baseUrl, { sessions, agent });
    auth = createClient(AuthService, transport);
    users = createClient(UserService, transport);
    const login = await auth.login({ usernameOrEmail: ADMIN.username, password: ADMIN.password });
    admin = login.tokens?.accessToken ?? '';
    adminId = login.user?.id ?? 0;
  });

  afterAll(() => {
    sessions.abort();
    agent.destroy();
  });

  /** Sets a status over REST, for tests about something else than UpdateUserStatus. */
  async function setStatusOverRest(userId: number, status: 'ACTIVE' | 'INACTIVE' | 'SUSPENDED') {
    await t.request
      .put(`/api/v1/users/${userId}/status`)
      .set(...bearer(admin))
      .send({ status })
      .expect(200);
  }

  /** Registers a fresh USER over this transport. */
  async function signUp(body = newUser('rpc')) {
    const res = await auth.register(body);
    return { ...body, id: res.user?.id ?? 0, accessToken: res.tokens?.accessToken ?? '', refreshToken: res.tokens?.refreshToken ?? '' };
  }

  async function loginAgain(user: { username: string; password: string }) {
    const res = await auth.login({ usernameOrEmail: user.username, password: user.password });
    return { accessToken: res.tokens?.accessToken ?? '', refreshToken: res.tokens?.refreshToken ?? '' };
  }

  describe('AuthService/Register', () => {
    it('when the request is valid, then it returns the USER, a token pair, echoes the request id and stores one session', async () => {
      const body = { ...newUser('rpc'), firstName: 'Ada', lastName: 'Lovelace' };
      let requestId: string | null = null;
      const res = await auth.register(body, { headers: { 'x-request-id': 'rpc-req-123' }, onHeader: (h) => (requestId = h.get('x-request-id')) });

      expect(res.user).toMatchObject({
        username: body.username,
        email: body.email,
        firstName: 'Ada',
        lastName: 'Lovelace',
        role: UserRole.USER,
        status: UserStatus.ACTIVE,
        isVerified: false,
        isActive: true,
      });
      expect(res.user?.id).toBeGreaterThan(0);
      expect(res.user?.createdAt).toBeDefined();
      expect(res.user?.lastLoginAt).toBeUndefined();
      expect(res.tokens).toMatchObject({ tokenType: 'Bearer', expiresIn: 3600 });
      expect(res.tokens?.accessToken).not.toBe('');
      expect(res.tokens?.refreshToken).not.toBe(res.tokens?.accessToken);
      expect(requestId).toBe('rpc-req-123');

      expect(await userRow(res.user?.id ?? 0)).toMatchObject({ username: body.username, role: 'USER', status: 'ACTIVE', first_name: 'Ada' });
      const tokens = await t.sql<{ access_token_hash: string }>('SELECT access_token_hash FROM oauth_tokens WHERE user_id = $1', [res.user?.id]);
      expect(tokens).toEqual([{ access_token_hash: sha256(res.tokens?.accessToken ?? '') }]);
    });

    it('when a session is opened, then it records the client address like REST does', async () => {
      const user = await signUp();
      const rows = await t.sql<{ ip_address: string | null }>('SELECT ip_address FROM oauth_tokens WHERE user_id = $1', [user.id]);
      expect(rows).toEqual([{ ip_address: '127.0.0.1' }]);
      const listed = await auth.listTokens({}, as(user.accessToken));
      expect(listed.sessions.map((s) => s.ipAddress)).toEqual(['127.0.0.1']);
    });

    it('when the username or the e-mail (in any case) is taken, then already_exists names the field and nothing is stored', async () => {
      const first = await signUp();
      const byName = { ...newUser('rpc'), username: first.username };
      const nameError = await expectRpcError(auth.register(byName), Code.AlreadyExists, 'Username already exists');
      expect(violations(nameError)).toEqual({ username: 'already exists' });
      expect(await t.sql('SELECT 1 FROM users WHERE email = $1', [byName.email])).toHaveLength(0);

      const byEmail = { ...newUser('rpc'), email: first.email.toUpperCase() };
      const emailError = await expectRpcError(auth.register(byEmail), Code.AlreadyExists, 'Email already exists');
      expect(violations(emailError)).toEqual({ email: 'already exists' });
      expect(await countUsers(byEmail.username)).toBe(0);
    });

    it('when fields break the rules, then invalid_argument lists a violation per proto field and nothing is stored', async () => {
      const found = await expectViolations(auth.register({ username: 'a!', email: 'not-an-email', password: 'short' }), ['username', 'email', 'password']);
      expect(Object.values(found).every((description) => description.length > 0)).toBe(true);
      expect(await countUsers('a!')).toBe(0);

      // Set-but-empty optional names, and a password only its byte length makes too long.
      const body = newUser('rpc');
      await expectViolations(auth.register({ ...body, firstName: '', lastName: 'x'.repeat(51) }), ['first_name', 'last_name']);
      await expectViolations(auth.register({ ...newUser('rpc'), password: `Aa1!${'é'.repeat(40)}` }), ['password']);
      expect(await countUsers(body.username)).toBe(0);
    });

    it('when the request is empty, then invalid_argument says username, email and password are required', async () => {
      const found = await expectViolations(auth.register({}), ['username', 'email', 'password']);
      expect(found.username).toMatch(/required/);
    });

    it('when a client sends a role field (unknown to RegisterRequest), then the account is still a USER', async () => {
      const body = newUser('rpc');
      // A client built from a proto with `UserRole role = 6` asking for ADMIN (1). JSON cannot
      // carry unknown fields, so over JSON this is an ordinary registration.
      const request = create(RegisterRequestSchema, body);
      request.$unknown = [{ no: 6, wireType: WireType.Varint, data: new Uint8Array([UserRole.ADMIN]) }];
      const outcome = await auth.register(request).then(
        (res) => res.user?.role,
        (error: unknown) => ConnectError.from(error).code,
      );
      if (outcome === Code.InvalidArgument) {
        expect(await countUsers(body.username)).toBe(0);
      } else {
        expect(outcome).toBe(UserRole.USER);
        expect((await t.sql<{ role: string }>('SELECT role FROM users WHERE username = $1', [body.username]))[0]?.role).toBe('USER');
      }
    });
  });

  describe('AuthService/Login', () => {
    it('when logging in by username or by e-mail in upper case, then it returns the user with its login time and records the session', async () => {
      const user = await signUp();
      const byName = await auth.login({ usernameOrEmail: user.username, password: user.password });
      expect(byName.user).toMatchObject({ id: user.id, username: user.username });
      expect(byName.user?.lastLoginAt).toBeDefined();
      expect(byName.tokens).toMatchObject({ tokenType: 'Bearer', expiresIn: 3600 });

      const byEmail = await auth.login({ usernameOrEmail: user.email.toUpperCase(), password: user.password });
      expect(byEmail.user?.id).toBe(user.id);
      expect((await userRow(user.id))?.last_login_at).not.toBeNull();
      const rows = await t.sql('SELECT 1 FROM oauth_tokens WHERE user_id = $1 AND access_token_hash = $2 AND is_revoked = false', [
        user.id,
        sha256(byEmail.tokens?.accessToken ?? ''),
      ]);
      expect(rows).toHaveLength(1);
    });

    it('when the user is unknown, the password wrong or the account suspended, then all three fail with the same unauthenticated error', async () => {
      const user = await signUp();
      const suspended = await signUp();
      await setStatusOverRest(suspended.id, 'SUSPENDED');

      const errors = [
        await failure(auth.login({ usernameOrEmail: 'nobody_here_at_all', password: 'Passw0rd!' })),
        await failure(auth.login({ usernameOrEmail: user.username, password: 'Wrong0ne!' })),
        await failure(auth.login({ usernameOrEmail: suspended.username, password: suspended.password })),
      ];
      for (const error of errors) {
        expect({ code: Code[error.code], message: error.rawMessage, details: error.details.length }).toEqual({
          code: Code[Code.Unauthenticated],
          message: 'Invalid credentials',
          details: 0,
        });
      }
    });

    it('when the request is empty or the login is huge, then invalid_argument names the fields', async () => {
      await expectViolations(auth.login({}), ['username_or_email', 'password']);
      await expectViolations(auth.login({ usernameOrEmail: 'x'.repeat(10_000), password: 'y'.repeat(10_000) }), ['username_or_email', 'password']);
    });
  });

  describe('AuthService/GetCurrentUser', () => {
    it('when the access token is valid, then it returns the caller', async () => {
      const user = await signUp();
      const res = await auth.getCurrentUser({}, as(user.accessToken));
      expect(res.user).toMatchObject({ id: user.id, username: user.username, email: user.email, role: UserRole.USER });
    });

    it("when there is no token or another scheme, then unauthenticated with REST's message", async () => {
      await expectRpcError(auth.getCurrentUser({}), Code.Unauthenticated, 'Missing or invalid authorization header');
      await expectRpcError(auth.getCurrentUser({}, { headers: { authorization: 'Basic dXNlcjpwYXNz' } }), Code.Unauthenticated, 'Missing or invalid authorization header');
    });

    it('when the token is a refresh token or garbage, then unauthenticated', async () => {
      const user = await signUp();
      await expectRpcError(auth.getCurrentUser({}, as(user.refreshToken)), Code.Unauthenticated);
      await expectRpcError(auth.getCurrentUser({}, as('not-a-jwt')), Code.Unauthenticated, 'Invalid or expired access token');
      await expectRpcError(auth.getCurrentUser({}, as('x'.repeat(4000))), Code.Unauthenticated);
    });
  });

  describe('AuthService/RefreshToken', () => {
    it('when a refresh token is used, then the pair rotates and the old access token stops working', async () => {
      const user = await signUp();
      const res = await auth.refreshToken({ refreshToken: user.refreshToken });
      expect(res.tokens).toMatchObject({ tokenType: 'Bearer', expiresIn: 3600 });
      expect(res.tokens?.refreshToken).not.toBe(user.refreshToken);
      expect(res.tokens?.accessToken).not.toBe(user.accessToken);
      expect((await auth.getCurrentUser({}, as(res.tokens?.accessToken ?? ''))).user?.id).toBe(user.id);
      await expectRpcError(auth.getCurrentUser({}, as(user.accessToken)), Code.Unauthenticated);
    });

    it('when a used refresh token is replayed, then unauthenticated and its successor is revoked too', async () => {
      const user = await signUp();
      const first = await auth.refreshToken({ refreshToken: user.refreshToken });
      const second = await auth.refreshToken({ refreshToken: first.tokens?.refreshToken ?? '' });

      await expectRpcError(auth.refreshToken({ refreshToken: user.refreshToken }), Code.Unauthenticated);
      await expectRpcError(auth.getCurrentUser({}, as(second.tokens?.accessToken ?? '')), Code.Unauthenticated);
      await expectRpcError(auth.refreshToken({ refreshToken: second.tokens?.refreshToken ?? '' }), Code.Unauthenticated);
      const live = await t.sql('SELECT 1 FROM oauth_tokens WHERE user_id = $1 AND is_revoked = false', [user.id]);
      expect(live).toHaveLength(0);
    });

    it('when given an access token or garbage, then unauthenticated; empty or over 4096 characters, then invalid_argument', async () => {
      const user = await signUp();
      await expectRpcError(auth.refreshToken({ refreshToken: user.accessToken }), Code.Unauthenticated);
      await expectRpcError(auth.refreshToken({ refreshToken: 'garbage' }), Code.Unauthenticated, 'Invalid or expired refresh token');
      await expectViolations(auth.refreshToken({}), ['refresh_token']);
      await expectViolations(auth.refreshToken({ refreshToken: 'r'.repeat(5000) }), ['refresh_token']);
      // None of this touched the user's session.
      expect((await auth.getCurrentUser({}, as(user.accessToken))).user?.id).toBe(user.id);
    });
  });

  describe('AuthService/Logout', () => {
    it('when logging out, then that access token and its refresh token are dead but other sessions live on', async () => {
      const user = await signUp();
      const other = await loginAgain(user);
      expect(await auth.logout({}, as(user.accessToken))).toMatchObject({});

      await expectRpcError(auth.getCurrentUser({}, as(user.accessToken)), Code.Unauthenticated, 'Token has been revoked');
      await expectRpcError(auth.refreshToken({ refreshToken: user.refreshToken }), Code.Unauthenticated);
      expect((await auth.getCurrentUser({}, as(other.accessToken))).user?.id).toBe(user.id);
      const [row] = await t.sql<{ is_revoked: boolean }>('SELECT is_revoked FROM oauth_tokens WHERE access_token_hash = $1', [sha256(user.accessToken)]);
      expect(row?.is_revoked).toBe(true);
    });

    it('when logging out without a token, then unauthenticated', async () => {
      await expectRpcError(auth.logout({}), Code.Unauthenticated, 'Missing or invalid authorization header');
    });
  });

  describe('AuthService/ListTokens and RevokeAllTokens', () => {
    it('when listing tokens, then each live session is shown once, newest first, the current one marked, no token value exposed', async () => {
      const user = await signUp();
      const second = await loginAgain(user);
      const res = await auth.listTokens({}, as(user.accessToken));

      expect(res.sessions).toHaveLength(2);
      const [current] = await t.sql<{ id: number }>('SELECT id FROM oauth_tokens WHERE access_token_hash = $1', [sha256(user.accessToken)]);
      expect(res.sessions.filter((s) => s.current).map((s) => s.id)).toEqual([current?.id]);
      expect(res.sessions.map((s) => s.id)).toEqual([...res.sessions.map((s) => s.id)].sort((a, b) => b - a));
      for (const session of res.sessions) {
        expect(session.tokenType).toBe('Bearer');
        expect(session.createdAt).toBeDefined();
        expect(session.expiresAt).toBeDefined();
      }
      const serialized = toJsonString(ListTokensResponseSchema, res);
      expect(serialized).not.toContain(user.accessToken);
      expect(serialized).not.toContain(second.refreshToken);
    });

    it('when listing tokens without a token, then unauthenticated', async () => {
      await expectRpcError(auth.listTokens({}), Code.Unauthenticated);
    });

    it('when revoking all, then it reports the count and every session of the user dies', async () => {
      const user = await signUp();
      const second = await loginAgain(user);
      const third = await loginAgain(user);
      const res = await auth.revokeAllTokens({}, as(second.accessToken));
      expect(res.revokedCount).toBe(3);
      for (const token of [user.accessToken, second.accessToken, third.accessToken]) {
        await expectRpcError(auth.getCurrentUser({}, as(token)), Code.Unauthenticated);
      }
      await expectRpcError(auth.revokeAllTokens({}, as(third.accessToken)), Code.Unauthenticated);
      expect(await t.sql('SELECT 1 FROM oauth_tokens WHERE user_id = $1 AND is_revoked = false', [user.id])).toHaveLength(0);
    });
  });

  describe('UserService/ListUsers', () => {
    it('when an admin lists users, then the page, the role filter and the pagination are applied', async () => {
      await signUp();
      await signUp();
      await signUp();
      const res = await users.listUsers({ page: 1, perPage: 2, role: UserRole.USER }, as(admin));
      const [count] = await t.sql<{ n: number }>("SELECT count(*)::int AS n FROM users WHERE role = 'USER'");
      expect(res.users).toHaveLength(2);
      expect(res.users.every((u) => u.role === UserRole.USER)).toBe(true);
      expect(res.pagination).toMatchObject({ page: 1, perPage: 2, total: count?.n, totalPages: Math.ceil((count?.n ?? 0) / 2) });

      const admins = await users.listUsers({ role: UserRole.ADMIN }, as(admin));
      expect(admins.users.map((u) => u.username)).toEqual([ADMIN.username]);
      expect(admins.pagination).toMatchObject({ page: 1, perPage: 20, total: 1, totalPages: 1 });
    });

    it('when an admin filters by status, then only such users are listed, oldest first', async () => {
      const user = await signUp();
      await setStatusOverRest(user.id, 'INACTIVE');
      const res = await users.listUsers({ status: UserStatus.INACTIVE, perPage: 100 }, as(admin));
      expect(res.users.map((u) => u.id)).toContain(user.id);
      expect(res.users.every((u) => u.status === UserStatus.INACTIVE && !u.isActive)).toBe(true);
      expect(res.users.map((u) => u.id)).toEqual([...res.users.map((u) => u.id)].sort((a, b) => a - b));
    });

    it('when a USER lists users, then permission_denied', async () => {
      const user = await signUp();
      await expectRpcError(users.listUsers({}, as(user.accessToken)), Code.PermissionDenied, 'Insufficient permissions');
      await expectRpcError(users.listUsers({}), Code.Unauthenticated, 'Missing or invalid authorization header');
    });

    it('when paging or filters are out of range, then invalid_argument names the field', async () => {
      await expectViolations(users.listUsers({ perPage: 101 }, as(admin)), ['per_page']);
      await expectViolations(users.listUsers({ page: -1 }, as(admin)), ['page']);
      await expectViolations(users.listUsers({ perPage: -2_147_483_648 }, as(admin)), ['per_page']);
      await expectViolations(users.listUsers({ role: UserRole.UNSPECIFIED }, as(admin)), ['role']);
      // eslint-disable-next-line @typescript-eslint/no-unsafe-enum-assignment -- an undeclared enum number is the input under test
      await expectViolations(users.listUsers({ status: 99 as UserStatus }, as(admin)), ['status']);
    });
  });

  describe('UserService/GetUser', () => {
    it('when users read themselves, then ok; another user, existing or not, then permission_denied', async () => {
      const a = await signUp();
      const b = await signUp();
      expect((await users.getUser({ userId: a.id }, as(a.accessToken))).user).toMatchObject({ id: a.id, username: a.username });
      await expectRpcError(users.getUser({ userId: b.id }, as(a.accessToken)), Code.PermissionDenied, 'Not authorized to view this user');
      await expectRpcError(users.getUser({ userId: 999_999 }, as(a.accessToken)), Code.PermissionDenied, 'Not authorized to view this user');
    });

    it('when an admin reads a user, then ok; a missing one, then not_found', async () => {
      const user = await signUp();
      expect((await users.getUser({ userId: user.id }, as(admin))).user?.username).toBe(user.username);
      await expectRpcError(users.getUser({ userId: 999_999 }, as(admin)), Code.NotFound, 'User not found');
      await expectRpcError(users.getUser({ userId: 2_147_483_647 }, as(admin)), Code.NotFound, 'User not found');
    });

    it('when user_id is 0 (absent) or negative, then invalid_argument on user_id', async () => {
      const found = await expectViolations(users.getUser({ userId: 0 }, as(admin)), ['user_id']);
      expect(found.user_id).toBe('is required');
      await expectViolations(users.getUser({}, as(admin)), ['user_id']);
      await expectViolations(users.getUser({ userId: -5 }, as(admin)), ['user_id']);
      await expectViolations(users.getUser({ userId: -2_147_483_648 }, as(admin)), ['user_id']);
    });
  });

  describe('UserService/CreateUser', () => {
    it('when an admin creates a GUEST, then it is stored with that role and can log in', async () => {
      const body = { ...newUser('rpc'), role: UserRole.GUEST, phone: '+1 555 0100', firstName: 'Guest' };
      const res = await users.createUser(body, as(admin));
      expect(res.user).toMatchObject({ username: body.username, email: body.email, role: UserRole.GUEST, phone: '+1 555 0100', firstName: 'Guest', status: UserStatus.ACTIVE });
      expect((await userRow(res.user?.id ?? 0))?.role).toBe('GUEST');
      const login = await auth.login({ usernameOrEmail: body.username, password: body.password });
      expect(login.user?.role).toBe(UserRole.GUEST);
    });

    it('when the role is unspecified, then the user is a USER', async () => {
      const res = await users.createUser({ ...newUser('rpc'), role: UserRole.UNSPECIFIED }, as(admin));
      expect(res.user?.role).toBe(UserRole.USER);
    });

    it('when a USER or a GUEST creates a user, then permission_denied and nothing is stored', async () => {
      const user = await signUp();
      const guestBody = newUser('rpc');
      await users.createUser({ ...guestBody, role: UserRole.GUEST }, as(admin));
      const guest = await loginAgain(guestBody);
      for (const token of [user.accessToken, guest.accessToken]) {
        const body = { ...newUser('rpc'), role: UserRole.ADMIN };
        await expectRpcError(users.createUser(body, as(token)), Code.PermissionDenied, 'Insufficient permissions');
        expect(await countUsers(body.username)).toBe(0);
      }
    });

    it('when the username is taken, then already_exists naming username', async () => {
      const existing = await signUp();
      const error = await expectRpcError(users.createUser({ ...newUser('rpc'), username: existing.username }, as(admin)), Code.AlreadyExists, 'Username already exists');
      expect(violations(error)).toEqual({ username: 'already exists' });
    });

    it('when fields are invalid, then invalid_argument and nothing is stored', async () => {
      const body = { ...newUser('rpc'), phone: '0'.repeat(21) };
      await expectViolations(users.createUser(body, as(admin)), ['phone']);
      // eslint-disable-next-line @typescript-eslint/no-unsafe-enum-assignment -- an undeclared enum number is the input under test
      await expectViolations(users.createUser({ ...newUser('rpc'), role: 42 as UserRole }, as(admin)), ['role']);
      await expectViolations(users.createUser({}, as(admin)), ['username', 'email', 'password']);
      expect(await countUsers(body.username)).toBe(0);
    });
  });

  describe('UserService/UpdateUser', () => {
    it('when users update their own profile, then the changes are returned and persisted', async () => {
      const user = await signUp();
      const res = await users.updateUser({ userId: user.id, firstName: 'Grace', avatarUrl: 'https://img.example.com/g.png' }, as(user.accessToken));
      expect(res.user).toMatchObject({ id: user.id, firstName: 'Grace', avatarUrl: 'https://img.example.com/g.png', role: UserRole.USER });
      expect(await userRow(user.id)).toMatchObject({ first_name: 'Grace', avatar_url: 'https://img.example.com/g.png' });
    });

    it('when an admin updates another user, then ok', async () => {
      const user = await signUp();
      const res = await users.updateUser({ userId: user.id, lastName: 'Hopper' }, as(admin));
      expect(res.user?.lastName).toBe('Hopper');
    });

    it('when a USER updates someone else, then permission_denied and nothing changes', async () => {
      const a = await signUp();
      const b = await signUp();
      await expectRpcError(users.updateUser({ userId: b.id, firstName: 'x' }, as(a.accessToken)), Code.PermissionDenied, 'Not authorized to update this user');
      expect((await userRow(b.id))?.first_name).toBeNull();
    });

    it('when the new e-mail is taken, then already_exists naming email', async () => {
      const a = await signUp();
      const b = await signUp();
      const error = await expectRpcError(users.updateUser({ userId: a.id, email: b.email.toUpperCase() }, as(a.accessToken)), Code.AlreadyExists, 'Email already exists');
      expect(violations(error)).toEqual({ email: 'already exists' });
      expect((await userRow(a.id))?.email).toBe(a.email);
    });

    it('when the avatar is a javascript: URL, no field is set or a field is too long, then invalid_argument and nothing changes', async () => {
      const user = await signUp();
      const found = await expectViolations(users.updateUser({ userId: user.id, avatarUrl: 'javascript:x' }, as(user.accessToken)), ['avatar_url']);
      expect(Object.keys(found)).toEqual(['avatar_url']);
      await expectViolations(users.updateUser({ userId: user.id, avatarUrl: `https://x.example/${'a'.repeat(500)}` }, as(user.accessToken)), ['avatar_url']);
      await expectRpcError(users.updateUser({ userId: user.id }, as(user.accessToken)), Code.InvalidArgument, 'Validation failed');
      await expectViolations(users.updateUser({ userId: user.id, firstName: '', email: 'nope' }, as(user.accessToken)), ['first_name', 'email']);
      await expectViolations(users.updateUser({ userId: -1, firstName: 'x' }, as(admin)), ['user_id']);
      expect(await userRow(user.id)).toMatchObject({ avatar_url: null, first_name: null, email: user.email });
    });

    it('when an admin updates a missing user, then not_found', async () => {
      await expectRpcError(users.updateUser({ userId: 999_999, firstName: 'x' }, as(admin)), Code.NotFound, 'User not found');
    });
  });

  describe('UserService/DeleteUser', () => {
    it('when an admin deletes a user, then it and its sessions are gone, its token is dead and a second delete is not_found', async () => {
      const user = await signUp();
      expect(await users.deleteUser({ userId: user.id }, as(admin))).toMatchObject({});
      expect(await userRow(user.id)).toBeUndefined();
      expect(await t.sql('SELECT 1 FROM oauth_tokens WHERE user_id = $1', [user.id])).toHaveLength(0);
      await expectRpcError(auth.getCurrentUser({}, as(user.accessToken)), Code.Unauthenticated);
      await expectRpcError(users.deleteUser({ userId: user.id }, as(admin)), Code.NotFound, 'User not found');
      await expectRpcError(users.getUser({ userId: user.id }, as(admin)), Code.NotFound, 'User not found');
    });

    it('when a USER deletes anyone, even itself, then permission_denied and it survives', async () => {
      const user = await signUp();
      await expectRpcError(users.deleteUser({ userId: user.id }, as(user.accessToken)), Code.PermissionDenied, 'Insufficient permissions');
      await expectRpcError(users.deleteUser({ userId: adminId }, as(user.accessToken)), Code.PermissionDenied, 'Insufficient permissions');
      expect(await userRow(user.id)).toBeDefined();
    });

    it('when user_id is absent or negative, then invalid_argument', async () => {
      await expectViolations(users.deleteUser({}, as(admin)), ['user_id']);
      await expectViolations(users.deleteUser({ userId: -7 }, as(admin)), ['user_id']);
    });
  });

  describe('UserService/ChangePassword', () => {
    it('when the old password is right, then the new one works, the old one not, and only the other sessions end', async () => {
      const user = await signUp();
      const other = await loginAgain(user);
      expect(await users.changePassword({ userId: user.id, oldPassword: user.password, newPassword: 'N3w-Passw0rd' }, as(user.accessToken))).toMatchObject({});

      await expectRpcError(auth.login({ usernameOrEmail: user.username, password: user.password }), Code.Unauthenticated, 'Invalid credentials');
      expect((await auth.login({ usernameOrEmail: user.username, password: 'N3w-Passw0rd' })).user?.id).toBe(user.id);
      expect((await auth.getCurrentUser({}, as(user.accessToken))).user?.id).toBe(user.id);
      await expectRpcError(auth.getCurrentUser({}, as(other.accessToken)), Code.Unauthenticated);
    });

    it('when the old password is wrong, then unauthenticated and the password is unchanged', async () => {
      const user = await signUp();
      const [before] = await t.sql<{ password_hash: string }>('SELECT password_hash FROM users WHERE id = $1', [user.id]);
      await expectRpcError(
        users.changePassword({ userId: user.id, oldPassword: 'Nope1234!', newPassword: 'N3w-Passw0rd' }, as(user.accessToken)),
        Code.Unauthenticated,
        'Current password is incorrect',
      );
      const [after] = await t.sql<{ password_hash: string }>('SELECT password_hash FROM users WHERE id = $1', [user.id]);
      expect(after?.password_hash).toBe(before?.password_hash);
    });

    it("when changing another user's password, even as admin, then permission_denied", async () => {
      const a = await signUp();
      const b = await signUp();
      await expectRpcError(
        users.changePassword({ userId: b.id, oldPassword: b.password, newPassword: 'N3w-Passw0rd' }, as(a.accessToken)),
        Code.PermissionDenied,
        'Not authorized to change this password',
      );
      await expectRpcError(
        users.changePassword({ userId: b.id, oldPassword: b.password, newPassword: 'N3w-Passw0rd' }, as(admin)),
        Code.PermissionDenied,
        'Not authorized to change this password',
      );
    });

    it('when the new password is weak or fields are missing, then invalid_argument names new_password / old_password', async () => {
      const user = await signUp();
      await expectViolations(users.changePassword({ userId: user.id, oldPassword: user.password, newPassword: 'alllowercase' }, as(user.accessToken)), ['new_password']);
      await expectViolations(users.changePassword({ userId: user.id }, as(user.accessToken)), ['old_password', 'new_password']);
      await expectViolations(users.changePassword({ oldPassword: user.password, newPassword: 'N3w-Passw0rd' }, as(user.accessToken)), ['user_id']);
    });

    it('when the new password is over 72 bytes, then invalid_argument names new_password (the proto field)', async () => {
      const user = await signUp();
      const found = await expectViolations(users.changePassword({ userId: user.id, oldPassword: user.password, newPassword: `Aa1!${'é'.repeat(40)}` }, as(user.accessToken)), []);
      expect(Object.keys(found)).toEqual(['new_password']);
    });
  });

  describe('UserService/VerifyUser', () => {
    it('when an admin verifies, then is_verified is set; a second time, then already_exists', async () => {
      const user = await signUp();
      const res = await users.verifyUser({ userId: user.id }, as(admin));
      expect(res.user).toMatchObject({ id: user.id, isVerified: true });
      expect((await userRow(user.id))?.is_verified).toBe(true);
      await expectRpcError(users.verifyUser({ userId: user.id }, as(admin)), Code.AlreadyExists, 'User is already verified');
    });

    it('when a USER verifies, then permission_denied; a missing user, then not_found; no id, then invalid_argument', async () => {
      const user = await signUp();
      await expectRpcError(users.verifyUser({ userId: user.id }, as(user.accessToken)), Code.PermissionDenied, 'Insufficient permissions');
      expect((await userRow(user.id))?.is_verified).toBe(false);
      await expectRpcError(users.verifyUser({ userId: 999_999 }, as(admin)), Code.NotFound, 'User not found');
      await expectViolations(users.verifyUser({}, as(admin)), ['user_id']);
    });
    it('when a verified user changes its email, then is_verified is cleared; a change of name, then it stays', async () => {
      const user = await signUp();
      await users.verifyUser({ userId: user.id }, as(admin));
      expect((await users.updateUser({ userId: user.id, firstName: 'Renamed' }, as(user.accessToken))).user?.isVerified).toBe(true);
      const res = await users.updateUser({ userId: user.id, email: `other-${user.email}` }, as(user.accessToken));
      expect(res.user).toMatchObject({ email: `other-${user.email}`, isVerified: false });
      expect((await userRow(user.id))?.is_verified).toBe(false);
    });
  });

  describe('UserService/UpdateUserStatus', () => {
    it('when an admin suspends a user, then its tokens are rejected at once and it cannot log in; reactivated, it can', async () => {
      const user = await signUp();
      const res = await users.updateUserStatus({ userId: user.id, status: UserStatus.SUSPENDED }, as(admin));
      expect(res.user).toMatchObject({ id: user.id, status: UserStatus.SUSPENDED, isActive: false });
      expect(await userRow(user.id)).toMatchObject({ status: 'SUSPENDED', is_active: false });

      await expectRpcError(auth.getCurrentUser({}, as(user.accessToken)), Code.Unauthenticated);
      await expectRpcError(auth.refreshToken({ refreshToken: user.refreshToken }), Code.Unauthenticated);
      await expectRpcError(auth.login({ usernameOrEmail: user.username, password: user.password }), Code.Unauthenticated, 'Invalid credentials');

      const back = await users.updateUserStatus({ userId: user.id, status: UserStatus.ACTIVE }, as(admin));
      expect(back.user).toMatchObject({ status: UserStatus.ACTIVE, isActive: true });
      expect((await auth.login({ usernameOrEmail: user.username, password: user.password })).user?.id).toBe(user.id);
    });

    it('when the status is UNSPECIFIED or unknown, then invalid_argument on status and nothing changes', async () => {
      const user = await signUp();
      await expectViolations(users.updateUserStatus({ userId: user.id, status: UserStatus.UNSPECIFIED }, as(admin)), ['status']);
      await expectViolations(users.updateUserStatus({ userId: user.id }, as(admin)), ['status']);
      // eslint-disable-next-line @typescript-eslint/no-unsafe-enum-assignment -- an undeclared enum number is the input under test
      await expectViolations(users.updateUserStatus({ userId: user.id, status: 17 as UserStatus }, as(admin)), ['status']);
      await expectViolations(users.updateUserStatus({ status: UserStatus.SUSPENDED }, as(admin)), ['user_id']);
      expect((await userRow(user.id))?.status).toBe('ACTIVE');
      expect((await auth.getCurrentUser({}, as(user.accessToken))).user?.id).toBe(user.id);
    });

    it('when a USER changes a status, even its own, then permission_denied; a missing user, then not_found', async () => {
      const user = await signUp();
      await expectRpcError(users.updateUserStatus({ userId: user.id, status: UserStatus.ACTIVE }, as(user.accessToken)), Code.PermissionDenied, 'Insufficient permissions');
      await expectRpcError(users.updateUserStatus({ userId: user.id, status: UserStatus.SUSPENDED }, as(user.accessToken)), Code.PermissionDenied, 'Insufficient permissions');
      expect((await userRow(user.id))?.status).toBe('ACTIVE');
      await expectRpcError(users.updateUserStatus({ userId: 999_999, status: UserStatus.ACTIVE }, as(admin)), Code.NotFound, 'User not found');
    });
  });

  describe('bad input in general', () => {
    it('when every RPC gets an empty message, then none answers internal or unknown', async () => {
      const user = await signUp();
      const token = as(user.accessToken);
      const calls: [string, () => Promise<unknown>][] = [
        ['Register', () => auth.register({})],
        ['Login', () => auth.login({})],
        ['RefreshToken', () => auth.refreshToken({})],
        ['ListUsers', () => users.listUsers({}, token)],
        ['GetUser', () => users.getUser({}, token)],
        ['CreateUser', () => users.createUser({}, as(admin))],
        ['UpdateUser', () => users.updateUser({}, token)],
        ['DeleteUser', () => users.deleteUser({}, as(admin))],
        ['ChangePassword', () => users.changePassword({}, token)],
        ['VerifyUser', () => users.verifyUser({}, as(admin))],
        ['UpdateUserStatus', () => users.updateUserStatus({}, as(admin))],
      ];
      const codes: Record<string, string> = {};
      for (const [name, call] of calls) {
        const code = Code[(await failure(call())).code] as string | undefined;
        codes[name] = code ?? 'none';
      }
      expect(codes).toEqual({
        Register: 'InvalidArgument',
        Login: 'InvalidArgument',
        RefreshToken: 'InvalidArgument',
        ListUsers: 'PermissionDenied',
        GetUser: 'InvalidArgument',
        CreateUser: 'InvalidArgument',
        UpdateUser: 'InvalidArgument',
        DeleteUser: 'InvalidArgument',
        ChangePassword: 'InvalidArgument',
        VerifyUser: 'InvalidArgument',
        UpdateUserStatus: 'InvalidArgument',
      });
    });

    it('when strings are huge (but within the body limit), then invalid_argument and nothing is stored', async () => {
      const huge = 'h'.repeat(10_000);
      const body = newUser('rpc');
      await expectViolations(auth.register({ username: huge, email: `${huge}@example.com`, password: huge, firstName: huge }), ['username', 'email', 'password', 'first_name']);
      await expectViolations(users.createUser({ ...body, phone: huge, lastName: huge }, as(admin)), ['phone', 'last_name']);
      expect(await countUsers(body.username)).toBe(0);
    });

    it('when a message is larger than the body limit, then resource_exhausted rather than internal', async () => {
      // A server and connections of its own: over HTTP/1.1 the refused upload leaves the
      // connection stuck (see the next test), which would hold up the shared server's close().
      const server = await startDisposableServer();
      const own = { sessions: new Http2SessionManager(server.baseUrl), agent: new http.Agent({ keepAlive: true }) };
      try {
        const client = createClient(AuthService, tc.make(server.baseUrl, own));
        const error = await failure(client.login({ usernameOrEmail: 'u'.repeat(200_000), password: 'Passw0rd!' }));
        expect(Code[error.code]).toBe(Code[Code.ResourceExhausted]);
        expect(error.rawMessage).toMatch(/readMaxBytes 102400/);
      } finally {
        own.sessions.abort();
        own.agent.destroy();
        await server.close(1000);
      }
    });

    it('when a call over the body limit was refused, then the next call on that connection is answered and the server still closes promptly', async () => {
      const server = await startDisposableServer();
      const own = { sessions: new Http2SessionManager(server.baseUrl), agent: new http.Agent({ keepAlive: true, maxSockets: 1 }) };
      let closedGracefully: boolean;
      try {
        const client = createClient(AuthService, tc.make(server.baseUrl, own));
        await failure(client.login({ usernameOrEmail: 'u'.repeat(200_000), password: 'Passw0rd!' }));
        const next = await failure(client.login({ usernameOrEmail: 'nobody_at_all', password: 'Passw0rd!' }, { timeoutMs: 3000 }));
        expect.soft({ code: Code[next.code], message: next.rawMessage }).toEqual({ code: Code[Code.Unauthenticated], message: 'Invalid credentials' });
      } finally {
        own.sessions.abort();
        own.agent.destroy();
        closedGracefully = await server.close(3000);
      }
      expect(closedGracefully, 'server closed within 3 s of the clients going away').toBe(true);
    });

    it('when ids are negative everywhere, then invalid_argument on user_id, also for a USER acting on itself', async () => {
      const user = await signUp();
      await expectViolations(users.changePassword({ userId: -user.id, oldPassword: user.password, newPassword: 'N3w-Passw0rd' }, as(user.accessToken)), ['user_id']);
      await expectViolations(users.verifyUser({ userId: -1 }, as(admin)), ['user_id']);
      await expectViolations(users.updateUserStatus({ userId: -1, status: UserStatus.ACTIVE }, as(admin)), ['user_id']);
    });

    it('when the same failures happen over REST, then the messages are identical', async () => {
      const user = await signUp();
      const other = await signUp();
      const pairs: [() => Promise<unknown>, () => PromiseLike<{ body: { error: { message: string } } }>][] = [
        [
          () => auth.login({ usernameOrEmail: user.username, password: 'Wrong0ne!' }),
          () => t.request.post('/api/v1/auth/login').send({ usernameOrEmail: user.username, password: 'Wrong0ne!' }),
        ],
        [() => auth.getCurrentUser({}), () => t.request.get('/api/v1/auth/me')],
        [() => users.listUsers({}, as(user.accessToken)), () => t.request.get('/api/v1/users').set(...bearer(user.accessToken))],
        [() => users.getUser({ userId: other.id }, as(user.accessToken)), () => t.request.get(`/api/v1/users/${other.id}`).set(...bearer(user.accessToken))],
        [() => users.getUser({ userId: 999_999 }, as(admin)), () => t.request.get('/api/v1/users/999999').set(...bearer(admin))],
        [
          () => users.changePassword({ userId: user.id, oldPassword: 'Nope1234!', newPassword: 'N3w-Passw0rd' }, as(user.accessToken)),
          () =>
            t.request
              .put(`/api/v1/users/${user.id}/password`)
              .set(...bearer(user.accessToken))
              .send({ oldPassword: 'Nope1234!', newPassword: 'N3w-Passw0rd' }),
        ],
        [
          () => users.createUser({ ...newUser('rpc'), username: other.username }, as(admin)),
          () =>
            t.request
              .post('/api/v1/users')
              .set(...bearer(admin))
              .send({ ...newUser('rest'), username: other.username }),
        ],
      ];
      for (const [rpc, rest] of pairs) {
        const error = await failure(rpc());
        expect(error.rawMessage).toBe((await rest()).body.error.message);
      }
    });
  });
});

// Requests no generated client would send, straight to the Connect protocol's unary endpoint.
describe('raw Connect requests', () => {
  const post = (procedure: string, body: string | Uint8Array, contentType = 'application/json') =>
    fetch(`${t.baseUrl}/${procedure}`, { method: 'POST', headers: { 'content-type': contentType, 'x-request-id': 'raw-1' }, body });

  it('when a JSON RegisterRequest carries a role, then the field is not honoured: the account is a USER or the call is refused', async () => {
    const body = newUser('raw');
    const res = await post('arcana.auth.v1.AuthService/Register', JSON.stringify({ ...body, role: 'USER_ROLE_ADMIN' }));
    const rows = await t.sql<{ role: string }>('SELECT role FROM users WHERE username = $1', [body.username]);
    if (res.status === 200) {
      expect(((await res.json()) as { user: { role: string } }).user.role).toBe('USER_ROLE_USER');
      expect(rows).toEqual([{ role: 'USER' }]);
    } else {
      expect(((await res.json()) as { code: string }).code).toBe('invalid_argument');
      expect(rows).toHaveLength(0);
    }
  });

  it('when a JSON body is malformed or mistyped, then invalid_argument (HTTP 400), never internal', async () => {
    const cases: [string, string][] = [
      ['arcana.auth.v1.AuthService/Login', '{"usernameOrEmail": '],
      ['arcana.auth.v1.AuthService/Login', '{"usernameOrEmail": 42, "password": ["x"]}'],
      ['arcana.auth.v1.AuthService/Login', '[]'],
      ['arcana.user.v1.UserService/GetUser', '{"userId": "99999999999"}'],
      ['arcana.user.v1.UserService/GetUser', '{"userId": 1.5}'],
      ['arcana.user.v1.UserService/UpdateUserStatus', '{"userId": 1, "status": "USER_STATUS_BANNED"}'],
    ];
    for (const [procedure, body] of cases) {
      const res = await post(procedure, body);
      const error = (await res.json()) as { code: string };
      expect({ procedure, body, code: error.code, status: res.status }).toEqual({ procedure, body, code: 'invalid_argument', status: 400 });
    }
  });

  // @connectrpc/connect labels these `internal`; the gate in src/controllers/rpc/rpc-node-handler.ts
  // decodes them first and answers invalid_argument.
  it('when a binary body is truncated or garbage, then invalid_argument, never internal', async () => {
    const cases: [string, Uint8Array][] = [
      ['arcana.auth.v1.AuthService/Login', new Uint8Array([0x0a, 0x05, 0x41])],
      ['arcana.auth.v1.AuthService/Login', new Uint8Array([0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01])],
      ['arcana.auth.v1.AuthService/Register', new Uint8Array([0xff, 0xff, 0xff])],
    ];
    for (const [procedure, body] of cases) {
      const res = await post(procedure, body, 'application/proto');
      const error = (await res.json()) as { code: string };
      expect.soft({ procedure, body: body.join(','), code: error.code }).toEqual({ procedure, body: body.join(','), code: 'invalid_argument' });
    }
  });

  it('when a gRPC-Web or gRPC message does not decode, then invalid_argument, never internal', async () => {
    // One enveloped message whose payload is a truncated field.
    const envelope = new Uint8Array([0x00, 0x00, 0x00, 0x00, 0x03, 0x0a, 0x05, 0x41]);
    const web = await fetch(`${t.baseUrl}/arcana.auth.v1.AuthService/Login`, {
      method: 'POST',
      headers: { 'content-type': 'application/grpc-web+proto' },
      body: envelope,
    });
    const text = `${web.headers.get('grpc-status') ?? ''} ${new TextDecoder().decode(new Uint8Array(await web.arrayBuffer()))}`;
    expect(text).toMatch(/grpc-status:\s*3|^3 /);

    const { connect } = await import('node:http2');
    const session = connect(t.baseUrl);
    try {
      const status = await new Promise<string | undefined>((resolve, reject) => {
        const stream = session.request({ ':method': 'POST', ':path': '/arcana.auth.v1.AuthService/Login', 'content-type': 'application/grpc', te: 'trailers' });
        let found: string | undefined;
        stream.on('response', (headers) => (found = headers['grpc-status'] as string | undefined));
        stream.on('trailers', (trailers) => (found = trailers['grpc-status'] as string | undefined));
        stream.on('close', () => resolve(found));
        stream.on('error', reject);
        stream.resume();
        stream.end(envelope);
      });
      expect(status).toBe(String(Code.InvalidArgument));
    } finally {
      session.close();
    }
  });

  it('when a validation error is answered, then it carries the request id and the BadRequest detail', async () => {
    const res = await post('arcana.auth.v1.AuthService/Register', JSON.stringify({ username: 'a!' }));
    expect(res.status).toBe(400);
    expect(res.headers.get('x-request-id')).toBe('raw-1');
    const error = (await res.json()) as { code: string; message: string; details: { type: string }[] };
    expect(error).toMatchObject({ code: 'invalid_argument', message: 'Validation failed' });
    expect(error.details.map((detail) => detail.type)).toEqual(['google.rpc.BadRequest']);
  });
});
