import type { Logger } from './logger.ts';
import { deleteByPrefix, type Redis } from './redis/redis-client.ts';

/**
 * A best-effort key/value cache for cache-aside reads. A cache failure is never the request's
 * failure: reads miss and writes are skipped, and the caller goes to the database.
 */
export interface Cache {
  get<T>(key: string): Promise<T | undefined>;
  set(key: string, value: unknown, ttlSeconds: number): Promise<void>;
  delete(...keys: string[]): Promise<void>;
}

// Dates survive the JSON round trip: ISO strings in fields named like `createdAt` come back as
// Date objects, as the rows they were cached from had them.
const ISO_DATE = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$/;
const revive = (key: string, value: unknown): unknown =>
  key.endsWith('At') && typeof value === 'string' && ISO_DATE.test(value) ? new Date(value) : value;

/** In-process cache for a single process (no REDIS_URL). */
export class MemoryCache implements Cache {
  readonly #entries = new Map<string, { json: string; expiresAt: number }>();
  readonly #now: () => number;

  constructor(now: () => number = Date.now) {
    this.#now = now;
  }

  async get<T>(key: string): Promise<T | undefined> {
    const entry = this.#entries.get(key);
    if (entry === undefined) return undefined;
    if (entry.expiresAt <= this.#now()) {
      this.#entries.delete(key);
      return undefined;
    }
    return JSON.parse(entry.json, revive) as T;
  }

  async set(key: string, value: unknown, ttlSeconds: number): Promise<void> {
    if (this.#entries.size >= 100_000) this.#sweep();
    this.#entries.set(key, { json: JSON.stringify(value), expiresAt: this.#now() + ttlSeconds * 1000 });
  }

  async delete(...keys: string[]): Promise<void> {
    for (const key of keys) this.#entries.delete(key);
  }

  #sweep(): void {
    const now = this.#now();
    for (const [key, entry] of this.#entries) if (entry.expiresAt <= now) this.#entries.delete(key);
    // Still full of live entries: start over rather than grow without bound.
    if (this.#entries.size >= 100_000) this.#entries.clear();
  }
}

/** Cache shared by every process through Redis; keys live under `prefix`. */
export class RedisCache implements Cache {
  readonly #redis: Redis;
  readonly #prefix: string;
  readonly #logger: Logger;

  constructor(redis: Redis, prefix: string, logger: Logger) {
    this.#redis = redis;
    this.#prefix = prefix;
    this.#logger = logger;
  }

  async get<T>(key: string): Promise<T | undefined> {
    try {
      const json = await this.#redis.get(this.#prefix + key);
      return json === null ? undefined : (JSON.parse(json, revive) as T);
    } catch {
      return undefined;
    }
  }

  async set(key: string, value: unknown, ttlSeconds: number): Promise<void> {
    try {
      await this.#redis.set(this.#prefix + key, JSON.stringify(value), 'EX', Math.max(1, Math.floor(ttlSeconds)));
    } catch {
      // Not caching is always safe.
    }
  }

  async delete(...keys: string[]): Promise<void> {
    if (keys.length === 0) return;
    try {
      await this.#redis.del(...keys.map((key) => this.#prefix + key));
    } catch (error) {
      // The entry may now outlive the change it should reflect; `flush` on reconnect clears it.
      this.#logger.warn({ err: error instanceof Error ? error.message : String(error) }, 'cache invalidation failed');
    }
  }

  /**
   * Drops every cached entry. Run when Redis comes back after an outage, during which
   * invalidations may have been lost.
   */
  async flush(): Promise<void> {
    try {
      await deleteByPrefix(this.#redis, this.#prefix);
    } catch (error) {
      this.#logger.warn({ err: error instanceof Error ? error.message : String(error) }, 'cache flush failed');
    }
  }
}
