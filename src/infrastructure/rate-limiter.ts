import { forEachKeyBatch, type Redis } from './redis/redis-client.ts';

/** What one request's check against a rate limit found; enough to set RateLimit headers. */
export interface RateLimitDecision {
  allowed: boolean;
  limit: number;
  remaining: number;
  /** Seconds until the current window ends. */
  resetSeconds: number;
}

/** Counts requests per key in fixed windows. */
export interface RateLimiter {
  consume(key: string): Promise<RateLimitDecision>;
}

/**
 * Atomic counters that expire: the storage under rate limits and login-failure tracking. The
 * window starts with a key's first increment.
 */
export interface CounterStore {
  /** Adds one and returns the new count and the milliseconds until the key expires. */
  increment(key: string, windowMs: number): Promise<{ count: number; ttlMs: number }>;
  /**
   * Adds one unless the count has already reached `limit`, in one atomic step: of any number of
   * concurrent reservations against one key, at most `limit` succeed per window. A refused
   * reservation adds nothing. `reservation` names it (unique per attempt), for release.
   */
  reserve(key: string, limit: number, windowMs: number, reservation: string): Promise<{ reserved: boolean; count: number; ttlMs: number }>;
  /**
   * Gives one reservation back, if the counter holds it: the count drops by one, the expiry stays;
   * a count that reaches zero is deleted, as it counts nothing (and an administrator has no
   * lockout to clear there). A reservation that was refused, never arrived, or was given back
   * already gives nothing back: a caller that lost a reservation's answer releases it without
   * knowing whether it was taken (helper 170: such releases took slots off lockouts they had
   * never added to, one more password comparison each).
   */
  release(key: string, reservation: string): Promise<void>;
  /** The current count and remaining lifetime, or zero counts for an absent key. */
  peek(key: string): Promise<{ count: number; ttlMs: number }>;
  delete(key: string): Promise<void>;
  /**
   * Deletes every key starting with `prefix`; returns how many. A prefix that is a group (see
   * GROUP_END) finds the group's keys at once; any other is a sweep of the whole store.
   */
  deleteByPrefix(prefix: string): Promise<number>;
}

/**
 * Where a counter's key names its group, at its first `|`: `login-fail:user:7|<client>` is one of
 * the group `login-fail:user:7|`, all of them cleared at once when an administrator lifts the
 * account's lockouts. Redis keeps an index of each group's keys, so that clearing one does not walk every
 * key Redis holds: a SCAN did, 1.1–1.5 s a pass with 300 000 keys, three passes per lifting, and
 * an administrator demoted meanwhile still lifted the lockout seconds after the change (helper 213).
 */
export const GROUP_END = '|';

/** How many keys a MemoryCounterStore holds at most (about 500 bytes each with their reservations: README). */
export const MEMORY_COUNTERS_MAX = 100_000;

export interface MemoryCounterStoreOptions {
  /** Keys held at most; see MemoryCounterStore. */
  maxEntries?: number;
  /**
   * Called when a key still inside its window had to be dropped to make room, at most once a
   * minute: limits are then weaker than configured, and the deployment needs Redis.
   */
  onFull?: (maxEntries: number) => void;
}

/**
 * Counters for a single process (no REDIS_URL, or Redis failing), bounded in keys. Every client
 * address and every account name tried opens a key, so a flood of distinct ones must not grow
 * the map without end, nor make each new key pay for a scan of all the others. The map is kept
 * in the order windows started (a key whose window restarts moves to the end), and a new key
 * that finds it full drops the oldest window: ended windows cost nothing, a live one is lost
 * (its key starts counting afresh) and `onFull` says so. Keys a `reserve` found at its limit (a
 * lockout, an exhausted budget) go last: an attacker who sprayed 52,000 logins for made-up
 * names from 520 addresses dropped a live lockout, and the locked account's password could be
 * guessed again. Spraying held keys instead costs a limit's worth of requests per key.
 */
interface CounterEntry {
  count: number;
  expiresAt: number;
  /** The reservations this window holds (see CounterStore.release): a few, so an array. */
  reservations?: string[];
}

export class MemoryCounterStore implements CounterStore {
  readonly #entries = new Map<string, CounterEntry>();
  /** Keys at their limit, in the order they reached it; dropped only when #entries is empty. */
  readonly #held = new Map<string, CounterEntry>();
  readonly #now: () => number;
  readonly #maxEntries: number;
  readonly #onFull: ((maxEntries: number) => void) | undefined;
  #lastFullNotice = Number.NEGATIVE_INFINITY;

