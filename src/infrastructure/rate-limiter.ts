/** What one request's check against a rate limit found; enough to set RateLimit headers. */
export interface RateLimitDecision {
  allowed: boolean;
  limit: number;
  remaining: number;
  /** Seconds until the current window ends. */
  resetSeconds: number;
}

/** Counts requests per key in fixed windows. Redis-backed implementations share the count. */
export interface RateLimiter {
  consume(key: string): Promise<RateLimitDecision>;
}

/**
 * In-process fixed-window limiter. All keys share aligned windows, so the whole table is dropped
 * when a window ends and memory stays bounded by one window's distinct clients.
 */
export class MemoryRateLimiter implements RateLimiter {
  readonly #windowMs: number;
  readonly #max: number;
  readonly #now: () => number;
  #windowStart = 0;
  #counts = new Map<string, number>();

  constructor(options: { windowMs: number; max: number; now?: () => number }) {
    this.#windowMs = options.windowMs;
    this.#max = options.max;
    this.#now = options.now ?? Date.now;
  }

  async consume(key: string): Promise<RateLimitDecision> {
    const now = this.#now();
    const windowStart = now - (now % this.#windowMs);
    if (windowStart !== this.#windowStart) {
      this.#windowStart = windowStart;
      this.#counts = new Map();
    }
    const count = (this.#counts.get(key) ?? 0) + 1;
    this.#counts.set(key, count);
    return {
      allowed: count <= this.#max,
      limit: this.#max,
      remaining: Math.max(0, this.#max - count),
      resetSeconds: Math.ceil((windowStart + this.#windowMs - now) / 1000),
    };
  }
}
