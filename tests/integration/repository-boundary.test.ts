// The repository layer's internal API end to end: each Remote* repository talks through an
// in-memory Connect transport (with the layer error interceptors the real deployment uses) to the
// handlers, which call the Prisma repositories on a real PostgreSQL schema. Whatever the remote
// repository returns must be exactly what the repository behind it returns in-process.
import { createClient, createRouterTransport } from '@connectrpc/connect';
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { OAuthToken, User } from '../../gen/prisma/client.ts';
import { AuditRepositoryService } from '../../gen/proto/arcana/internal/repository/v1/audit_repository_service_pb.js';
import { CounterStoreService } from '../../gen/proto/arcana/internal/repository/v1/counter_store_service_pb.js';
import { TokenRepositoryService } from '../../gen/proto/arcana/internal/repository/v1/token_repository_service_pb.js';
import { UserRepositoryService } from '../../gen/proto/arcana/internal/repository/v1/user_repository_service_pb.js';
import { layerServerErrorInterceptor, withLayerErrors } from '../../src/communication/layer-errors.ts';
import {
  auditEventFromProto,
  auditEventToProto,
  profileFromProto,
  tokenFromProto,
  tokenToProto,
  userFromProto,
  userToProto,
} from '../../src/communication/repository/record-mapping.ts';
import { RemoteAuditRepository, RemoteCounterStore, RemoteTokenRepository, RemoteUserRepository } from '../../src/communication/repository/remote-repositories.ts';
import {
  createAuditRepositoryHandler,
  createCounterStoreHandler,
  createTokenRepositoryHandler,
  createUserRepositoryHandler,
} from '../../src/communication/repository/repository-handlers.ts';
import { AppError } from '../../src/domain/errors.ts';
import { createLogger } from '../../src/infrastructure/logger.ts';
import { MemoryCounterStore } from '../../src/infrastructure/rate-limiter.ts';
import type { PrismaAuditRepository, NewAuditEvent } from '../../src/repositories/audit-repository.ts';
import { lockUser, type PrismaTokenRepository } from '../../src/repositories/token-repository.ts';
import type { PrismaUserRepository, NewUser, UserChanges } from '../../src/repositories/user-repository.ts';
import { createTestApp, prismaRepositoriesOf, type TestApp } from '../helpers/test-app.ts';
import { newTokenRecord, storePair, TEST_PASSWORD_HASH } from '../helpers/token-records.ts';

const DAY = 24 * 3600 * 1000;
/** The counter store's clock: fixed, so remaining lifetimes are exact. */
const COUNTER_NOW = 1_700_000_000_000;

let t: TestApp;
let direct: { users: PrismaUserRepository; tokens: PrismaTokenRepository; audit: PrismaAuditRepository };
let remote: { users: RemoteUserRepository; tokens: RemoteTokenRepository; audit: RemoteAuditRepository; counters: RemoteCounterStore };

beforeAll(async () => {
  t = await createTestApp();
  direct = prismaRepositoriesOf(t);
  const counters = new MemoryCounterStore(() => COUNTER_NOW);
  const transport = withLayerErrors(
    createRouterTransport(
      (router) => {
        router.service(UserRepositoryService, createUserRepositoryHandler(direct.users));
        router.service(TokenRepositoryService, createTokenRepositoryHandler(direct.tokens));
        router.service(AuditRepositoryService, createAuditRepositoryHandler(direct.audit));
        router.service(CounterStoreService, createCounterStoreHandler(counters));
      },
      { router: { interceptors: [layerServerErrorInterceptor(createLogger({ level: 'silent' }))] } },
    ),
  );
  remote = {
    users: new RemoteUserRepository(createClient(UserRepositoryService, transport)),
    tokens: new RemoteTokenRepository(createClient(TokenRepositoryService, transport)),
    audit: new RemoteAuditRepository(createClient(AuditRepositoryService, transport)),
    counters: new RemoteCounterStore(createClient(CounterStoreService, transport)),
  };
});

afterAll(async () => {
  // beforeAll may have failed before assigning it.
  await (t as TestApp | undefined)?.close();
});

let serial = 0;

function newUser(overrides: Partial<NewUser> = {}): NewUser {
  serial += 1;
  const name = `boundary_${process.pid}_${serial}`;
  return { username: name, email: `${name}@example.com`, passwordHash: TEST_PASSWORD_HASH, ...overrides };
}

const newToken = newTokenRecord;

/** The error a call fails with; fails the test if it succeeds. */
async function failureOf(call: Promise<unknown>): Promise<unknown> {
  try {
    await call;
  } catch (error) {
    return error;
  }
  throw new Error('expected the call to fail');
}

