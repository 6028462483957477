// Conversions between the repository layer's rows and inputs (Prisma types and the interfaces in
// src/repositories) and the messages of its internal API (arcana.internal.repository.v1). Both
// sides of the boundary use these functions, so each pair must be lossless: a row that goes row →
// message → row comes back deep-equal. Nullable columns travel as proto3 `optional` fields, so
// NULL is an absent field and an empty string stays an empty string; timestamps carry
// milliseconds exactly as the database stores them.
import { create, type JsonObject, type JsonValue } from '@bufbuild/protobuf';
import { timestampDate, timestampFromDate, type Timestamp } from '@bufbuild/protobuf/wkt';
import * as db from '../../../gen/prisma/client.ts';
import { AuditEventType } from '../../../gen/proto/arcana/audit/v1/audit_service_pb.js';
import {
  AuditEventRecordSchema,
  ListAuditEventsRequestSchema,
  type AuditEventRecord,
  type ListAuditEventsRequest,
} from '../../../gen/proto/arcana/internal/repository/v1/audit_repository_service_pb.js';
import {
  NewTokenRecordSchema,
  TokenRecordSchema,
  type NewTokenRecord as NewTokenMessage,
  type TokenRecord,
} from '../../../gen/proto/arcana/internal/repository/v1/token_repository_service_pb.js';
import {
  ListUsersRequestSchema,
  NewUserRecordSchema,
  UserChangesSchema,
  UserConditionsSchema,
  UserRecordSchema,
  type ListUsersRequest,
  type NewUserRecord,
  type UserChanges as UserChangesMessage,
  type UserConditions,
  type UserRecord,
} from '../../../gen/proto/arcana/internal/repository/v1/user_repository_service_pb.js';
import { UserRole } from '../../../gen/proto/arcana/user/v1/user_pb.js';
import { roleFromProto, roleToProto, statusFromProto, statusToProto } from '../../domain/user-mapping.ts';
import type { AuditDetails, AuditFilter, NewAuditEvent } from '../../repositories/audit-repository.ts';
import type { NewTokenRecord, RevocationReason } from '../../repositories/token-repository.ts';
import type { NewUser, UserChanges, UserExpectation, UserFilter, UserProfile } from '../../repositories/user-repository.ts';
import { auditTypeFromProto } from '../../domain/audit-mapping.ts';
import { userSortOf } from '../../services/pagination.ts';

/**
 * The value of a message field the API always sets. A missing one means the other side is broken
 * or of another version, not that the caller erred, so it is a plain Error (an internal fault).
 */
export function requireField<T>(value: T | undefined, field: string): T {
  if (value === undefined) throw new Error(`repository API message lacks its required field ${field}`);
  return value;
}

/** A timestamp the API always sets, as a Date (milliseconds, as the database keeps them). */
export function dateFromProto(timestamp: Timestamp | undefined, field: string): Date {
  return timestampDate(requireField(timestamp, field));
}

// ---------------------------------------------------------------------------------------------
// Users

/** A user row as a UserRecord; the password hash goes along only when the row has one. */
export function userToProto(row: db.User | UserProfile): UserRecord {
  return create(UserRecordSchema, {
    id: row.id,
    username: row.username,
    usernameKey: row.usernameKey,
    email: row.email,
    passwordHash: 'passwordHash' in row ? row.passwordHash : undefined,
    firstName: row.firstName ?? undefined,
    lastName: row.lastName ?? undefined,
    phone: row.phone ?? undefined,
    avatarUrl: row.avatarUrl ?? undefined,
    role: roleToProto(row.role),
    status: statusToProto(row.status),
    isVerified: row.isVerified,
    isActive: row.isActive,
    createdAt: timestampFromDate(row.createdAt),
    updatedAt: timestampFromDate(row.updatedAt),
    lastLoginAt: row.lastLoginAt === null ? undefined : timestampFromDate(row.lastLoginAt),
    version: row.version,
  });
}

/**
 * A UserRecord as a profile. A hash that came along anyway is dropped rather than passed on:
 * profiles are what gets cached, and a hash must never end up there.
 */
export function profileFromProto(record: UserRecord): UserProfile {
  return {
    id: record.id,
    username: record.username,
    usernameKey: record.usernameKey,
    email: record.email,
    firstName: record.firstName ?? null,
    lastName: record.lastName ?? null,
    phone: record.phone ?? null,
    avatarUrl: record.avatarUrl ?? null,
    role: roleFromProto(record.role),
    status: statusFromProto(record.status),
    isVerified: record.isVerified,
    isActive: record.isActive,
    createdAt: dateFromProto(record.createdAt, 'UserRecord.created_at'),
    updatedAt: dateFromProto(record.updatedAt, 'UserRecord.updated_at'),
    lastLoginAt: record.lastLoginAt === undefined ? null : timestampDate(record.lastLoginAt),
    version: record.version,
  };
}

