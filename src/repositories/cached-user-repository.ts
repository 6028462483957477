import { forgetRead, readOnce } from '../infrastructure/call-context.ts';
import { shapeCheck, type Cache } from '../infrastructure/cache.ts';
import type { NewUser, UserChanges, UserExpectation, UserFilter, UserProfile, UserRepository, ListOptions, WriteOptions } from './user-repository.ts';

export const userCacheKey = (id: number): string => `user:${id}`;

/** Whether a cached value is a profile as this release writes it (see shapeCheck). */
const isProfile = shapeCheck<UserProfile>({
  id: 'number',
  username: 'string',
  usernameKey: 'string',
  email: 'string',
  firstName: 'string?',
  lastName: 'string?',
  phone: 'string?',
  avatarUrl: 'string?',
  role: 'string',
  status: 'string',
  isVerified: 'boolean',
  isActive: 'boolean',
  createdAt: 'date',
  updatedAt: 'date',
  lastLoginAt: 'date?',
  version: 'number',
});

/**
 * How long a written profile refuses fills: long enough for any read that began before the
 * write to have filled (milliseconds, or the seconds of a stalled process), short enough that the
 * profile is cached again soon after (a login writes it too). A session, dead once revoked, is
 * forgotten for the whole TTL instead (cached-token-repository.ts).
 */
const FORGET_SECONDS = 2;

/**
 * A read is cached only if it took less than this. A write's mark lasts FORGET_SECONDS from its
 * forget, which follows its commit; a read that began before the commit and fills within
 * FORGET_SECONDS of its start so meets the mark and fills nothing. A read held up longer (its
 * process stopped or starved between the read and the fill, its answer delayed on the network)
 * filled after the mark had lapsed: in the microservices topology a deleted user's token, and a
 * demoted administrator's role, then worked for the cache's TTL (helper 201, auth-service stopped
 * for 2.6 s). Half the mark's life is left for the fill's own way to the cache. Such a read is
 * answered, not cached.
 */
const FILL_WITHIN_MS = (FORGET_SECONDS * 1000) / 2;

/** Forgets the user's cached profile, in this call and in the shared cache, after a write to the user's row. */
export async function forgetProfile(cache: Cache, id: number): Promise<void> {
  forgetRead(userCacheKey(id));
  await cache.forget([userCacheKey(id)], FORGET_SECONDS);
}

/**
 * Cache-aside for user profiles, the record every authenticated request reads. Every write
 * through this repository forgets the cached profile (Cache.forget: no fill racing with the write
 * brings the old one back), so a suspension or role change is seen by
 * the next request in every process sharing the cache. Rows with password hashes are never cached.
 */
export class CachedUserRepository implements UserRepository {
  readonly #inner: UserRepository;
  readonly #cache: Cache;
  readonly #ttlSeconds: number;

  constructor(inner: UserRepository, cache: Cache, ttlSeconds: number) {
    this.#inner = inner;
    this.#cache = cache;
    this.#ttlSeconds = ttlSeconds;
  }

  findById(id: number) {
    return this.#inner.findById(id);
  }

  /**
   * Read once per request: authenticating reads the caller's profile and GET user or /me reads
   * it again; the second read takes the first's answer. A write (below) forgets it, and the
   * next request reads the cache again, so a role change still applies from the next request.
   */
  findProfile(id: number): Promise<UserProfile | null> {
    return readOnce(userCacheKey(id), () => this.#readProfile(id));
  }

  async #readProfile(id: number): Promise<UserProfile | null> {
    const cached = await this.#cache.get<unknown>(userCacheKey(id));
    if (cached !== undefined && isProfile(cached)) return cached;
    const readAt = performance.now();
    const profile = await this.#inner.findProfile(id);
    // A row the cache could not give back as read is not cached: a last login the database holds
    // outside what a Date can (year 10000, `infinity`: only SQL writes them) failed the read with
    // a 500 and was cached as null, so the next reads answered "never logged in" (helper 205).
    if (profile !== null && performance.now() - readAt < FILL_WITHIN_MS && isProfile(profile)) await this.#cache.add(userCacheKey(id), profile, this.#ttlSeconds);
    return profile;
  }

  findByLogin(usernameOrEmail: string) {
    return this.#inner.findByLogin(usernameOrEmail);
  }

  findTaken(username: string | undefined, email: string | undefined, exceptId?: number) {
    return this.#inner.findTaken(username, email, exceptId);
  }

  create(user: NewUser, options?: WriteOptions) {
    return this.#inner.create(user, options);
  }

  async update(id: number, changes: UserChanges, expected?: UserExpectation, options?: WriteOptions) {
    try {
      return await this.#inner.update(id, changes, expected, options);
    } finally {
      await forgetProfile(this.#cache, id);
    }
  }

  async delete(id: number, expectedVersion?: number, options?: WriteOptions) {
    try {
      return await this.#inner.delete(id, expectedVersion, options);
    } finally {
      await forgetProfile(this.#cache, id);
    }
  }

  list(filter: UserFilter, options?: ListOptions) {
    return this.#inner.list(filter, options);
  }
}
