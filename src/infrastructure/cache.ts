import { setTimeout as sleep } from 'node:timers/promises';
import { detachedFromRequest } from './call-context.ts';
import type { Logger } from './logger.ts';
import { forEachKeyBatch, type Redis } from './redis/redis-client.ts';

/**
 * A best-effort key/value cache for cache-aside reads. A cache failure is never the request's
 * failure: reads miss and writes are skipped, and the caller goes to the database.
 */
export interface Cache {
  /** The value, or undefined when there is none or the key was forgotten. */
  get<T>(key: string): Promise<T | undefined>;
  set(key: string, value: unknown, ttlSeconds: number): Promise<void>;
  /**
   * A cache-aside fill: stores the value only if the key holds nothing, not even a mark left by
   * `forget`. A reader that read the database before a write, and fills after the write's
   * `forget`, so cannot put the old row back.
   */
  add(key: string, value: unknown, ttlSeconds: number): Promise<void>;
  /**
   * Invalidation after a write: each key reads as a miss from now on, and for `ttlSeconds` no
   * `add` can fill it (the mark outlives any fill racing with the write). With `delete`, a
   * session read just before a logout could be cached after it and stay usable for the TTL.
   * Resolves once every process will see it, or (a shared cache out of reach) after a bounded wait.
   */
  forget(keys: readonly string[], ttlSeconds: number): Promise<void>;
  delete(...keys: string[]): Promise<void>;
}

/** What `forget` leaves: JSON null, which no cached row is. */
const FORGOTTEN = 'null';

// Dates survive the JSON round trip: ISO strings in fields named like `createdAt` come back as
// Date objects, as the rows they were cached from had them. Cached values are flat rows, so only
// their own fields are looked at, after a plain JSON.parse: a reviver would make V8 call back for
// every value, which profiling showed as 5% of an authenticated request.
const ISO_DATE = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$/;
function parseCached(json: string): unknown {
  const value: unknown = JSON.parse(json);
  if (typeof value === 'object' && value !== null && !Array.isArray(value)) {
    const row = value as Record<string, unknown>;
    for (const key of Object.keys(row)) {
      const field = row[key];
      if (key.endsWith('At') && typeof field === 'string' && ISO_DATE.test(field)) row[key] = new Date(field);
    }
  }
  return value;
}

/** What a field of a cached row holds; with `?`, null too. */
export type FieldKind = 'number' | 'string' | 'boolean' | 'date' | 'string?' | 'date?';

/** Every field of a row `T` and what it holds (the compiler checks that none is left out). */
export type RowShape<T> = { readonly [K in keyof T]-?: FieldKind };

/**
 * A check that a cached value is a `T` as this release reads it. Old and new processes share
 * Redis during a rolling deploy: an entry another release wrote in another shape (a field missing,
 * or renamed) was served as it was, a user without its version (REST answered 500 under response
 * validation, RPC `version: 0`; helper 152). Such an entry is a miss; the database answers. The
 * shape is read once, here: the check runs on every cached read of every request. A date must be
 * one: an invalid Date is written to JSON as null, which a nullable field would read back as
 * "none" (see CachedUserRepository's fill).
 */
export function shapeCheck<T>(shape: RowShape<T>): (value: unknown) => value is T {
  const fields = Object.entries<FieldKind>(shape).map(([key, kind]) => ({ key, type: kind.replace('?', ''), nullable: kind.endsWith('?') }));
  return (value: unknown): value is T => {
    if (typeof value !== 'object' || value === null || Array.isArray(value)) return false;
    const row = value as Record<string, unknown>;
    for (const { key, type, nullable } of fields) {
      const field = row[key];
      if (field === null && nullable) continue;
      if (type === 'date' ? !(field instanceof Date) || Number.isNaN(field.getTime()) : typeof field !== type) return false;
    }
    return true;
  };
}