/** A UserRecord as the full row; it must carry the password hash, since only password checks ask for one. */
export function userFromProto(record: UserRecord): db.User {
  return { ...profileFromProto(record), passwordHash: requireField(record.passwordHash, 'UserRecord.password_hash') };
}

export function newUserToProto(user: NewUser): NewUserRecord {
  return create(NewUserRecordSchema, {
    username: user.username,
    email: user.email,
    passwordHash: user.passwordHash,
    firstName: user.firstName ?? undefined,
    lastName: user.lastName ?? undefined,
    phone: user.phone ?? undefined,
    // UNSPECIFIED stands for "no role given": the column's default (USER) applies, as in-process.
    role: user.role === undefined ? UserRole.UNSPECIFIED : roleToProto(user.role),
  });
}

/** Absent names become null, which is what the account-creation path passes and what gets stored. */
export function newUserFromProto(record: NewUserRecord): NewUser {
  return {
    username: record.username,
    email: record.email,
    passwordHash: record.passwordHash,
    firstName: record.firstName ?? null,
    lastName: record.lastName ?? null,
    phone: record.phone ?? null,
    ...(record.role === UserRole.UNSPECIFIED ? {} : { role: roleFromProto(record.role) }),
  };
}

const STRING_CHANGES = ['email', 'firstName', 'lastName', 'phone', 'avatarUrl', 'passwordHash'] as const;
const BOOLEAN_CHANGES = ['isVerified', 'isActive'] as const;
const KNOWN_CHANGES: ReadonlySet<string> = new Set([...STRING_CHANGES, ...BOOLEAN_CHANGES, 'status', 'role']);

/**
 * UserChanges as the message. The message can only say "set this value" (an absent field means
 * "leave it"), so anything else Prisma would accept (null to clear a column, `{ set: … }` and
 * other operation objects, fields outside UserChanges) is refused here rather than silently lost.
 */
export function userChangesToProto(changes: UserChanges): UserChangesMessage {
  const message = create(UserChangesSchema);
  // Typed as UserChanges, but a caller can still pass null, operation objects or other fields.
  for (const [field, value] of Object.entries(changes) as [string, unknown][]) {
    if (value !== undefined && !KNOWN_CHANGES.has(field)) throw unsupportedChange(field, value);
  }
  for (const field of STRING_CHANGES) {
    const value = changes[field];
    if (value === undefined) continue;
    if (typeof value !== 'string') throw unsupportedChange(field, value);
    message[field] = value;
  }
  for (const field of BOOLEAN_CHANGES) {
    const value = changes[field];
    if (value === undefined) continue;
    if (typeof value !== 'boolean') throw unsupportedChange(field, value);
    message[field] = value;
  }
  const status = changes.status;
  if (status !== undefined) {
    if (typeof status !== 'string' || !Object.hasOwn(db.UserStatus, status)) throw unsupportedChange('status', status);
    message.status = statusToProto(status);
  }
  const role = changes.role;
  if (role !== undefined) {
    if (typeof role !== 'string' || !Object.hasOwn(db.UserRole, role)) throw unsupportedChange('role', role);
    message.role = roleToProto(role);
  }
  return message;
}

function unsupportedChange(field: string, value: unknown): Error {
  const shown = value === null ? 'null' : typeof value === 'object' ? `an operation object ${JSON.stringify(value)}` : JSON.stringify(value);
  return new Error(`UserChanges.${field} cannot be sent to the repository layer: it carries only plain values of the fields it lists, not ${shown}`);
}

export function userChangesFromProto(message: UserChangesMessage): UserChanges {
  const changes: UserChanges = {};
  for (const field of STRING_CHANGES) {
    const value = message[field];
    if (value !== undefined) changes[field] = value;
  }
  for (const field of BOOLEAN_CHANGES) {
    const value = message[field];
    if (value !== undefined) changes[field] = value;
  }
  if (message.status !== undefined) changes.status = statusFromProto(message.status);
  if (message.role !== undefined) changes.role = roleFromProto(message.role);
  return changes;
}

export function userExpectationToProto(expected: UserExpectation): UserConditions {
  return create(UserConditionsSchema, {
    version: expected.version,
    isVerified: expected.isVerified,
    status: expected.status === undefined ? undefined : statusToProto(expected.status),
    role: expected.role === undefined ? undefined : roleToProto(expected.role),
  });
}

