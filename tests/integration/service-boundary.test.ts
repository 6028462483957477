// The service layer's internal API, end to end in memory: the Remote* services the controller
// layer would hold → Connect (binary, through the layer error interceptors) → the layer handlers
// → the real use cases on a real database. Whatever the controller layer calls must answer as
// the in-process use case does: the same messages, and the same errors with code, message and
// details intact.
import { createClient, createRouterTransport, type Transport } from '@connectrpc/connect';
import { inspect } from 'node:util';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { AuditEventType } from '../../gen/proto/arcana/audit/v1/audit_service_pb.js';
import { AuditLayerService } from '../../gen/proto/arcana/internal/service/v1/audit_layer_service_pb.js';
import { AuthLayerService } from '../../gen/proto/arcana/internal/service/v1/auth_layer_service_pb.js';
import { UserLayerService } from '../../gen/proto/arcana/internal/service/v1/user_layer_service_pb.js';
import { UserRole, UserStatus } from '../../gen/proto/arcana/user/v1/user_pb.js';
import { layerServerErrorInterceptor, withLayerErrors } from '../../src/communication/layer-errors.ts';
import { RemoteAuditService, RemoteAuthService, RemoteUserService } from '../../src/communication/service/remote-services.ts';
import { createAuditLayerHandler, createAuthLayerHandler, createUserLayerHandler } from '../../src/communication/service/service-handlers.ts';
import type { Actor } from '../../src/domain/actor.ts';
import { AppError, type ErrorCode, type FieldErrors } from '../../src/domain/errors.ts';
import { createLogger } from '../../src/infrastructure/logger.ts';
import type { AuditService } from '../../src/services/audit-use-cases.ts';
import type { AuthService } from '../../src/services/auth-use-cases.ts';
import type { UserService } from '../../src/services/user-use-cases.ts';
import { ADMIN, createTestApp, newUser, type TestApp } from '../helpers/test-app.ts';

let t: TestApp;
/** The app's own service layer: the baseline every remote answer is compared with. */
let local: { auth: AuthService; users: UserService; audit: AuditService };
let transport: Transport;
let remote: { auth: RemoteAuthService; users: RemoteUserService; audit: RemoteAuditService };
let admin: Actor;

const CLIENT = { ipAddress: '203.0.113.7', userAgent: 'service-boundary-test' };

beforeAll(async () => {
  t = await createTestApp();
  const { auth, users, audit } = t.app;
  if (auth === undefined || users === undefined || audit === undefined) throw new Error('this suite needs an app that holds the service layer');
  local = { auth, users, audit };
  transport = withLayerErrors(
    createRouterTransport(
      (router) => {
        router.service(AuthLayerService, createAuthLayerHandler(local.auth));
        router.service(UserLayerService, createUserLayerHandler(local.users));
        router.service(AuditLayerService, createAuditLayerHandler(local.audit));
      },
      { router: { interceptors: [layerServerErrorInterceptor(createLogger({ level: 'silent' }))] } },
    ),
  );
  remote = {
    auth: new RemoteAuthService(createClient(AuthLayerService, transport)),
    users: new RemoteUserService(createClient(UserLayerService, transport)),
    audit: new RemoteAuditService(createClient(AuditLayerService, transport)),
  };
  const { tokens } = await local.auth.login({ usernameOrEmail: ADMIN.username, password: ADMIN.password }, {});
  admin = await local.auth.authenticate(tokens.accessToken);
});

afterAll(async () => {
  await t.close();
});

interface Failure {
  code: ErrorCode;
  message: string;
  details: FieldErrors | undefined;
}

/** What a caller can see of a rejected call; anything but an AppError fails the test. */
async function failureOf(call: Promise<unknown>): Promise<Failure> {
  const error = await call.then(
    () => undefined,
    (reason: unknown) => reason,
  );
  if (!(error instanceof AppError)) throw new Error(`expected an AppError, got ${error === undefined ? 'success' : inspect(error)}`, { cause: error });
  return { code: error.code, message: error.message, details: error.details };
}

