import { create, fromBinary, toBinary, type MessageInitShape } from '@bufbuild/protobuf';
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import type { OAuthToken, User as UserRow } from '../../gen/prisma/client.ts';
import { RegisterRequestSchema, SessionSchema, TokenPairSchema, type LoginRequestSchema, type Session, type TokenPair } from '../../gen/proto/arcana/auth/v1/auth_service_pb.js';
import { StoredRegistrationSchema } from '../../gen/proto/arcana/internal/service/v1/stored_answers_pb.js';
import type { User } from '../../gen/proto/arcana/user/v1/user_pb.js';
import { USER_AGENT_MAX_LENGTH, type Actor, type ClientInfo } from '../domain/actor.ts';
import { AuthenticationError, ConflictError, InvalidTokenError, NotFoundError, UnavailableError } from '../domain/errors.ts';
import { rowMapping } from '../domain/message-mapping.ts';
import { actingAs, requireAdmin } from './access.ts';
import { roleToProto, toUserMessage } from '../domain/user-mapping.ts';
import { addressKey } from '../infrastructure/client-address.ts';
import type { DeviceTokens } from '../infrastructure/security/device-tokens.ts';
import type { PasswordHasher } from '../infrastructure/security/password-hasher.ts';
import { hashToken, type TokenClaims, type TokenCodec } from '../infrastructure/security/token-codec.ts';
import type { AuditRepository } from '../repositories/audit-repository.ts';
import type { TokenRepository } from '../repositories/token-repository.ts';
import { SESSIONS_REVOKED_DETAIL } from '../repositories/write-options.ts';
import { clientFields, type AuditLog } from './audit-use-cases.ts';
import { newAccountRow, storedEmail } from './accounts.ts';
import { currentWorkLimits, requestOutOfTime, uninterrupted } from '../infrastructure/call-context.ts';
import { canonicalRequest, IDEMPOTENCY_WINDOW_MS, type AnswerCodec, type IdempotentRequests } from './idempotency.ts';
import type { LoginThrottle } from './login-throttle.ts';
import type { CounterStore } from '../infrastructure/rate-limiter.ts';
import type { UserRepository } from '../repositories/user-repository.ts';

export interface AuthResult {
  user: User;
  tokens: TokenPair;
  /** A known-device token for the client to present at its next logins (see DeviceTokens). */
  deviceToken?: string | undefined;
}

/** A registration's answer as kept for replays: arcana.internal.service.v1.StoredRegistration. */
const REGISTRATION_ANSWER: AnswerCodec<AuthResult> = {
  encode: (result) => toBinary(StoredRegistrationSchema, create(StoredRegistrationSchema, result)),
  decode: (bytes) => {
    const { user, tokens, deviceToken } = fromBinary(StoredRegistrationSchema, bytes);
    if (user === undefined || tokens === undefined) throw new Error('a stored registration answer lacks its user or tokens');
    return { user, tokens, deviceToken };
  },
};

/** One message for every login failure, so the answer does not reveal whether the user exists. */
const INVALID_CREDENTIALS = 'Invalid credentials';
/** Pauses between attempts to discard a half-registered account while the database is busy. */
const DISCARD_RETRY_PAUSES_MS = [250, 1_000];

/** Login chains one login ends at most, beyond SESSIONS_PER_USER_MAX. */
const PRUNED_PER_LOGIN = 100;

/** How long a refresh answered 503 with its rotation's outcome unknown may be retried as such. */
const REFRESH_IN_DOUBT_MS = 5 * 60_000;
/**
 * A refresh in doubt: the token its client presented and the pair its rotation made, together (a
 * note of either alone let another rotated token of the chain use another refresh's pair: helper 106).
 */
const inDoubtKey = (presentedHash: string, madeHash: string) => `refresh-in-doubt:${presentedHash}:${madeHash}`;

/** Registration, login and the lifecycle of sessions (token pairs). */
export class AuthUseCases {
  readonly #users: UserRepository;
  readonly #tokens: TokenRepository;
  readonly #passwords: PasswordHasher;
  readonly #codec: TokenCodec;
  readonly #throttle: LoginThrottle;
  readonly #devices: DeviceTokens;
  readonly #audit: AuditLog;
  readonly #idempotency: IdempotentRequests;
  readonly #sessionLifetimeMs: number;
  readonly #sessionsPerUser: number;
  readonly #counters: CounterStore | undefined;
  readonly #auditEvents: Pick<AuditRepository, 'list'>;
  readonly #now: () => Date;