/** What a client of the repository sees of an AppError. */
function visible(error: unknown) {
  if (!(error instanceof AppError)) throw new Error(`expected an AppError, got ${String(error)}`);
  return { code: error.code, message: error.message, details: error.details };
}

describe('record mapping', () => {
  const user: User = {
    id: 42,
    username: 'mapped',
    usernameKey: 'mapped',
    email: 'mapped@example.com',
    passwordHash: '$2b$04$hash',
    firstName: '',
    lastName: 'Last',
    phone: null,
    avatarUrl: 'https://example.com/a.png',
    role: 'GUEST',
    status: 'SUSPENDED',
    isVerified: true,
    isActive: false,
    createdAt: new Date('2024-02-29T23:59:59.999Z'),
    updatedAt: new Date('2025-01-01T00:00:00.001Z'),
    lastLoginAt: new Date('1999-12-31T12:00:00.123Z'),
    version: 7,
  };

  it('when a full user row goes to a record and back, then it comes back deep-equal', () => {
    expect(userFromProto(userToProto(user))).toStrictEqual(user);
  });

  it('when a profile goes to a record and back, then it comes back deep-equal and without a hash', () => {
    const { passwordHash: _hash, ...profile } = user;
    const record = userToProto(profile);
    expect(record.passwordHash).toBeUndefined();
    expect(profileFromProto(record)).toStrictEqual(profile);
    expect(() => userFromProto(record)).toThrow(/password_hash/);
  });

  it('when a token row or an audit row goes to a record and back, then it comes back deep-equal', () => {
    const token: OAuthToken = {
      id: 7,
      userId: 42,
      familyId: randomUUID(),
      accessTokenHash: 'a'.repeat(64),
      refreshTokenHash: 'b'.repeat(64),
      tokenType: 'Bearer',
      accessExpiresAt: new Date(1_700_000_000_001),
      expiresAt: new Date(1_700_000_900_999),
      familyExpiresAt: new Date(1_702_000_000_000),
      clientName: null,
      ipAddress: '::1',
      userAgent: '',
      isRevoked: true,
      revokedReason: 'logout',
      createdAt: new Date(1_699_999_999_999),
      updatedAt: new Date(1_700_000_000_000),
    };
    expect(tokenFromProto(tokenToProto(token))).toStrictEqual(token);
    const event = {
      id: 3,
      type: 'ROLE_CHANGED' as const,
      userId: 42,
      actorId: null,
      ipAddress: null,
      userAgent: 'ua',
      details: { from: 'USER', to: 'ADMIN', attempts: 3, ratio: 0.5, forced: false },
      createdAt: new Date(1_700_000_000_123),
      eventKey: '7d0f5b8e-2a4c-4e1b-9c3d-5f6a7b8c9d0e',
    };
    expect(auditEventFromProto(auditEventToProto(event))).toStrictEqual(event);
    expect(auditEventFromProto(auditEventToProto({ ...event, details: null }))).toStrictEqual({ ...event, details: null });
    expect(auditEventFromProto(auditEventToProto({ ...event, eventKey: null }))).toStrictEqual({ ...event, eventKey: null });
  });
});

