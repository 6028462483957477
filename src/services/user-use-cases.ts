import type { MessageInitShape } from '@bufbuild/protobuf';
import {
  CreateUserRequestSchema,
  type ChangePasswordRequestSchema,
  type ListUsersRequestSchema,
  type UpdateUserRequestSchema,
  type UpdateUserRoleRequestSchema,
} from '../../gen/proto/arcana/user/v1/user_service_pb.js';
import { UserRole, UserSchema, UserStatus, type Pagination, type User } from '../../gen/proto/arcana/user/v1/user_pb.js';
import type { Actor } from '../domain/actor.ts';
import { AppError, AuthenticationError, AuthorizationError, ConflictError, NotFoundError, PreconditionFailedError, RateLimitedError, ValidationError } from '../domain/errors.ts';
import { addressKey } from '../infrastructure/client-address.ts';
import type { DeviceTokens } from '../infrastructure/security/device-tokens.ts';
import { roleFromProto, statusFromProto, toUserMessage } from '../domain/user-mapping.ts';
import type { PasswordHasher } from '../infrastructure/security/password-hasher.ts';
import type { TokenRepository } from '../repositories/token-repository.ts';
import { SESSIONS_ENDED_DETAIL } from '../repositories/write-options.ts';
import type { UserChanges, UserProfile, UserRepository } from '../repositories/user-repository.ts';
import { assertAvailable, newAccountRow, storedEmail } from './accounts.ts';
import { requestOutOfTime, uninterrupted } from '../infrastructure/call-context.ts';
import type { CounterStore } from '../infrastructure/rate-limiter.ts';
import { createHash } from 'node:crypto';
import { canonicalRequest, messageCodec, type IdempotentRequests } from './idempotency.ts';
import { actingAs, requireAdmin, requireSelfOrAdmin } from './access.ts';
import { pageRequest, paginationOf, userSortOf } from './pagination.ts';
import type { AuditLog } from './audit-use-cases.ts';
import { accountKey, loginKey, type LoginThrottle } from './login-throttle.ts';
import { clientFields } from './audit-use-cases.ts';

/** How long a password change whose answer was lost may be retried as such. */
const CHANGE_IN_DOUBT_MS = 5 * 60_000;
/**
 * The note of such a change: the account, the login chain of the session that made it (kept by a
 * refresh, where the pair's id is not) and the hash it wrote (hashed again: a key, not a secret).
 */
const changeInDoubtKey = (userId: number, familyId: string, passwordHash: string) =>
  `password-change-in-doubt:${userId}:${familyId}:${createHash('sha256').update(passwordHash).digest('hex')}`;
/** A created user as kept for replays. */
const USER_ANSWER = messageCodec(UserSchema);

export interface UserPage {
  users: User[];
  pagination: Pagination;
}

/** User management, with the role and ownership rules of spec §5 enforced here, once. */
export class UserUseCases {
  readonly #users: UserRepository;
  readonly #tokens: TokenRepository;
  readonly #passwords: PasswordHasher;

  readonly #throttle: LoginThrottle;
  readonly #devices: DeviceTokens;
  readonly #audit: AuditLog;
  readonly #idempotency: IdempotentRequests;
  readonly #counters: CounterStore | undefined;