/** Registers a user in-process and returns its actor and tokens. */
async function registeredUser(prefix: string) {
  const body = newUser(prefix);
  const { user, tokens } = await local.auth.register(body, {});
  return { body, user, tokens, actor: await local.auth.authenticate(tokens.accessToken) };
}

describe('auth through the service boundary', () => {
  it('when a user registers remotely, then the account and session are the ones the service layer stores', async () => {
    const body = newUser('sb_register');
    const { user, tokens } = await remote.auth.register({ ...body, firstName: 'Ada' }, CLIENT);

    expect(user.username).toBe(body.username);
    expect(user.firstName).toBe('Ada');
    expect(user.lastName).toBeUndefined();
    expect(user).toEqual(await local.users.get(admin, user.id));
    expect(tokens.tokenType).toBe('Bearer');
    const actor = await local.auth.authenticate(tokens.accessToken);
    expect(actor).toEqual({ userId: user.id, role: UserRole.USER, sessionId: expect.any(Number) });
    // The client info crossed the boundary and was stored with the session.
    const [session] = await local.auth.listSessions(actor);
    expect(session).toMatchObject({ ipAddress: CLIENT.ipAddress, userAgent: CLIENT.userAgent, current: true });
  });

  it('when the client info is unknown, then the session records none, as in-process', async () => {
    const { tokens } = await remote.auth.register(newUser('sb_noclient'), {});
    const [session] = await local.auth.listSessions(await local.auth.authenticate(tokens.accessToken));
    expect(session?.ipAddress).toBeUndefined();
    expect(session?.userAgent).toBeUndefined();
  });

  it('when a user logs in and authenticates remotely, then the actor, profile and sessions equal the in-process ones', async () => {
    const { body } = await registeredUser('sb_login');
    const { user, tokens } = await remote.auth.login({ usernameOrEmail: body.username, password: body.password }, CLIENT);
    expect(user.lastLoginAt).toBeDefined();

    const actor = await remote.auth.authenticate(tokens.accessToken);
    expect(actor).toStrictEqual(await local.auth.authenticate(tokens.accessToken));
    expect(await remote.auth.currentUser(actor)).toEqual(await local.auth.currentUser(actor));
    const sessions = await remote.auth.listSessions(actor);
    expect(sessions).toHaveLength(2);
    expect(sessions).toEqual(await local.auth.listSessions(actor));
    expect(sessions.filter((session) => session.current).map((session) => session.id)).toEqual([actor.sessionId]);
  });

  it('when credentials are wrong, then login fails remotely exactly as in-process', async () => {
    const { body } = await registeredUser('sb_badlogin');
    const input = { usernameOrEmail: body.username, password: 'Wrong-passw0rd' };
    const failure = await failureOf(remote.auth.login(input, CLIENT));
    expect(failure).toEqual({ code: 'AUTHENTICATION_ERROR', message: 'Invalid credentials', details: undefined });
    expect(failure).toEqual(await failureOf(local.auth.login(input, CLIENT)));
  });

  it('when a token is forged, then authenticate fails remotely exactly as in-process', async () => {
    const failure = await failureOf(remote.auth.authenticate('not-a-token'));
    expect(failure.code).toBe('AUTHENTICATION_ERROR');
    expect(failure).toEqual(await failureOf(local.auth.authenticate('not-a-token')));
  });

  it('when a user logs out remotely, then the session is over', async () => {
    const { tokens, actor } = await registeredUser('sb_logout');
    await expect(remote.auth.logout(actor)).resolves.toBeUndefined();
    expect(await failureOf(remote.auth.authenticate(tokens.accessToken))).toEqual({
      code: 'AUTHENTICATION_ERROR',
      message: 'Token has been revoked',
      details: undefined,
    });
  });

  it('when a token pair is refreshed remotely, then the new pair works and a replay of the old one fails as in-process', async () => {
    const { tokens } = await registeredUser('sb_refresh');
    const next = await remote.auth.refresh(tokens.refreshToken, CLIENT);
    expect(next.tokenType).toBe('Bearer');
    expect(next.expiresIn).toBe(tokens.expiresIn);
    expect(next.refreshToken).not.toBe(tokens.refreshToken);
    const actor = await local.auth.authenticate(next.accessToken);

    const replayed = await failureOf(remote.auth.refresh(tokens.refreshToken, CLIENT));
    expect(replayed.code).toBe('AUTHENTICATION_ERROR');
    // Every replay revokes the whole family again, so the in-process answer to the same token is comparable.
    expect(replayed).toEqual(await failureOf(local.auth.refresh(tokens.refreshToken, CLIENT)));
    expect(await local.auth.listSessions({ ...actor })).toEqual([]);
  });

  it('when all sessions are revoked remotely, then the count is returned and none are left', async () => {
    const { body, actor } = await registeredUser('sb_revoke');
    await local.auth.login({ usernameOrEmail: body.username, password: body.password }, {});
    const live = await local.auth.listSessions(actor);
    expect(live).toHaveLength(2);

    expect(await remote.auth.revokeAll(actor)).toBe(live.length);
    expect(await local.auth.listSessions(actor)).toEqual([]);
  });

  it('when a registration is refused for a taken name, then the conflict keeps its message and details', async () => {
    const { body } = await registeredUser('sb_taken');
    const failure = await failureOf(remote.auth.register(body, CLIENT));
    expect(failure).toEqual({
      code: 'CONFLICT',
      message: 'Username already exists',
      details: { username: 'already exists', email: 'already exists' },
    });
    expect(failure).toEqual(await failureOf(local.auth.register(body, CLIENT)));
  });

  it('when a password is too long for bcrypt, then the validation error keeps its field details', async () => {
    const body = { ...newUser('sb_longpw'), password: 'x'.repeat(73) };
    const failure = await failureOf(remote.auth.register(body, CLIENT));
    expect(failure).toEqual({ code: 'VALIDATION_ERROR', message: 'Validation failed', details: { password: 'must be at most 72 bytes' } });
    expect(failure).toEqual(await failureOf(local.auth.register(body, CLIENT)));
  });
});

