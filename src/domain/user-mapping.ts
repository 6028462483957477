// Conversions between database rows (Prisma) and the API's messages (protobuf-es). The enum
// names agree by construction: proto's USER_ROLE_ADMIN is generated as UserRole.ADMIN, which
// Prisma stores as 'ADMIN'; these functions only cross between the two representations.
import { create } from '@bufbuild/protobuf';
import { timestampFromDate } from '@bufbuild/protobuf/wkt';
import * as db from '../../gen/prisma/client.ts';
import { UserRole, UserSchema, UserStatus, type User } from '../../gen/proto/arcana/user/v1/user_pb.js';
import { ValidationError } from './errors.ts';

export function roleToProto(role: db.UserRole): UserRole {
  return UserRole[role];
}

export function statusToProto(status: db.UserStatus): UserStatus {
  return UserStatus[status];
}

// An enum's reverse mapping is typed string, but an unknown number from the wire has no name.
/** The stored role for a proto role; UNSPECIFIED (or an unknown number) is a validation error. */
export function roleFromProto(role: UserRole, field = 'role'): db.UserRole {
  const name = UserRole[role] as string | undefined;
  if (name !== undefined && Object.hasOwn(db.UserRole, name)) return name as db.UserRole;
  throw new ValidationError('Validation failed', { [field]: 'must be one of ADMIN, USER, GUEST' });
}

/** The stored status for a proto status; UNSPECIFIED (or an unknown number) is a validation error. */
export function statusFromProto(status: UserStatus, field = 'status'): db.UserStatus {
  const name = UserStatus[status] as string | undefined;
  if (name !== undefined && Object.hasOwn(db.UserStatus, name)) return name as db.UserStatus;
  throw new ValidationError('Validation failed', { [field]: 'must be one of ACTIVE, INACTIVE, SUSPENDED, DELETED' });
}

/** The public view of a user row: everything but the password hash. */
export function toUserMessage(row: Omit<db.User, 'passwordHash'>): User {
  return create(UserSchema, {
    id: row.id,
    username: row.username,
    email: row.email,
    ...(row.firstName === null ? {} : { firstName: row.firstName }),
    ...(row.lastName === null ? {} : { lastName: row.lastName }),
    ...(row.phone === null ? {} : { phone: row.phone }),
    ...(row.avatarUrl === null ? {} : { avatarUrl: row.avatarUrl }),
    role: roleToProto(row.role),
    status: statusToProto(row.status),
    isVerified: row.isVerified,
    isActive: row.isActive,
    createdAt: timestampFromDate(row.createdAt),
    updatedAt: timestampFromDate(row.updatedAt),
    ...(row.lastLoginAt === null ? {} : { lastLoginAt: timestampFromDate(row.lastLoginAt) }),
    version: row.version,
  });
}
