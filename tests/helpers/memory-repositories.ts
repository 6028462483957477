// In-memory repositories, for testing the service layer's rules (roles, lockouts, sessions) in
// milliseconds. They keep the contracts that src/repositories/*.ts documents (conditional writes,
// the last active administrator, rotation that refuses a retired pair, claims of a key), so a rule
// that holds over them holds because of the service code, not because of a database. Whether the
// database-backed repositories keep the same contracts under concurrency is what the API suites
// test, in every topology.
import type { AuditEvent, OAuthToken, User } from '../../gen/prisma/client.ts';
import { AuthenticationError, AuthorizationError, ConflictError, LastAdminError, NotFoundError, PreconditionFailedError } from '../../src/domain/errors.ts';
import { foldCase } from '../../src/domain/user-mapping.ts';
import { toNewAuditEvent, type AuditEventInput, type AuditLog } from '../../src/services/audit-use-cases.ts';
import type { AuditRepository, NewAuditEvent } from '../../src/repositories/audit-repository.ts';
import type { ClaimResult, IdempotencyClaim, IdempotencyRepository } from '../../src/repositories/idempotency-repository.ts';
import { REPEAT_LOOKBACK_MS, type NewTokenRecord, type RevocationReason, type TokenRepository, type UserWrite } from '../../src/repositories/token-repository.ts';
import {
  showsWrite,
  type ActingAs,
  type NewUser,
  type UserChanges,
  type UserExpectation,
  type UserFilter,
  type UserProfile,
  type UserRepository,
  type WriteOptions,
} from '../../src/repositories/user-repository.ts';

/** A wall clock the test moves by hand. */
export class TestClock {
  #now: number;

  constructor(start = Date.now()) {
    this.#now = start;
  }

  now = (): Date => new Date(this.#now);

  advance(ms: number): void {
    this.#now += ms;
  }
}

export class MemoryUserRepository implements UserRepository {
  readonly #rows = new Map<number, User>();
  readonly #clock: TestClock;
  #nextId = 1;
  /** Called with a deleted user's id: the database deletes the user's sessions with it (ON DELETE CASCADE). */
  onDelete: (id: number) => void = () => undefined;
  /** Whether a user's login chain has a live pair (the token repository answers). */
  chainLive: (userId: number, familyId: string) => boolean = () => false;

  constructor(clock: TestClock) {
    this.#clock = clock;
  }

  async findById(id: number): Promise<User | null> {
    const row = this.#rows.get(id);
    return row === undefined ? null : { ...row };
  }

  async findProfile(id: number): Promise<UserProfile | null> {
    const row = this.#rows.get(id);
    if (row === undefined) return null;
    const { passwordHash: _hash, ...profile } = row;
    return profile;
  }

