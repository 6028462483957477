// The repository layer's internal API, served from in-process repositories. Each method decodes
// its request, calls one repository method and encodes the result; a null result leaves the
// response's message field unset. Domain errors are left to layerServerErrorInterceptor, which
// carries them across as they are.
import type { DescService } from '@bufbuild/protobuf';
import { durationMs, timestampFromDate } from '@bufbuild/protobuf/wkt';
import { decodeBinaryHeader, type HandlerContext, type ServiceImpl } from '@connectrpc/connect';
import { AuditEventRecordSchema, type AuditRepositoryService } from '../../../gen/proto/arcana/internal/repository/v1/audit_repository_service_pb.js';
import type { CounterStoreService } from '../../../gen/proto/arcana/internal/repository/v1/counter_store_service_pb.js';
import type { IdempotencyRepositoryService } from '../../../gen/proto/arcana/internal/repository/v1/idempotency_repository_service_pb.js';
import type { TokenRepositoryService } from '../../../gen/proto/arcana/internal/repository/v1/token_repository_service_pb.js';
import type { UserRepositoryService } from '../../../gen/proto/arcana/internal/repository/v1/user_repository_service_pb.js';
import type { CounterStore } from '../../infrastructure/rate-limiter.ts';
import type { AuditRepository, NewAuditEvent } from '../../repositories/audit-repository.ts';
import type { IdempotencyRepository } from '../../repositories/idempotency-repository.ts';
import type { TokenRepository } from '../../repositories/token-repository.ts';
import type { UserRepository } from '../../repositories/user-repository.ts';
import { actingAsFromHeader, type WriteOptions } from '../../repositories/write-options.ts';
import {
  auditEventToProto,
  dateFromProto,
  auditFilterFromProto,
  newAuditEventFromProto,
  newTokenFromProto,
  newUserFromProto,
  revocationReasonFromProto,
  tokenFromProto,
  tokenToProto,
  userChangesFromProto,
  userExpectationFromProto,
  userFilterFromProto,
  userToProto,
} from './record-mapping.ts';
import { ValidationError } from '../../domain/errors.ts';
import { InvalidFieldError, MissingFieldError, requireField } from '../../domain/message-mapping.ts';
import { ACTING_AS_HEADER, AUDIT_HEADER, REPEAT_HEADER } from '../layer-transport.ts';

/** A write's options as the headers carry them: REPEAT_HEADER, ACTING_AS_HEADER, AUDIT_HEADER (see WriteOptions). */
function writeOptions(ctx: HandlerContext): WriteOptions {
  const header = ctx.requestHeader.get(ACTING_AS_HEADER);
  const actingAs = header === null ? undefined : actingAsFromHeader(header);
  if (header !== null && actingAs === undefined) throw new ValidationError(`Malformed ${ACTING_AS_HEADER} header`);
  const audit = ctx.requestHeader.get(AUDIT_HEADER);
  return { repeat: ctx.requestHeader.has(REPEAT_HEADER), actingAs, ...(audit === null ? {} : { audit: auditFromHeader(audit) }) };
}

/**
 * The header's audit event, refused as invalid_argument when it is not one the columns take (only
 * our own layers, holding the internal secret, send it; a bad one must not reach the database).
 */
