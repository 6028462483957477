import type { MessageInitShape } from '@bufbuild/protobuf';
import type {
  ChangePasswordRequestSchema,
  CreateUserRequestSchema,
  ListUsersRequestSchema,
  UpdateUserRequestSchema,
} from '../../gen/proto/arcana/user/v1/user_service_pb.js';
import { UserRole, UserStatus, type Pagination, type User } from '../../gen/proto/arcana/user/v1/user_pb.js';
import type { Actor } from '../domain/actor.ts';
import { AuthenticationError, AuthorizationError, ConflictError, NotFoundError, RateLimitedError } from '../domain/errors.ts';
import { addressKey } from '../infrastructure/client-address.ts';
import type { DeviceTokens } from '../infrastructure/security/device-tokens.ts';
import { roleFromProto, statusFromProto, toUserMessage } from '../domain/user-mapping.ts';
import type { PasswordHasher } from '../infrastructure/security/password-hasher.ts';
import type { TokenRepository } from '../repositories/token-repository.ts';
import type { UserChanges, UserRepository } from '../repositories/user-repository.ts';
import { assertAvailable, createAccount } from './accounts.ts';
import { pageRequest, paginationOf, userSortOf } from './pagination.ts';
import type { AuditLog } from './audit-use-cases.ts';
import { accountKey, type LoginThrottle } from './login-throttle.ts';
import { clientFields } from './audit-use-cases.ts';

export interface UserPage {
  users: User[];
  pagination: Pagination;
}

/** The user-management operations the facades call; see AuthService for why an interface. */
export interface UserService {
  list(actor: Actor, query: MessageInitShape<typeof ListUsersRequestSchema>): Promise<UserPage>;
  get(actor: Actor, userId: number): Promise<User>;
  create(actor: Actor, input: MessageInitShape<typeof CreateUserRequestSchema>): Promise<User>;
  update(actor: Actor, input: MessageInitShape<typeof UpdateUserRequestSchema>): Promise<User>;
  delete(actor: Actor, userId: number): Promise<void>;
  changePassword(actor: Actor, input: MessageInitShape<typeof ChangePasswordRequestSchema>): Promise<void>;
  verify(actor: Actor, userId: number): Promise<User>;
  updateStatus(actor: Actor, userId: number, status: UserStatus): Promise<User>;
  clearLoginFailures(actor: Actor, userId: number): Promise<number>;
}

/** User management, with the role and ownership rules of spec §5 enforced here, once. */
export class UserUseCases implements UserService {
  readonly #users: UserRepository;
  readonly #tokens: TokenRepository;
  readonly #passwords: PasswordHasher;

  readonly #throttle: LoginThrottle;
  readonly #devices: DeviceTokens;
  readonly #audit: AuditLog;

  constructor(deps: {
    users: UserRepository;
    tokens: TokenRepository;
    passwords: PasswordHasher;
    throttle: LoginThrottle;
    devices: DeviceTokens;
    audit: AuditLog;
  }) {
    this.#devices = deps.devices;
    this.#audit = deps.audit;
    this.#users = deps.users;
    this.#tokens = deps.tokens;
    this.#passwords = deps.passwords;
    this.#throttle = deps.throttle;
  }

