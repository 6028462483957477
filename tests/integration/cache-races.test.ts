// Cache-aside against a write that lands between a reader's database read and its cache fill:
// the reader read the session (or profile) before a logout (or role change) and fills the cache
// after the write has invalidated it. The fill must not bring the old row back, or a logged-out
// token would keep working, and a demoted admin keep its role, for the cache's TTL (an attacking
// helper saw a logged-out token answer 200 for 57 s in the microservices topology). Real
// PostgreSQL (MariaDB in that project) behind the repositories; the in-process cache and the
// Redis one.
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MemoryCache, RedisCache, type Cache } from '../../src/infrastructure/cache.ts';
import { createLogger } from '../../src/infrastructure/logger.ts';
import { deleteByPrefix } from '../../src/infrastructure/redis/redis-client.ts';
import { CachedTokenRepository } from '../../src/repositories/cached-token-repository.ts';
import { CachedUserRepository, userCacheKey } from '../../src/repositories/cached-user-repository.ts';
import type { PrismaTokenRepository } from '../../src/repositories/token-repository.ts';
import type { PrismaUserRepository, UserProfile } from '../../src/repositories/user-repository.ts';
import { createTestApp, prismaRepositoriesOf, type TestApp } from '../helpers/test-app.ts';
import { intercept } from '../helpers/intercept.ts';
import { newTokenRecord, storePair, TEST_PASSWORD_HASH } from '../helpers/token-records.ts';

const REDIS_URL = process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';
const prefix = `arcana-race-${randomBytes(4).toString('hex')}:`;
const redis = new Redis(REDIS_URL);

let t: TestApp;
let users: PrismaUserRepository;
let tokens: PrismaTokenRepository;

beforeAll(async () => {
  t = await createTestApp();
  ({ users, tokens } = prismaRepositoriesOf(t));
});

afterAll(async () => {
  await deleteByPrefix(redis, prefix);
  redis.disconnect();
  await (t as TestApp | undefined)?.close();
});

let serial = 0;
async function newUser() {
  serial += 1;
  const name = `race_${process.pid}_${serial}`;
  return users.create({ username: name, email: `${name}@example.com`, passwordHash: TEST_PASSWORD_HASH });
}

/** A database read that, once done, waits for `release` before it returns. */
function heldRead<A extends unknown[], R>(read: (...args: A) => Promise<R>) {
  let release!: () => void;
  let readDone!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));
  const done = new Promise<void>((resolve) => (readDone = resolve));
  const held = async (...args: A): Promise<R> => {
    const row = await read(...args);
    readDone();
    await released;
    return row;
  };
  return { held, done, release };
}

const caches: [string, () => Cache][] = [
  ['in-process', () => new MemoryCache()],
  ['Redis', () => new RedisCache(redis, `${prefix}${randomBytes(3).toString('hex')}:`, createLogger({ level: 'silent' }))],
];