describe('users across the repository boundary', () => {
  it('when a user is read through the remote repository, then it deep-equals the row read directly', async () => {
    const { id, username, email, passwordHash } = await direct.users.create(newUser({ firstName: 'Ada', lastName: '', phone: '+15550100' }));
    await direct.users.update(id, { avatarUrl: 'https://example.com/ada.png' });
    await direct.tokens.create(newToken(id), passwordHash, new Date(Date.now() - 1234));

    const full = await remote.users.findById(id);
    expect(full).toStrictEqual(await direct.users.findById(id));
    expect(full?.lastLoginAt).toBeInstanceOf(Date);
    expect(await remote.users.findByLogin(username)).toStrictEqual(full);
    expect(await remote.users.findByLogin(email)).toStrictEqual(full);

    const profile = await remote.users.findProfile(id);
    expect(profile).toStrictEqual(await direct.users.findProfile(id));
    expect(profile).not.toHaveProperty('passwordHash');
  });

  it('when a user has only the required fields, then its empty columns come back as nulls', async () => {
    const { id } = await direct.users.create(newUser());
    const row = await remote.users.findById(id);
    expect(row).toStrictEqual(await direct.users.findById(id));
    expect(row).toMatchObject({ firstName: null, lastName: null, phone: null, avatarUrl: null, lastLoginAt: null });
  });

  it('when no user matches, then every find through the remote repository returns null', async () => {
    expect(await remote.users.findById(999_999)).toBeNull();
    expect(await remote.users.findProfile(999_999)).toBeNull();
    expect(await remote.users.findByLogin('nobody_here')).toBeNull();
    expect(await remote.users.findByLogin('nobody@example.com')).toBeNull();
  });

  it('when a user is created through the remote repository, then it returns the row as stored', async () => {
    const withEverything = await remote.users.create(newUser({ firstName: 'Grace', lastName: 'Hopper', phone: '123', role: 'GUEST' }));
    expect(withEverything).toStrictEqual(await direct.users.findById(withEverything.id));
    expect(withEverything).toMatchObject({ firstName: 'Grace', lastName: 'Hopper', phone: '123', role: 'GUEST' });

    // No role means the column's default, exactly as in-process.
    const plain = await remote.users.create(newUser({ firstName: null }));
    expect(plain).toStrictEqual(await direct.users.findById(plain.id));
    expect(plain).toMatchObject({ role: 'USER', status: 'ACTIVE', firstName: null, lastName: null, phone: null });
  });

  it('when a user is updated through the remote repository, then every change is stored and the row returned', async () => {
    const { id } = await direct.users.create(newUser());
    const changes: UserChanges = {
      email: `changed_${id}@example.com`,
      firstName: 'First',
      lastName: '',
      phone: '555',
      avatarUrl: 'https://example.com/x.png',
      passwordHash: '$2b$04$changed',
      isVerified: true,
      status: 'SUSPENDED',
      isActive: false,
      role: 'GUEST',
    };
    const updated = await remote.users.update(id, changes);
    expect(updated).toStrictEqual(await direct.users.findById(id));
    expect(updated).toMatchObject(changes);

    // An empty change set changes nothing but is still answered with the row.
    expect(await remote.users.update(id, {})).toMatchObject(changes);
  });

  it('when a session-ending write expects what another write has replaced, then the remote call is a conflict, revokes nothing and the newer row stays', async () => {
    const { id, passwordHash } = await direct.users.create(newUser());
    const kept = await storePair(direct.tokens, newToken(id));
    const other = await storePair(direct.tokens, newToken(id));
    await direct.users.update(id, { passwordHash: '$2b$04$theirs' }, { passwordHash });
    const mine = { changes: { passwordHash: '$2b$04$mine' }, expected: { passwordHash } };
    await expect(remote.tokens.revokeAllWithUserWrite(id, kept.id, mine)).rejects.toMatchObject({
      code: 'CONFLICT',
      message: 'The password was changed meanwhile; nothing was changed',
    });
    expect((await direct.users.findById(id))?.passwordHash).toBe('$2b$04$theirs');
    expect((await direct.tokens.findByAccessHash(other.accessTokenHash))?.isRevoked).toBe(false);

    // Over the hash in place: the row as written, and every pair but the spared chain revoked.
    const version = (await direct.users.findById(id))?.version ?? 0;
    const over = { changes: { passwordHash: '$2b$04$mine' }, expected: { passwordHash: '$2b$04$theirs' } };
    const { user, revoked } = await remote.tokens.revokeAllWithUserWrite(id, kept.id, over);
    expect(revoked).toEqual([other.accessTokenHash]);
    expect(user).toStrictEqual(await direct.users.findById(id));
    expect(user).toMatchObject({ passwordHash: '$2b$04$mine', version: version + 1 });
    expect(await direct.tokens.findByAccessHash(other.accessTokenHash)).toMatchObject({ isRevoked: true, revokedReason: 'revoked' });
    expect((await direct.tokens.findByAccessHash(kept.accessTokenHash))?.isRevoked).toBe(false);
    // A repeat whose first answer was lost finds its write in place and still names what it revoked.
    expect(await remote.tokens.revokeAllWithUserWrite(id, kept.id, over, { repeat: true })).toEqual({ user, revoked: [other.accessTokenHash] });
  });

  it('when a session-ending write would suspend the last active administrator, then it is refused and nothing is revoked', async () => {
    const { id } = await direct.users.create(newUser({ role: 'ADMIN' }));
    const admins = await direct.users.list({ page: 1, perPage: 100, role: 'ADMIN', status: 'ACTIVE' });
    for (const admin of admins.users) if (admin.id !== id) await direct.users.update(admin.id, { role: 'USER' });
    const pair = await storePair(direct.tokens, newToken(id));
    const suspend = { changes: { status: 'SUSPENDED', isActive: false }, expected: {} } as const;
    await expect(remote.tokens.revokeAllWithUserWrite(id, undefined, suspend)).rejects.toMatchObject({ code: 'LAST_ADMIN' });
    expect(await direct.users.findById(id)).toMatchObject({ status: 'ACTIVE' });
    expect((await direct.tokens.findByAccessHash(pair.accessTokenHash))?.isRevoked).toBe(false);
  });

  it('when changes hold a Prisma operation, a null or a field outside UserChanges, then the remote repository refuses them before sending', async () => {
    const { id } = await direct.users.create(newUser({ firstName: 'Kept' }));
    await expect(remote.users.update(id, { firstName: { set: 'Other' } })).rejects.toThrow(/UserChanges\.firstName .*operation object/);
    await expect(remote.users.update(id, { lastName: null })).rejects.toThrow(/UserChanges\.lastName .*null/);
    await expect(remote.users.update(id, { isActive: { set: false } })).rejects.toThrow(/UserChanges\.isActive/);
    // Extra keys are a type error, but a caller building changes dynamically could still send one.
    const withUsername = { usernameKey: 'other' } as UserChanges;
    await expect(remote.users.update(id, withUsername)).rejects.toThrow(/UserChanges\.usernameKey/);
    expect(await direct.users.findById(id)).toMatchObject({ firstName: 'Kept', lastName: null, isActive: true, role: 'USER' });
  });

  it('when users are listed through the remote repository, then the page and total equal a direct listing', async () => {
    await direct.users.create(newUser({ role: 'GUEST' }));
    const suspended = await direct.users.create(newUser({ role: 'GUEST' }));
    await direct.users.update(suspended.id, { status: 'SUSPENDED', isActive: false });

    const filters = [
      { page: 1, perPage: 100 },
      { page: 2, perPage: 2 },
      { page: 1, perPage: 100, role: 'GUEST' as const },
      { page: 1, perPage: 100, status: 'SUSPENDED' as const },
      { page: 1, perPage: 100, role: 'GUEST' as const, status: 'ACTIVE' as const },
      { page: 1, perPage: 100, role: 'ADMIN' as const, status: 'DELETED' as const },
    ];
    for (const filter of filters) {
      const listed = await remote.users.list(filter);
      expect(listed).toStrictEqual(await direct.users.list(filter));
    }
    const guests = await remote.users.list({ page: 1, perPage: 100, role: 'GUEST' });
    expect(guests.total).toBeGreaterThanOrEqual(2);
    // A listing carries profiles: no password hash leaves the repository, in-process or over the wire.
    expect(guests.users.every((user) => user.role === 'GUEST' && !('passwordHash' in user))).toBe(true);
  });

  it("when a login's pair is stored through the remote repository, then the user's last login is that instant to the millisecond; a refused pair records none", async () => {
    const { id, passwordHash, version } = await direct.users.create(newUser());
    const at = new Date(Date.now() - 98_765);
    const record = newToken(id);
    expect(await remote.tokens.create(record, passwordHash, at)).toStrictEqual(await direct.tokens.findByAccessHash(record.accessTokenHash));
    expect(await direct.users.findById(id)).toMatchObject({ lastLoginAt: at, version: version + 1 });
    // A registration's first pair is no login.
    expect(await remote.tokens.create(newToken(id), passwordHash)).not.toBeNull();
    expect(await direct.users.findById(id)).toMatchObject({ lastLoginAt: at, version: version + 1 });
    // Refused (another password hash): neither the pair nor the login.
    const refused = newToken(id);
    expect(await remote.tokens.create(refused, `$2b$04$${'d'.repeat(53)}`, new Date())).toBeNull();
    expect(await direct.tokens.findByAccessHash(refused.accessTokenHash)).toBeNull();
    expect(await direct.users.findById(id)).toMatchObject({ lastLoginAt: at, version: version + 1 });
  });

  it('when names are checked through the remote repository, then it answers as the direct repository', async () => {
    const taken = await direct.users.create(newUser());
    const other = newUser();
    const questions: [string | undefined, string | undefined, number | undefined][] = [
      [taken.username, undefined, undefined],
      [undefined, taken.email, undefined],
      [taken.username, taken.email, undefined],
      [taken.username, taken.email, taken.id],
      [other.username, other.email, undefined],
      [taken.username, other.email, undefined],
      [undefined, undefined, undefined],
      // An empty string is a name to check, not an absent one.
      ['', '', undefined],
    ];
    for (const [username, email, exceptId] of questions) {
      expect(await remote.users.findTaken(username, email, exceptId)).toStrictEqual(await direct.users.findTaken(username, email, exceptId));
    }
    expect(await remote.users.findTaken(taken.username, taken.email)).toStrictEqual({ username: true, email: true });
    expect(await remote.users.findTaken(taken.username, taken.email, taken.id)).toStrictEqual({ username: false, email: false });
  });

  it('when a user is deleted through the remote repository, then it answers true once and false after', async () => {
    const { id } = await direct.users.create(newUser());
    const token = await storePair(direct.tokens, newToken(id));
    expect(await remote.users.delete(id)).toBe(true);
    expect(await direct.users.findById(id)).toBeNull();
    expect(await direct.tokens.findByAccessHash(token.accessTokenHash)).toBeNull();
    expect(await remote.users.delete(id)).toBe(false);
  });

  it('when a write names its caller with an id past the column or a family that is no UUID, then it is refused as invalid before the database is asked, and nothing changes', async () => {
    // Helper 79: such values reached PostgreSQL, whose refusal came back as `internal`, logged as an error.
    const { id } = await direct.users.create(newUser());
    const callers = [
      { userId: 2 ** 31, familyId: randomUUID(), administrator: true },
      { userId: id, familyId: 'nosuchfamily', administrator: true },
      { userId: 0, familyId: randomUUID(), administrator: false },
    ];
    for (const actingAs of callers) {
      const refusal = await failureOf(remote.users.update(id, { firstName: 'Spoofed' }, {}, { actingAs }));
      expect(visible(refusal), JSON.stringify(actingAs)).toMatchObject({ code: 'VALIDATION_ERROR', message: 'Malformed x-arcana-acting-as header' });
    }
    expect((await direct.users.findById(id))?.firstName).toBeNull();
  });

  it('when an update targets a missing user, then the same NotFoundError code and message arrive', async () => {
    const expected = await failureOf(direct.users.update(999_999, { firstName: 'x' }));
    const received = await failureOf(remote.users.update(999_999, { firstName: 'x' }));
    expect(received).toBeInstanceOf(AppError);
    expect(visible(received)).toStrictEqual(visible(expected));
    expect(visible(received)).toMatchObject({ code: 'NOT_FOUND', message: 'User not found' });
  });

  it('when a username or e-mail is already taken, then the same ConflictError code, message and details arrive', async () => {
    const existing = await direct.users.create(newUser());
    const sameName = newUser({ username: existing.username });
    const expected = await failureOf(direct.users.create(sameName));
    const received = await failureOf(remote.users.create(sameName));
    expect(visible(received)).toStrictEqual(visible(expected));
    expect(visible(received)).toMatchObject({ code: 'CONFLICT', message: 'Username already exists', details: { username: 'already exists' } });

    const other = await direct.users.create(newUser());
    const emailClash = await failureOf(remote.users.update(other.id, { email: existing.email }));
    expect(visible(emailClash)).toStrictEqual(visible(await failureOf(direct.users.update(other.id, { email: existing.email }))));
    expect(visible(emailClash)).toMatchObject({ code: 'CONFLICT', message: 'Email already exists' });
  });
});