  async findByLogin(usernameOrEmail: string): Promise<User | null> {
    const key = foldCase(usernameOrEmail);
    for (const row of this.#rows.values()) if (row.usernameKey === key || row.email === key) return { ...row };
    return null;
  }

  async findTaken(username: string | undefined, email: string | undefined, exceptId?: number): Promise<{ username: boolean; email: boolean }> {
    const others = [...this.#rows.values()].filter((row) => row.id !== exceptId);
    return {
      username: username !== undefined && others.some((row) => row.usernameKey === username.toLowerCase()),
      email: email !== undefined && others.some((row) => row.email === email),
    };
  }

  async create(user: NewUser, options: WriteOptions = {}): Promise<User> {
    this.refuseUnlessActing(options.actingAs);
    const taken = await this.findTaken(user.username, user.email);
    if (taken.username || taken.email) throw new ConflictError(taken.username ? 'Username already exists' : 'Email already exists');
    const now = this.#clock.now();
    const row: User = {
      id: this.#nextId++,
      username: user.username,
      usernameKey: user.username.toLowerCase(),
      email: user.email,
      passwordHash: user.passwordHash,
      firstName: user.firstName ?? null,
      lastName: user.lastName ?? null,
      phone: user.phone ?? null,
      avatarUrl: null,
      role: user.role ?? 'USER',
      status: 'ACTIVE',
      isVerified: false,
      isActive: true,
      createdAt: now,
      updatedAt: now,
      lastLoginAt: null,
      version: 1,
    };
    this.#rows.set(row.id, row);
    // Stored with the account, as the write's transaction stores it (an administrator's grant).
    if (options.audit !== undefined) this.auditStored.push({ ...options.audit, userId: row.id });
    return { ...row };
  }

  /** The audit events writes stored with themselves (WriteOptions.audit). */
  readonly auditStored: NewAuditEvent[] = [];

  /** Those events as the audit repository lists them, newest first, for a user and a type. */
  readonly auditEvents: Pick<AuditRepository, 'list'> = {
    list: (filter) => {
      const events = this.auditStored
        .filter((event) => (filter.userId === undefined || event.userId === filter.userId) && (filter.type === undefined || event.type === filter.type))
        .reverse()
        .map((event, index): AuditEvent => ({ ...event, id: index + 1 }));
      return Promise.resolve({ events: events.slice((filter.page - 1) * filter.perPage, filter.page * filter.perPage), total: events.length });
    },
  };

  async update(id: number, changes: UserChanges, expected: UserExpectation = {}, options: WriteOptions = {}): Promise<User> {
    this.refuseUnlessActing(options.actingAs);
    const row = this.#rows.get(id);
    if (row === undefined) throw new NotFoundError('User not found');
    const matches =
      (expected.version === undefined || row.version === expected.version) &&
      (['isVerified', 'status', 'role', 'passwordHash'] as const).every((field) => expected[field] === undefined || row[field] === expected[field]);
    if (!matches && options.repeat === true && showsWrite(row, changes, expected)) return { ...row };
    if (expected.version !== undefined && row.version !== expected.version) throw new PreconditionFailedError('User has changed');
    for (const field of ['isVerified', 'status', 'role', 'passwordHash'] as const) {
      if (expected[field] !== undefined && row[field] !== expected[field]) throw new ConflictError('User has changed');
    }
    const next = { ...row, ...(changes as Partial<User>), version: row.version + 1, updatedAt: this.#clock.now() };
    this.#refuseLosingLastAdmin(row, next);
    this.#rows.set(id, next);
    return { ...next };
  }

  async delete(id: number, expectedVersion?: number, options: WriteOptions = {}): Promise<boolean> {
    this.refuseUnlessActing(options.actingAs);
    const row = this.#rows.get(id);
    if (row === undefined) return false;
    if (expectedVersion !== undefined && row.version !== expectedVersion) throw new PreconditionFailedError('User has changed');
    this.#refuseLosingLastAdmin(row, undefined);
    this.#rows.delete(id);
    this.onDelete(id);
    return true;
  }

  /** As guardWrite: the caller still active, its chain live, and an administrator when the write needs one. */
  refuseUnlessActing(actingAs: ActingAs | undefined): void {
    if (actingAs === undefined) return;
    const caller = this.#rows.get(actingAs.userId);
    if (caller?.status !== 'ACTIVE' || !this.chainLive(actingAs.userId, actingAs.familyId)) throw new AuthenticationError('Session has ended; please log in again');
    if (actingAs.administrator && caller.role !== 'ADMIN') throw new AuthorizationError('Insufficient permissions');
  }

  async list(filter: UserFilter): Promise<{ users: UserProfile[]; total: number }> {
    const q = filter.q?.toLowerCase();
    const matching = [...this.#rows.values()].filter(
      (row) =>
        (filter.role === undefined || row.role === filter.role) &&
        (filter.status === undefined || row.status === filter.status) &&
        (q === undefined || [row.usernameKey, row.email, row.firstName, row.lastName].some((field) => field?.toLowerCase().startsWith(q))),
    );
    const start = (filter.page - 1) * filter.perPage;
    return { users: matching.slice(start, start + filter.perPage).map(({ passwordHash: _hash, ...profile }) => profile), total: matching.length };
  }

  /** What a login's pair writes of the user (see TokenRepository.create). */
  /** Sets the last login (and moves the version on); with `firstLogin`, only if there was none: false when not written. */
  recordLogin(id: number, at: Date, firstLogin = false): boolean {
    const row = this.#rows.get(id);
    if (row === undefined || (firstLogin && row.lastLoginAt !== null)) return false;
    row.lastLoginAt = at;
    row.version += 1;
    return true;
  }

  /** The repository contract: no write may leave the platform without an active administrator. */
  #refuseLosingLastAdmin(before: User, after: User | undefined): void {
    const activeAdmin = (row: User | undefined) => row?.role === 'ADMIN' && row.status === 'ACTIVE';
    if (!activeAdmin(before) || activeAdmin(after)) return;
    const others = [...this.#rows.values()].filter((row) => row.id !== before.id && activeAdmin(row));
    if (others.length === 0) throw new LastAdminError();
  }
}

export class MemoryTokenRepository implements TokenRepository {
  readonly #rows = new Map<number, OAuthToken>();
  readonly #clock: TestClock;
  #nextId = 1;

  readonly #users: MemoryUserRepository;

  constructor(clock: TestClock, users: MemoryUserRepository) {
    this.#clock = clock;
    this.#users = users;
    users.onDelete = (userId) => {
      for (const [id, row] of this.#rows) if (row.userId === userId) this.#rows.delete(id);
    };
    users.chainLive = (userId, familyId) => {
      const now = this.#clock.now();
      return [...this.#rows.values()].some((row) => row.userId === userId && row.familyId === familyId && !row.isRevoked && row.expiresAt > now);
    };
  }

  async create(record: NewTokenRecord, passwordHash: string, loginAt?: Date, firstLogin = false): Promise<OAuthToken | null> {
    const user = await this.#users.findById(record.userId);
    if (user?.status !== 'ACTIVE' || user.passwordHash !== passwordHash) return null;
    if (firstLogin && loginAt !== undefined && [...this.#rows.values()].some((row) => row.userId === record.userId && !row.isRevoked && row.expiresAt > loginAt)) return null;
    if (loginAt !== undefined && !this.#users.recordLogin(record.userId, loginAt, firstLogin)) return null;
    return this.#insert(record);
  }

  #insert(record: NewTokenRecord): OAuthToken {
    const now = this.#clock.now();
    const row: OAuthToken = { ...record, id: this.#nextId++, tokenType: 'Bearer', isRevoked: false, revokedReason: null, createdAt: now, updatedAt: now };
    this.#rows.set(row.id, row);
    return { ...row };
  }

  async findByAccessHash(accessTokenHash: string): Promise<OAuthToken | null> {
    return this.#find((row) => row.accessTokenHash === accessTokenHash);
  }

  async findByRefreshHash(refreshTokenHash: string): Promise<OAuthToken | null> {
    return this.#find((row) => row.refreshTokenHash === refreshTokenHash);
  }

  async rotate(previous: OAuthToken, next: NewTokenRecord): Promise<OAuthToken | null> {
    const row = this.#rows.get(previous.id);
    if (row === undefined || row.isRevoked) return null;
    this.#retire(row, 'rotated');
    return this.#insert(next);
  }

  async revoke(id: number, reason: RevocationReason, options: WriteOptions = {}): Promise<string[]> {
    return this.#withRepeated(
      (row) => row.id === id,
      reason,
      options,
      this.#revokeWhere((row) => row.id === id, reason),
    );
  }

  async revokeFamily(familyId: string, reason: RevocationReason, options: WriteOptions = {}): Promise<string[]> {
    return this.#withRepeated(
      (row) => row.familyId === familyId,
      reason,
      options,
      this.#revokeWhere((row) => row.familyId === familyId, reason),
    );
  }

  async markChainReplayed(familyId: string, userId: number): Promise<boolean> {
    let marked = false;
    for (const [id, row] of this.#rows) {
      if (row.familyId !== familyId || row.userId !== userId || row.revokedReason !== 'rotated') continue;
      this.#rows.set(id, { ...row, revokedReason: 'reuse' });
      marked = true;
    }
    return marked;
  }

  async revokeChainOf(userId: number, tokenId: number, reason: RevocationReason, options: WriteOptions = {}): Promise<string[]> {
    this.#users.refuseUnlessActing(options.actingAs);
    const member = this.#rows.get(tokenId);
    if (member?.userId !== userId) return [];
    const now = this.#clock.now();
    const chain = (row: OAuthToken) => row.familyId === member.familyId;
    return this.#withRepeated(
      chain,
      reason,
      options,
      this.#revokeWhere((row) => chain(row) && row.expiresAt > now, reason),
    );
  }

  async revokeAllForUser(userId: number, exceptId: number | undefined, reason: RevocationReason, options: WriteOptions = {}): Promise<string[]> {
    this.#users.refuseUnlessActing(options.actingAs);
    const now = this.#clock.now();
    const sparedFamily = exceptId === undefined ? undefined : this.#rows.get(exceptId)?.familyId;
    const revoked = this.#revokeWhere((row) => row.userId === userId && row.familyId !== sparedFamily && row.expiresAt > now, reason);
    return this.#withRepeated((row) => row.userId === userId, reason, options, revoked);
  }

  /** As PrismaTokenRepository: the user is written first, and a refused write revokes nothing. */
  async revokeAllWithUserWrite(userId: number, exceptId: number | undefined, write: UserWrite, options: WriteOptions = {}): Promise<{ user: User; revoked: string[] }> {
    const user = await this.#users.update(userId, write.changes, write.expected, options);
    return { user, revoked: await this.revokeAllForUser(userId, exceptId, 'revoked', options) };
  }

  /** As PrismaTokenRepository: a repeat also returns the scope's pairs revoked for `reason` lately. */
  #withRepeated(scope: (row: OAuthToken) => boolean, reason: RevocationReason, options: WriteOptions, revoked: string[]): string[] {
    if (options.repeat !== true) return revoked;
    const since = this.#clock.now().getTime() - REPEAT_LOOKBACK_MS;
    const earlier = [...this.#rows.values()].filter((row) => scope(row) && row.isRevoked && row.revokedReason === reason && row.updatedAt.getTime() >= since);
    return [...new Set([...revoked, ...earlier.map((row) => row.accessTokenHash)])];
  }

  async listActive(userId: number, now: Date): Promise<OAuthToken[]> {
    return [...this.#rows.values()]
      .filter((row) => row.userId === userId && !row.isRevoked && row.expiresAt > now)
      .sort((a, b) => b.id - a.id)
      .map((row) => ({ ...row }));
  }

  async purgeStale(now: Date, retentionMs: number): Promise<number> {
    let purged = 0;
    for (const row of [...this.#rows.values()]) {
      if (row.expiresAt.getTime() + retentionMs < now.getTime()) purged += Number(this.#rows.delete(row.id));
    }
    return purged;
  }

  #find(match: (row: OAuthToken) => boolean): OAuthToken | null {
    for (const row of this.#rows.values()) if (match(row)) return { ...row };
    return null;
  }

  #revokeWhere(match: (row: OAuthToken) => boolean, reason: RevocationReason): string[] {
    const revoked = [...this.#rows.values()].filter((row) => !row.isRevoked && match(row));
    for (const row of revoked) this.#retire(row, reason);
    return revoked.map((row) => row.accessTokenHash);
  }

  #retire(row: OAuthToken, reason: RevocationReason): void {
    row.isRevoked = true;
    row.revokedReason = reason;
    row.updatedAt = this.#clock.now();
  }
}

export class MemoryIdempotencyRepository implements IdempotencyRepository {
  readonly #rows = new Map<string, { id: number; fingerprint: string; answer: Uint8Array | null; expiresAt: Date }>();
  #nextId = 1;

  async claim(claim: IdempotencyClaim, now: Date): Promise<ClaimResult> {
    const existing = this.#rows.get(claim.keyHash);
    if (existing !== undefined && existing.expiresAt > now) return { claimed: false, existing: { ...existing } };
    const id = this.#nextId++;
    this.#rows.set(claim.keyHash, { id, fingerprint: claim.fingerprint, answer: null, expiresAt: claim.expiresAt });
    return { claimed: true, id };
  }

  async complete(id: number, answer: Uint8Array, expiresAt: Date): Promise<boolean> {
    const row = [...this.#rows.values()].find((candidate) => candidate.id === id);
    if (row === undefined) return false;
    Object.assign(row, { answer, expiresAt });
    return true;
  }

  async release(id: number): Promise<void> {
    for (const [key, row] of this.#rows) if (row.id === id && row.answer === null) this.#rows.delete(key);
  }

  async purgeExpired(now: Date): Promise<number> {
    let purged = 0;
    for (const [key, row] of this.#rows) if (row.expiresAt <= now) purged += Number(this.#rows.delete(key));
    return purged;
  }
}

/** The audit log as the service layer writes it, kept in order for the test to read. */
export class RecordedAuditLog implements AuditLog {
  readonly events: AuditEventInput[] = [];

  record(event: AuditEventInput): void {
    this.events.push(event);
  }

  /** The event is kept once the write has succeeded, as its transaction would have stored it. */
  async withWrite<T>(event: AuditEventInput | undefined, write: (event: NewAuditEvent | undefined) => Promise<T>): Promise<T> {
    const written = await write(event === undefined ? undefined : toNewAuditEvent(event, new Date()));
    if (event !== undefined) this.events.push(event);
    return written;
  }

  /** The recorded events of one type, optionally with a given `details.reason`. */
  ofType(type: string, reason?: string): AuditEventInput[] {
    return this.events.filter((event) => event.type === type && (reason === undefined || event.details?.reason === reason));
  }
}