for (const [kind, makeCache] of caches) {
  describe(`the ${kind} cache`, () => {
    it('when a session read before a logout is cached after it, then the cache still says revoked', async () => {
      const cache = makeCache();
      const pair = await storePair(tokens, newTokenRecord((await newUser()).id));
      const slow = heldRead((hash: string) => tokens.findByAccessHash(hash));
      const reader = new CachedTokenRepository(intercept(tokens, { findByAccessHash: slow.held }), cache, 60);
      const writer = new CachedTokenRepository(tokens, cache, 60);

      const read = reader.findByAccessHash(pair.accessTokenHash);
      await slow.done;
      expect(await writer.revoke(pair.id, 'logout')).toEqual([pair.accessTokenHash]);
      slow.release();
      // The reader read before the logout: its own answer is the live pair.
      expect((await read)?.isRevoked).toBe(false);
      // Every lookup after the logout finds it revoked, from the cache or past it.
      expect((await writer.findByAccessHash(pair.accessTokenHash))?.isRevoked).toBe(true);
      expect((await reader.findByAccessHash(pair.accessTokenHash))?.isRevoked).toBe(true);
    });

    it('when a profile read before a role change is cached after it, then the next read has the new role', async () => {
      const cache = makeCache();
      const user = await newUser();
      await users.update(user.id, { role: 'ADMIN' });
      const slow = heldRead((id: number) => users.findProfile(id));
      const reader = new CachedUserRepository(intercept(users, { findProfile: slow.held }), cache, 60);
      const writer = new CachedUserRepository(users, cache, 60);

      const read = reader.findProfile(user.id);
      await slow.done;
      await writer.update(user.id, { role: 'USER' });
      slow.release();
      expect(((await read) as UserProfile).role).toBe('ADMIN');
      expect((await writer.findProfile(user.id))?.role).toBe('USER');
    });

    it("when a profile read before a role change or a deletion is held up past the write's mark, then it is answered but not cached", async () => {
      // Found by an attacker (helper 201): auth-service stopped for 2.6 s between reading a
      // profile and filling it, and its fill came after the 2 s mark of user-service's write had
      // lapsed, so a deleted user's token and a demoted admin's role worked for the cache's TTL.
      const cache = makeCache();
      const [demoted, deleted] = [await newUser(), await newUser()];
      await users.update(demoted.id, { role: 'ADMIN' });
      const writer = new CachedUserRepository(users, cache, 60);
      const outcomes = await Promise.all(
        [demoted, deleted].map(async (user) => {
          const slow = heldRead((id: number) => users.findProfile(id));
          const reader = new CachedUserRepository(intercept(users, { findProfile: slow.held }), cache, 60);
          const read = reader.findProfile(user.id);
          await slow.done;
          if (user === demoted) await writer.update(user.id, { role: 'USER' });
          else await writer.delete(user.id);
          await sleep(2_300);
          slow.release();
          return read;
        }),
      );
      // The readers answer what they read before the writes...
      expect(outcomes.map((profile) => profile?.role)).toEqual(['ADMIN', 'USER']);
      // ...and the next reads, through the cache, see the writes.
      const reader = new CachedUserRepository(users, cache, 60);
      expect((await reader.findProfile(demoted.id))?.role).toBe('USER');
      expect(await reader.findProfile(deleted.id)).toBeNull();
    });

    it('when a profile read holds a date no Date can (an invalid Date), then it is not cached, so it is never read back as null', async () => {
      // Helper 205: a last login of year 10000 or `infinity`, written by SQL, reads as an invalid
      // Date; the request failed, but its fill cached the profile, the date written as null, and
      // the next reads answered 200 "never logged in".
      const cache = makeCache();
      const user = await newUser();
      const unrenderable = intercept(users, {
        findProfile: async (id: number) => {
          const profile = await users.findProfile(id);
          return profile === null ? null : { ...profile, lastLoginAt: new Date(Number.NaN) };
        },
      });
      const reader = new CachedUserRepository(unrenderable, cache, 60);
      expect((await reader.findProfile(user.id))?.lastLoginAt?.getTime()).toBeNaN();
      expect(await cache.get(userCacheKey(user.id))).toBeUndefined();
      // The next read goes to the database again and gets the same date, not null.
      expect((await new CachedUserRepository(unrenderable, cache, 60).findProfile(user.id))?.lastLoginAt?.getTime()).toBeNaN();
    });

    it('when an entry is filled twice, then the first fill stays; once forgotten, it reads as a miss and takes no fill', async () => {
      const cache = makeCache();
      await cache.add('k', { id: 1, updatedAt: new Date('2026-01-01T00:00:00Z') }, 60);
      await cache.add('k', { id: 2 }, 60);
      expect(await cache.get('k')).toEqual({ id: 1, updatedAt: new Date('2026-01-01T00:00:00Z') });
      await cache.forget(['k'], 1);
      expect(await cache.get('k')).toBeUndefined();
      await cache.add('k', { id: 3 }, 60);
      expect(await cache.get('k')).toBeUndefined();
    });
  });
}
