// The repository interfaces, implemented by calling the repository layer's internal API. The
// services above hold these exactly as they would hold the Prisma repositories: arguments are
// mapped to requests and responses back to the promised types, with null where the response's
// message field is absent. Errors are not handled here: the layer transport
// (createLayerTransport) turns what the layer below raised back into the same AppError.
import { durationFromMs, timestampFromDate } from '@bufbuild/protobuf/wkt';
import { encodeBinaryHeader, type Client } from '@connectrpc/connect';
import type { AuditEvent, OAuthToken, User } from '../../../gen/prisma/client.ts';
import { AuditEventRecordSchema, type AuditRepositoryService } from '../../../gen/proto/arcana/internal/repository/v1/audit_repository_service_pb.js';
import type { CounterStoreService } from '../../../gen/proto/arcana/internal/repository/v1/counter_store_service_pb.js';
import type { IdempotencyRepositoryService } from '../../../gen/proto/arcana/internal/repository/v1/idempotency_repository_service_pb.js';
import type { TokenRepositoryService } from '../../../gen/proto/arcana/internal/repository/v1/token_repository_service_pb.js';
import type { UserRepositoryService } from '../../../gen/proto/arcana/internal/repository/v1/user_repository_service_pb.js';
import type { CounterStore } from '../../infrastructure/rate-limiter.ts';
import { AUDIT_PURGE_BATCH, type AuditFilter, type AuditRepository, type NewAuditEvent } from '../../repositories/audit-repository.ts';
import type { ClaimResult, IdempotencyClaim, IdempotencyRepository } from '../../repositories/idempotency-repository.ts';
import type { NewTokenRecord, RevocationReason, TokenRepository, UserWrite } from '../../repositories/token-repository.ts';
import type { NewUser, UserChanges, UserExpectation, UserFilter, UserProfile, UserRepository, ListOptions, WriteOptions } from '../../repositories/user-repository.ts';
import {
  auditEventFromProto,
  auditFilterToProto,
  dateFromProto,
  newAuditEventToProto,
  newTokenToProto,
  newUserToProto,
  profileFromProto,
  tokenFromProto,
  tokenToProto,
  userChangesToProto,
  userExpectationToProto,
  userFilterToProto,
  userFromProto,
} from './record-mapping.ts';
import { requireField } from '../../domain/message-mapping.ts';
import { ACTING_AS_HEADER, AUDIT_HEADER, REPEAT_HEADER } from '../layer-transport.ts';
import { actingAsToHeader } from '../../repositories/write-options.ts';

/** A UserRepository in another process. */
export class RemoteUserRepository implements UserRepository {
  readonly #client: Client<typeof UserRepositoryService>;

  constructor(client: Client<typeof UserRepositoryService>) {
    this.#client = client;
  }

  async findById(id: number): Promise<User | null> {
    const { user } = await this.#client.findUserById({ id });
    return user === undefined ? null : userFromProto(user);
  }

  async findProfile(id: number): Promise<UserProfile | null> {
    const { user } = await this.#client.findUserProfile({ id });
    return user === undefined ? null : profileFromProto(user);
  }

  async findByLogin(usernameOrEmail: string): Promise<User | null> {
    const { user } = await this.#client.findUserByLogin({ usernameOrEmail });
    return user === undefined ? null : userFromProto(user);
  }

  async findTaken(username: string | undefined, email: string | undefined, exceptId?: number): Promise<{ username: boolean; email: boolean }> {
    // An undefined init value leaves the optional field unset, so "not asked" stays distinct from "".
    const taken = await this.#client.findTakenNames({ username, email, exceptId });
    return { username: taken.username, email: taken.email };
  }

  async create(user: NewUser, options: WriteOptions = {}): Promise<User> {
    const response = await this.#client.createUser({ user: newUserToProto(user) }, writeHeaders(options));
    return userFromProto(requireField(response.user, 'CreateUserResponse.user'));
  }

  async update(id: number, changes: UserChanges, expected: UserExpectation = {}, options: WriteOptions = {}): Promise<User> {
    const response = await this.#client.updateUser({ id, changes: userChangesToProto(changes), expected: userExpectationToProto(expected) }, writeHeaders(options));
    return userFromProto(requireField(response.user, 'UpdateUserResponse.user'));
  }

  async delete(id: number, expectedVersion?: number, options: WriteOptions = {}): Promise<boolean> {
    const { deleted } = await this.#client.deleteUser({ id, expectedVersion }, writeHeaders(options));
    return deleted;
  }