/** Absent conditions are no conditions: an unconditional write, as an older caller meant it. */
export function userExpectationFromProto(message: UserConditions | undefined): UserExpectation {
  if (message === undefined) return {};
  return {
    ...(message.version === undefined ? {} : { version: message.version }),
    ...(message.isVerified === undefined ? {} : { isVerified: message.isVerified }),
    ...(message.status === undefined ? {} : { status: statusFromProto(message.status) }),
    ...(message.role === undefined ? {} : { role: roleFromProto(message.role) }),
  };
}

export function userFilterToProto(filter: UserFilter): ListUsersRequest {
  return create(ListUsersRequestSchema, {
    page: filter.page,
    perPage: filter.perPage,
    role: filter.role === undefined ? undefined : roleToProto(filter.role),
    status: filter.status === undefined ? undefined : statusToProto(filter.status),
    q: filter.q,
    sort: filter.sort ?? '',
  });
}

export function userFilterFromProto(request: ListUsersRequest): UserFilter {
  return {
    page: request.page,
    perPage: request.perPage,
    ...(request.role === undefined ? {} : { role: roleFromProto(request.role) }),
    ...(request.status === undefined ? {} : { status: statusFromProto(request.status) }),
    ...(request.q === undefined ? {} : { q: request.q }),
    ...(request.sort === '' ? {} : { sort: userSortOf(request.sort) }),
  };
}

// ---------------------------------------------------------------------------------------------
// Tokens

export function tokenToProto(row: db.OAuthToken): TokenRecord {
  return create(TokenRecordSchema, {
    id: row.id,
    userId: row.userId,
    familyId: row.familyId,
    accessTokenHash: row.accessTokenHash,
    refreshTokenHash: row.refreshTokenHash,
    tokenType: row.tokenType,
    accessExpiresAt: timestampFromDate(row.accessExpiresAt),
    expiresAt: timestampFromDate(row.expiresAt),
    familyExpiresAt: timestampFromDate(row.familyExpiresAt),
    clientName: row.clientName ?? undefined,
    ipAddress: row.ipAddress ?? undefined,
    userAgent: row.userAgent ?? undefined,
    isRevoked: row.isRevoked,
    revokedReason: row.revokedReason ?? undefined,
    createdAt: timestampFromDate(row.createdAt),
    updatedAt: timestampFromDate(row.updatedAt),
  });
}

export function tokenFromProto(record: TokenRecord): db.OAuthToken {
  return {
    id: record.id,
    userId: record.userId,
    familyId: record.familyId,
    accessTokenHash: record.accessTokenHash,
    refreshTokenHash: record.refreshTokenHash,
    tokenType: record.tokenType,
    accessExpiresAt: dateFromProto(record.accessExpiresAt, 'TokenRecord.access_expires_at'),
    expiresAt: dateFromProto(record.expiresAt, 'TokenRecord.expires_at'),
    familyExpiresAt: dateFromProto(record.familyExpiresAt, 'TokenRecord.family_expires_at'),
    clientName: record.clientName ?? null,
    ipAddress: record.ipAddress ?? null,
    userAgent: record.userAgent ?? null,
    isRevoked: record.isRevoked,
    revokedReason: record.revokedReason ?? null,
    createdAt: dateFromProto(record.createdAt, 'TokenRecord.created_at'),
    updatedAt: dateFromProto(record.updatedAt, 'TokenRecord.updated_at'),
  };
}

export function newTokenToProto(record: NewTokenRecord): NewTokenMessage {
  return create(NewTokenRecordSchema, {
    userId: record.userId,
    familyId: record.familyId,
    accessTokenHash: record.accessTokenHash,
    refreshTokenHash: record.refreshTokenHash,
    accessExpiresAt: timestampFromDate(record.accessExpiresAt),
    expiresAt: timestampFromDate(record.expiresAt),
    familyExpiresAt: timestampFromDate(record.familyExpiresAt),
    ipAddress: record.ipAddress ?? undefined,
    userAgent: record.userAgent ?? undefined,
    clientName: record.clientName ?? undefined,
  });
}

export function newTokenFromProto(message: NewTokenMessage): NewTokenRecord {
  return {
    userId: message.userId,
    familyId: message.familyId,
    accessTokenHash: message.accessTokenHash,
    refreshTokenHash: message.refreshTokenHash,
    accessExpiresAt: dateFromProto(message.accessExpiresAt, 'NewTokenRecord.access_expires_at'),
    expiresAt: dateFromProto(message.expiresAt, 'NewTokenRecord.expires_at'),
    familyExpiresAt: dateFromProto(message.familyExpiresAt, 'NewTokenRecord.family_expires_at'),
    ipAddress: message.ipAddress ?? null,
    userAgent: message.userAgent ?? null,
    clientName: message.clientName ?? null,
  };
}

const REVOCATION_REASONS: readonly RevocationReason[] = ['rotated', 'logout', 'revoked', 'reuse', 'expired_chain'];