describe('user management through the service boundary', () => {
  it('when users are listed remotely, then the page equals the in-process page', async () => {
    await registeredUser('sb_list');
    await registeredUser('sb_list');
    const query = { page: 1, perPage: 2, role: UserRole.USER, status: UserStatus.ACTIVE };
    const page = await remote.users.list(admin, query);
    expect(page.users).toHaveLength(2);
    expect(page.pagination.perPage).toBe(2);
    expect(page).toEqual(await local.users.list(admin, query));
    // Unset filters stay unset: the whole listing, the administrator included.
    expect(await remote.users.list(admin, {})).toEqual(await local.users.list(admin, {}));
  });

  it('when a user is fetched remotely, then it equals the in-process answer, for the user and for an admin', async () => {
    const { user, actor } = await registeredUser('sb_get');
    expect(await remote.users.get(actor, user.id)).toEqual(await local.users.get(actor, user.id));
    expect(await remote.users.get(admin, user.id)).toEqual(user);
  });

  it('when an admin creates, updates, verifies and suspends a user remotely, then each answer is what the service layer stores', async () => {
    const body = newUser('sb_create');
    const created = await remote.users.create(admin, { ...body, role: UserRole.GUEST, phone: '+15550100' });
    expect(created).toMatchObject({ username: body.username, role: UserRole.GUEST, phone: '+15550100', isVerified: false });
    expect(created).toEqual(await local.users.get(admin, created.id));

    const updated = await remote.users.update(admin, { userId: created.id, firstName: 'Grace', avatarUrl: 'https://example.com/a.png' });
    // Fields the update did not name stay as they were: absence crossed the boundary as absence.
    expect(updated).toMatchObject({ firstName: 'Grace', avatarUrl: 'https://example.com/a.png', phone: '+15550100', email: body.email });
    expect(updated).toEqual(await local.users.get(admin, created.id));

    const verified = await remote.users.verify(admin, created.id);
    expect(verified.isVerified).toBe(true);
    expect(verified).toEqual(await local.users.get(admin, created.id));

    const suspended = await remote.users.updateStatus(admin, created.id, UserStatus.SUSPENDED);
    expect(suspended).toMatchObject({ status: UserStatus.SUSPENDED, isActive: false });
    expect(suspended).toEqual(await local.users.get(admin, created.id));
  });

  it('when a user is deleted remotely, then it is gone and a second delete is NOT_FOUND as in-process', async () => {
    const { user } = await registeredUser('sb_delete');
    await expect(remote.users.delete(admin, user.id)).resolves.toBeUndefined();

    const failure = await failureOf(remote.users.delete(admin, user.id));
    expect(failure).toEqual({ code: 'NOT_FOUND', message: 'User not found', details: undefined });
    expect(failure).toEqual(await failureOf(local.users.delete(admin, user.id)));
    expect(await failureOf(remote.users.get(admin, user.id))).toEqual(await failureOf(local.users.get(admin, user.id)));
  });

  it('when a user changes their password remotely, then the new one logs in and other sessions end', async () => {
    const { body, user, actor } = await registeredUser('sb_password');
    await local.auth.login({ usernameOrEmail: body.username, password: body.password }, {});
    const input = { userId: user.id, oldPassword: body.password, newPassword: 'N3w-passw0rd!' };
    await expect(remote.users.changePassword(actor, input)).resolves.toBeUndefined();

    const sessions = await local.auth.listSessions(actor);
    expect(sessions.map((session) => session.id)).toEqual([actor.sessionId]);
    const { user: loggedIn } = await local.auth.login({ usernameOrEmail: body.username, password: input.newPassword }, {});
    expect(loggedIn.id).toBe(user.id);

    // The old password is now wrong.
    const wrong = await failureOf(remote.users.changePassword(actor, input));
    expect(wrong).toEqual({ code: 'AUTHENTICATION_ERROR', message: 'Current password is incorrect', details: undefined });
    expect(wrong).toEqual(await failureOf(local.users.changePassword(actor, input)));
  });

  it('when login failures are cleared remotely, then the count of cleared addresses comes back', async () => {
    const { body, user } = await registeredUser('sb_clear');
    await failureOf(local.auth.login({ usernameOrEmail: body.username, password: 'Wrong-passw0rd' }, CLIENT));

    expect(await remote.users.clearLoginFailures(admin, user.id)).toBe(1);
    expect(await remote.users.clearLoginFailures(admin, user.id)).toBe(await local.users.clearLoginFailures(admin, user.id));
  });

  it('when a non-admin calls an admin operation remotely, then AUTHORIZATION_ERROR arrives as in-process', async () => {
    const { user, actor } = await registeredUser('sb_forbidden');
    const failure = await failureOf(remote.users.list(actor, {}));
    expect(failure).toEqual({ code: 'AUTHORIZATION_ERROR', message: 'Insufficient permissions', details: undefined });
    expect(failure).toEqual(await failureOf(local.users.list(actor, {})));
    expect(await failureOf(remote.users.get(actor, user.id + 100_000))).toEqual(await failureOf(local.users.get(actor, user.id + 100_000)));
  });

  it('when an admin verifies a verified user, then the CONFLICT arrives as in-process', async () => {
    const { user } = await registeredUser('sb_verified');
    await local.users.verify(admin, user.id);
    const failure = await failureOf(remote.users.verify(admin, user.id));
    expect(failure).toEqual({ code: 'CONFLICT', message: 'User is already verified', details: undefined });
    expect(failure).toEqual(await failureOf(local.users.verify(admin, user.id)));
  });

  it("when an update takes another user's e-mail, then the CONFLICT keeps its details", async () => {
    const first = await registeredUser('sb_email');
    const second = await registeredUser('sb_email');
    const input = { userId: second.user.id, email: first.body.email.toUpperCase() };
    const failure = await failureOf(remote.users.update(second.actor, input));
    expect(failure).toEqual({ code: 'CONFLICT', message: 'Email already exists', details: { email: 'already exists' } });
    expect(failure).toEqual(await failureOf(local.users.update(second.actor, input)));
  });

  it('when a status is UNSPECIFIED, then the VALIDATION_ERROR keeps its field details', async () => {
    const { user } = await registeredUser('sb_status');
    const failure = await failureOf(remote.users.updateStatus(admin, user.id, UserStatus.UNSPECIFIED));
    expect(failure.code).toBe('VALIDATION_ERROR');
    expect(failure.details).toEqual({ status: expect.stringContaining('ACTIVE') });
    expect(failure).toEqual(await failureOf(local.users.updateStatus(admin, user.id, UserStatus.UNSPECIFIED)));
  });
});