/** The bounds of a MemoryCache; both hold at every moment. */
export interface MemoryCacheLimits {
  /** Entries at most. */
  maxEntries: number;
  /**
   * Bytes at most, as estimated by `entryBytes`: a few thousand users' profiles fill a MiB, so
   * the default keeps the cache a small, fixed share of a 512 MiB pod.
   */
  maxBytes: number;
}

export const MEMORY_CACHE_LIMITS: MemoryCacheLimits = { maxEntries: 100_000, maxBytes: 32 * 1024 * 1024 };

/**
 * What an entry holds on the heap, estimated from above: V8 stores a string in one or two bytes
 * per UTF-16 code unit, so two are counted, plus the Map slot and the entry object.
 */
export function entryBytes(key: string, json: string): number {
  return 2 * (key.length + json.length) + 96;
}

/** A MemoryCache entry: the value's JSON (FORGOTTEN for a forgotten key), and its bounds. */
interface MemoryEntry {
  json: string;
  expiresAt: number;
  bytes: number;
}

/**
 * In-process cache for a single process (no REDIS_URL), bounded in entries and in bytes. When a
 * new entry would break a bound, the oldest entries written go first (insertion order, which a
 * Map keeps), at O(1) per write; with one TTL per kind of entry the oldest are also the first to
 * expire. A cache-aside read of an evicted entry only goes to the database.
 */
export class MemoryCache implements Cache {
  readonly #entries = new Map<string, MemoryEntry>();
  readonly #now: () => number;
  readonly #limits: MemoryCacheLimits;
  #bytes = 0;

  constructor(now: () => number = Date.now, limits: MemoryCacheLimits = MEMORY_CACHE_LIMITS) {
    this.#now = now;
    this.#limits = limits;
  }