  async list(filter: UserFilter, options: ListOptions = {}): Promise<{ users: UserProfile[]; total: number }> {
    const { users, total } = await this.#client.listUsers(userFilterToProto(filter), writeHeaders(options));
    return { users: users.map(profileFromProto), total };
  }
}

/** A TokenRepository in another process. */
export class RemoteTokenRepository implements TokenRepository {
  readonly #client: Client<typeof TokenRepositoryService>;

  constructor(client: Client<typeof TokenRepositoryService>) {
    this.#client = client;
  }

  async create(record: NewTokenRecord, passwordHash: string, loginAt?: Date, firstLogin = false): Promise<OAuthToken | null> {
    const request = { token: newTokenToProto(record), passwordHash, loginAt: loginAt === undefined ? undefined : timestampFromDate(loginAt), firstLogin };
    const { token } = await this.#client.createToken(request);
    return token === undefined ? null : tokenFromProto(token);
  }

  async findByAccessHash(accessTokenHash: string): Promise<OAuthToken | null> {
    const { token } = await this.#client.findTokenByAccessHash({ accessTokenHash });
    return token === undefined ? null : tokenFromProto(token);
  }

  async findByRefreshHash(refreshTokenHash: string): Promise<OAuthToken | null> {
    const { token } = await this.#client.findTokenByRefreshHash({ refreshTokenHash });
    return token === undefined ? null : tokenFromProto(token);
  }

  async rotate(previous: OAuthToken, next: NewTokenRecord): Promise<OAuthToken | null> {
    const { token } = await this.#client.rotateToken({ previous: tokenToProto(previous), next: newTokenToProto(next) });
    return token === undefined ? null : tokenFromProto(token);
  }

  async revoke(id: number, reason: RevocationReason, options: WriteOptions = {}): Promise<string[]> {
    const { accessTokenHashes } = await this.#client.revokeToken({ id, reason }, writeHeaders(options));
    return accessTokenHashes;
  }

  async revokeFamily(familyId: string, reason: RevocationReason, options: WriteOptions = {}): Promise<string[]> {
    const { accessTokenHashes } = await this.#client.revokeTokenFamily({ familyId, reason }, writeHeaders(options));
    return accessTokenHashes;
  }

  async markChainReplayed(familyId: string, userId: number): Promise<boolean> {
    const { first } = await this.#client.markTokenReplayed({ familyId, userId });
    return first;
  }

  async revokeChainOf(userId: number, tokenId: number, reason: RevocationReason, options: WriteOptions = {}): Promise<string[]> {
    const { accessTokenHashes } = await this.#client.revokeTokenChain({ userId, tokenId, reason }, writeHeaders(options));
    return accessTokenHashes;
  }

  async revokeAllForUser(userId: number, exceptId: number | undefined, reason: RevocationReason, options: WriteOptions = {}): Promise<string[]> {
    const { accessTokenHashes } = await this.#client.revokeUserTokens({ userId, exceptId, reason }, writeHeaders(options));
    return accessTokenHashes;
  }

  async revokeAllWithUserWrite(userId: number, exceptId: number | undefined, write: UserWrite, options: WriteOptions = {}): Promise<{ user: User; revoked: string[] }> {
    const userWrite = { changes: userChangesToProto(write.changes), expected: userExpectationToProto(write.expected) };
    const response = await this.#client.revokeUserTokens({ userId, exceptId, reason: 'revoked', userWrite }, writeHeaders(options));
    return { user: userFromProto(requireField(response.user, 'RevokeUserTokensResponse.user')), revoked: response.accessTokenHashes };
  }

  async listActive(userId: number, now: Date): Promise<OAuthToken[]> {
    const { tokens } = await this.#client.listActiveTokens({ userId, now: timestampFromDate(now) });
    return tokens.map(tokenFromProto);
  }

  async purgeStale(now: Date, retentionMs: number): Promise<number> {
    const { deleted } = await this.#client.purgeStaleTokens({ now: timestampFromDate(now), retention: durationFromMs(retentionMs) });
    return deleted;
  }
}

/** An AuditRepository in another process. */
export class RemoteAuditRepository implements AuditRepository {
  readonly #client: Client<typeof AuditRepositoryService>;

  constructor(client: Client<typeof AuditRepositoryService>) {
    this.#client = client;
  }

  async createMany(events: NewAuditEvent[]): Promise<number> {
    // Nothing to store needs no round trip, just as the Prisma repository skips the statement.
    if (events.length === 0) return 0;
    const { count } = await this.#client.createAuditEvents({ events: events.map(newAuditEventToProto) });
    return count;
  }