  constructor(deps: {
    users: UserRepository;
    tokens: TokenRepository;
    passwords: PasswordHasher;
    throttle: LoginThrottle;
    devices: DeviceTokens;
    audit: AuditLog;
    idempotency: IdempotentRequests;
    /** Where a password change whose answer was lost is noted (see #changeInDoubt); none, none noted. */
    counters?: CounterStore | undefined;
  }) {
    this.#idempotency = deps.idempotency;
    this.#counters = deps.counters;
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
    const { users, total } = await this.#users.list(
      {
        ...request,
        role: query.role === undefined ? undefined : roleFromProto(query.role),
        status: query.status === undefined ? undefined : statusFromProto(query.status),
        q: query.q,
        sort: userSortOf(query.sort),
      },
      actingAs(actor, true),
    );
    return {
      users: users.map(toUserMessage),
      pagination: paginationOf(request, total),
    };
  }

  async get(actor: Actor, userId: number): Promise<User> {
    requireSelfOrAdmin(actor, userId, 'Not authorized to view this user');
    // Authentication has just read the caller's own record: a user reading itself gets that.
    if (actor.record?.id === userId) return toUserMessage(actor.record);
    return toUserMessage(await this.#existing(userId));
  }

  /**
   * Creates a user. Called with an Idempotency-Key, a retry gets this answer again (see
   * IdempotentRequests); each administrator's keys are its own, so one cannot replay, or block,
   * another's. The role is checked first: a stored answer is for administrators only.
   */
  async create(actor: Actor, input: MessageInitShape<typeof CreateUserRequestSchema>): Promise<User> {
    requireAdmin(actor);
    const operation = {
      scope: `users:${actor.userId}`,
      request: canonicalRequest(CreateUserRequestSchema, {
        ...input,
        // As the request is carried out: the password in NFC, no role as USER (REST's validator
        // fills in openapi.yaml's default, RPC leaves it unset: one request, two fingerprints, and a
        // retry over another protocol was refused as another request; helper 119).
        // The e-mail as stored, lower-cased (helper 144).
        password: (input.password ?? '').normalize('NFC'),
        email: storedEmail(input.email),
        role: input.role === undefined || input.role === UserRole.UNSPECIFIED ? UserRole.USER : input.role,
      }),
      answer: USER_ANSWER,
    };
    return this.#idempotency.run(operation, async () => {
      const role = input.role === undefined || input.role === UserRole.UNSPECIFIED ? 'USER' : roleFromProto(input.role);
      const account = await newAccountRow({ users: this.#users, passwords: this.#passwords }, { ...input, role });
      // The hash may have waited seconds for a slot (PASSWORD_HASH_QUEUE_MAX): the insert is
      // authorized again (helper 70's administrator, suspended or demoted meanwhile, went on
      // creating ADMIN accounts from its queued requests; helper 71's, logged out).
      // A role granted by an administrator is a role change, from none; the new row's id is its user.
      const granted = { type: 'ROLE_CHANGED', actorId: actor.userId, details: { to: role } } as const;
      const row = await uninterrupted(() => this.#audit.withWrite(granted, (audit) => this.#users.create(account, { ...actingAs(actor, true), audit })));
      return toUserMessage(row);
    });
  }

  /**
   * Profile fields only: role, status and verification have their own admin operations (a new
   * e-mail address does end the verification, which was of the old one). With an
   * expected version the write happens only if the user is still at it. Audited as USER_UPDATED
   * with the names of the fields that changed, never their values.
   */
  async update(actor: Actor, input: MessageInitShape<typeof UpdateUserRequestSchema>): Promise<User> {
    const userId = input.userId ?? 0;
    requireSelfOrAdmin(actor, userId, 'Not authorized to update this user');
    // The fields that change, and so the event, are worked out from the row as read; the write is
    // made only over that row's version, and worked out again from the row as it is now when
    // another write came between (helper 117: with the write unconditional, setting a name back
    // to what it had been before another administrator's edit left no event, and an e-mail change
    // that undid a verification committed meanwhile was audited without it). A caller's own
    // expected version stands as it is: its change is refused with 412 when the user moved on.
    for (let attempt = 1; ; attempt += 1) {
      const existing = attempt === 1 ? await this.#existing(userId) : await this.#current(userId);
      const { changes, event } = await this.#profileChange(actor, input, existing);
      const version = input.expectedVersion ?? existing.version;
      try {
        const row = await this.#audit.withWrite(event, (audit) => this.#users.update(userId, changes, { version }, { ...actingAs(actor, actor.userId !== userId), audit }));
        return toUserMessage(row);
      } catch (error) {
        const movedOn = error instanceof AppError && error.code === 'PRECONDITION_FAILED' && input.expectedVersion === undefined;
        if (!movedOn) throw error;
        if (attempt >= PROFILE_WRITE_ATTEMPTS) throw new ConflictError('The user changed meanwhile; read it again and retry');
      }
    }
  }

  /** What a profile edit changes over `existing`, and its event (none when nothing changes). */
  async #profileChange(actor: Actor, input: MessageInitShape<typeof UpdateUserRequestSchema>, existing: UserProfile) {
    const userId = existing.id;
    const changes: UserChanges = {};
    if (input.email !== undefined && input.email.toLowerCase() !== existing.email) {
      changes.email = input.email.toLowerCase();
      await assertAvailable(this.#users, undefined, changes.email, userId);
      // What an administrator verified was the old address: a new one is not verified until one
      // verifies it again (helper 93: a user kept the mark with an address nobody had checked).
      changes.isVerified = false;
    }
    if (input.firstName !== undefined) changes.firstName = input.firstName;
    if (input.lastName !== undefined) changes.lastName = input.lastName;
    if (input.phone !== undefined) changes.phone = input.phone;
    if (input.avatarUrl !== undefined) changes.avatarUrl = input.avatarUrl;
    const changed: string[] = PROFILE_FIELDS.filter((field) => changes[field] !== undefined && changes[field] !== existing[field]);
    if (changes.isVerified === false && existing.isVerified) changed.push('isVerified');
    const event =
      changed.length === 0
        ? undefined
        : ({ type: 'USER_UPDATED', userId, actorId: actor.userId, ...clientFields(actor.client ?? {}), details: { fields: changed.join(',') } } as const);
    return { changes, event };
  }

  /** Deletes the user; its sessions go with it (cascade). The last active admin is refused. */
  async delete(actor: Actor, userId: number, expectedVersion?: number): Promise<void> {
    requireAdmin(actor);
    const deleted = { type: 'USER_DELETED', userId, actorId: actor.userId } as const;
    if (!(await this.#audit.withWrite(deleted, (audit) => this.#users.delete(userId, expectedVersion, { ...actingAs(actor, true), audit }))))
      throw new NotFoundError('User not found');
  }

  /**
   * Changes the caller's own password and ends the caller's other sessions. The current password
   * is a password guess like a login: it takes a slot from the same LoginThrottle (per account and
   * client address, or per known device) before it is compared, and a refusal is audited.
   */
  async changePassword(actor: Actor, input: MessageInitShape<typeof ChangePasswordRequestSchema>): Promise<void> {
    const userId = input.userId ?? 0;
    if (actor.userId !== userId) throw new AuthorizationError('Not authorized to change this password');
    // A new password the rules refuse is refused before the current one is compared: after it,
    // a stolen token could ask "is this the password?" with a request that changed nothing and
    // left no trace, a right guess answered 400 and a wrong one 401 (helper 111).
    this.#passwords.acceptable(input.newPassword ?? '', 'newPassword');
    // A "change" to the same password ended every other session and was audited as a change:
    // a log-out-everywhere a stolen token could make while the owner saw nothing change (helper
    // 223). Refused on the two texts as sent, before anything is compared, so it tells nothing of
    // whether they are the password.
    if (input.newPassword === input.oldPassword) throw new ValidationError('Validation failed', { newPassword: 'must differ from the current password' });
    const user = await this.#users.findById(userId);
    if (user === null) throw new NotFoundError('User not found');
    // A stale precondition fails before any password is compared, and again in the write (a
    // change may commit meanwhile). REST's If-Match here used to be ignored (helper 123).
    const expectedVersion = input.expectedVersion;
    if (expectedVersion !== undefined && expectedVersion !== user.version) throw new PreconditionFailedError();
    const client = actor.client ?? {};
    const device = this.#devices.verify(client.deviceToken, userId, user.passwordHash);
    const attempt = await this.#throttle.admit({ name: user.username, userId, address: addressKey(client.ipAddress), device });
    const failed = (reason: string) => this.#audit.record({ type: 'PASSWORD_CHANGE_FAILED', userId, actorId: actor.userId, ...clientFields(client), details: { reason } });
    if (!attempt.admitted) {
      failed('throttled');
      throw new RateLimitedError(attempt.retryAfterSeconds);
    }
    const matches = await this.#passwords.verify(input.oldPassword ?? '', user.passwordHash).catch(async (error: unknown) => {
      await attempt.abandoned();
      throw error;
    });
    if (!matches) {
      // The retry of a change made without its answer reaching its client: the account's password
      // is already the new one, set by this session's change. The change asked for is made, and
      // answered so; it was refused as a wrong current password, audited as a guess and counted
      // towards a lockout (helper 189). The new password is compared only when such a change is
      // noted, so a wrong guess costs no second comparison.
      const made = await this.#madeByNotedChange(userId, actor.familyId, user.passwordHash, input.newPassword).catch(async (error: unknown) => {
        await attempt.abandoned();
        throw error;
      });
      if (made) {
        await attempt.succeeded();
        return;
      }
      failed('wrong_password');
      throw new AuthenticationError('Current password is incorrect');
    }
    await attempt.succeeded();
    const passwordHash = await this.#passwords.hash(input.newPassword ?? '', 'newPassword');
    // The new password and the end of the other sessions are one change, one transaction in the
    // repository: a failure between two writes would leave the new password in effect and the
    // old one's sessions alive. Once it starts, a client that leaves (or a deadline that passes)
    // cannot stop it. It is written only over the hash the current password was compared with: of
    // two changes racing with the same current password, the second would otherwise answer 200
    // with the first one's password in effect (and the first one's caller holding the only live
    // session). Two hashes may have waited their turns: an account suspended or a session ended
    // meanwhile gets no new password (the write is authorized again, see ActingAs).
    const write = { changes: { passwordHash }, expected: { passwordHash: user.passwordHash, version: expectedVersion } };
    // How many other sessions it ended is the write's to say (SESSIONS_ENDED_DETAIL).
    const event = { type: 'PASSWORD_CHANGED', userId, actorId: actor.userId, ...clientFields(client), details: { [SESSIONS_ENDED_DETAIL]: 0 } } as const;
    const madeMeanwhile = await uninterrupted(() =>
      this.#audit
        .withWrite(event, (audit) => this.#tokens.revokeAllWithUserWrite(userId, actor.sessionId, write, { ...actingAs(actor, false), audit }))
        .then(() => false)
        .catch(async (error: unknown) => {
          // Another password change that committed first ended this session too: it is answered as
          // the conflict it is, or, to a caller that named the version it read, as that version's
          // failed precondition (412 / aborted, as the write alone answers it; helper 136: a 409,
          // already_exists over RPC). An account deleted meanwhile is no such change (helper 87: a
          // false "changed meanwhile" answer and audit event); its session has simply ended.
          const ended = error instanceof AppError && error.code === 'AUTHENTICATION_ERROR';
          if (ended || isConflict(error) || (error instanceof AppError && error.code === 'PRECONDITION_FAILED')) {
            const now = await this.#users.findById(userId);
            const changed = now !== null && now.passwordHash !== user.passwordHash;
            // Unless that change was this one, made by the request this one retries: it was still
            // running, past its caller's deadline, when the retry read the old password, and
            // noted itself on committing. The retry is answered as made (helper 218: "nothing
            // was changed", while the new password asked for was in force).
            if (changed && (await this.#madeByNotedChange(userId, actor.familyId, now.passwordHash, input.newPassword))) return true;
            if (ended && changed)
              error = expectedVersion === undefined ? new ConflictError('The password was changed meanwhile; nothing was changed') : new PreconditionFailedError();
          }
          // Lost to a change that committed first, whether the write was held to the password
          // compared or to the version the caller named: audited either way (helper 124: a
          // version's loss left no trace of a right password compared).
          if (isConflict(error) || (error instanceof AppError && error.code === 'PRECONDITION_FAILED')) failed('changed_meanwhile');
          // Any other failure may have come after the write committed (a deadline that passed
          // between layers, a reply lost): noted, as a change that commits for a request out of
          // time is below. A note of a change that never committed names a hash nobody has.
          else await this.#noteChangeInDoubt(changeInDoubtKey(userId, actor.familyId, passwordHash));
          throw error;
        }),
    );
    if (!madeMeanwhile && requestOutOfTime() !== undefined) await this.#noteChangeInDoubt(changeInDoubtKey(userId, actor.familyId, passwordHash));
  }

  /**
   * Whether the account's password, `hash`, was set by a change this session's login chain made
   * without its answer surely reaching it (noted, see #noteChangeInDoubt) to `newPassword`: the
   * retry of that change. Once: the note answers the retry, not every later question "is this the
   * password?" from that session, which would be answered without a trace (helper 190). The new
   * password is compared only when such a change is noted, so a wrong guess costs no second
   * comparison.
   */
  async #madeByNotedChange(userId: number, familyId: string, hash: string, newPassword: string | undefined): Promise<boolean> {
    const noted = changeInDoubtKey(userId, familyId, hash);
    if (!(await this.#changeInDoubt(noted)) || !(await this.#passwords.verify(newPassword ?? '', hash))) return false;
    await this.#counters?.delete(noted).catch(() => undefined);
    return true;
  }

  /** Notes a change whose answer may have been lost (changeInDoubtKey; uninterrupted, as the write itself). */
  async #noteChangeInDoubt(key: string): Promise<void> {
    const counters = this.#counters;
    if (counters === undefined) return;
    await uninterrupted(() => counters.increment(key, CHANGE_IN_DOUBT_MS)).catch(() => undefined);
  }

  /** Whether a change is noted under `key` (changeInDoubtKey): the session's login chain made the account's current password. */
  async #changeInDoubt(key: string): Promise<boolean> {
    if (this.#counters === undefined) return false;
    return (await this.#counters.peek(key).catch(() => ({ count: 0 }))).count > 0;
  }

  /**
   * Marks the user verified in one conditional write (WHERE is_verified = false): of concurrent
   * verifications exactly one succeeds, the others are conflicts.
   */
  async verify(actor: Actor, userId: number, expectedVersion?: number): Promise<User> {
    requireAdmin(actor);
    const verified = { type: 'USER_VERIFIED', userId, actorId: actor.userId, ...clientFields(actor.client ?? {}) } as const;
    const row = await this.#audit.withWrite(verified, (audit) =>
      this.#users.update(userId, { isVerified: true }, { isVerified: false, version: expectedVersion }, { ...actingAs(actor, true), audit }),
    );
    return toUserMessage(row);
  }

  /**
   * Sets the status; any status but ACTIVE ends the user's sessions at once. The write is
   * conditional on the status read, so the audit's from/to are what happened; the repository
   * refuses it when it would leave no active administrator.
   */
  async updateStatus(actor: Actor, userId: number, status: UserStatus, expectedVersion?: number): Promise<User> {
    requireAdmin(actor);
    const stored = statusFromProto(status);
    const before = await this.#existing(userId);
    // A suspension and the end of the user's sessions are one change, one transaction (see
    // changePassword): a suspension written without it left the sessions to come back with the
    // account's reactivation.
    const write = { changes: { status: stored, isActive: stored === 'ACTIVE' }, expected: { status: before.status, version: expectedVersion } };
    const event = before.status === stored ? undefined : ({ type: 'STATUS_CHANGED', userId, actorId: actor.userId, details: { from: before.status, to: stored } } as const);
    const written = await uninterrupted(() =>
      this.#audit.withWrite(event, async (audit) =>
        status === UserStatus.ACTIVE
          ? this.#users.update(userId, write.changes, write.expected, { ...actingAs(actor, true), audit })
          : (await this.#tokens.revokeAllWithUserWrite(userId, undefined, write, { ...actingAs(actor, true), audit })).user,
      ),
    ).catch((error: unknown) => this.#inPlaceAfterConflict(error, userId, expectedVersion, (now) => now.status === stored));
    return toUserMessage(written);
  }

  /**
   * Sets the role, conditional on the role read (so the audit's from/to are true) and refused
   * when it would leave no active administrator. Sessions are kept: every request reads the
   * role afresh from the user's profile, whose cached copy the write drops, so the user's
   * existing tokens act with the new role at once.
   */
  async updateRole(actor: Actor, input: MessageInitShape<typeof UpdateUserRoleRequestSchema>): Promise<User> {
    requireAdmin(actor);
    const userId = input.userId ?? 0;
    const role = roleFromProto(input.role ?? UserRole.UNSPECIFIED);
    const before = await this.#existing(userId);
    const event =
      before.role === role
        ? undefined
        : ({ type: 'ROLE_CHANGED', userId, actorId: actor.userId, ...clientFields(actor.client ?? {}), details: { from: before.role, to: role } } as const);
    const written = await this.#audit
      .withWrite(event, (audit) => this.#users.update(userId, { role }, { role: before.role, version: input.expectedVersion }, { ...actingAs(actor, true), audit }))
      .catch((error: unknown) => this.#inPlaceAfterConflict(error, userId, input.expectedVersion, (now) => now.role === role));
    return toUserMessage(written);
  }

  /** Lifts the user's login lockouts; returns how many client addresses had tried the account. */
  async clearLoginFailures(actor: Actor, userId: number): Promise<number> {
    requireAdmin(actor);
    const user = await this.#existing(userId);
    // The account's counters (one per client address that tried it), and those of its names.
    const cleared = await this.#throttle.clear(accountKey(userId));
    await this.#throttle.clear(loginKey(user.username));
    await this.#throttle.clear(loginKey(user.email));
    this.#audit.record({ type: 'LOGIN_FAILURES_CLEARED', userId, actorId: actor.userId, details: { cleared } });
    return cleared;
  }

  /**
   * A conditional write of a role or status that lost to a concurrent one: when the other write
   * set the same value (two administrators suspending one user at once), this request's change
   * is in place too, so it succeeds with the row as it is, audited once, by the write that made
   * it (this one's event went with its rolled-back transaction). Otherwise, or when the caller
   * named a version, the conflict stands.
   */
  async #inPlaceAfterConflict(error: unknown, userId: number, expectedVersion: number | undefined, inPlace: (row: UserProfile) => boolean): Promise<UserProfile> {
    if (!isConflict(error) || expectedVersion !== undefined) throw error;
    const now = await this.#users.findProfile(userId);
    if (now === null || !inPlace(now)) throw error;
    return now;
  }

  /** The user's row as the database holds it now, past this request's and the shared cache's reads. */
  async #current(userId: number): Promise<UserProfile> {
    const user = await this.#users.findById(userId);
    if (user === null) throw new NotFoundError('User not found');
    const { passwordHash: _hash, ...profile } = user;
    return profile;
  }

  async #existing(userId: number) {
    const user = await this.#users.findProfile(userId);
    if (user === null) throw new NotFoundError('User not found');
    return user;
  }
}

/** A ConflictError, also as it arrives from a repository in another process (an AppError by code). */
const isConflict = (error: unknown): boolean => error instanceof AppError && error.code === 'CONFLICT';

/** Reads and conditional writes a profile edit makes before it gives up to other writes (409). */
const PROFILE_WRITE_ATTEMPTS = 3;

/** The profile fields an update may change, by name: what USER_UPDATED lists. */
const PROFILE_FIELDS = ['email', 'firstName', 'lastName', 'phone', 'avatarUrl'] as const;
