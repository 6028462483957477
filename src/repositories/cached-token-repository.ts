import type { OAuthToken } from '../../gen/prisma/client.ts';
import { shapeCheck, type Cache } from '../infrastructure/cache.ts';
import { forgetProfile } from './cached-user-repository.ts';
import type { NewTokenRecord, RevocationReason, TokenRepository, UserWrite } from './token-repository.ts';
import type { WriteOptions } from './write-options.ts';
import { isDatabaseUnreachable } from '../domain/errors.ts';

export const sessionCacheKey = (accessTokenHash: string): string => `session:${accessTokenHash}`;

/** Whether a cached value is a session as this release writes it (see shapeCheck). */
const isSession = shapeCheck<OAuthToken>({
  id: 'number',
  userId: 'number',
  familyId: 'string',
  accessTokenHash: 'string',
  refreshTokenHash: 'string',
  tokenType: 'string',
  accessExpiresAt: 'date',
  expiresAt: 'date',
  familyExpiresAt: 'date',
  clientName: 'string?',
  ipAddress: 'string?',
  userAgent: 'string?',
  isRevoked: 'boolean',
  revokedReason: 'string?',
  createdAt: 'date',
  updatedAt: 'date',
});

/**
 * Cache-aside for the session lookup of every authenticated request. Each revocation forgets the
 * entries of the pairs it revoked (the repository returns their hashes), so logout, revoke-all,
 * rotation and replay detection take effect on the next request in every process; a lookup that
 * read the pair before the revocation cannot cache it after (fills never overwrite: Cache.add).
 */
export class CachedTokenRepository implements TokenRepository {
  readonly #inner: TokenRepository;
  readonly #cache: Cache;
  readonly #ttlSeconds: number;
  readonly #now: () => number;

  constructor(inner: TokenRepository, cache: Cache, ttlSeconds: number, now: () => number = Date.now) {
    this.#inner = inner;
    this.#cache = cache;
    this.#ttlSeconds = ttlSeconds;
    this.#now = now;
  }

  /** A login's pair also writes the user's row: its profile is forgotten, as a write through CachedUserRepository would. */
  async create(record: NewTokenRecord, passwordHash: string, loginAt?: Date, firstLogin?: boolean) {
    if (loginAt === undefined) return this.#inner.create(record, passwordHash);
    try {
      return await this.#inner.create(record, passwordHash, loginAt, firstLogin);
    } finally {
      await forgetProfile(this.#cache, record.userId);
    }
  }

  async findByAccessHash(accessTokenHash: string): Promise<OAuthToken | null> {
    const key = sessionCacheKey(accessTokenHash);
    const cached = await this.#cache.get<unknown>(key);
    if (cached !== undefined && isSession(cached)) return cached;
    const session = await this.#inner.findByAccessHash(accessTokenHash);
    // Only live pairs are cached, and never beyond their access token's own expiry.
    const lifetime = session === null ? 0 : (session.accessExpiresAt.getTime() - this.#now()) / 1000;
    if (session !== null && !session.isRevoked && lifetime >= 1) {
      await this.#cache.add(key, session, Math.min(this.#ttlSeconds, lifetime));
    }
    return session;
  }

  findByRefreshHash(refreshTokenHash: string) {
    return this.#inner.findByRefreshHash(refreshTokenHash);
  }

  async rotate(previous: OAuthToken, next: NewTokenRecord) {
    try {
      return await this.#inner.rotate(previous, next);
    } finally {
      await this.#cache.forget([sessionCacheKey(previous.accessTokenHash)], this.#ttlSeconds);
    }
  }

  revoke(id: number, reason: RevocationReason, options?: WriteOptions) {
    return this.#revoking((attempt) => this.#inner.revoke(id, reason, attempt), options);
  }

  revokeFamily(familyId: string, reason: RevocationReason, options?: WriteOptions) {
    return this.#revoking((attempt) => this.#inner.revokeFamily(familyId, reason, attempt), options);
  }

  /** Pairs already revoked: nothing cached changes. */
  markChainReplayed(familyId: string, userId: number) {
    return this.#inner.markChainReplayed(familyId, userId);
  }

  revokeChainOf(userId: number, tokenId: number, reason: RevocationReason, options?: WriteOptions) {
    return this.#revoking((attempt) => this.#inner.revokeChainOf(userId, tokenId, reason, attempt), options);
  }

  revokeAllForUser(userId: number, exceptId: number | undefined, reason: RevocationReason, options?: WriteOptions) {
    return this.#revoking((attempt) => this.#inner.revokeAllForUser(userId, exceptId, reason, attempt), options);
  }

  /** Forgets the revoked pairs and, as a write through CachedUserRepository would, the user's profile. */
  async revokeAllWithUserWrite(userId: number, exceptId: number | undefined, write: UserWrite, options?: WriteOptions) {
    try {
      const { user, revoked } = await repeatedIfInDoubt((attempt) => this.#inner.revokeAllWithUserWrite(userId, exceptId, write, attempt), options);
      return { user, revoked: await this.#invalidate(revoked) };
    } finally {
      await forgetProfile(this.#cache, userId);
    }
  }

  listActive(userId: number, now: Date) {
    return this.#inner.listActive(userId, now);
  }

  /** Purged rows are expired or revoked, so no cached entry can refer to a live one. */
  purgeStale(now: Date, retentionMs: number) {
    return this.#inner.purgeStale(now, retentionMs);
  }

  async #revoking(revocation: (options: WriteOptions) => Promise<string[]>, options: WriteOptions = {}): Promise<string[]> {
    return this.#invalidate(await repeatedIfInDoubt(revocation, options));
  }

  async #invalidate(hashes: string[]): Promise<string[]> {
    await this.#cache.forget(hashes.map(sessionCacheKey), this.#ttlSeconds);
    return hashes;
  }
}

/**
 * Makes a revocation, and once more at once as a repeat (WriteOptions) when the database did not
 * answer it: its reply may have been lost after it committed. Unrepeated, the pairs it revoked stayed usable from
 * the cache until their entries expired, and the client's retry, finding nothing live, forgot
 * nothing and answered that all was done (helper 107: a logout's session kept working for the
 * cache's minute). A revocation is safe to make again, and a repeat also returns the pairs the
 * first attempt revoked. When the repeat fails too, the first failure stands.
 */
async function repeatedIfInDoubt<T>(write: (options: WriteOptions) => Promise<T>, options: WriteOptions = {}): Promise<T> {
  try {
    return await write(options);
  } catch (error) {
    // Only a database out of reach leaves the write in doubt; a lock or pool wait that ran out
    // did nothing, and repeating it would only double the wait.
    if (!isDatabaseUnreachable(error)) throw error;
    try {
      return await write({ ...options, repeat: true });
    } catch {
      throw error;
    }
  }
}