  async list(actor: Actor, query: MessageInitShape<typeof ListUsersRequestSchema>): Promise<UserPage> {
    requireAdmin(actor);
    const request = pageRequest(query);
    const { users, total } = await this.#users.list({
      ...request,
      role: query.role === undefined ? undefined : roleFromProto(query.role),
      status: query.status === undefined ? undefined : statusFromProto(query.status),
      q: query.q,
      sort: userSortOf(query.sort),
    });
    return {
      users: users.map(toUserMessage),
      pagination: paginationOf(request, total),
    };
  }

  async get(actor: Actor, userId: number): Promise<User> {
    requireSelfOrAdmin(actor, userId, 'Not authorized to view this user');
    return toUserMessage(await this.#existing(userId));
  }

  async create(actor: Actor, input: MessageInitShape<typeof CreateUserRequestSchema>): Promise<User> {
    requireAdmin(actor);
    const role = input.role === undefined || input.role === UserRole.UNSPECIFIED ? 'USER' : roleFromProto(input.role);
    const row = await createAccount({ users: this.#users, passwords: this.#passwords }, { ...input, role });
    // A role granted by an administrator is a role change, from none.
    this.#audit.record({ type: 'ROLE_CHANGED', userId: row.id, actorId: actor.userId, details: { to: row.role } });
    return toUserMessage(row);
  }

  /** Profile fields only: role, status and verification have their own admin operations. */
  async update(actor: Actor, input: MessageInitShape<typeof UpdateUserRequestSchema>): Promise<User> {
    const userId = input.userId ?? 0;
    requireSelfOrAdmin(actor, userId, 'Not authorized to update this user');
    const existing = await this.#existing(userId);
    const changes: UserChanges = {};
    if (input.email !== undefined && input.email.toLowerCase() !== existing.email) {
      changes.email = input.email.toLowerCase();
      await assertAvailable(this.#users, undefined, changes.email, userId);
    }
    if (input.firstName !== undefined) changes.firstName = input.firstName;
    if (input.lastName !== undefined) changes.lastName = input.lastName;
    if (input.phone !== undefined) changes.phone = input.phone;
    if (input.avatarUrl !== undefined) changes.avatarUrl = input.avatarUrl;
    return toUserMessage(await this.#users.update(userId, changes));
  }

  /** Deletes the user; its sessions go with it (cascade). */
  async delete(actor: Actor, userId: number): Promise<void> {
    requireAdmin(actor);
    if (!(await this.#users.delete(userId))) throw new NotFoundError('User not found');
    this.#audit.record({ type: 'USER_DELETED', userId, actorId: actor.userId });
  }

  /**
   * Changes the caller's own password and ends the caller's other sessions. The current password
   * is a password guess like a login: it takes a slot from the same LoginThrottle (per account and
   * client address, or per known device) before it is compared, and a refusal is audited.
   */
  async changePassword(actor: Actor, input: MessageInitShape<typeof ChangePasswordRequestSchema>): Promise<void> {
    const userId = input.userId ?? 0;
    if (actor.userId !== userId) throw new AuthorizationError('Not authorized to change this password');
    const user = await this.#users.findById(userId);
    if (user === null) throw new NotFoundError('User not found');
    const client = actor.client ?? {};
    const device = this.#devices.verify(client.deviceToken, userId);
    const attempt = await this.#throttle.admit({ account: accountKey(userId, ''), address: addressKey(client.ipAddress), device });
    const failed = (reason: string) =>
      this.#audit.record({ type: 'PASSWORD_CHANGE_FAILED', userId, actorId: actor.userId, ...clientFields(client), details: { reason } });
    if (!attempt.admitted) {
      failed('throttled');
      throw new RateLimitedError(attempt.retryAfterSeconds);
    }
    if (!(await this.#passwords.verify(input.oldPassword ?? '', user.passwordHash))) {
      failed('wrong_password');
      throw new AuthenticationError('Current password is incorrect');
    }
    await attempt.succeeded();
    await this.#users.update(userId, { passwordHash: await this.#passwords.hash(input.newPassword ?? '', 'newPassword') });
    const ended = await this.#tokens.revokeAllForUser(userId, actor.sessionId, 'revoked');
    this.#audit.record({ type: 'PASSWORD_CHANGED', userId, actorId: actor.userId, ...clientFields(client), details: { otherSessionsEnded: ended.length } });
  }

  async verify(actor: Actor, userId: number): Promise<User> {
    requireAdmin(actor);
    const user = await this.#existing(userId);
    if (user.isVerified) throw new ConflictError('User is already verified');
    return toUserMessage(await this.#users.update(userId, { isVerified: true }));
  }

  /** Sets the status; any status but ACTIVE ends the user's sessions at once. */
  async updateStatus(actor: Actor, userId: number, status: UserStatus): Promise<User> {
    requireAdmin(actor);
    const stored = statusFromProto(status);
    const before = await this.#existing(userId);
    const row = await this.#users.update(userId, { status: stored, isActive: stored === 'ACTIVE' });
    if (status !== UserStatus.ACTIVE) await this.#tokens.revokeAllForUser(userId, undefined, 'revoked');
    this.#audit.record({ type: 'STATUS_CHANGED', userId, actorId: actor.userId, details: { from: before.status, to: stored } });
    return toUserMessage(row);
  }

  /** Lifts the user's login lockouts; returns how many client addresses were locked or counting. */
  async clearLoginFailures(actor: Actor, userId: number): Promise<number> {
    requireAdmin(actor);
    await this.#existing(userId);
    const cleared = await this.#throttle.clear(accountKey(userId, ''));
    this.#audit.record({ type: 'LOGIN_FAILURES_CLEARED', userId, actorId: actor.userId, details: { cleared } });
    return cleared;
  }

  async #existing(userId: number) {
    const user = await this.#users.findProfile(userId);
    if (user === null) throw new NotFoundError('User not found');
    return user;
  }
}

function requireAdmin(actor: Actor): void {
  if (actor.role !== UserRole.ADMIN) throw new AuthorizationError('Insufficient permissions');
}

/** Checked before any lookup, so a non-admin cannot probe which ids exist. */
function requireSelfOrAdmin(actor: Actor, userId: number, message: string): void {
  if (actor.role !== UserRole.ADMIN && actor.userId !== userId) throw new AuthorizationError(message);
}