  constructor(deps: {
    users: UserRepository;
    tokens: TokenRepository;
    passwords: PasswordHasher;
    codec: TokenCodec;
    throttle: LoginThrottle;
    devices: DeviceTokens;
    audit: AuditLog;
    idempotency: IdempotentRequests;
    /** The absolute lifetime of a login chain, however often it is refreshed. */
    sessionLifetimeSeconds: number;
    /** Live sessions a user may hold; a login past it ends the oldest (100 when not given). */
    sessionsPerUser?: number;
    /** Where a refresh whose rotation's outcome is unknown is noted, shared by the processes. */
    counters?: CounterStore;
    /** The audit log as stored: whether an account was made by an administrator (see #resumeRegistration). */
    auditEvents: Pick<AuditRepository, 'list'>;
    now?: () => Date;
  }) {
    this.#audit = deps.audit;
    this.#auditEvents = deps.auditEvents;
    this.#idempotency = deps.idempotency;
    this.#users = deps.users;
    this.#tokens = deps.tokens;
    this.#passwords = deps.passwords;
    this.#codec = deps.codec;
    this.#throttle = deps.throttle;
    this.#devices = deps.devices;
    this.#sessionLifetimeMs = deps.sessionLifetimeSeconds * 1000;
    this.#sessionsPerUser = deps.sessionsPerUser ?? 100;
    this.#counters = deps.counters;
    this.#now = deps.now ?? (() => new Date());
  }

  /**
   * Creates a USER account and opens its first session. Called with an Idempotency-Key, a retry
   * of the same registration gets this answer again (see IdempotentRequests); registration is
   * anonymous, so every client's keys share one scope.
   */
  async register(input: MessageInitShape<typeof RegisterRequestSchema>, client: ClientInfo): Promise<AuthResult> {
    // A replay gives out the first answer's session: only while the account is still active with
    // the password the request sets. Else whoever held the old password and the key (a captured
    // request) got the owner's current session back, for a day after a password change.
    const replayable = async (answer: AuthResult) => {
      const row = await this.#users.findById(answer.user.id);
      const current = row !== null && row.status === 'ACTIVE' && (await this.#passwords.verify(input.password ?? '', row.passwordHash));
      if (!current) throw new ConflictError('The account this registration created has changed since; please log in');
      // And only while its session lives: after a logout, a refresh (which rotates the pair) or
      // the end of the session, the replay handed out the first answer's tokens, both refused at
      // their first use, as a success (helper 201).
      const session = await this.#tokens.findByAccessHash(hashToken(answer.tokens.accessToken));
      if (session === null || session.isRevoked || session.expiresAt <= this.#now()) {
        throw new ConflictError('The session this registration opened has ended since; please log in');
      }
    };
    const operation = {
      scope: 'register',
      // As the request is carried out (see UserUseCases.create): the password in NFC, the e-mail
      // lower-cased, so a retry that spells either differently replays (helper 144).
      request: canonicalRequest(RegisterRequestSchema, { ...input, email: storedEmail(input.email), password: (input.password ?? '').normalize('NFC') }),
      answer: REGISTRATION_ANSWER,
      replayable,
    };
    return this.#idempotency.run(operation, async () => {
      let account;
      try {
        account = await newAccountRow({ users: this.#users, passwords: this.#passwords }, { ...input, role: 'USER' });
      } catch (error) {
        const resumed = error instanceof ConflictError ? await this.#resumeRegistration(input, client) : undefined;
        if (resumed === undefined) throw error;
        return resumed;
      }
      // The first write is the point of no return. A caller gone by then (its connection cut
      // while bcrypt ran, by a shutdown say) gets no account it would never hear of.
      if (currentWorkLimits().signal?.aborted === true) throw new UnavailableError('The request was abandoned before its account was created');
      // The account and its first session are stored together, whoever leaves meanwhile.
      return uninterrupted(async () => {
        const row = await this.#users.create(account);
        const tokens = await this.#openSession(row, client).catch(async (error: unknown) => {
          // The answer will say "try again": the account must not stay behind to refuse the
          // retry as "already exists".
          await this.#discardNewAccount(row);
          throw error;
        });
        // Only an administrator's change to the account in the instant since it was created.
        if (tokens === null) throw new ConflictError('The account changed while it was being created; please log in');
        return { user: toUserMessage(row), tokens, deviceToken: this.#devices.issue(row.id, row.passwordHash) };
      });
    });
  }

