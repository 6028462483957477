// Conversions between the repository layer's rows and inputs (Prisma types and the interfaces in
// src/repositories) and the messages of its internal API (arcana.internal.repository.v1), by the
// one rule of src/domain/message-mapping.ts. Both sides of the boundary use these functions, so
// each pair must be lossless: a row that goes row → message → row comes back deep-equal. Each
// rowMapping below fails to compile if its message and its row type stop agreeing; what is
// written out here is only what the rule does not say.
import type { JsonObject } from '@bufbuild/protobuf';
import type { Timestamp } from '@bufbuild/protobuf/wkt';
import type * as db from '../../../gen/prisma/client.ts';
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
import { dateOfTimestamp, InvalidFieldError, requireField, rowMapping } from '../../domain/message-mapping.ts';
import type { AuditDetails, AuditFilter, NewAuditEvent } from '../../repositories/audit-repository.ts';
import type { NewTokenRecord, RevocationReason } from '../../repositories/token-repository.ts';
import type { NewUser, UserChanges, UserExpectation, UserFilter, UserProfile } from '../../repositories/user-repository.ts';
import { userSortOf } from '../../services/pagination.ts';

/** A timestamp the API always sets, as a Date (milliseconds, as the database keeps them). */
export function dateFromProto(timestamp: Timestamp | undefined, field: string): Date {
  return dateOfTimestamp(requireField(timestamp, field), field);
}

// A UserRecord carries the password hash only when the row has one (profiles do not).
const users = rowMapping<typeof UserRecordSchema, UserProfile & { passwordHash?: string | null }>(UserRecordSchema);
// A new user's role may be left out (the column's default applies), which the wire says as UNSPECIFIED.
const newUsers = rowMapping<typeof NewUserRecordSchema, Omit<NewUser, 'role'> & { role: db.UserRole }>(NewUserRecordSchema);
const userChanges = rowMapping<typeof UserChangesSchema, UserChanges>(UserChangesSchema);
const userConditions = rowMapping<typeof UserConditionsSchema, UserExpectation>(UserConditionsSchema);
// The message's sort is a plain string, '' for the default order; the filter's is checked.
const userFilters = rowMapping<typeof ListUsersRequestSchema, Omit<UserFilter, 'sort'> & { sort: string }>(ListUsersRequestSchema);
const tokens = rowMapping<typeof TokenRecordSchema, db.OAuthToken>(TokenRecordSchema);
const newTokens = rowMapping<typeof NewTokenRecordSchema, NewTokenRecord>(NewTokenRecordSchema);
const auditEvents = rowMapping<typeof AuditEventRecordSchema, db.AuditEvent>(AuditEventRecordSchema);
const auditFilters = rowMapping<typeof ListAuditEventsRequestSchema, AuditFilter>(ListAuditEventsRequestSchema);

// ---------------------------------------------------------------------------------------------
// Users

/** A user row as a UserRecord; the password hash goes along only when the row has one. */
export function userToProto(row: db.User | UserProfile): UserRecord {
  return users.toMessage(row);
}

/**
 * A UserRecord as a profile. A hash that came along anyway is dropped rather than passed on:
 * profiles are what gets cached, and a hash must never end up there.
 */
export function profileFromProto(record: UserRecord): UserProfile {
  const { passwordHash: _hash, ...profile } = users.toRow(record);
  return profile;
}

/** A UserRecord as the full row; it must carry the password hash, since only password checks ask for one. */
export function userFromProto(record: UserRecord): db.User {
  return Object.assign(users.toRow(record), { passwordHash: requireField(record.passwordHash, 'UserRecord.password_hash') });
}

export function newUserToProto({ role, ...user }: NewUser): NewUserRecord {
  const record = newUsers.toMessage({ ...user, role: role ?? 'USER' });
  // No role given is UNSPECIFIED on the wire, so that the column's default applies, as in-process.
  if (role === undefined) record.role = UserRole.UNSPECIFIED;
  return record;
}

/** Absent names become null, which is what the account-creation path passes and what gets stored. */
export function newUserFromProto(record: NewUserRecord): NewUser {
  if (record.role !== UserRole.UNSPECIFIED) return newUsers.toRow(record);
  // UNSPECIFIED stands for "no role given": the column's default (USER) applies, as in-process.
  const { role: _default, ...user } = newUsers.toRow({ ...record, role: UserRole.USER });
  return user;
}

