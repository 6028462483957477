// openapi.yaml's JSON is the protos' JSON with short enum names, ISO timestamps and null for unset
// optional fields: one rule, checked here against every message the REST API returns.
import { create } from '@bufbuild/protobuf';
import { timestampFromDate } from '@bufbuild/protobuf/wkt';
import { describe, expect, it } from 'vitest';
import { SessionSchema, TokenPairSchema } from '../../gen/proto/arcana/auth/v1/auth_service_pb.js';
import { PaginationSchema, UserRole, UserSchema, UserStatus } from '../../gen/proto/arcana/user/v1/user_pb.js';
import { ListUsersRequestSchema, UpdateUserStatusRequestSchema } from '../../gen/proto/arcana/user/v1/user_service_pb.js';
import { fromRestJson as fromRest, toRestJson as toRest } from '../../src/domain/message-mapping.ts';

const at = (iso: string) => timestampFromDate(new Date(iso));

describe('REST JSON', () => {
  it('when a user goes to REST, then enums are short names, timestamps ISO strings with milliseconds, unset optionals null', () => {
    const user = create(UserSchema, {
      id: 7,
      username: 'ada',
      email: 'ada@example.com',
      firstName: 'Ada',
      role: UserRole.ADMIN,
      status: UserStatus.SUSPENDED,
      isVerified: true,
      isActive: false,
      createdAt: at('2026-11-28T09:00:00.000Z'),
      updatedAt: at('2026-11-28T09:30:00.123Z'),
    });
    expect(toRest(UserSchema, user)).toMatchObject({
      id: 7,
      username: 'ada',
      email: 'ada@example.com',
      firstName: 'Ada',
      lastName: null,
      phone: null,
      avatarUrl: null,
      role: 'ADMIN',
      status: 'SUSPENDED',
      isVerified: true,
      isActive: false,
      createdAt: '2026-11-28T09:00:00.000Z',
      updatedAt: '2026-11-28T09:30:00.123Z',
      lastLoginAt: null,
    });
  });

  it('when tokens, sessions and pages go to REST, then every field is there under its JSON name', () => {
    expect(toRest(TokenPairSchema, create(TokenPairSchema, { accessToken: 'a', refreshToken: 'r', expiresIn: 60, tokenType: 'Bearer' }))).toEqual({
      accessToken: 'a',
      refreshToken: 'r',
      expiresIn: 60,
      tokenType: 'Bearer',
    });
    expect(
      toRest(
        SessionSchema,
        create(SessionSchema, { id: 1, tokenType: 'Bearer', ipAddress: '::1', createdAt: at('2026-01-01T00:00:00Z'), expiresAt: at('2026-02-01T00:00:00Z'), current: true }),
      ),
    ).toEqual({
      id: 1,
      tokenType: 'Bearer',
      clientName: null,
      ipAddress: '::1',
      userAgent: null,
      createdAt: '2026-01-01T00:00:00.000Z',
      expiresAt: '2026-02-01T00:00:00.000Z',
      current: true,
    });
    expect(toRest(PaginationSchema, create(PaginationSchema, { page: 2, perPage: 20, total: 41, totalPages: 3 }))).toEqual({ page: 2, perPage: 20, total: 41, totalPages: 3 });
  });

  it('when a REST request becomes a message, then short enum names become numbers and nulls are left unset', () => {
    const list = create(ListUsersRequestSchema, fromRest(ListUsersRequestSchema, { page: 2, perPage: 5, role: 'GUEST' }));
    expect(list.role).toBe(UserRole.GUEST);
    expect(list.status).toBeUndefined();
    expect(create(UpdateUserStatusRequestSchema, fromRest(UpdateUserStatusRequestSchema, { userId: 3, status: 'INACTIVE' })).status).toBe(UserStatus.INACTIVE);
  });
});