  /** Entries and estimated bytes held now. */
  get size(): { entries: number; bytes: number } {
    return { entries: this.#entries.size, bytes: this.#bytes };
  }

  async get<T>(key: string): Promise<T | undefined> {
    const entry = this.#live(key);
    if (entry === undefined || entry.json === FORGOTTEN) return undefined;
    return parseCached(entry.json) as T;
  }

  async set(key: string, value: unknown, ttlSeconds: number): Promise<void> {
    this.#write(key, JSON.stringify(value), ttlSeconds);
  }

  async add(key: string, value: unknown, ttlSeconds: number): Promise<void> {
    if (this.#live(key) === undefined) this.#write(key, JSON.stringify(value), ttlSeconds);
  }

  async forget(keys: readonly string[], ttlSeconds: number): Promise<void> {
    for (const key of keys) this.#write(key, FORGOTTEN, ttlSeconds);
  }

  /** The entry of `key` if it has not expired (an expired one is dropped). */
  #live(key: string): MemoryEntry | undefined {
    const entry = this.#entries.get(key);
    if (entry === undefined) return undefined;
    if (entry.expiresAt <= this.#now()) {
      this.#remove(key);
      return undefined;
    }
    return entry;
  }

  #write(key: string, json: string, ttlSeconds: number): void {
    const bytes = entryBytes(key, json);
    // Written again, an entry becomes the newest.
    this.#remove(key);
    // An entry larger than the whole bound is not cached at all.
    if (bytes > this.#limits.maxBytes) return;
    for (const oldest of this.#entries.keys()) {
      if (this.#entries.size < this.#limits.maxEntries && this.#bytes + bytes <= this.#limits.maxBytes) break;
      this.#remove(oldest);
    }
    this.#entries.set(key, { json, expiresAt: this.#now() + ttlSeconds * 1000, bytes });
    this.#bytes += bytes;
  }

  async delete(...keys: string[]): Promise<void> {
    for (const key of keys) this.#remove(key);
  }

  #remove(key: string): void {
    const entry = this.#entries.get(key);
    if (entry === undefined) return;
    this.#entries.delete(key);
    this.#bytes -= entry.bytes;
  }
}

/**
 * Turns each key into a mark for ARGV[2] ms, unless it is a mark already (whose own lifetime,
 * that of a revoked session say, is kept).
 */
const MARK_UNLESS_MARKED = `
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) ~= ARGV[1] then redis.call('SET', key, ARGV[1], 'PX', ARGV[2]) end
end
return #KEYS`;

/**
 * Redis's answers that refuse a write while it may still serve reads: a replica (READONLY), a
 * primary short of replicas (NOREPLICAS) or cut from its own (MASTERDOWN), one that cannot save
 * (MISCONF), a script that will not yield (BUSY), a data set still loading (LOADING). Anything
 * else (an unknown command on a Redis older than 6.2, say) is not taken for one.
 */
const WRITES_REFUSED = /^(READONLY|NOREPLICAS|MASTERDOWN|MISCONF|BUSY|LOADING)\b/;

function refusesWrites(error: unknown): error is Error {
  return error instanceof Error && WRITES_REFUSED.test(error.message);
}

/** How soon an invalidation that Redis did not confirm is tried again. */
const INVALIDATION_RETRY_MS = 100;
/**
 * How long after Redis stopped confirming invalidations a write still waits for its own before it
 * answers. The process's own reads skip unconfirmed keys at once, but the other processes read the
 * old entry from Redis until a retry lands: a logout on an instance whose connection Redis had
 * just closed was answered while another instance accepted the token for 90-190 ms more. A
 * reconnect takes 200 ms (see redis-client.ts). Counted from the start of the outage, not per
 * write: in a longer one, writes answer at once again and the retries go on.
 */
const INVALIDATION_WAIT_MS = 1_000;
/** Unconfirmed keys held one by one; beyond this, the whole cache is bypassed until a flush lands. */
const UNCONFIRMED_MAX = 10_000;
/**
 * How long fills are refused after a flush: the marks it leaves refuse them in every process for
 * the keys that were cached, and this process refuses every fill, so that a request that read a
 * session before it was revoked cannot cache it again. Reads take milliseconds; one slower than
 * this (it may take up to INTERNAL_TIMEOUT_MS) could still fill, as before the flush existed.
 */
const NO_FILLS_AFTER_FLUSH_MS = 3_000;

/**
 * Cache shared by every process through Redis; keys live under `prefix`.
 *
 * An invalidation Redis does not confirm is not given up: the entry may hold a revoked session or
 * an old role. Until a retry lands (every INVALIDATION_RETRY_MS), this process reads those keys
 * from the database and fills none of them. An attacker found two ordinary ways to lose one: a
 * connection Redis closed (CLIENT KILL, its idle `timeout`), whose reconnect raised no error event
 * and so no flush; and Redis at `maxmemory` under `noeviction` (as BullMQ requires), which refuses
 * the marks but not a DEL. Either way a logged-out token stayed usable for the cache TTL.
 */
export class RedisCache implements Cache {
  readonly #redis: Redis;
  readonly #prefix: string;
  readonly #logger: Logger;
  /** Keys whose invalidation is not confirmed yet, with the TTL of the mark they were to get. */
  readonly #unconfirmed = new Map<string, number>();
  /** More were unconfirmed than UNCONFIRMED_MAX (a long outage): every key is, until a flush. */
  #unconfirmedAll = false;
  /** When the keys unconfirmed now began to be (see INVALIDATION_WAIT_MS). */
  #unconfirmedSince = 0;
  /** Date.now() before which `add` fills nothing (see NO_FILLS_AFTER_FLUSH_MS). */
  #noFillsUntil = 0;
  #retry: NodeJS.Timeout | undefined;

  constructor(redis: Redis, prefix: string, logger: Logger) {
    this.#redis = redis;
    this.#prefix = prefix;
    this.#logger = logger;
  }

