import type { RowTurns } from './row-turns.ts';
import { Prisma, type OAuthToken, type PrismaClient, type User } from '../../gen/prisma/client.ts';
import type { SqlDialect } from '../infrastructure/database/dialect.ts';
import { withDatabaseErrors } from './prisma-errors.ts';
import { conditionalUpdate, guardWrite, alsoGuarded, removesActiveAdmin, type UserChanges, type UserExpectation } from './user-repository.ts';
import type { NewAuditEvent } from './audit-repository.ts';
import { isRepeat, storeAuditEventWith, withSessionsEnded, type ActingAs, type WriteOptions } from './write-options.ts';

/**
 * How far back a repeated revocation looks for the pairs its first attempt revoked: far longer
 * than any call's deadline, retries included.
 */
export const REPEAT_LOOKBACK_MS = 10 * 60 * 1000;

/** A token pair to record: hashes only, never the tokens. */
export interface NewTokenRecord {
  userId: number;
  familyId: string;
  accessTokenHash: string;
  refreshTokenHash: string;
  accessExpiresAt: Date;
  expiresAt: Date;
  /** The login chain's absolute end; a rotation copies it from the pair it replaces. */
  familyExpiresAt: Date;
  ipAddress: string | null;
  userAgent: string | null;
  clientName: string | null;
}

/**
 * Why a pair was revoked. Only `rotated` makes a later presentation of its refresh token a
 * replay (token theft); the others mean the session ended.
 */
export type RevocationReason = 'rotated' | 'logout' | 'revoked' | 'reuse' | 'expired_chain' | 'superseded';

/** Rotated pairs a live login chain keeps, newest first, for replay detection (see purgeStale). */
const ROTATED_PAIRS_KEPT = 20;
/**
 * How long a rotated pair is kept whatever its rank, so that a session id listed before its holder
 * refreshed still ends the session (see purgeStale): an hour, about what a chain refreshed in a
 * loop accumulates between two purges anyway (SESSION_PURGE_INTERVAL_MS).
 */
const ROTATED_PAIR_GRACE_MS = 3_600_000;
/**
 * Refresh tokens name their chain (the `fam` claim) from this release on. A pair created before
 * it holds a token without one, which could not end its chain once its row was gone (helper 75),
 * so only pairs created since are purged beyond ROTATED_PAIRS_KEPT; the older ones go with their
 * chains, within SESSION_ABSOLUTE_LIFETIME_SECONDS (30 days by default).
 */
const FAMILY_CLAIM_SINCE = new Date('2026-11-30T00:00:00Z');
/** Rows one purge DELETE removes at most, by primary key. */
const PURGE_BATCH = 1_000;

/** A conditional write to a user's row, as UserRepository.update makes it. */
export interface UserWrite {
  changes: UserChanges;
  expected: UserExpectation;
}

