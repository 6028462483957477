import { create, type MessageInitShape } from '@bufbuild/protobuf';
import { timestampFromDate } from '@bufbuild/protobuf/wkt';
import { randomUUID } from 'node:crypto';
import type { OAuthToken, User as UserRow } from '../../gen/prisma/client.ts';
import {
  SessionSchema,
  TokenPairSchema,
  type LoginRequestSchema,
  type RegisterRequestSchema,
  type Session,
  type TokenPair,
} from '../../gen/proto/arcana/auth/v1/auth_service_pb.js';
import type { User } from '../../gen/proto/arcana/user/v1/user_pb.js';
import type { Actor, ClientInfo } from '../domain/actor.ts';
import { AuthenticationError } from '../domain/errors.ts';
import { roleToProto, toUserMessage } from '../domain/user-mapping.ts';
import type { PasswordHasher } from '../infrastructure/security/password-hasher.ts';
import { hashToken, type TokenCodec } from '../infrastructure/security/token-codec.ts';
import type { TokenRepository } from '../repositories/token-repository.ts';
import type { AuditLog } from './audit-use-cases.ts';
import { createAccount } from './accounts.ts';
import { accountKey, type LoginThrottle } from './login-throttle.ts';
import type { UserRepository } from '../repositories/user-repository.ts';

export interface AuthResult {
  user: User;
  tokens: TokenPair;
}

/**
 * The auth operations the facades call. REST and RPC hold this interface, not the class, so a
 * remote implementation can stand in for the in-process one.
 */
export interface AuthService {
  register(input: MessageInitShape<typeof RegisterRequestSchema>, client: ClientInfo): Promise<AuthResult>;
  login(input: MessageInitShape<typeof LoginRequestSchema>, client: ClientInfo): Promise<AuthResult>;
  authenticate(accessToken: string): Promise<Actor>;
  logout(actor: Actor): Promise<void>;
  refresh(refreshToken: string, client: ClientInfo): Promise<TokenPair>;
  currentUser(actor: Actor): Promise<User>;
  listSessions(actor: Actor): Promise<Session[]>;
  revokeAll(actor: Actor): Promise<number>;
}

/** One message for every login failure, so the answer does not reveal whether the user exists. */
const INVALID_CREDENTIALS = 'Invalid credentials';

/** Registration, login and the lifecycle of sessions (token pairs). */
export class AuthUseCases implements AuthService {
  readonly #users: UserRepository;
  readonly #tokens: TokenRepository;
  readonly #passwords: PasswordHasher;
  readonly #codec: TokenCodec;
  readonly #throttle: LoginThrottle;
  readonly #audit: AuditLog;
  readonly #now: () => Date;

  constructor(deps: {
    users: UserRepository;
    tokens: TokenRepository;
    passwords: PasswordHasher;
    codec: TokenCodec;
    throttle: LoginThrottle;
    audit: AuditLog;
    now?: () => Date;
  }) {
    this.#audit = deps.audit;
    this.#users = deps.users;
    this.#tokens = deps.tokens;
    this.#passwords = deps.passwords;
    this.#codec = deps.codec;
    this.#throttle = deps.throttle;
    this.#now = deps.now ?? (() => new Date());
  }