describe('tokens across the repository boundary', () => {
  let userId: number;

  beforeAll(async () => {
    userId = (await direct.users.create(newUser())).id;
  });

  it('when a pair is created through the remote repository, then it returns the row as stored', async () => {
    const record = newToken(userId, { ipAddress: '203.0.113.9', userAgent: 'vitest', clientName: 'cli' });
    const created = await storePair(remote.tokens, record);
    expect(created).toStrictEqual(await direct.tokens.findByAccessHash(record.accessTokenHash));
    expect(created).toMatchObject({ ...record, tokenType: 'Bearer', isRevoked: false });

    const bare = await storePair(remote.tokens, newToken(userId));
    expect(bare).toMatchObject({ ipAddress: null, userAgent: null, clientName: null });
  });

  it("when a login's pair is stored for a user whose password or status changed, or who is gone, then nothing is stored, through either repository", async () => {
    const changed = (await direct.users.create(newUser())).id;
    const suspended = (await direct.users.create(newUser())).id;
    const deleted = (await direct.users.create(newUser())).id;
    await direct.users.update(changed, { passwordHash: `$2b$04$${'b'.repeat(53)}` });
    await direct.users.update(suspended, { status: 'SUSPENDED' });
    await direct.users.delete(deleted);
    for (const repository of [direct.tokens, remote.tokens]) {
      for (const id of [changed, suspended, deleted]) {
        const record = newToken(id);
        expect(await repository.create(record, TEST_PASSWORD_HASH)).toBeNull();
        expect(await direct.tokens.findByAccessHash(record.accessTokenHash)).toBeNull();
      }
      // The hash must be the user's own, not merely some hash.
      expect(await repository.create(newToken(userId), `$2b$04$${'c'.repeat(53)}`)).toBeNull();
    }
  });

  it('when a pair is found by either hash through the remote repository, then it deep-equals the row read directly', async () => {
    const record = newToken(userId, { userAgent: 'finder' });
    const stored = await storePair(direct.tokens, record);
    expect(await remote.tokens.findByAccessHash(record.accessTokenHash)).toStrictEqual(stored);
    expect(await remote.tokens.findByRefreshHash(record.refreshTokenHash)).toStrictEqual(stored);
    expect(await remote.tokens.findByAccessHash('0'.repeat(64))).toBeNull();
    expect(await remote.tokens.findByRefreshHash('0'.repeat(64))).toBeNull();
  });

  it('when a pair is rotated through the remote repository, then the successor is returned, and null on a replay', async () => {
    const previous = await storePair(direct.tokens, newToken(userId));
    const next = newToken(userId, { familyId: previous.familyId });
    const successor = await remote.tokens.rotate(previous, next);
    expect(successor).toStrictEqual(await direct.tokens.findByAccessHash(next.accessTokenHash));
    expect((await direct.tokens.findByAccessHash(previous.accessTokenHash))?.isRevoked).toBe(true);

    const replayed = newToken(userId, { familyId: previous.familyId });
    expect(await remote.tokens.rotate(previous, replayed)).toBeNull();
    expect(await direct.tokens.findByAccessHash(replayed.accessTokenHash)).toBeNull();
  });

  it("when pairs are revoked through the remote repository, then the revoked pairs' access hashes come back", async () => {
    const single = await storePair(direct.tokens, newToken(userId));
    expect(await remote.tokens.revoke(single.id, 'logout')).toStrictEqual([single.accessTokenHash]);
    expect(await remote.tokens.revoke(single.id, 'logout')).toStrictEqual([]);

    const first = await storePair(direct.tokens, newToken(userId));
    const second = await storePair(direct.tokens, newToken(userId, { familyId: first.familyId }));
    expect((await remote.tokens.revokeFamily(first.familyId, 'reuse')).sort()).toStrictEqual([first.accessTokenHash, second.accessTokenHash].sort());
    expect(await remote.tokens.revokeFamily(first.familyId, 'reuse')).toStrictEqual([]);
  });

  it("when a chain is revoked through the remote repository by a pair rotated since, then its live pair goes, and another user's pair names nothing", async () => {
    const previous = await storePair(direct.tokens, newToken(userId));
    const live = await direct.tokens.rotate(previous, newToken(userId, { familyId: previous.familyId }));
    if (live === null) throw new Error('the rotation was refused');
    const stranger = (await direct.users.create(newUser())).id;
    expect(await remote.tokens.revokeChainOf(stranger, previous.id, 'revoked')).toStrictEqual([]);
    expect((await direct.tokens.findByAccessHash(live.accessTokenHash))?.isRevoked).toBe(false);

    expect(await remote.tokens.revokeChainOf(userId, previous.id, 'revoked')).toStrictEqual([live.accessTokenHash]);
    expect(await remote.tokens.revokeChainOf(userId, previous.id, 'revoked')).toStrictEqual([]);
    // A repeat whose first answer was lost still names what it revoked, for the caches.
    expect(await remote.tokens.revokeChainOf(userId, previous.id, 'revoked', { repeat: true })).toStrictEqual([live.accessTokenHash]);
  });

  it("when a family is revoked for reuse while its live pair is being rotated, then the rotation's successor is revoked too", async () => {
    const prisma = t.app.database?.prisma;
    if (prisma === undefined) throw new Error('this suite needs an app that holds the database');
    const owner = (await direct.users.create(newUser())).id;
    const live = await storePair(direct.tokens, newToken(owner));
    const successor = newToken(owner, { familyId: live.familyId });
    // A refresh in flight, as rotate makes it (user lock, the old pair revoked, its successor
    // inserted), held open until the reuse revocation has been issued and is waiting.
    let written!: () => void;
    const rotationWritten = new Promise<void>((resolve) => (written = resolve));
    let commit!: () => void;
    const mayCommit = new Promise<void>((resolve) => (commit = resolve));
    const rotation = prisma.$transaction(
      async (tx) => {
        await lockUser(tx, owner);
        await tx.oAuthToken.updateMany({ where: { id: live.id, isRevoked: false }, data: { isRevoked: true, revokedReason: 'rotated' } });
        await tx.oAuthToken.create({ data: successor });
        written();
        await mayCommit;
      },
      { timeout: 10_000 },
    );
    // A rotation that fails before it has written (a deadlock victim, say) ends the wait too.
    await Promise.race([rotationWritten, rotation]);
    // Its outcome taken at once: on MariaDB it may fail (deadlock, lock wait) during the sleep below.
    const revocation = direct.tokens.revokeFamily(live.familyId, 'reuse').then(
      (hashes) => hashes,
      (error: unknown) => error,
    );
    // Long enough for the revocation to reach the database and wait on a lock.
    await new Promise((resolve) => setTimeout(resolve, 300));
    commit();
    await rotation;
    expect(await revocation).toStrictEqual([successor.accessTokenHash]);
    expect(await direct.tokens.findByAccessHash(successor.accessTokenHash)).toMatchObject({ isRevoked: true, revokedReason: 'reuse' });
  });

  it("when all of a user's pairs are revoked but one, then the others' hashes come back and the spared one stays live", async () => {
    const owner = (await direct.users.create(newUser())).id;
    const kept = await storePair(direct.tokens, newToken(owner));
    const dropped = await Promise.all([storePair(direct.tokens, newToken(owner)), storePair(direct.tokens, newToken(owner))]);
    expect((await remote.tokens.revokeAllForUser(owner, kept.id, 'revoked')).sort()).toStrictEqual(dropped.map((row) => row.accessTokenHash).sort());
    expect((await direct.tokens.findByAccessHash(kept.accessTokenHash))?.isRevoked).toBe(false);
    expect(await remote.tokens.revokeAllForUser(owner, undefined, 'revoked')).toStrictEqual([kept.accessTokenHash]);
  });

  it('when live pairs are listed through the remote repository, then they deep-equal a direct listing', async () => {
    const owner = (await direct.users.create(newUser())).id;
    await storePair(direct.tokens, newToken(owner, { clientName: 'one' }));
    await storePair(direct.tokens, newToken(owner, { clientName: 'two', ipAddress: '::1' }));
    const revoked = await storePair(direct.tokens, newToken(owner));
    await direct.tokens.revoke(revoked.id, 'logout');
    const now = new Date();
    const listed = await remote.tokens.listActive(owner, now);
    expect(listed).toStrictEqual(await direct.tokens.listActive(owner, now));
    expect(listed.map((row) => row.clientName).sort()).toStrictEqual(['one', 'two']);
    expect(await remote.tokens.listActive(owner, new Date(Date.now() + 30 * DAY))).toStrictEqual([]);
  });

  it('when stale pairs are purged through the remote repository, then it returns how many rows went', async () => {
    const owner = (await direct.users.create(newUser())).id;
    const longAgo = Date.now() - 30 * DAY;
    const expired = await Promise.all([1, 2].map(() => storePair(direct.tokens, newToken(owner, { accessExpiresAt: new Date(longAgo), expiresAt: new Date(longAgo + DAY) }))));
    const live = await storePair(direct.tokens, newToken(owner));
    expect(await remote.tokens.purgeStale(new Date(), 7 * DAY)).toBe(2);
    for (const row of expired) expect(await direct.tokens.findByAccessHash(row.accessTokenHash)).toBeNull();
    expect(await direct.tokens.findByAccessHash(live.accessTokenHash)).toStrictEqual(live);
    expect(await remote.tokens.purgeStale(new Date(), 7 * DAY)).toBe(0);
  });
});