/** Persistence of issued token pairs (sessions). */
export interface TokenRepository {
  /**
   * Records a login's first pair, only while its user is ACTIVE and still has `passwordHash`, the
   * hash the login's password was compared with; null, writing nothing, when it is not (a
   * password change, suspension or deletion committed since). Takes the user's lock as the
   * revocations do, so one that commits after this finds the pair and revokes it. With
   * `loginAt`, the pair opens a login and the user's last login (and version) is written in the
   * same transaction: one write where a login used to make two internal calls; with `firstLogin`
   * too, only while the user has never logged in and has no live session (null otherwise): the
   * session a registration's retry opens when its first attempt stored none.
   */
  create(record: NewTokenRecord, passwordHash: string, loginAt?: Date, firstLogin?: boolean): Promise<OAuthToken | null>;
  /** The pair with this access-token hash: the hot path of every authenticated request. */
  findByAccessHash(accessTokenHash: string): Promise<OAuthToken | null>;
  findByRefreshHash(refreshTokenHash: string): Promise<OAuthToken | null>;
  /**
   * Atomically retires `previous` and records its successor. Returns null, writing nothing,
   * when `previous` was already retired: its refresh token is being replayed.
   */
  rotate(previous: OAuthToken, next: NewTokenRecord): Promise<OAuthToken | null>;
  /**
   * The revoking methods return the access-token hashes of the pairs they revoked, so that
   * caches keyed by them can be invalidated. A repeat (WriteOptions) also returns those of the
   * pairs in its scope revoked for the same reason in the last REPEAT_LOOKBACK_MS: the first
   * attempt may have revoked them and lost its answer, and the caches must still forget them.
   */
  revoke(id: number, reason: RevocationReason, options?: WriteOptions): Promise<string[]>;
  /** Revokes every still-live pair of a login chain. */
  revokeFamily(familyId: string, reason: RevocationReason, options?: WriteOptions): Promise<string[]>;
  /**
   * Marks the pairs of user `userId`'s login chain `familyId` that rotations retired as replayed
   * (their reason becomes `reuse`): true when any was not yet, so that a chain raises one theft
   * alarm, whoever ended it and whichever of its tokens comes back, and even after the purge has
   * removed the pair of the token replayed (helper 96).
   */
  markChainReplayed(familyId: string, userId: number): Promise<boolean>;
  /**
   * Revokes the live (unexpired) pairs of the login chain that pair `tokenId` of user `userId`
   * belongs to; [] when it is another user's, or its chain has no live pair left. The pair itself
   * may have been rotated: a session listed by one id keeps its id for being ended, however often
   * its holder refreshes it.
   */
  revokeChainOf(userId: number, tokenId: number, reason: RevocationReason, options?: WriteOptions): Promise<string[]>;
  /**
   * Revokes the user's live (unexpired) pairs, optionally sparing the login chain of pair
   * `exceptId` (the caller's session): a refresh of that session that commits first has moved
   * it to a new pair of the same chain, which is still the caller's session.
   */
  revokeAllForUser(userId: number, exceptId: number | undefined, reason: RevocationReason, options?: WriteOptions): Promise<string[]>;
  /**
   * A write to the user's row that must end the user's sessions (a new password, a suspension),
   * made in one transaction with their end: `write` is made as UserRepository.update makes it (its
   * conditions, the last-administrator guard, its errors), and the pairs are revoked as
   * revokeAllForUser revokes them for 'revoked'. When anything fails, neither is done. Written
   * one after the other, a failure between the two left the write in effect and the sessions
   * alive with an error answered: a new password with the thief's session still open, a
   * suspension whose sessions came back with the account's reactivation.
   */
  revokeAllWithUserWrite(userId: number, exceptId: number | undefined, write: UserWrite, options?: WriteOptions): Promise<{ user: User; revoked: string[] }>;
  /** Live (unrevoked, unexpired) pairs of a user, newest first. */
  listActive(userId: number, now: Date): Promise<OAuthToken[]>;
  /**
   * Deletes pairs that can no longer matter: those whose refresh token expired more than
   * `retentionMs` ago, and revoked ones last changed more than `retentionMs` ago whose login chain
   * has no live pair left. Returns how many rows went.
   */
  purgeStale(now: Date, retentionMs: number): Promise<number>;
}

export class PrismaTokenRepository implements TokenRepository {
  readonly #db: PrismaClient;
  readonly #dialect: SqlDialect;
  readonly #turns: RowTurns | undefined;

  /** `turns`: the process's turns at user rows, shared with its user repository (see RowTurns). */
  constructor(db: PrismaClient, dialect: SqlDialect, turns?: RowTurns) {
    this.#db = db;
    this.#dialect = dialect;
    this.#turns = turns;
  }

