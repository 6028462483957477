// Proto messages as the JSON shapes of openapi.yaml. REST and RPC share one service layer whose
// currency is the proto messages; the REST spelling is the one rule of toRestJson
// (src/domain/message-mapping.ts), and these only name the openapi.yaml type each message becomes
// (tests/unit/rest-json.test.ts and the API suites hold the two to agreeing).
import { create } from '@bufbuild/protobuf';
import type { components } from '../../../gen/openapi/schema.d.ts';
import { AuditEventSchema, type AuditEvent } from '../../../gen/proto/arcana/audit/v1/audit_service_pb.js';
import { SessionSchema, TokenPairSchema, type Session, type TokenPair } from '../../../gen/proto/arcana/auth/v1/auth_service_pb.js';
import { PaginationSchema, UserRole, UserSchema, UserStatus, type Pagination, type User } from '../../../gen/proto/arcana/user/v1/user_pb.js';
import { toRestJson } from '../../domain/message-mapping.ts';

type Schemas = components['schemas'];

export function toRestUser(user: User): Schemas['User'] {
  return toRestJson(UserSchema, user) as Schemas['User'];
}

export function toRestTokenPair(tokens: TokenPair | undefined): Schemas['TokenPair'] {
  return toRestJson(TokenPairSchema, tokens ?? create(TokenPairSchema, { tokenType: 'Bearer' })) as Schemas['TokenPair'];
}

export function toRestSession(session: Session): Schemas['Session'] {
  return toRestJson(SessionSchema, session) as Schemas['Session'];
}

export function toRestPagination(pagination: Pagination): Schemas['Pagination'] {
  return toRestJson(PaginationSchema, pagination) as Schemas['Pagination'];
}

/** Proto details are text, so REST details are too; no details is null. */
export function toRestAuditEvent(event: AuditEvent): Schemas['AuditEvent'] {
  return toRestJson(AuditEventSchema, event) as Schemas['AuditEvent'];
}

export function roleFromRest(role: Schemas['UserRole']): UserRole {
  return UserRole[role];
}

export function statusFromRest(status: Schemas['UserStatus']): UserStatus {
  return UserStatus[status];
}