describe('audit events across the repository boundary', () => {
  it('when events are stored through the remote repository, then listing them remotely deep-equals a direct listing', async () => {
    const subject = (await direct.users.create(newUser())).id;
    const base = Date.now() - 60_000;
    const events: NewAuditEvent[] = [
      {
        type: 'LOGIN_SUCCEEDED',
        userId: subject,
        actorId: null,
        ipAddress: '198.51.100.7',
        userAgent: 'vitest',
        details: { method: 'password', attempts: 2, ratio: 0.25, remembered: false, empty: '' },
        createdAt: new Date(base + 1),
        eventKey: randomUUID(),
      },
      {
        type: 'ROLE_CHANGED',
        userId: subject,
        actorId: 1,
        ipAddress: null,
        userAgent: null,
        details: { from: 'USER', to: 'GUEST' },
        createdAt: new Date(base + 2),
        eventKey: randomUUID(),
      },
      { type: 'LOGOUT', userId: subject, actorId: null, ipAddress: null, userAgent: null, details: null, createdAt: new Date(base + 3), eventKey: null },
      { type: 'TOKENS_REVOKED', userId: subject, actorId: null, ipAddress: null, userAgent: null, details: {}, createdAt: new Date(base + 3), eventKey: randomUUID() },
    ];
    expect(await remote.audit.createMany(events)).toBe(4);
    expect(await remote.audit.createMany([])).toBe(0);
    // The same events again, as a retry whose first answer was lost would send them: those with a
    // key are stored once, one by one or together.
    expect(await remote.audit.createMany(events.slice(0, 2))).toBe(0);
    expect(await remote.audit.createMany([events[3] as NewAuditEvent])).toBe(0);
    expect(await remote.audit.createMany(events.slice(2))).toBe(1);
    await direct.audit.purgeBefore(new Date(base + 4));
    expect(await remote.audit.createMany(events)).toBe(4);

    const mine = await remote.audit.list({ page: 1, perPage: 10, userId: subject });
    expect(mine).toStrictEqual(await direct.audit.list({ page: 1, perPage: 10, userId: subject }));
    expect(mine.total).toBe(4);
    // Newest first (the two of the same millisecond by id, so the later-written one first), and
    // each event exactly as it was written.
    expect(mine.events.map(({ id: _id, ...event }) => event)).toStrictEqual([...events].reverse().sort((a, b) => b.createdAt.getTime() - a.createdAt.getTime()));

    const filters = [
      { page: 1, perPage: 2, userId: subject },
      { page: 2, perPage: 2, userId: subject },
      { page: 1, perPage: 10, userId: subject, type: 'ROLE_CHANGED' as const },
      { page: 1, perPage: 50 },
      { page: 1, perPage: 50, type: 'USER_DELETED' as const },
    ];
    for (const filter of filters) expect(await remote.audit.list(filter)).toStrictEqual(await direct.audit.list(filter));
  });

  it('when events are purged through the remote repository, then those before the cutoff go and the rest stay', async () => {
    const subject = (await direct.users.create(newUser())).id;
    const at = (iso: string): NewAuditEvent => ({
      type: 'LOGOUT',
      userId: subject,
      actorId: null,
      ipAddress: null,
      userAgent: null,
      details: null,
      createdAt: new Date(iso),
      eventKey: null,
    });
    await remote.audit.createMany([at('2000-01-01T00:00:00.000Z'), at('2000-05-31T23:59:59.999Z'), at('2000-06-01T00:00:00.000Z'), at('2001-01-01T00:00:00.000Z')]);
    expect(await remote.audit.purgeBefore(new Date('2000-06-01T00:00:00.000Z'))).toBe(2);
    const left = await direct.audit.list({ page: 1, perPage: 10, userId: subject });
    expect(left.events.map((event) => event.createdAt.toISOString())).toEqual(['2001-01-01T00:00:00.000Z', '2000-06-01T00:00:00.000Z']);
    expect(await remote.audit.purgeBefore(new Date('2000-06-01T00:00:00.000Z'))).toBe(0);
  });

  it('when more events are due than one call deletes, then the remote purge asks batch by batch and deletes them all, or as many as its limit', async () => {
    // One call for a whole backlog outlived INTERNAL_TIMEOUT_MS (helper 96).
    const subject = (await direct.users.create(newUser())).id;
    const at = (ms: number): NewAuditEvent => ({
      type: 'LOGOUT',
      userId: subject,
      actorId: null,
      ipAddress: null,
      userAgent: null,
      details: null,
      createdAt: new Date(ms),
      eventKey: null,
    });
    const base = Date.parse('1999-01-01T00:00:00.000Z');
    await direct.audit.createMany(Array.from({ length: 5_010 }, (_, index) => at(base + index)));
    const cutoff = new Date('1999-06-01T00:00:00.000Z');
    expect(await remote.audit.purgeBefore(cutoff, 7)).toBe(7);
    expect(await remote.audit.purgeBefore(cutoff)).toBe(5_003);
    expect((await direct.audit.list({ page: 1, perPage: 1, userId: subject })).total).toBe(0);
  });
});

describe('counters across the repository boundary', () => {
  it('when counters are incremented, peeked and deleted through the remote store, then it answers as the store behind it', async () => {
    expect(await remote.counters.increment('login:alice', 60_000)).toStrictEqual({ count: 1, ttlMs: 60_000 });
    expect(await remote.counters.increment('login:alice', 60_000)).toStrictEqual({ count: 2, ttlMs: 60_000 });
    expect(await remote.counters.peek('login:alice')).toStrictEqual({ count: 2, ttlMs: 60_000 });
    expect(await remote.counters.peek('login:nobody')).toStrictEqual({ count: 0, ttlMs: 0 });

    await remote.counters.delete('login:alice');
    expect(await remote.counters.peek('login:alice')).toStrictEqual({ count: 0, ttlMs: 0 });

    await remote.counters.increment('ip:1', 1_000);
    await remote.counters.increment('ip:2', 1_000);
    await remote.counters.increment('user:1', 1_000);
    expect(await remote.counters.deleteByPrefix('ip:')).toBe(2);
    expect(await remote.counters.deleteByPrefix('ip:')).toBe(0);
    expect(await remote.counters.peek('user:1')).toStrictEqual({ count: 1, ttlMs: 1_000 });
  });
});