function auditFromHeader(value: string): NewAuditEvent {
  let event: NewAuditEvent;
  try {
    event = newAuditEventFromProto(decodeBinaryHeader(value, AuditEventRecordSchema));
  } catch {
    throw new ValidationError(`Malformed ${AUDIT_HEADER} header`);
  }
  if (event.eventKey === null || !UUID.test(event.eventKey)) throw new ValidationError(`Malformed ${AUDIT_HEADER} header: no event key`);
  return event;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/**
 * The handlers of a repository service, refusing a request that lacks a required field, or holds
 * a value its mapping cannot take (InvalidFieldError), as invalid_argument. They read their requests with the mapping that reads answers, where a missing
 * field is the other side's fault, and such a request was answered `internal` and logged as a
 * server error (helper 193, with the internal secret: an empty CreateUser).
 */
export function refusingIncompleteRequests<S extends DescService>(impl: ServiceImpl<S>): ServiceImpl<S> {
  const wrapped: Record<string, unknown> = {};
  for (const [name, method] of Object.entries(impl as Record<string, (req: unknown, ctx: unknown) => Promise<unknown>>)) {
    wrapped[name] = async (req: unknown, ctx: unknown) => {
      try {
        return await method(req, ctx);
      } catch (error) {
        if (error instanceof MissingFieldError) throw new ValidationError('Validation failed', { [error.field]: 'is required' });
        if (error instanceof InvalidFieldError) throw new ValidationError('Validation failed', { [error.field]: error.why });
        throw error;
      }
    };
  }
  return wrapped as ServiceImpl<S>;
}

/** arcana.internal.repository.v1.UserRepositoryService over a UserRepository. */
export function createUserRepositoryHandler(repo: UserRepository): ServiceImpl<typeof UserRepositoryService> {
  return {
    async findUserById(req) {
      const row = await repo.findById(req.id);
      return row === null ? {} : { user: userToProto(row) };
    },
    async findUserProfile(req) {
      const row = await repo.findProfile(req.id);
      return row === null ? {} : { user: userToProto(row) };
    },
    async findUserByLogin(req) {
      const row = await repo.findByLogin(req.usernameOrEmail);
      return row === null ? {} : { user: userToProto(row) };
    },
    async findTakenNames(req) {
      return repo.findTaken(req.username, req.email, req.exceptId);
    },
    async createUser(req, ctx) {
      return { user: userToProto(await repo.create(newUserFromProto(requireField(req.user, 'CreateUserRequest.user')), writeOptions(ctx))) };
    },
    async updateUser(req, ctx) {
      // Absent changes are no changes, as an empty UserChanges would be.
      const changes = req.changes === undefined ? {} : userChangesFromProto(req.changes);
      return { user: userToProto(await repo.update(req.id, changes, userExpectationFromProto(req.expected), writeOptions(ctx))) };
    },
    async deleteUser(req, ctx) {
      return { deleted: await repo.delete(req.id, req.expectedVersion, writeOptions(ctx)) };
    },
    async listUsers(req, ctx) {
      const { users, total } = await repo.list(userFilterFromProto(req), { actingAs: writeOptions(ctx).actingAs });
      return { users: users.map(userToProto), total };
    },
  };
}

/** arcana.internal.repository.v1.TokenRepositoryService over a TokenRepository. */
export function createTokenRepositoryHandler(repo: TokenRepository): ServiceImpl<typeof TokenRepositoryService> {
  return {
    async createToken(req) {
      const loginAt = req.loginAt === undefined ? undefined : dateFromProto(req.loginAt, 'CreateTokenRequest.login_at');
      const row = await repo.create(newTokenFromProto(requireField(req.token, 'CreateTokenRequest.token')), req.passwordHash, loginAt, req.firstLogin);
      return row === null ? {} : { token: tokenToProto(row) };
    },
    async findTokenByAccessHash(req) {
      const row = await repo.findByAccessHash(req.accessTokenHash);
      return row === null ? {} : { token: tokenToProto(row) };
    },
    async findTokenByRefreshHash(req) {
      const row = await repo.findByRefreshHash(req.refreshTokenHash);
      return row === null ? {} : { token: tokenToProto(row) };
    },
    async rotateToken(req) {
      const previous = tokenFromProto(requireField(req.previous, 'RotateTokenRequest.previous'));
      const next = newTokenFromProto(requireField(req.next, 'RotateTokenRequest.next'));
      const row = await repo.rotate(previous, next);
      return row === null ? {} : { token: tokenToProto(row) };
    },
    async revokeToken(req, ctx) {
      return { accessTokenHashes: await repo.revoke(req.id, revocationReasonFromProto(req.reason), writeOptions(ctx)) };
    },
    async revokeTokenFamily(req, ctx) {
      return { accessTokenHashes: await repo.revokeFamily(req.familyId, revocationReasonFromProto(req.reason), writeOptions(ctx)) };
    },
    async markTokenReplayed(req) {
      return { first: await repo.markChainReplayed(req.familyId, req.userId) };
    },
    async revokeTokenChain(req, ctx) {
      return { accessTokenHashes: await repo.revokeChainOf(req.userId, req.tokenId, revocationReasonFromProto(req.reason), writeOptions(ctx)) };
    },
    async revokeUserTokens(req, ctx) {
      const reason = revocationReasonFromProto(req.reason);
      const write = req.userWrite;
      if (write === undefined) return { accessTokenHashes: await repo.revokeAllForUser(req.userId, req.exceptId, reason, writeOptions(ctx)) };
      // Absent changes are no changes, as in updateUser; the pairs go for 'revoked', as the client sends.
      const changes = write.changes === undefined ? {} : userChangesFromProto(write.changes);
      const { user, revoked } = await repo.revokeAllWithUserWrite(req.userId, req.exceptId, { changes, expected: userExpectationFromProto(write.expected) }, writeOptions(ctx));
      return { accessTokenHashes: revoked, user: userToProto(user) };
    },
    async listActiveTokens(req) {
      const rows = await repo.listActive(req.userId, dateFromProto(req.now, 'ListActiveTokensRequest.now'));
      return { tokens: rows.map(tokenToProto) };
    },
    async purgeStaleTokens(req) {
      const retention = requireField(req.retention, 'PurgeStaleTokensRequest.retention');
      return { deleted: await repo.purgeStale(dateFromProto(req.now, 'PurgeStaleTokensRequest.now'), durationMs(retention)) };
    },
  };
}

/** arcana.internal.repository.v1.AuditRepositoryService over an AuditRepository. */
export function createAuditRepositoryHandler(repo: AuditRepository): ServiceImpl<typeof AuditRepositoryService> {
  return {
    async createAuditEvents(req) {
      return { count: await repo.createMany(req.events.map(newAuditEventFromProto)) };
    },
    async listAuditEvents(req, ctx) {
      const { events, total } = await repo.list(auditFilterFromProto(req), { actingAs: writeOptions(ctx).actingAs });
      return { events: events.map(auditEventToProto), total };
    },
    async purgeAuditEvents(req) {
      return { deleted: await repo.purgeBefore(dateFromProto(req.before, 'PurgeAuditEventsRequest.before'), req.limit > 0 ? req.limit : undefined) };
    },
  };
}

/** arcana.internal.repository.v1.CounterStoreService over a CounterStore. */
export function createCounterStoreHandler(store: CounterStore): ServiceImpl<typeof CounterStoreService> {
  return {
    async incrementCounter(req) {
      return store.increment(req.key, req.windowMs);
    },
    async reserveCounter(req) {
      return store.reserve(req.key, req.limit, req.windowMs, req.reservationId);
    },
    async releaseCounter(req) {
      await store.release(req.key, req.reservationId);
      return {};
    },
    async peekCounter(req) {
      return store.peek(req.key);
    },
    async deleteCounter(req) {
      await store.delete(req.key);
      return {};
    },
    async deleteCountersByPrefix(req) {
      return { deleted: await store.deleteByPrefix(req.prefix) };
    },
  };
}

/** arcana.internal.repository.v1.IdempotencyRepositoryService over an IdempotencyRepository. */
export function createIdempotencyRepositoryHandler(repo: IdempotencyRepository): ServiceImpl<typeof IdempotencyRepositoryService> {
  return {
    async claimIdempotencyKey(req) {
      const result = await repo.claim(
        { keyHash: req.keyHash, fingerprint: req.fingerprint, expiresAt: dateFromProto(req.expiresAt, 'ClaimIdempotencyKeyRequest.expires_at') },
        dateFromProto(req.now, 'ClaimIdempotencyKeyRequest.now'),
      );
      if (result.claimed) return { claimId: result.id };
      const { id, fingerprint, answer, expiresAt } = result.existing;
      return { existing: { id, fingerprint, ...(answer === null ? {} : { answer }), expiresAt: timestampFromDate(expiresAt) } };
    },
    async completeIdempotencyKey(req) {
      return { completed: await repo.complete(req.claimId, req.answer, dateFromProto(req.expiresAt, 'CompleteIdempotencyKeyRequest.expires_at')) };
    },
    async releaseIdempotencyKey(req) {
      await repo.release(req.claimId);
      return {};
    },
    async purgeExpiredIdempotencyKeys(req) {
      return { deleted: await repo.purgeExpired(dateFromProto(req.now, 'PurgeExpiredIdempotencyKeysRequest.now')) };
    },
  };
}