  /** Creates a USER account and opens its first session. */
  async register(input: MessageInitShape<typeof RegisterRequestSchema>, client: ClientInfo): Promise<AuthResult> {
    const row = await createAccount({ users: this.#users, passwords: this.#passwords }, { ...input, role: 'USER' });
    const tokens = await this.#openSession(row, client);
    return { user: toUserMessage(row), tokens };
  }

  /**
   * Checks credentials and opens a session. Unknown user, wrong password, inactive account and a
   * throttled login (see LoginThrottle) give the same error after the same bcrypt work.
   */
  async login(input: MessageInitShape<typeof LoginRequestSchema>, client: ClientInfo): Promise<AuthResult> {
    const login = input.usernameOrEmail ?? '';
    const row = await this.#users.findByLogin(login.includes('@') ? login.toLowerCase() : login);
    const account = accountKey(row?.id, login);
    const admitted = await this.#throttle.admit(account, client.ipAddress);
    const passwordMatches = await this.#passwords.verify(input.password ?? '', row?.passwordHash);
    if (!admitted || row === null || !passwordMatches || row.status !== 'ACTIVE') {
      if (admitted) await this.#throttle.recordFailure(account, client.ipAddress);
      // The attempted login is not recorded: people type passwords into the username field.
      const reason = !admitted ? 'throttled' : row === null ? 'unknown_user' : !passwordMatches ? 'wrong_password' : 'inactive';
      this.#audit.record({ type: 'LOGIN_FAILED', ...(row === null ? {} : { userId: row.id }), ...clientFields(client), details: { reason } });
      throw new AuthenticationError(INVALID_CREDENTIALS);
    }
    await this.#throttle.recordSuccess(account, client.ipAddress);
    this.#audit.record({ type: 'LOGIN_SUCCEEDED', userId: row.id, ...clientFields(client) });
    const tokens = await this.#openSession(row, client);
    const now = this.#now();
    await this.#users.recordLogin(row.id, now);
    return { user: toUserMessage({ ...row, lastLoginAt: now }), tokens };
  }

  /**
   * Resolves an access token to its caller. Rejects tokens that are forged, expired, of the wrong
   * type, revoked (logout, rotation, revoke-all) or whose user is no longer active.
   */
  async authenticate(accessToken: string): Promise<Actor> {
    this.#codec.verify(accessToken, 'access');
    const session = await this.#tokens.findByAccessHash(hashToken(accessToken));
    if (session === null || session.isRevoked) throw new AuthenticationError('Token has been revoked');
    if (session.accessExpiresAt <= this.#now()) throw new AuthenticationError('Invalid or expired access token');
    const user = await this.#users.findProfile(session.userId);
    if (user === null) throw new AuthenticationError('Token has been revoked');
    if (user.status !== 'ACTIVE') throw new AuthenticationError('Account is not active');
    return { userId: session.userId, role: roleToProto(user.role), sessionId: session.id };
  }

  /** Ends the caller's current session. */
  async logout(actor: Actor): Promise<void> {
    await this.#tokens.revoke(actor.sessionId);
    this.#audit.record({ type: 'LOGOUT', userId: actor.userId, details: { sessionId: actor.sessionId } });
  }

  /**
   * Rotates a token pair. Presenting a refresh token that was already rotated or revoked is
   * treated as theft: the whole chain descended from its login is revoked (RFC 9700 §4.14.2).
   */
  async refresh(refreshToken: string, client: ClientInfo): Promise<TokenPair> {
    this.#codec.verify(refreshToken, 'refresh');
    const previous = await this.#tokens.findByRefreshHash(hashToken(refreshToken));
    if (previous === null) throw new AuthenticationError('Invalid or expired refresh token');
    if (previous.isRevoked) return this.#replayed(previous, client);
    if (previous.expiresAt <= this.#now()) throw new AuthenticationError('Invalid or expired refresh token');

    const user = await this.#users.findById(previous.userId);
    if (user === null || user.status !== 'ACTIVE') {
      await this.#tokens.revoke(previous.id);
      throw new AuthenticationError('Account is not active');
    }
    const issued = this.#codec.issuePair(user.id, this.#now());
    const next = await this.#tokens.rotate(previous, {
      userId: user.id,
      familyId: previous.familyId,
      accessTokenHash: issued.accessTokenHash,
      refreshTokenHash: issued.refreshTokenHash,
      accessExpiresAt: issued.accessExpiresAt,
      expiresAt: issued.refreshExpiresAt,
      ipAddress: client.ipAddress ?? previous.ipAddress,
      userAgent: client.userAgent ?? previous.userAgent,
      clientName: previous.clientName,
    });
    // Another request rotated this token between our read and our write: also a replay.
    if (next === null) return this.#replayed(previous, client);
    return this.#tokenPair(issued.accessToken, issued.refreshToken);
  }

  async currentUser(actor: Actor): Promise<User> {
    const row = await this.#users.findProfile(actor.userId);
    if (row === null) throw new AuthenticationError('Token has been revoked');
    return toUserMessage(row);
  }

  /** The caller's live sessions, newest first, the current one marked. */
  async listSessions(actor: Actor): Promise<Session[]> {
    const rows = await this.#tokens.listActive(actor.userId, this.#now());
    return rows.map((row) => toSessionMessage(row, actor.sessionId));
  }

  /** Ends every live session of the caller, the current one included; returns how many. */
  async revokeAll(actor: Actor): Promise<number> {
    const count = (await this.#tokens.revokeAllForUser(actor.userId)).length;
    this.#audit.record({ type: 'TOKENS_REVOKED', userId: actor.userId, details: { count } });
    return count;
  }

  async #replayed(token: OAuthToken, client: ClientInfo): Promise<never> {
    const revoked = await this.#tokens.revokeFamily(token.familyId);
    this.#audit.record({
      type: 'TOKEN_REUSE_DETECTED',
      userId: token.userId,
      ...clientFields(client),
      details: { familyId: token.familyId, revoked: revoked.length },
    });
    throw new AuthenticationError('Refresh token has already been used; the session has been revoked');
  }

  async #openSession(user: UserRow, client: ClientInfo): Promise<TokenPair> {
    const issued = this.#codec.issuePair(user.id, this.#now());
    await this.#tokens.create({
      userId: user.id,
      familyId: randomUUID(),
      accessTokenHash: issued.accessTokenHash,
      refreshTokenHash: issued.refreshTokenHash,
      accessExpiresAt: issued.accessExpiresAt,
      expiresAt: issued.refreshExpiresAt,
      ipAddress: truncate(client.ipAddress, 45),
      userAgent: truncate(client.userAgent, 500),
      clientName: null,
    });
    return this.#tokenPair(issued.accessToken, issued.refreshToken);
  }

  #tokenPair(accessToken: string, refreshToken: string): TokenPair {
    return create(TokenPairSchema, {
      accessToken,
      refreshToken,
      expiresIn: this.#codec.accessTtlSeconds,
      tokenType: 'Bearer',
    });
  }
}

function toSessionMessage(row: OAuthToken, currentId: number): Session {
  return create(SessionSchema, {
    id: row.id,
    tokenType: row.tokenType,
    ...(row.clientName === null ? {} : { clientName: row.clientName }),
    ...(row.ipAddress === null ? {} : { ipAddress: row.ipAddress }),
    ...(row.userAgent === null ? {} : { userAgent: row.userAgent }),
    createdAt: timestampFromDate(row.createdAt),
    expiresAt: timestampFromDate(row.expiresAt),
    current: row.id === currentId,
  });
}

function clientFields(client: ClientInfo): { ipAddress?: string; userAgent?: string } {
  return {
    ...(client.ipAddress === undefined ? {} : { ipAddress: client.ipAddress.slice(0, 45) }),
    ...(client.userAgent === undefined ? {} : { userAgent: client.userAgent.slice(0, 500) }),
  };
}

function truncate(value: string | undefined, max: number): string | null {
  return value === undefined ? null : value.slice(0, max);
}