  /**
   * Checks credentials and opens a session. Unknown user, wrong password and inactive account
   * give the same error after the same bcrypt work. The attempt first reserves its slot with the
   * LoginThrottle; a throttled attempt is refused with the same error before any comparison
   * (lockouts apply to unknown logins alike, so the refusal says nothing about the account).
   */
  async login(input: MessageInitShape<typeof LoginRequestSchema>, client: ClientInfo): Promise<AuthResult> {
    // A login whose comparison the hash gate would refuse is refused before its lookups and
    // counters: under overload each refusal cost a database lookup and the throttle's Redis round
    // trips, which slowed the hashing and so refused more (a split topology's goodput fell to half
    // under 50 clients that retry at once). The same for every name, so it says nothing of one.
    // A known device's login waits in a lane of its own, which only its lookup can tell; a device
    // token is taken for one only when this server signed it, or any header would skip the check.
    const token = client.deviceToken;
    const claimed = this.#devices.claim(token);
    if (!claimed) this.#passwords.precheck();
    const login = input.usernameOrEmail ?? '';
    let row;
    try {
      row = await this.#users.findByLogin(login);
    } catch (error) {
      if (claimed) this.#devices.settle(token, true);
      throw error;
    }
    const device = row === null ? undefined : this.#devices.verify(token, row.id, row.passwordHash);
    // A token of ours that does not hold for this login (one's own account's, sent with logins to
    // any name: helper 105) is refused as a stranger's from here on, and vouches no more.
    if (claimed) {
      this.#devices.settle(token, device !== undefined);
      if (device === undefined) this.#passwords.precheck();
    }
    const attempt = await this.#throttle.admit({ name: login, userId: row?.id, address: addressKey(client.ipAddress), device });
    // The attempted login is not recorded: people type passwords into the username field.
    const audited = (reason: string) =>
      this.#audit.record({
        type: 'LOGIN_FAILED',
        ...(row === null ? {} : { userId: row.id }),
        ...clientFields(client),
        details: { reason, knownDevice: device !== undefined },
      });
    const failed = (reason: string) => {
      audited(reason);
      return new AuthenticationError(INVALID_CREDENTIALS);
    };
    if (!attempt.admitted) {
      // Refused by the account's counters alone: answered after a comparison, as a wrong password
      // is, so that the refusal does not tell which other name of the account was guessed at.
      if (attempt.byAccount) {
        await this.#passwords.verify(input.password ?? '', undefined).catch(async (error: unknown) => {
          await attempt.abandoned();
          throw error;
        });
      }
      throw failed('throttled');
    }
    // A known device's login waits in the hash gate's priority lane: a crowd of guesses from any
    // number of addresses filled the common queue and shut the owner out for as long as it lasted
    // (helper 98). Only the account's own client can present a device token for it; accounts take
    // turns there, so an attacker's own account, its token replayed from many addresses, does not
    // shut out another's owner (helper 99).
    const lane = device === undefined || row === null ? {} : { priority: true, key: `user:${row.id}` };
    const passwordMatches = await this.#passwords.verify(input.password ?? '', row?.passwordHash, lane).catch(async (error: unknown) => {
      await attempt.abandoned();
      throw error;
    });
    if (row === null) throw failed('unknown_user');
    if (!passwordMatches) throw failed('wrong_password');
    if (row.status !== 'ACTIVE') throw failed('inactive');
    // Stored only if the password just compared is still the account's and the account still
    // active: a password change or suspension that committed meanwhile has ended every session.
    // The login's point of no return: a login out of time opens no session, and one that starts
    // to store its session goes on to count its success and bound the user's sessions, however
    // the request ends meanwhile (`uninterrupted`). Between layers a session committed after the
    // deadline, while the login, told its call had failed, audited "unavailable", gave its
    // throttle slot back and left the user over the bound (helper 187).
    const now = this.#now();
    const opening = () =>
      requestOutOfTime() === undefined
        ? uninterrupted(() => this.#openSession(row, client, now))
        : Promise.reject(new UnavailableError('The request ran out of time before its session was opened', undefined, 1));
    const tokens = await opening().catch(async (error: unknown) => {
      // Not a guess that failed: the server could not finish (the database overloaded, say), and
      // the slot goes back. The right password was given, though, and the client told so by the
      // 503 where a wrong one is a 401: recorded, so that checking stolen credentials while the
      // database struggles leaves a trace (helper 178: nothing was audited).
      audited('unavailable');
      await attempt.abandoned();
      throw error;
    });
    if (tokens === null) throw failed('changed_meanwhile');
    // One event for the request, the sessions it ended included: a login past the bound used to
    // record TOKENS_REVOKED beside it, two rows a request where the README promises one, so that
    // the per-address rate limit bounds how fast a client grows the log (helper 121).
    const superseded = await uninterrupted(async () => {
      await attempt.succeeded();
      return this.#endSessionsBeyondLimit(row.id, now);
    });
    this.#audit.record({
      type: 'LOGIN_SUCCEEDED',
      userId: row.id,
      ...clientFields(client),
      details: { knownDevice: device !== undefined, ...(superseded > 0 ? { supersededSessions: superseded } : {}) },
    });
    // The login's own write moved the version on (lastLoginAt), and a new hash moves it again: the
    // answer carries the version stored, which a client names in If-Match / expected_version
    // (helper 136: it carried the one read before, so a write made with it was always refused).
    const { passwordHash, version } = await this.#upgradedHash({ ...row, version: row.version + 1 }, input.password ?? '');
    return { user: toUserMessage({ ...row, lastLoginAt: now, version }), tokens, deviceToken: this.#devices.issue(row.id, passwordHash, device) };
  }

  /**
   * The account's hash after a login whose password matched it: made again at the current cost
   * when BCRYPT_ROUNDS was raised since it was made, so that a stolen table holds no hash cheaper
   * to crack than the deployment asks (helper 111: nothing ever brought old hashes up), or lowered
   * (helper 172: every comparison is padded to the costliest hash compared, see
   * PasswordHasher.verify, so old hashes kept logins as slow as before the change). Written
   * only over the hash just compared (a password change meanwhile wins); the sessions stay, and
   * the account's device tokens, which cover the hash, count as none until their next login.
   * A failure to write it costs the login nothing. Returns the hash and the version the row has after it.
   */
  async #upgradedHash(row: { id: number; passwordHash: string; version: number }, password: string): Promise<{ passwordHash: string; version: number }> {
    const kept = { passwordHash: row.passwordHash, version: row.version };
    if (!this.#passwords.notAtCurrentCost(row.passwordHash)) return kept;
    try {
      const passwordHash = await this.#passwords.rehash(password);
      const written = await uninterrupted(() => this.#users.update(row.id, { passwordHash }, { passwordHash: row.passwordHash }));
      return { passwordHash, version: written.version };
    } catch {
      return kept;
    }
  }

  /**
   * Ends the oldest of the user's login chains beyond SESSIONS_PER_USER_MAX, once a login has
   * opened one. Unbounded, one account's sessions made a single ListTokens answer 74 MB (108 000
   * sessions, 4 s, the process from 385 MB to 1.15 GB; eight at once held /health up for seconds:
   * helper 72), and any client with the password could make them, a login at a time. A pile
   * from before the bound goes down by PRUNED_PER_LOGIN at each login. A failure here fails
   * nothing: the new session is stored, and the next login tries again. Returns how many chains
   * it ended, for the login's own audit event, which carries the address and agent of the login
   * that ended them (helper 73: an eviction named nobody).
   */
  async #endSessionsBeyondLimit(userId: number, now: Date): Promise<number> {
    let ended = 0;
    try {
      const live = await this.#tokens.listActive(userId, now);
      if (live.length <= this.#sessionsPerUser) return 0;
      // Newest first; a chain ranks by its newest pair.
      const chains = new Map<string, number[]>();
      for (const pair of live) chains.set(pair.familyId, [...(chains.get(pair.familyId) ?? []), pair.id]);
      // Each chain is ended by the pairs this login saw live: one refreshed since has moved on
      // from them, ranks newest now, and stays. Ended by family, a chain its holder refreshed
      // while logins pruned from their earlier views was ended too, and a user kept 1 or 2
      // sessions of 3 (helper 208).
      for (const pairs of [...chains.values()].slice(this.#sessionsPerUser, this.#sessionsPerUser + PRUNED_PER_LOGIN)) {
        let revoked = 0;
        for (const id of pairs) revoked += (await this.#tokens.revoke(id, 'superseded')).length;
        if (revoked > 0) ended += 1;
      }
    } catch {
      // Over the bound until the next login.
    }
    return ended;
  }

  /**
   * Resolves an access token to its caller. Rejects tokens that are forged, expired, of the wrong
   * type, revoked (logout, rotation, revoke-all) or whose user is no longer active, each as an
   * InvalidTokenError: the token was presented and refused.
   */
  async authenticate(accessToken: string): Promise<Actor> {
    return (await this.#resolve(accessToken, false)).actor;
  }

  /**
   * The caller of `accessToken` as authenticate finds it, or, with `replaced`, also the caller of a
   * token whose pair a refresh has since replaced (revoked as rotated, still unexpired): its
   * session lives on in the new pair.
   */
  async #resolve(accessToken: string, replaced: boolean): Promise<{ actor: Actor; rotatedAway: boolean }> {
    let claims;
    try {
      claims = this.#codec.verify(accessToken, 'access');
    } catch (error) {
      throw error instanceof AuthenticationError ? new InvalidTokenError(error.message) : error;
    }
    // The session and the user are read together (one round trip to the cache when both are
    // there): the token's subject names the user its session belongs to.
    const [session, subject] = await Promise.all([this.#tokens.findByAccessHash(claims.hash), this.#users.findProfile(claims.userId)]);
    if (session === null) throw new InvalidTokenError('Token has been revoked');
    const rotatedAway = replaced && session.isRevoked && session.revokedReason === 'rotated';
    if (session.isRevoked && !rotatedAway) throw new InvalidTokenError('Token has been revoked');
    if (session.accessExpiresAt <= this.#now()) throw new InvalidTokenError('Invalid or expired access token');
    const user = session.userId === claims.userId ? subject : await this.#users.findProfile(session.userId);
    if (user === null) throw new InvalidTokenError('Token has been revoked');
    if (user.status !== 'ACTIVE') throw new InvalidTokenError('Account is not active');
    return { actor: { userId: session.userId, role: roleToProto(user.role), sessionId: session.id, familyId: session.familyId, record: user }, rotatedAway };
  }

  /**
   * Ends the session of `accessToken`: its login chain, so that a refresh of the same session that
   * commits first (and moved it to a new pair) ends with it. The token of a pair a refresh has
   * replaced ends it too, while it is unexpired: the holder of the new pair (another tab, or a
   * thief who refreshed a stolen token) kept the session alive through a logout answered 401,
   * which left no trace (helper 224).
   */
  async logoutWith(accessToken: string): Promise<Actor> {
    const { actor, rotatedAway } = await this.#resolve(accessToken, true);
    if (!rotatedAway) {
      await this.logout(actor);
      return actor;
    }
    // Only a chain that still has a live pair: one that has ended was logged out of already.
    await this.#audit.withWrite(this.#logoutEvent(actor), async (audit) => {
      if ((await this.#tokens.revokeChainOf(actor.userId, actor.sessionId, 'logout', { audit })).length === 0) throw new InvalidTokenError('Token has been revoked');
    });
    return actor;
  }

  /**
   * Ends the caller's current session: its login chain, so that a refresh of the same session
   * that commits first (and moved it to a new pair) ends with it.
   */
  async logout(actor: Actor): Promise<void> {
    // The event commits with the revocation (WriteOptions.audit), as every session-ending write's
    // does: recorded after the write's answer, it was lost whenever that answer was (helper 187: a
    // logout that committed after its caller's deadline ended the session and left no LOGOUT).
    await this.#audit.withWrite(this.#logoutEvent(actor), (audit) => this.#tokens.revokeFamily(actor.familyId, 'logout', { audit }));
  }

  #logoutEvent(actor: Actor) {
    return { type: 'LOGOUT', userId: actor.userId, details: { sessionId: actor.sessionId } } as const;
  }

  /**
   * Rotates a token pair. Presenting a refresh token that was already rotated is treated as
   * theft: the whole chain descended from its login is revoked (RFC 9700 §4.14.2). A token whose
   * session simply ended (logout, revoke-all, an administrator's action) is refused without that
   * alarm. Each rotation slides the session's expiry forward, but never past the chain's absolute
   * end, set at login (ASVS 7.3.2).
   */
  async refresh(refreshToken: string, client: ClientInfo): Promise<TokenPair> {
    const claims = this.#codec.verify(refreshToken, 'refresh');
    const previous = await this.#tokens.findByRefreshHash(claims.hash);
    if (previous === null) return this.#unknownRefresh(claims, client);
    if (previous.isRevoked) {
      // Rows revoked before reasons were recorded count as rotated: the cautious reading.
      if (previous.revokedReason === 'rotated' || previous.revokedReason === null) {
        const resumed = await this.#resumeInDoubt(previous, client);
        return resumed ?? this.#replayed(previous, client);
      }
      throw new AuthenticationError('Session has ended; please log in again');
    }
    return this.#rotate(previous, client);
  }

  /**
   * Moves the chain on from `previous`, its live pair. A rotation whose answer did not come back
   * (a 503, a deadline that passed, a client that left: the COMMIT may have reached the database
   * with only its reply lost, or come after the request's end) is noted with the
   * refresh token the client presented (`presentedHash`: previous's own, or for the retry of such a
   * rotation the token that retry presented), so that the client's retry with that token is not
   * taken for a replay (helper 104: the retry revoked the whole session and raised the theft alarm).
   */
  async #rotate(previous: OAuthToken, client: ClientInfo, presentedHash = previous.refreshTokenHash): Promise<TokenPair> {
    const now = this.#now();
    if (previous.expiresAt <= now) throw new AuthenticationError('Invalid or expired refresh token');
    if (previous.familyExpiresAt <= now) {
      await this.#tokens.revoke(previous.id, 'expired_chain');
      throw new AuthenticationError('Session has reached its maximum lifetime; please log in again');
    }

    const user = await this.#users.findById(previous.userId);
    if (user?.status !== 'ACTIVE') {
      await this.#tokens.revoke(previous.id, 'revoked');
      throw new AuthenticationError('Account is not active');
    }
    const issued = this.#codec.issuePair(user.id, now, previous.familyExpiresAt, previous.familyId);
    let next;
    try {
      next = await this.#tokens.rotate(previous, {
        userId: user.id,
        familyId: previous.familyId,
        accessTokenHash: issued.accessTokenHash,
        refreshTokenHash: issued.refreshTokenHash,
        accessExpiresAt: issued.accessExpiresAt,
        expiresAt: issued.refreshExpiresAt,
        familyExpiresAt: previous.familyExpiresAt,
        ipAddress: truncate(client.ipAddress, 45) ?? previous.ipAddress,
        userAgent: truncate(client.userAgent, USER_AGENT_MAX_LENGTH) ?? previous.userAgent,
        clientName: previous.clientName,
      });
    } catch (error) {
      // Whatever the failure (a 503, the deadline passing between layers, the client gone), the
      // rotation may have committed without its answer. A note of one that did not is never
      // used: it names a pair that exists nowhere.
      await this.#noteInDoubt(presentedHash, issued.refreshTokenHash);
      throw error;
    }
    if (next === null) {
      // Between our read and our write, another request rotated this token (a replay), or its
      // session was ended (logout, revoke-all, an administrator), or its account deleted with its
      // sessions: only the first is theft. A deletion used to be reported as token reuse.
      const now = await this.#tokens.findByRefreshHash(previous.refreshTokenHash);
      if (now === null || (now.revokedReason !== 'rotated' && now.revokedReason !== null)) {
        throw new AuthenticationError('Session has ended; please log in again');
      }
      // The rotation that won may be this token's own, made by the request this one retries after
      // its deadline, still committing when this one read the token (noted in doubt, below).
      const resumed = presentedHash === previous.refreshTokenHash ? await this.#resumeInDoubt(previous, client) : undefined;
      return resumed ?? this.#replayed(previous, client);
    }
    // Committed for a request whose answer can reach nobody now (its deadline passed, or its client
    // left, while the rotation waited): the client still holds the token it presented, and its
    // retry is a retry, not a replay (helper 187: the retry ended the session as stolen). Only
    // then: a note made for an answer that is delivered (helper 220: any refresh sent with a
    // deadline under a second, when notes were made that close to it) let a thief's own refresh
    // silence the alarm the owner's copy would raise, or a stale copy take over an owner's chain.
    if (requestOutOfTime() !== undefined) await this.#noteInDoubt(presentedHash, issued.refreshTokenHash);
    return this.#tokenPair(issued.accessToken, issued.refreshToken, issued.accessTtlSeconds);
  }

  /**
   * Notes a rotation whose answer may not have reached its client (see #resumeInDoubt), whatever
   * has become of the request: a note made after its deadline was refused with it where the
   * counters live in the repository layer. A note that cannot be made leaves the retry a replay.
   */
  async #noteInDoubt(presentedHash: string, madeHash: string): Promise<void> {
    const counters = this.#counters;
    if (counters === undefined) return;
    await uninterrupted(() => counters.increment(inDoubtKey(presentedHash, madeHash), REFRESH_IN_DOUBT_MS)).catch(() => undefined);
  }

  async currentUser(actor: Actor): Promise<User> {
    const row = actor.record ?? (await this.#users.findProfile(actor.userId));
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
    // The write sets the event's count (SESSIONS_REVOKED_DETAIL) to what it revoked.
    const event = { type: 'TOKENS_REVOKED', userId: actor.userId, details: { [SESSIONS_REVOKED_DETAIL]: 0 } } as const;
    return (await this.#audit.withWrite(event, (audit) => this.#tokens.revokeAllForUser(actor.userId, undefined, 'revoked', { audit }))).length;
  }

  /** An administrator's view of a user's live sessions, newest first. */
  async listUserSessions(actor: Actor, userId: number): Promise<Session[]> {
    await this.#administeredUser(actor, userId);
    const rows = await this.#tokens.listActive(userId, this.#now());
    return rows.map((row) => toSessionMessage(row, actor.sessionId));
  }

  /**
   * Ends one live session of a user: the login chain of the listed pair `sessionId`, as logout
   * ends it. The id stays good after its holder refreshes (a refresh moves the chain to a new
   * pair); were only the live pair's id accepted, a thief refreshing often would make each end
   * miss. NotFoundError when the id is not the user's, or its chain has no live pair left.
   */
  async endUserSession(actor: Actor, userId: number, sessionId: number): Promise<void> {
    await this.#administeredUser(actor, userId);
    // Two administrators ending it at once: the second finds nothing left to revoke, and stores
    // no event (one is stored only with a revocation that revoked something).
    const event = { type: 'TOKENS_REVOKED', userId, actorId: actor.userId, details: { [SESSIONS_REVOKED_DETAIL]: 1, sessionId } } as const;
    await this.#audit.withWrite(event, async (audit) => {
      if ((await this.#tokens.revokeChainOf(userId, sessionId, 'revoked', { ...actingAs(actor, true), audit })).length === 0) throw new NotFoundError('Session not found');
    });
  }

  /** Ends every live session of a user; returns how many. */
  async endUserSessions(actor: Actor, userId: number): Promise<number> {
    await this.#administeredUser(actor, userId);
    const event = { type: 'TOKENS_REVOKED', userId, actorId: actor.userId, details: { [SESSIONS_REVOKED_DETAIL]: 0 } } as const;
    return (await this.#audit.withWrite(event, (audit) => this.#tokens.revokeAllForUser(userId, undefined, 'revoked', { ...actingAs(actor, true), audit }))).length;
  }

  /** ADMIN only, checked before any lookup; then the user must exist. */
  async #administeredUser(actor: Actor, userId: number): Promise<void> {
    requireAdmin(actor);
    if ((await this.#users.findProfile(userId)) === null) throw new NotFoundError('User not found');
  }

  /**
   * A refresh token we signed, unexpired, with no row. The purge removes a live chain's rotated
   * pairs but its newest (see TokenRepository.purgeStale), and nothing else of a live chain: so a
   * token naming a chain that still has a live pair is an old rotated one, presented again, and
   * ends the chain as any replay does. Without the claim (helper 73), a thief who refreshed a
   * stolen token past the kept pairs made the owner's copy merely unknown, and kept the chain.
   */
  async #unknownRefresh(claims: TokenClaims, client: ClientInfo): Promise<never> {
    // Only a chain of the token's own user, still live (helper 75: nothing else signs a `fam`, but
    // the claim is not trusted to name another user's chain).
    const familyId = claims.familyId;
    if (familyId !== undefined) {
      const live = (await this.#tokens.listActive(claims.userId, this.#now())).some((pair) => pair.familyId === familyId);
      // A chain already over raises the alarm too, once: a thief that refreshed past the 20 kept
      // pairs, let the purge remove the owner's, then logged out, left no alarm (helper 96).
      const { revoked, first } = await this.#endReplayedChain(familyId, claims.userId, live);
      if (revoked.length > 0 || first) {
        this.#audit.record({ type: 'TOKEN_REUSE_DETECTED', userId: claims.userId, ...clientFields(client), details: { familyId, revoked: revoked.length } });
        throw new AuthenticationError('Refresh token has already been used; the session has been revoked');
      }
    }
    throw new AuthenticationError('Invalid or expired refresh token');
  }

  /**
   * Ends a replayed chain (when `live`) and marks its rotated pairs replayed, `first` when none was
   * yet: the alarm's condition. Both writes, once a replay is found, are made whatever happens to
   * the request meanwhile (`uninterrupted`): a deadline or a client gone between the two ended the
   * chain with the owner's live pair and left the replayed pairs unmarked, so no alarm was raised,
   * then or at the next replay, and a thief ended the owner's session without a trace (helper 187).
   */
  #endReplayedChain(familyId: string, userId: number, live: boolean): Promise<{ revoked: string[]; first: boolean }> {
    return uninterrupted(async () => {
      const revoked = live ? await this.#tokens.revokeFamily(familyId, 'reuse') : [];
      return { revoked, first: await this.#tokens.markChainReplayed(familyId, userId) };
    });
  }

  /**
   * The retry of a refresh that was answered 503 while its rotation committed: the token it
   * presents was rotated by that very request, to a pair nobody was given. While that pair is the
   * chain's only live one (within REFRESH_IN_DOUBT_MS), the chain moves on from it instead of
   * ending; the rotation is conditional, so of retries at once one moves it and the others are
   * replays. Once it has moved (by this retry, or by anyone who holds that pair), the token is a
   * replay again. A thief who presents the token first takes the turn, and the owner's retry then
   * ends the chain as any replay does. Nothing is used up by a retry that fails: a database still
   * flapping leaves the note for the next (helper 106). Undefined when the token is not in doubt.
   */
  async #resumeInDoubt(previous: OAuthToken, client: ClientInfo): Promise<TokenPair | undefined> {
    const counters = this.#counters;
    if (counters === undefined) return undefined;
    const live = (await this.#tokens.listActive(previous.userId, this.#now())).filter((pair) => pair.familyId === previous.familyId);
    const [successor] = live;
    if (live.length !== 1 || successor === undefined) return undefined;
    try {
      if ((await counters.peek(inDoubtKey(previous.refreshTokenHash, successor.refreshTokenHash))).count === 0) return undefined;
    } catch {
      return undefined;
    }
    return this.#rotate(successor, client, previous.refreshTokenHash);
  }

  /**
   * A rotated token presented again: its chain ends, and the chain's first replay raises the
   * alarm, even when the chain was over already (a thief that refreshed, then logged out, before
   * the owner's copy came back: helper 94). Later replays raise none, of that token or any other
   * of the chain: every replay of one old token used to write another TOKEN_REUSE_DETECTED
   * (helper 91: 200 replays, 200 events, one theft).
   */
  async #replayed(token: OAuthToken, client: ClientInfo): Promise<never> {
    const { revoked, first } = await this.#endReplayedChain(token.familyId, token.userId, true);
    if (first) {
      this.#audit.record({
        type: 'TOKEN_REUSE_DETECTED',
        userId: token.userId,
        ...clientFields(client),
        details: { familyId: token.familyId, revoked: revoked.length },
      });
    }
    throw new AuthenticationError('Refresh token has already been used; the session has been revoked');
  }

  /**
   * The same registration sent again after one that stored its account but not its first
   * session: a layer stalled or died between the two writes, or the account's insert committed
   * after its caller had been told it failed. (They are not one transaction: the tokens name the
   * account's id, which only the insert gives, and the repository may be another process.) When
   * the username and the e-mail name one USER account created within the replay window that was
   * never changed nor signed in to since (version 1, no last login, no live session) and the
   * password is its own, the registration completes: the account's first session is opened and
   * the registration's answer given. That grants what a login with the password would, and is
   * throttled as a login is; anything else stays the conflict it was (undefined).
   */
  async #resumeRegistration(input: MessageInitShape<typeof RegisterRequestSchema>, client: ClientInfo): Promise<AuthResult | undefined> {
    const row = await this.#users.findByLogin(input.username ?? '');
    const now = this.#now();
    const unfinished =
      row !== null &&
      row.email === (input.email ?? '').toLowerCase() &&
      row.role === 'USER' &&
      row.status === 'ACTIVE' &&
      row.version === 1 &&
      row.lastLoginAt === null &&
      now.getTime() - row.createdAt.getTime() < IDEMPOTENCY_WINDOW_MS;
    if (!unfinished || (await this.#tokens.listActive(row.id, now)).length > 0) return undefined;
    // An account an administrator made is no registration left unfinished, though it looks like
    // one until its first sign-in: its making granted its role (ROLE_CHANGED, stored with the
    // account; any later grant would have moved its version). The registration answered 201 with
    // a session, as if it had made the account (helper 186).
    if ((await this.#auditEvents.list({ page: 1, perPage: 1, userId: row.id, type: 'ROLE_CHANGED' })).events.length > 0) return undefined;
    // Audited as the login it is, so that guesses made this way show where guesses are looked for.
    const failed = (reason: string) => {
      this.#audit.record({ type: 'LOGIN_FAILED', userId: row.id, ...clientFields(client), details: { reason, knownDevice: false, viaRegistration: true } });
    };
    const attempt = await this.#throttle.admit({ name: row.username, userId: row.id, address: addressKey(client.ipAddress), device: undefined });
    if (!attempt.admitted) {
      failed('throttled');
      return undefined;
    }
    const matches = await this.#passwords.verify(input.password ?? '', row.passwordHash).catch(async (error: unknown) => {
      await attempt.abandoned();
      throw error;
    });
    // A wrong password keeps the failure the throttle reserved: guesses cost what a login's do.
    if (!matches) {
      failed('wrong_password');
      return undefined;
    }
    // Opened as a login's session: the account's last login is set and its version moves on, so
    // it is not resumed twice, and the undoing of a registration still under way for it (its
    // session stalled, then failed) no longer finds the version it would delete. Only while the
    // account has never logged in, in the same write: of identical registrations resumed at once,
    // one opens it (helper 218: four did, each told it had made the account).
    const tokens = await uninterrupted(() => this.#openSession(row, client, now, true)).catch(async (error: unknown) => {
      await attempt.abandoned();
      throw error;
    });
    if (tokens === null) {
      // The right password, for an account another retry opened first (or changed meanwhile): no
      // guess, so the throttle's slot goes back (helper 220: each retry that lost counted as a
      // failure, and one typo after eight at once locked the new account out).
      await attempt.abandoned();
      failed('changed_meanwhile');
      return undefined;
    }
    await attempt.succeeded();
    this.#audit.record({ type: 'LOGIN_SUCCEEDED', userId: row.id, ...clientFields(client), details: { knownDevice: false, viaRegistration: true } });
    return { user: toUserMessage({ ...row, lastLoginAt: now, version: row.version + 1 }), tokens, deviceToken: this.#devices.issue(row.id, row.passwordHash) };
  }

  /**
   * Deletes an account registration just created, when its session could not be stored: only if
   * nothing changed it since (its version), and retried while the database is busy, since that
   * is usually why the session failed. Should it still fail, the registration's own error is
   * the news, and the account stays (a login opens it).
   */
  async #discardNewAccount(row: UserRow): Promise<void> {
    for (let attempt = 0; ; attempt += 1) {
      try {
        await this.#users.delete(row.id, row.version);
        return;
      } catch (error) {
        const pauseMs = DISCARD_RETRY_PAUSES_MS[attempt];
        if (!(error instanceof UnavailableError) || pauseMs === undefined) return;
        await sleep(pauseMs);
      }
    }
  }

  /**
   * A session's first pair; null when the account is no longer ACTIVE with the password compared
   * (see TokenRepository.create). `loginAt` (a login's, not a registration's) is recorded as the
   * user's last login with it.
   */
  async #openSession(user: UserRow, client: ClientInfo, loginAt?: Date, firstLogin = false): Promise<TokenPair | null> {
    const now = loginAt ?? this.#now();
    const familyExpiresAt = new Date(now.getTime() + this.#sessionLifetimeMs);
    const familyId = randomUUID();
    const issued = this.#codec.issuePair(user.id, now, familyExpiresAt, familyId);
    const stored = await this.#storeSession(familyId, () =>
      this.#tokens.create(
        {
          userId: user.id,
          familyId,
          accessTokenHash: issued.accessTokenHash,
          refreshTokenHash: issued.refreshTokenHash,
          accessExpiresAt: issued.accessExpiresAt,
          expiresAt: issued.refreshExpiresAt,
          familyExpiresAt,
          ipAddress: truncate(client.ipAddress, 45),
          userAgent: truncate(client.userAgent, USER_AGENT_MAX_LENGTH),
          clientName: null,
        },
        user.passwordHash,
        loginAt,
        firstLogin,
      ),
    );
    if (stored === null) return null;
    return this.#tokenPair(issued.accessToken, issued.refreshToken, issued.accessTtlSeconds);
  }

  /**
   * Stores a new session; when the database fails to answer, ends it (best effort, as a new
   * account is discarded) before the failure goes to the client. The write may have committed with
   * only its answer lost: the client got a 503 and holds no token, yet the session was live,
   * counted against SESSIONS_PER_USER_MAX and could push out one in use (helper 102).
   */
  async #storeSession<T>(familyId: string, store: () => Promise<T>): Promise<T> {
    try {
      return await store();
    } catch (error) {
      if (error instanceof UnavailableError) {
        for (const pauseMs of [0, ...DISCARD_RETRY_PAUSES_MS]) {
          if (pauseMs > 0) await sleep(pauseMs);
          try {
            await uninterrupted(() => this.#tokens.revokeFamily(familyId, 'revoked'));
            break;
          } catch (revokeError) {
            if (!(revokeError instanceof UnavailableError)) break;
          }
        }
      }
      throw error;
    }
  }

  #tokenPair(accessToken: string, refreshToken: string, expiresIn: number): TokenPair {
    return create(TokenPairSchema, { accessToken, refreshToken, expiresIn, tokenType: 'Bearer' });
  }
}

/** A session is its current token pair's row, less the hashes, plus whether the caller holds it. */
const sessions = rowMapping<
  typeof SessionSchema,
  Pick<OAuthToken, 'id' | 'tokenType' | 'clientName' | 'ipAddress' | 'userAgent' | 'createdAt' | 'expiresAt'> & { current: boolean }
>(SessionSchema);

function toSessionMessage(row: OAuthToken, currentId: number): Session {
  return sessions.toMessage({ ...row, current: row.id === currentId });
}

function truncate(value: string | undefined, max: number): string | null {
  return value === undefined ? null : value.slice(0, max);
}