  constructor(now: () => number = Date.now, options: MemoryCounterStoreOptions = {}) {
    this.#now = now;
    this.#maxEntries = options.maxEntries ?? MEMORY_COUNTERS_MAX;
    if (!Number.isInteger(this.#maxEntries) || this.#maxEntries < 1) throw new RangeError(`maxEntries must be a positive integer, not ${this.#maxEntries}`);
    this.#onFull = options.onFull;
  }

  async increment(key: string, windowMs: number) {
    return this.#count(key, windowMs, this.#now());
  }

  #count(key: string, windowMs: number, now: number): { count: number; ttlMs: number } {
    let entry = this.#get(key);
    if (entry === undefined || entry.expiresAt <= now) {
      // A new window goes to the end of the order, whether the key is new or its window ended.
      if (entry === undefined) this.#makeRoom(now);
      else this.#remove(key);
      entry = { count: 0, expiresAt: now + windowMs };
      this.#entries.set(key, entry);
    }
    entry.count += 1;
    return { count: entry.count, ttlMs: entry.expiresAt - now };
  }

  async reserve(key: string, limit: number, windowMs: number, reservation: string) {
    const now = this.#now();
    const entry = this.#get(key);
    if (entry !== undefined && entry.expiresAt > now && entry.count >= limit) {
      return { reserved: false, count: entry.count, ttlMs: entry.expiresAt - now };
    }
    const counted = this.#count(key, windowMs, now);
    // The entry may be a held one that a release brought back under its limit: its reservations
    // are recorded all the same (recorded only on counting entries, a success after a counter had
    // once been full gave nothing back, and its owner was locked out with the right password:
    // helper 175).
    const counting = this.#get(key);
    if (counting !== undefined) {
      (counting.reservations ??= []).push(reservation);
      if (counted.count >= limit && this.#entries.delete(key)) this.#held.set(key, counting);
    }
    return { reserved: true, ...counted };
  }

  async release(key: string, reservation: string): Promise<void> {
    const entry = this.#get(key);
    const index = entry?.reservations?.indexOf(reservation) ?? -1;
    if (entry === undefined || index < 0) return;
    entry.reservations?.splice(index, 1);
    if (entry.count > 1) entry.count -= 1;
    else this.#remove(key);
  }

  async peek(key: string) {
    const now = this.#now();
    const entry = this.#get(key);
    return entry === undefined || entry.expiresAt <= now ? { count: 0, ttlMs: 0 } : { count: entry.count, ttlMs: entry.expiresAt - now };
  }

  async delete(key: string): Promise<void> {
    this.#remove(key);
  }

  async deleteByPrefix(prefix: string): Promise<number> {
    let deleted = 0;
    for (const map of [this.#entries, this.#held]) {
      for (const key of map.keys()) {
        if (key.startsWith(prefix)) {
          map.delete(key);
          deleted += 1;
        }
      }
    }
    return deleted;
  }

  #get(key: string): CounterEntry | undefined {
    return this.#entries.get(key) ?? this.#held.get(key);
  }

  #remove(key: string): void {
    if (!this.#entries.delete(key)) this.#held.delete(key);
  }

  /** Drops the oldest windows, held keys last, until one more key fits: O(1) per key added. */
  #makeRoom(now: number): void {
    let droppedLive = false;
    for (const map of [this.#entries, this.#held]) {
      for (const [key, entry] of map) {
        if (this.#entries.size + this.#held.size < this.#maxEntries) break;
        map.delete(key);
        if (entry.expiresAt > now) droppedLive = true;
      }
    }
    if (droppedLive && this.#onFull !== undefined && now - this.#lastFullNotice >= 60_000) {
      this.#lastFullNotice = now;
      this.#onFull(this.#maxEntries);
    }
  }
}

// INCR and the expiry in one script: two separate commands could leave a counter without a TTL
// (a client dying in between), and concurrent requests must each see a distinct count.
const INCREMENT = `
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]); ttl = tonumber(ARGV[1]) end
return {count, ttl}`;

// The check and the increment in one script, so concurrent reservations cannot all pass a check
// made before any of them counted.
const RESERVE = `
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
local ttl = redis.call('PTTL', KEYS[1])
if count >= tonumber(ARGV[1]) and ttl > 0 then return {0, count, ttl} end
count = redis.call('INCR', KEYS[1])
if count == 1 or ttl < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]); ttl = tonumber(ARGV[2]) end
if count == 1 then redis.call('DEL', KEYS[2]) end
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ttl)
if KEYS[3] then
  redis.call('SADD', KEYS[3], KEYS[1])
  if redis.call('PTTL', KEYS[3]) < ttl then redis.call('PEXPIRE', KEYS[3], ttl) end
end
return {1, count, ttl}`;

// Decrements a live counter if it holds the reservation, leaving its expiry as it was; deletes
// it (and its reservations) instead of keeping a zero.
const RELEASE = `
if redis.call('SREM', KEYS[2], ARGV[1]) == 0 then return 0 end
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
if count > 1 then redis.call('DECR', KEYS[1]) else redis.call('DEL', KEYS[1], KEYS[2]) end
return 0`;

// A group's counters (those its index names), their reservations and the index, in one step: a
// reservation made meanwhile would otherwise be indexed, then lose its index unread, and no later
// clearing would find it.
const DELETE_GROUP = `
local deleted = 0
for _, key in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if string.sub(key, 1, #ARGV[1]) == ARGV[1] then
    deleted = deleted + redis.call('DEL', key)
    redis.call('DEL', key .. ARGV[2])
  end
end
redis.call('DEL', KEYS[1])
return deleted`;

/**
 * The key of the set of reservations a counter holds (RESERVE, RELEASE): it starts with the
 * counter's key, so a sweep by prefix (a lockout cleared) takes both, and lives as long.
 */
const HELD = '#held';
const reservationsOf = (key: string) => key + HELD;
/**
 * The key of the set of a group's counters (see GROUP_END), kept by RESERVE as long as the
 * longest of them; for `a|b`, `a|#keys`, so a sweep by the group's prefix takes it too.
 */
const groupOf = (key: string): string | undefined => {
  const end = key.indexOf(GROUP_END);
  return end === -1 ? undefined : key.slice(0, end + 1);
};
const INDEX = '#keys';
const indexOf = (group: string) => group + INDEX;

/** Counters shared by every process through Redis; keys live under `prefix`. Failures throw. */
export class RedisCounterStore implements CounterStore {
  readonly #redis: Redis;
  readonly #prefix: string;

  constructor(redis: Redis, prefix: string) {
    this.#redis = redis;
    this.#prefix = prefix;
  }

  async increment(key: string, windowMs: number) {
    const [count, ttlMs] = (await this.#redis.eval(INCREMENT, 1, this.#prefix + key, String(windowMs))) as [number, number];
    return { count, ttlMs };
  }

  async reserve(key: string, limit: number, windowMs: number, reservation: string) {
    const counter = this.#prefix + key;
    const group = groupOf(key);
    const keys = group === undefined ? [counter, reservationsOf(counter)] : [counter, reservationsOf(counter), indexOf(this.#prefix + group)];
    const [reserved, count, ttlMs] = (await this.#redis.eval(RESERVE, keys.length, ...keys, String(limit), String(windowMs), reservation)) as [number, number, number];
    return { reserved: reserved === 1, count, ttlMs };
  }

  async release(key: string, reservation: string): Promise<void> {
    const counter = this.#prefix + key;
    await this.#redis.eval(RELEASE, 2, counter, reservationsOf(counter), reservation);
  }

  async peek(key: string) {
    const [count, ttlMs] = await Promise.all([this.#redis.get(this.#prefix + key), this.#redis.pttl(this.#prefix + key)]);
    return count === null ? { count: 0, ttlMs: 0 } : { count: Number(count), ttlMs: Math.max(0, ttlMs) };
  }

  async delete(key: string): Promise<void> {
    await this.#redis.del(this.#prefix + key, reservationsOf(this.#prefix + key));
  }

  /** Counts the counters deleted (as DEL counts them), not their sets of reservations. */
  async deleteByPrefix(prefix: string): Promise<number> {
    if (groupOf(prefix) === prefix) return this.#deleteGroup(this.#prefix + prefix);
    let deleted = 0;
    await forEachKeyBatch(this.#redis, this.#prefix + prefix, async (keys) => {
      const sets = keys.filter((key) => key.endsWith(HELD) || key.endsWith(INDEX));
      const counters = keys.filter((key) => !key.endsWith(HELD) && !key.endsWith(INDEX));
      // A counter goes with its set, whichever batch the set came in.
      if (counters.length > 0) deleted += await this.#redis.del(...counters);
      await this.#redis.del(...sets, ...counters.map(reservationsOf));
    });
    return deleted;
  }

  /** Deletes a group's counters, found in its index, with their reservations and the index. */
  async #deleteGroup(group: string): Promise<number> {
    return (await this.#redis.eval(DELETE_GROUP, 1, indexOf(group), group, HELD)) as number;
  }
}

/**
 * Fixed-window limiter over a counter store. When the store fails (Redis down), `onStoreFailure`
 * decides: 'open' lets the request through (general API limits: availability first), 'closed'
 * rethrows (login limits: never an unthrottled password-guessing window).
 */
export class FixedWindowRateLimiter implements RateLimiter {
  readonly #store: CounterStore;
  readonly #options: { windowMs: number; max: number; prefix: string; onStoreFailure: 'open' | 'closed' };
  readonly #fallback: CounterStore | undefined;

  constructor(store: CounterStore, options: { windowMs: number; max: number; prefix: string; onStoreFailure: 'open' | 'closed' }, fallback?: CounterStore) {
    this.#store = store;
    this.#options = options;
    this.#fallback = fallback;
  }

  async consume(key: string): Promise<RateLimitDecision> {
    const { windowMs, max, prefix } = this.#options;
    let counted: { count: number; ttlMs: number };
    try {
      counted = await this.#store.increment(prefix + key, windowMs);
    } catch (error) {
      if (this.#options.onStoreFailure === 'closed') throw error;
      // Failing open still limits per process when a local store is at hand.
      if (this.#fallback === undefined) return { allowed: true, limit: max, remaining: max, resetSeconds: Math.ceil(windowMs / 1000) };
      counted = await this.#fallback.increment(prefix + key, windowMs);
    }
    return {
      allowed: counted.count <= max,
      limit: max,
      remaining: Math.max(0, max - counted.count),
      resetSeconds: Math.max(1, Math.ceil(counted.ttlMs / 1000)),
    };
  }
}