/**
 * UserChanges as the message. The message can only say "set this value" (an absent field means
 * "leave it"), so anything else Prisma would accept (null to clear a column, `{ set: … }` and
 * other operation objects, fields outside UserChanges) is refused here rather than silently lost.
 */
export function userChangesToProto(changes: UserChanges): UserChangesMessage {
  return userChanges.toMessageChecked(changes);
}

export function userChangesFromProto(message: UserChangesMessage): UserChanges {
  return userChanges.toPartial(message);
}

export function userExpectationToProto(expected: UserExpectation): UserConditions {
  return userConditions.toMessage(expected);
}

/** Absent conditions are no conditions: an unconditional write, as an older caller meant it. */
export function userExpectationFromProto(message: UserConditions | undefined): UserExpectation {
  return message === undefined ? {} : userConditions.toPartial(message);
}

export function userFilterToProto(filter: UserFilter): ListUsersRequest {
  return userFilters.toMessage({ ...filter, sort: filter.sort ?? '' });
}

export function userFilterFromProto(request: ListUsersRequest): UserFilter {
  const { sort, ...filter } = userFilters.toPartial(request);
  return sort === '' ? filter : { ...filter, sort: userSortOf(sort) };
}

// ---------------------------------------------------------------------------------------------
// Tokens

export function tokenToProto(row: db.OAuthToken): TokenRecord {
  return tokens.toMessage(row);
}

export function tokenFromProto(record: TokenRecord): db.OAuthToken {
  return tokens.toRow(record);
}

export function newTokenToProto(record: NewTokenRecord): NewTokenMessage {
  return newTokens.toMessage(record);
}

export function newTokenFromProto(message: NewTokenMessage): NewTokenRecord {
  return newTokens.toRow(message);
}

const REVOCATION_REASONS: readonly RevocationReason[] = ['rotated', 'logout', 'revoked', 'reuse', 'expired_chain', 'superseded'];

/** A revocation reason from the wire; anything else is the other side's bug, not the caller's. */
export function revocationReasonFromProto(reason: string): RevocationReason {
  const known = REVOCATION_REASONS.find((candidate) => candidate === reason);
  if (known === undefined) throw new InvalidFieldError('reason', 'is not a revocation reason');
  return known;
}

// ---------------------------------------------------------------------------------------------
// Audit events

/** A stored audit row as a record; `details` must be a JSON object (or NULL), as every writer stores it. */
export function auditEventToProto(row: db.AuditEvent): AuditEventRecord {
  return auditEvents.toMessage(row);
}

export function auditEventFromProto(record: AuditEventRecord): db.AuditEvent {
  return auditEvents.toRow(record);
}

/** An event to store, as a record with id 0 (not stored yet). */
export function newAuditEventToProto(event: NewAuditEvent): AuditEventRecord {
  return auditEvents.toMessage({ ...event, id: 0 });
}

/** A record as an event to store; its id is ignored, and its details must be flat, as AuditDetails are. */
export function newAuditEventFromProto(record: AuditEventRecord): NewAuditEvent {
  const { id: _id, ...event } = auditEvents.toRow(record);
  return { ...event, details: record.details === undefined ? null : flatDetails(record.details) };
}

export function auditFilterToProto(filter: AuditFilter): ListAuditEventsRequest {
  return auditFilters.toMessage(filter);
}

export function auditFilterFromProto(request: ListAuditEventsRequest): AuditFilter {
  // The public APIs bound the page; a caller of the internal API with page 0 was answered
  // `internal` by Prisma's refusal of a negative skip (helper 197).
  if (request.page < 1) throw new InvalidFieldError('page', 'must be at least 1');
  if (request.perPage < 1) throw new InvalidFieldError('per_page', 'must be at least 1');
  // A page far past the end is an empty page (the console asks for page 2147483647), not an error.
  return auditFilters.toPartial(request);
}

function flatDetails(details: JsonObject): AuditDetails {
  const flat: AuditDetails = {};
  for (const [key, value] of Object.entries(details)) {
    if (typeof value !== 'string' && typeof value !== 'number' && typeof value !== 'boolean') {
      throw new InvalidFieldError('details', `must be flat (strings, numbers, booleans); ${key} is ${JSON.stringify(value)}`);
    }
    flat[key] = value;
  }
  return flat;
}