  /**
   * Read with GETEX, not GET: the same answer, but Redis counts it as a write, so it refuses it
   * whenever it refuses the writes that invalidate (a replica, `min-replicas-to-write` unmet) and
   * holds it while writes are paused (CLIENT PAUSE WRITE). With GET, no process could invalidate
   * in those states and every other one kept reading the old entry: an attacking helper saw a
   * suspended administrator's token accepted for as long as it watched, up to the TTL. A read
   * refused is a miss, so the database answers. GETEX is not `denyoom`: a full Redis, which
   * refuses the marks but takes a DEL, still serves reads.
   */
  async get<T>(key: string): Promise<T | undefined> {
    if (this.#unconfirmedAll || this.#unconfirmed.has(key)) return undefined;
    try {
      const json = await this.#redis.getex(this.#prefix + key);
      return json === null || json === FORGOTTEN ? undefined : (parseCached(json) as T);
    } catch (error) {
      // Redis refusing writes refused some process's invalidations too, and that process may be
      // gone before Redis takes them again (helper 94: a pod stopped mid-incident; the old entry
      // was served by the others for the TTL once writes came back). Every process that sees the
      // refusal bypasses the cache until a flush of its own lands, which marks every entry.
      if (refusesWrites(error)) this.#bypassUntilFlushed(error);
      return undefined;
    }
  }

  async set(key: string, value: unknown, ttlSeconds: number): Promise<void> {
    try {
      await this.#redis.set(this.#prefix + key, JSON.stringify(value), 'EX', seconds(ttlSeconds));
    } catch {
      // Not caching is always safe.
    }
  }

  async add(key: string, value: unknown, ttlSeconds: number): Promise<void> {
    if (this.#unconfirmedAll || this.#unconfirmed.has(key) || Date.now() < this.#noFillsUntil) return;
    try {
      await this.#redis.set(this.#prefix + key, JSON.stringify(value), 'EX', seconds(ttlSeconds), 'NX');
    } catch {
      // Not caching is always safe.
    }
  }

  async forget(keys: readonly string[], ttlSeconds: number): Promise<void> {
    if (keys.length === 0) return;
    if (await this.#invalidate(keys, ttlSeconds)) return;
    this.#unconfirm(keys, ttlSeconds);
    while (Date.now() < this.#unconfirmedSince + INVALIDATION_WAIT_MS) {
      await sleep(INVALIDATION_RETRY_MS);
      if (!this.#unconfirmedAll && !keys.some((key) => this.#unconfirmed.has(key))) return;
    }
  }

  /** Every key is unconfirmed until a flush lands (retried every INVALIDATION_RETRY_MS). */
  #bypassUntilFlushed(error: Error): void {
    if (this.#unconfirmedAll) return;
    this.#logger.warn({ err: error.message }, 'redis refuses writes; cache bypassed until it takes a flush');
    this.#unconfirmedAll = true;
    this.#unconfirmed.clear();
    this.#retrySoon();
  }

  #unconfirm(keys: readonly string[], ttlSeconds: number): void {
    if (!this.#unconfirmedAll && this.#unconfirmed.size === 0) this.#unconfirmedSince = Date.now();
    if (!this.#unconfirmedAll) {
      for (const key of keys) this.#unconfirmed.set(key, Math.max(ttlSeconds, this.#unconfirmed.get(key) ?? 0));
      if (this.#unconfirmed.size > UNCONFIRMED_MAX) {
        this.#unconfirmedAll = true;
        this.#unconfirmed.clear();
      }
    }
    this.#retrySoon();
  }

  /**
   * Marks the keys forgotten, or at least deletes them; false when Redis confirmed neither. Only
   * a first attempt logs its failure: retries every INVALIDATION_RETRY_MS through an outage would
   * fill the log.
   */
  async #invalidate(keys: readonly string[], ttlSeconds: number, retry = false): Promise<boolean> {
    try {
      const batch = this.#redis.multi();
      for (const key of keys) batch.set(this.#prefix + key, FORGOTTEN, 'PX', Math.max(1, Math.ceil(ttlSeconds * 1000)));
      const results = await batch.exec();
      const failed = results === null ? new Error('transaction discarded') : results.find(([error]) => error !== null)?.[0];
      if (failed !== undefined && failed !== null) throw failed;
      return true;
    } catch (error) {
      if (!retry) this.#logger.warn({ err: error instanceof Error ? error.message : String(error) }, 'cache invalidation failed');
    }
    // A DEL frees memory, so Redis takes it when full; without the marks a fill racing this
    // write could put the old row back, but a full Redis refuses that fill too.
    try {
      await this.#redis.del(...keys.map((key) => this.#prefix + key));
      return true;
    } catch {
      return false;
    }
  }

  #retrySoon(): void {
    if (this.#retry !== undefined) return;
    // The retries serve every key unconfirmed, not the request that first failed to invalidate.
    this.#retry = detachedFromRequest(() =>
      setTimeout(() => {
        this.#retry = undefined;
        if (this.#unconfirmedAll) {
          void this.#flushed().then((done) => {
            if (!done) this.#retrySoon();
          });
          return;
        }
        const pending = [...this.#unconfirmed];
        if (pending.length === 0) return;
        const ttlSeconds = Math.max(...pending.map(([, ttl]) => ttl));
        void this.#invalidate(
          pending.map(([key]) => key),
          ttlSeconds,
          true,
        ).then((done) => {
          if (!done) {
            this.#retrySoon();
            return;
          }
          // Keys forgotten again meanwhile wait for their own retry, with their own TTL.
          for (const [key, ttl] of pending) if (this.#unconfirmed.get(key) === ttl) this.#unconfirmed.delete(key);
          if (this.#unconfirmed.size > 0) this.#retrySoon();
        });
      }, INVALIDATION_RETRY_MS),
    );
    this.#retry.unref();
  }

  async delete(...keys: string[]): Promise<void> {
    if (keys.length === 0) return;
    try {
      await this.#redis.del(...keys.map((key) => this.#prefix + key));
    } catch (error) {
      // The entry may now outlive the change it should reflect: tried again like a `forget`.
      this.#logger.warn({ err: error instanceof Error ? error.message : String(error) }, 'cache invalidation failed');
      this.#unconfirm(keys, 1);
    }
  }

  /**
   * Forgets every cached entry. Run when Redis comes back after an outage, during which
   * invalidations may have been lost.
   */
  async flush(): Promise<void> {
    if (!(await this.#flushed())) this.#logger.warn('cache flush failed');
  }

  /**
   * Turns every entry into a mark that refuses fills for NO_FILLS_AFTER_FLUSH_MS, in every
   * process (a DEL would also have deleted the marks of revocations, and only this process would
   * have known to refuse fills: the re-attack saw a service layer fill a session while the
   * repository's flush was pausing its own); once that lands, nothing is left unconfirmed.
   */
  async #flushed(): Promise<boolean> {
    const unconfirmed = [...this.#unconfirmed];
    this.#noFillsUntil = Date.now() + NO_FILLS_AFTER_FLUSH_MS;
    try {
      await forEachKeyBatch(this.#redis, this.#prefix, (keys) => this.#redis.eval(MARK_UNLESS_MARKED, keys.length, ...keys, FORGOTTEN, String(NO_FILLS_AFTER_FLUSH_MS)));
    } catch {
      return false;
    }
    this.#unconfirmedAll = false;
    for (const [key, ttl] of unconfirmed) if (this.#unconfirmed.get(key) === ttl) this.#unconfirmed.delete(key);
    return true;
  }
}

/** The cache, with every lookup counted as a hit or a miss. */
export function countingCache(cache: Cache, metrics: { cacheLookup(hit: boolean): void }): Cache {
  return {
    async get<T>(key: string): Promise<T | undefined> {
      const value = await cache.get<T>(key);
      metrics.cacheLookup(value !== undefined);
      return value;
    },
    set: (key, value, ttlSeconds) => cache.set(key, value, ttlSeconds),
    add: (key, value, ttlSeconds) => cache.add(key, value, ttlSeconds),
    forget: (keys, ttlSeconds) => cache.forget(keys, ttlSeconds),
    delete: (...keys) => cache.delete(...keys),
  };
}

/** A TTL as Redis takes it: whole seconds, at least one. */
function seconds(ttlSeconds: number): number {
  return Math.max(1, Math.floor(ttlSeconds));
}