/** A revocation reason from the wire; anything else is the other side's bug, not the caller's. */
export function revocationReasonFromProto(reason: string): RevocationReason {
  const known = REVOCATION_REASONS.find((candidate) => candidate === reason);
  if (known === undefined) throw new Error(`unknown token revocation reason ${JSON.stringify(reason)}`);
  return known;
}

// ---------------------------------------------------------------------------------------------
// Audit events

/** A stored audit row as a record; `details` must be a JSON object (or NULL), as every writer stores it. */
export function auditEventToProto(row: db.AuditEvent): AuditEventRecord {
  return create(AuditEventRecordSchema, {
    id: row.id,
    // The enum names agree by construction, as they do for roles and statuses.
    type: AuditEventType[row.type],
    userId: row.userId ?? undefined,
    actorId: row.actorId ?? undefined,
    ipAddress: row.ipAddress ?? undefined,
    userAgent: row.userAgent ?? undefined,
    details: row.details === null ? undefined : detailsObjectToProto(row.details),
    createdAt: timestampFromDate(row.createdAt),
  });
}

export function auditEventFromProto(record: AuditEventRecord): db.AuditEvent {
  return {
    id: record.id,
    type: auditTypeFromProto(record.type),
    userId: record.userId ?? null,
    actorId: record.actorId ?? null,
    ipAddress: record.ipAddress ?? null,
    userAgent: record.userAgent ?? null,
    details: record.details ?? null,
    createdAt: dateFromProto(record.createdAt, 'AuditEventRecord.created_at'),
  };
}

/** An event to store, as a record with id 0 (not stored yet). */
export function newAuditEventToProto(event: NewAuditEvent): AuditEventRecord {
  return create(AuditEventRecordSchema, {
    id: 0,
    type: AuditEventType[event.type],
    userId: event.userId ?? undefined,
    actorId: event.actorId ?? undefined,
    ipAddress: event.ipAddress ?? undefined,
    userAgent: event.userAgent ?? undefined,
    details: event.details ?? undefined,
    createdAt: timestampFromDate(event.createdAt),
  });
}

/** A record as an event to store; its id is ignored, and its details must be flat, as AuditDetails are. */
export function newAuditEventFromProto(record: AuditEventRecord): NewAuditEvent {
  return {
    type: auditTypeFromProto(record.type),
    userId: record.userId ?? null,
    actorId: record.actorId ?? null,
    ipAddress: record.ipAddress ?? null,
    userAgent: record.userAgent ?? null,
    details: record.details === undefined ? null : flatDetails(record.details),
    createdAt: dateFromProto(record.createdAt, 'AuditEventRecord.created_at'),
  };
}

export function auditFilterToProto(filter: AuditFilter): ListAuditEventsRequest {
  return create(ListAuditEventsRequestSchema, {
    page: filter.page,
    perPage: filter.perPage,
    userId: filter.userId,
    type: filter.type === undefined ? undefined : AuditEventType[filter.type],
  });
}

export function auditFilterFromProto(request: ListAuditEventsRequest): AuditFilter {
  return {
    page: request.page,
    perPage: request.perPage,
    ...(request.userId === undefined ? {} : { userId: request.userId }),
    ...(request.type === undefined ? {} : { type: auditTypeFromProto(request.type) }),
  };
}

// google.protobuf.Struct holds only a JSON object, so a column holding another JSON value (which
// no writer produces) cannot cross and is refused rather than altered.
function detailsObjectToProto(details: db.Prisma.JsonValue): JsonObject {
  if (details === null || typeof details !== 'object' || Array.isArray(details)) {
    throw new Error(`audit event details must be a JSON object to cross the repository API, not ${JSON.stringify(details)}`);
  }
  return jsonObjectToProto(details);
}

// Prisma types object members as optional; stored JSON never holds undefined, so none is lost.
function jsonObjectToProto(object: db.Prisma.JsonObject): JsonObject {
  const result: JsonObject = {};
  for (const [key, value] of Object.entries(object)) {
    if (value !== undefined) result[key] = jsonToProto(value);
  }
  return result;
}

function jsonToProto(value: db.Prisma.JsonValue): JsonValue {
  if (Array.isArray(value)) return value.map(jsonToProto);
  if (value !== null && typeof value === 'object') return jsonObjectToProto(value);
  return value;
}

function flatDetails(details: JsonObject): AuditDetails {
  const flat: AuditDetails = {};
  for (const [key, value] of Object.entries(details)) {
    if (typeof value !== 'string' && typeof value !== 'number' && typeof value !== 'boolean') {
      throw new Error(`audit event details must be flat (strings, numbers, booleans); ${key} is ${JSON.stringify(value)}`);
    }
    flat[key] = value;
  }
  return flat;
}