  async list(filter: AuditFilter, options: ListOptions = {}): Promise<{ events: AuditEvent[]; total: number }> {
    const { events, total } = await this.#client.listAuditEvents(auditFilterToProto(filter), writeHeaders(options));
    return { events: events.map(auditEventFromProto), total };
  }

  /**
   * A batch per call: a backlog of hundreds of thousands of events took one call past
   * INTERNAL_TIMEOUT_MS, which failed the purge while the repository went on deleting (helper 96).
   */
  async purgeBefore(cutoff: Date, limit = Number.POSITIVE_INFINITY): Promise<number> {
    let deleted = 0;
    while (deleted < limit) {
      const batch = Math.min(AUDIT_PURGE_BATCH, limit - deleted);
      const { deleted: count } = await this.#client.purgeAuditEvents({ before: timestampFromDate(cutoff), limit: batch });
      deleted += count;
      if (count < batch) break;
    }
    return deleted;
  }
}

/** A CounterStore kept by the repository layer's process. */
export class RemoteCounterStore implements CounterStore {
  readonly #client: Client<typeof CounterStoreService>;

  constructor(client: Client<typeof CounterStoreService>) {
    this.#client = client;
  }

  async increment(key: string, windowMs: number): Promise<{ count: number; ttlMs: number }> {
    const { count, ttlMs } = await this.#client.incrementCounter({ key, windowMs });
    return { count, ttlMs };
  }

  async reserve(key: string, limit: number, windowMs: number, reservationId: string): Promise<{ reserved: boolean; count: number; ttlMs: number }> {
    const { reserved, count, ttlMs } = await this.#client.reserveCounter({ key, limit, windowMs, reservationId });
    return { reserved, count, ttlMs };
  }

  async release(key: string, reservationId: string): Promise<void> {
    await this.#client.releaseCounter({ key, reservationId });
  }

  async peek(key: string): Promise<{ count: number; ttlMs: number }> {
    const { count, ttlMs } = await this.#client.peekCounter({ key });
    return { count, ttlMs };
  }

  async delete(key: string): Promise<void> {
    await this.#client.deleteCounter({ key });
  }

  async deleteByPrefix(prefix: string): Promise<number> {
    const { deleted } = await this.#client.deleteCountersByPrefix({ prefix });
    return deleted;
  }
}

/** An IdempotencyRepository kept by the repository layer's process. */
export class RemoteIdempotencyRepository implements IdempotencyRepository {
  readonly #client: Client<typeof IdempotencyRepositoryService>;

  constructor(client: Client<typeof IdempotencyRepositoryService>) {
    this.#client = client;
  }

  async claim(claim: IdempotencyClaim, now: Date): Promise<ClaimResult> {
    const res = await this.#client.claimIdempotencyKey({
      keyHash: claim.keyHash,
      fingerprint: claim.fingerprint,
      expiresAt: timestampFromDate(claim.expiresAt),
      now: timestampFromDate(now),
    });
    if (res.claimId !== undefined) return { claimed: true, id: res.claimId };
    const existing = requireField(res.existing, 'ClaimIdempotencyKeyResponse.existing');
    return {
      claimed: false,
      existing: {
        id: existing.id,
        fingerprint: existing.fingerprint,
        answer: existing.answer ?? null,
        expiresAt: dateFromProto(existing.expiresAt, 'IdempotencyRecord.expires_at'),
      },
    };
  }

  async complete(id: number, answer: Uint8Array, expiresAt: Date): Promise<boolean> {
    return (await this.#client.completeIdempotencyKey({ claimId: id, answer, expiresAt: timestampFromDate(expiresAt) })).completed;
  }

  async release(id: number): Promise<void> {
    await this.#client.releaseIdempotencyKey({ claimId: id });
  }

  async purgeExpired(now: Date): Promise<number> {
    return (await this.#client.purgeExpiredIdempotencyKeys({ now: timestampFromDate(now) })).deleted;
  }
}

/** Call options that carry a write's (or a listing's) options: whether it is a repeat, whom it is made for, and its audit event. */
function writeHeaders(options: WriteOptions | ListOptions): { headers: Record<string, string> } | undefined {
  const headers: Record<string, string> = {};
  if ('repeat' in options && options.repeat === true) headers[REPEAT_HEADER] = '1';
  if (options.actingAs !== undefined) headers[ACTING_AS_HEADER] = actingAsToHeader(options.actingAs);
  if ('audit' in options && options.audit !== undefined) headers[AUDIT_HEADER] = encodeBinaryHeader(newAuditEventToProto(options.audit), AuditEventRecordSchema);
  return Object.keys(headers).length === 0 ? undefined : { headers };
}