  /** A write that locks users' rows, in the rows' turns in this process (see RowTurns). */
  #atRows<T>(target: number, also: readonly number[], write: () => Promise<T>): Promise<T> {
    return this.#turns === undefined ? write() : this.#turns.run(target, also, write);
  }

  create(record: NewTokenRecord, passwordHash: string, loginAt?: Date, firstLogin = false): Promise<OAuthToken | null> {
    return this.#atRows(record.userId, [], () =>
      withDatabaseErrors(() =>
        this.#db.$transaction(async (tx) => {
          // A login compares the password, then stores its pair. Without the user's lock and this
          // check, a password change or suspension committing in between revoked the user's pairs
          // before this one existed, and the session opened with the old password lived on. The
          // login's own write takes the same lock, on the same condition.
          if (loginAt === undefined) {
            const held = await tx.$queryRaw<unknown[]>`SELECT id FROM users WHERE id = ${record.userId} AND password_hash = ${passwordHash} AND status = 'ACTIVE' FOR UPDATE`;
            if (held.length === 0) return null;
          } else {
            if (firstLogin) {
              // Under the user's lock, which the registration's own session takes too.
              await lockUser(tx, record.userId);
              if ((await tx.oAuthToken.count({ where: { userId: record.userId, isRevoked: false, expiresAt: { gt: loginAt } } })) > 0) return null;
            }
            const where = { id: record.userId, passwordHash, status: 'ACTIVE', ...(firstLogin ? { lastLoginAt: null } : {}) } as const;
            const { count } = await tx.user.updateMany({ where, data: { lastLoginAt: loginAt, version: { increment: 1 } } });
            if (count === 0) return null;
          }
          return tx.oAuthToken.create({ data: record });
        }),
      ),
    );
  }

  findByAccessHash(accessTokenHash: string): Promise<OAuthToken | null> {
    return withDatabaseErrors(() => this.#db.oAuthToken.findUnique({ where: { accessTokenHash } }));
  }

  findByRefreshHash(refreshTokenHash: string): Promise<OAuthToken | null> {
    return withDatabaseErrors(() => this.#db.oAuthToken.findUnique({ where: { refreshTokenHash } }));
  }

  rotate(previous: OAuthToken, next: NewTokenRecord): Promise<OAuthToken | null> {
    return this.#atRows(previous.userId, [], () =>
      withDatabaseErrors(() =>
        this.#db.$transaction(async (tx) => {
          // Ending all of a user's sessions and rotating one of them exclude each other (see
          // revokeAllForUser): the user's row is the lock both take, in the same order.
          await lockUser(tx, previous.userId);
          // The conditional update is the lock: of two concurrent refreshes with one token, only
          // one sees count 1; the other is treated as a replay.
          const { count } = await tx.oAuthToken.updateMany({
            where: { id: previous.id, isRevoked: false },
            data: { isRevoked: true, revokedReason: 'rotated' },
          });
          if (count === 0) return null;
          return tx.oAuthToken.create({ data: next });
        }),
      ),
    );
  }

  async revoke(id: number, reason: RevocationReason, options: WriteOptions = {}): Promise<string[]> {
    return this.#withRepeated({ id }, reason, options, await this.#revokeWhere({ id, isRevoked: false }, reason));
  }

  async revokeFamily(familyId: string, reason: RevocationReason, options: WriteOptions = {}): Promise<string[]> {
    return this.#withRepeated({ familyId }, reason, options, await this.#revokeFamily(familyId, reason, options.audit));
  }

  async revokeChainOf(userId: number, tokenId: number, reason: RevocationReason, options: WriteOptions = {}): Promise<string[]> {
    const member = await withDatabaseErrors(() => this.#db.oAuthToken.findFirst({ where: { id: tokenId, userId }, select: { familyId: true } }));
    if (member === null) return [];
    const revoked = await this.#revokeUnderUserLock(userId, { familyId: member.familyId, expiresAt: { gt: new Date() } }, reason, options.actingAs, options.audit);
    return this.#withRepeated({ familyId: member.familyId }, reason, options, revoked);
  }

  async markChainReplayed(familyId: string, userId: number): Promise<boolean> {
    // One statement: of two replays at once, the second finds every row marked (PostgreSQL and
    // InnoDB re-check the condition on rows the first has locked) and marks none.
    const { count } = await withDatabaseErrors(() => this.#db.oAuthToken.updateMany({ where: { familyId, userId, revokedReason: 'rotated' }, data: { revokedReason: 'reuse' } }));
    return count > 0;
  }

  #revokeFamily(familyId: string, reason: RevocationReason, audit: NewAuditEvent | undefined): Promise<string[]> {
    return withDatabaseErrors(async () => {
      // The family's live token may be being rotated at this moment (see rotate). An UPDATE
      // that started first would wait for that row, then skip it as revoked, and never see the
      // successor the rotation inserted: the new session would outlive the theft alarm. The
      // user's lock, taken first as rotate takes it, waits for that rotation to commit and holds
      // back new ones until the family is revoked. A family's user never changes, so it is read
      // before the transaction: the lock must be the transaction's first read, because MySQL
      // fixes a transaction's snapshot at its first plain read.
      const member = await this.#db.oAuthToken.findFirst({ where: { familyId }, select: { userId: true } });
      if (member === null) return [];
      return this.#revokeUnderUserLock(member.userId, { familyId }, reason, undefined, audit);
    });
  }

  /**
   * Revokes the user's live pairs matching `where`, holding the user's row lock as rotate does (see
   * #revokeFamily), and the caller's with it when the revocation is made for one (ActingAs). The
   * audit event, if any, is stored with the revocation when it revoked something.
   */
  #revokeUnderUserLock(userId: number, where: Prisma.OAuthTokenWhereInput, reason: RevocationReason, actingAs?: ActingAs, audit?: NewAuditEvent): Promise<string[]> {
    const guards = { lastAdmin: false, actingAs };
    return this.#atRows(userId, alsoGuarded(guards), () =>
      withDatabaseErrors(() =>
        this.#db.$transaction(async (tx) => {
          if (actingAs === undefined) await lockUser(tx, userId);
          else await guardWrite(tx, userId, guards);
          const revoked = await this.#dialect.updateTokensReturningHashes(tx, { ...where, isRevoked: false }, { isRevoked: true, revokedReason: reason });
          if (revoked.length > 0) await storeAuditEventWith(tx, audit === undefined ? undefined : withSessionsEnded(audit, revoked.length));
          return revoked;
        }),
      ),
    );
  }

  async revokeAllForUser(userId: number, exceptId: number | undefined, reason: RevocationReason, options: WriteOptions = {}): Promise<string[]> {
    const { revoked } = await this.#endSessions(userId, exceptId, reason, options.actingAs, undefined, options.audit);
    return this.#withRepeated({ userId }, reason, options, revoked);
  }

  async revokeAllWithUserWrite(userId: number, exceptId: number | undefined, write: UserWrite, options: WriteOptions = {}): Promise<{ user: User; revoked: string[] }> {
    const { user, revoked } = await this.#endSessions(userId, exceptId, 'revoked', options.actingAs, { ...write, repeat: isRepeat(options) }, options.audit);
    if (user === null) throw new Error('the user write did not run');
    return { user, revoked: await this.#withRepeated({ userId }, 'revoked', options, revoked) };
  }

  #endSessions(
    userId: number,
    exceptId: number | undefined,
    reason: RevocationReason,
    actingAs: ActingAs | undefined,
    write?: UserWrite & { repeat: boolean },
    audit?: NewAuditEvent,
  ): Promise<{ user: User | null; revoked: string[] }> {
    const guards = { lastAdmin: write !== undefined && removesActiveAdmin(write.changes), actingAs };
    return this.#atRows(userId, alsoGuarded(guards), () =>
      withDatabaseErrors(() =>
        this.#db.$transaction(async (tx) => {
          // The guard locks the user's row, with the active admins' (when the write could remove
          // one) and the caller's, in id order, as UserRepository.update does. The user's lock waits
          // for its refreshes in flight, and holds back new ones until this commits (see rotate):
          // without it, a refresh committing while this statement waits on the row it rotates would
          // insert a successor this statement cannot see, and that session would live.
          await guardWrite(tx, userId, guards);
          const user = write === undefined ? null : await conditionalUpdate(tx, this.#dialect, userId, write.changes, write.expected, write.repeat);
          const spared = exceptId === undefined ? null : await tx.oAuthToken.findUnique({ where: { id: exceptId }, select: { familyId: true } });
          const revoked = await this.#dialect.updateTokensReturningHashes(
            tx,
            {
              userId,
              isRevoked: false,
              expiresAt: { gt: new Date() },
              ...(spared === null ? {} : { NOT: { familyId: spared.familyId } }),
            },
            { isRevoked: true, revokedReason: reason },
          );
          await storeAuditEventWith(tx, audit === undefined ? undefined : withSessionsEnded(audit, revoked.length));
          return { user, revoked };
        }),
      ),
    );
  }

  /**
   * What a revocation returns: the pairs it revoked, and on a repeat also the pairs in `scope`
   * revoked for `reason` lately. More than the first attempt revoked is harmless (a cache forgets
   * a pair that is revoked anyway); fewer would leave a revoked session live in a cache.
   */
  async #withRepeated(scope: Prisma.OAuthTokenWhereInput, reason: RevocationReason, options: WriteOptions, revoked: string[]): Promise<string[]> {
    if (!isRepeat(options)) return revoked;
    const since = new Date(Date.now() - REPEAT_LOOKBACK_MS);
    const earlier = await withDatabaseErrors(() =>
      this.#db.oAuthToken.findMany({ where: { ...scope, isRevoked: true, revokedReason: reason, updatedAt: { gte: since } }, select: { accessTokenHash: true } }),
    );
    return [...new Set([...revoked, ...earlier.map((row) => row.accessTokenHash)])];
  }

  async #revokeWhere(where: Prisma.OAuthTokenWhereInput, reason: RevocationReason): Promise<string[]> {
    return withDatabaseErrors(() => this.#dialect.updateTokensReturningHashes(this.#db, where, { isRevoked: true, revokedReason: reason }));
  }

  listActive(userId: number, now: Date): Promise<OAuthToken[]> {
    return withDatabaseErrors(() =>
      this.#db.oAuthToken.findMany({
        where: { userId, isRevoked: false, expiresAt: { gt: now } },
        orderBy: [{ createdAt: 'desc' }, { id: 'desc' }],
      }),
    );
  }

  purgeStale(now: Date, retentionMs: number): Promise<number> {
    const cutoff = new Date(now.getTime() - retentionMs);
    // Revoked pairs of a chain that still has a live pair must stay: replay detection finds a
    // reused refresh token by its revoked row, and only then revokes the live successor. A chain
    // cannot come back to life (rotation needs a live pair), so once none is left the rest can go.
    // Raw SQL because Prisma cannot express the correlated NOT EXISTS; the unqualified table name
    // resolves through the search_path that every PostgreSQL connection gets (see database.ts).
    // The ids are read a page at a time in id order (a plain read takes no locks) and deleted by
    // primary key: MySQL's one DELETE … LEFT JOIN (MySQL cannot name the table it deletes from in
    // a subquery) took next-key locks on every row it scanned, and at 1.2 M sessions held
    // refreshes and logouts about a second per purge (helper 219). The delete checks again what
    // the read found: the pair may have moved on meanwhile. A chain with no live pair stays so.
    return withDatabaseErrors(async () => {
      let stale = 0;
      for (let after = 0; ;) {
        const page = await this.#db.$queryRaw<{ id: number | bigint }[]>`
          SELECT stale.id FROM oauth_tokens AS stale
          WHERE stale.id > ${after}
            AND (stale.expires_at < ${cutoff}
                 OR (stale.is_revoked = true
                     AND stale.updated_at < ${cutoff}
                     AND NOT EXISTS (
                       SELECT 1 FROM oauth_tokens AS live
                       WHERE live.family_id = stale.family_id AND live.is_revoked = false AND live.expires_at > ${now})))
          ORDER BY stale.id LIMIT ${PURGE_BATCH}`;
        const ids = page.map((row) => Number(row.id));
        if (ids.length > 0) {
          stale += await this.#db.$executeRaw(
            this.#dialect.deleteByIds('oauth_tokens', ids, Prisma.sql`t.expires_at < ${cutoff} OR (t.is_revoked = true AND t.updated_at < ${cutoff})`),
          );
        }
        if (ids.length < PURGE_BATCH) break;
        after = ids[ids.length - 1] ?? after;
      }
      // A live chain's rotated pairs, but its ROTATED_PAIRS_KEPT newest, go whatever their age:
      // each refresh left one for the chain's whole life (30 days), and refreshes cost no bcrypt,
      // so one chain refreshed from address after address grew by ~500 000 rows an hour (helper
      // 72). An older refresh token still names its chain (TokenCodec's `fam` claim), so
      // presenting it again ends the chain as a replay (AuthUseCases, unknown refresh tokens).
      // The ids are read first (a plain read takes no locks) and deleted by primary key in short
      // statements: one DELETE with the window in a subquery scanned the table under InnoDB's
      // next-key locks, and held MariaDB's logins and refreshes for up to 1.2 s, some ending in
      // deadlocks (helper 75).
      // A pair rotated within ROTATED_PAIR_GRACE_MS stays whatever its rank: an administrator's
      // list of sessions names each by its pair, and ends the chain by that id after its holder
      // has refreshed (helper 108: a thief refreshing 25 times before the purge came round made
      // the listed id "not found", and the session lived on).
      const graceCutoff = new Date(now.getTime() - ROTATED_PAIR_GRACE_MS);
      const beyond = await this.#db.$queryRaw<{ id: number | bigint }[]>`
        SELECT id FROM (
          SELECT id, updated_at, ROW_NUMBER() OVER (PARTITION BY family_id ORDER BY id DESC) AS newer
          FROM oauth_tokens WHERE is_revoked = true AND revoked_reason = 'rotated' AND created_at >= ${FAMILY_CLAIM_SINCE}
        ) AS ranked WHERE ranked.newer > ${ROTATED_PAIRS_KEPT} AND ranked.updated_at < ${graceCutoff}`;
      let rotated = 0;
      for (let start = 0; start < beyond.length; start += PURGE_BATCH) {
        const ids = beyond.slice(start, start + PURGE_BATCH).map((row) => Number(row.id));
        rotated += await this.#db.$executeRaw(this.#dialect.deleteByIds('oauth_tokens', ids, Prisma.sql`t.is_revoked = true AND t.revoked_reason = 'rotated'`));
      }
      return stale + rotated;
    });
  }
}

/** Locks the user's row until the transaction ends (FOR UPDATE: PostgreSQL and MySQL alike). */
export async function lockUser(tx: Prisma.TransactionClient, userId: number): Promise<void> {
  await tx.$queryRaw`SELECT id FROM users WHERE id = ${userId} FOR UPDATE`;
}