describe('the audit log through the service boundary', () => {
  it('when an admin lists events remotely, then the page equals the in-process page', async () => {
    const { body, user } = await registeredUser('sb_audit');
    await failureOf(local.auth.login({ usernameOrEmail: body.username, password: 'Wrong-passw0rd' }, CLIENT));
    const query = { userId: user.id, type: AuditEventType.LOGIN_FAILED, perPage: 5 };
    // Recording is fire-and-forget: wait until the event is stored before comparing.
    await vi.waitFor(async () => expect((await local.audit.list(admin, query)).events).toHaveLength(1));

    const page = await remote.audit.list(admin, query);
    expect(page.events[0]).toMatchObject({ userId: user.id, type: AuditEventType.LOGIN_FAILED, ipAddress: CLIENT.ipAddress });
    expect(page).toEqual(await local.audit.list(admin, query));
  });

  it('when a non-admin lists events remotely, then AUTHORIZATION_ERROR arrives as in-process', async () => {
    const { actor } = await registeredUser('sb_audit_user');
    const failure = await failureOf(remote.audit.list(actor, {}));
    expect(failure.code).toBe('AUTHORIZATION_ERROR');
    expect(failure).toEqual(await failureOf(local.audit.list(actor, {})));
  });
});

describe('the wire contract of the service boundary', () => {
  it('when a request omits the embedded public request, then the use case reads it as the empty message', async () => {
    const users = createClient(UserLayerService, transport);
    const answer = await users.listUsers({ actor: { userId: admin.userId, role: admin.role, sessionId: admin.sessionId } });
    const expected = await local.users.list(admin, {});
    expect(answer.users).toEqual(expected.users);
    expect(answer.pagination).toEqual(expected.pagination);

    const auth = createClient(AuthLayerService, transport);
    expect(await failureOf(auth.login({}))).toEqual(await failureOf(local.auth.login({}, {})));
  });

  it('when a request omits the actor, then the call fails as a fault, not as an anonymous caller', async () => {
    const auth = createClient(AuthLayerService, transport);
    const error = await auth.getCurrentUser({}).then(
      () => undefined,
      (reason: unknown) => reason,
    );
    expect(error).toBeInstanceOf(Error);
    expect(error).not.toBeInstanceOf(AppError);
    expect(String(error)).toContain('actor is required');
  });

  it('when the service layer answers authenticate without an actor, then the remote service throws a fault, not an auth failure', async () => {
    const broken = withLayerErrors(
      createRouterTransport((router) => {
        router.service(AuthLayerService, { authenticate: () => ({}) });
      }),
    );
    const auth = new RemoteAuthService(createClient(AuthLayerService, broken));
    const error = await auth.authenticate('any-token').then(
      () => undefined,
      (reason: unknown) => reason,
    );
    expect(error).toBeInstanceOf(Error);
    expect(error).not.toBeInstanceOf(AppError);
    expect(String(error)).toContain('AuthenticateResponse.actor');
  });
});
