// Proto messages ⇄ the JSON shapes of openapi.yaml. REST and RPC share one service layer whose
// currency is the proto messages; this is the only place their REST spelling is produced.
import { timestampDate, type Timestamp } from '@bufbuild/protobuf/wkt';
import type { components } from '../../../gen/openapi/schema.d.ts';
import type { Session, TokenPair } from '../../../gen/proto/arcana/auth/v1/auth_service_pb.js';
import { UserRole, UserStatus, type Pagination, type User } from '../../../gen/proto/arcana/user/v1/user_pb.js';

type Schemas = components['schemas'];

const iso = (timestamp: Timestamp | undefined): string => (timestamp === undefined ? new Date(0) : timestampDate(timestamp)).toISOString();

export function toRestUser(user: User): Schemas['User'] {
  return {
    id: user.id,
    username: user.username,
    email: user.email,
    firstName: user.firstName ?? null,
    lastName: user.lastName ?? null,
    phone: user.phone ?? null,
    avatarUrl: user.avatarUrl ?? null,
    role: UserRole[user.role] as Schemas['UserRole'],
    status: UserStatus[user.status] as Schemas['UserStatus'],
    isVerified: user.isVerified,
    isActive: user.isActive,
    createdAt: iso(user.createdAt),
    updatedAt: iso(user.updatedAt),
    lastLoginAt: user.lastLoginAt === undefined ? null : iso(user.lastLoginAt),
    version: user.version,
  };
}

export function toRestTokenPair(tokens: TokenPair | undefined): Schemas['TokenPair'] {
  return {
    accessToken: tokens?.accessToken ?? '',
    refreshToken: tokens?.refreshToken ?? '',
    expiresIn: tokens?.expiresIn ?? 0,
    tokenType: 'Bearer',
  };
}

export function toRestSession(session: Session): Schemas['Session'] {
  return {
    id: session.id,
    tokenType: session.tokenType,
    clientName: session.clientName ?? null,
    ipAddress: session.ipAddress ?? null,
    userAgent: session.userAgent ?? null,
    createdAt: iso(session.createdAt),
    expiresAt: iso(session.expiresAt),
    current: session.current,
  };
}

export function toRestPagination(pagination: Pagination): Schemas['Pagination'] {
  return {
    page: pagination.page,
    perPage: pagination.perPage,
    total: pagination.total,
    totalPages: pagination.totalPages,
  };
}

export function roleFromRest(role: Schemas['UserRole']): UserRole {
  return UserRole[role];
}

export function statusFromRest(status: Schemas['UserStatus']): UserStatus {
  return UserStatus[status];
}
