// Users between database rows (Prisma) and the API's messages (protobuf-es), by the one rule of
// message-mapping.ts. The names agree by construction: proto's USER_ROLE_ADMIN is generated as
// UserRole.ADMIN, which Prisma stores as 'ADMIN'; rowMapping checks the fields at compile time.
import type * as db from '../../gen/prisma/client.ts';
import { UserRole, UserRoleSchema, UserSchema, UserStatusSchema, type User, type UserStatus } from '../../gen/proto/arcana/user/v1/user_pb.js';
import { enumToRow, rowMapping } from './message-mapping.ts';

/** The public User is the row without the password hash and the lookup key. */
const users = rowMapping<typeof UserSchema, Omit<db.User, 'passwordHash' | 'usernameKey'>>(UserSchema);

export function roleToProto(role: db.UserRole): UserRole {
  return UserRole[role];
}

/** The stored role for a proto role; UNSPECIFIED (or an unknown number) is a validation error. */
export function roleFromProto(role: UserRole, field = 'role'): db.UserRole {
  return enumToRow(UserRoleSchema, role, field) as db.UserRole;
}

/** The stored status for a proto status; UNSPECIFIED (or an unknown number) is a validation error. */
export function statusFromProto(status: UserStatus, field = 'status'): db.UserStatus {
  return enumToRow(UserStatusSchema, status, field) as db.UserStatus;
}

/** The public view of a user row: everything but the password hash (and the lookup key). */
export function toUserMessage(row: Omit<db.User, 'passwordHash'>): User {
  return users.toMessage(row);
}

/**
 * The case fold of a login, a username or an e-mail: A–Z to a–z and nothing else. Usernames and
 * e-mails are ASCII, and JavaScript's Unicode lower-casing would turn one non-ASCII letter into an
 * ASCII one (the Kelvin sign U+212A into `k`), so a login spelled with it found the account.
 */
export function foldCase(text: string): string {
  return text.replace(/[A-Z]/g, (letter) => String.fromCharCode(letter.charCodeAt(0) + 32));
}
