// The in-process counters (no REDIS_URL, or Redis failing) under a flood of distinct keys: every
// client address and every account name an attacker tries opens one.
import { describe, expect, it } from 'vitest';
import { FixedWindowRateLimiter, MEMORY_COUNTERS_MAX, MemoryCounterStore } from '../../src/infrastructure/rate-limiter.ts';

function clock(start = 1_000_000) {
  let now = start;
  return { now: () => now, advance: (ms: number) => (now += ms) };
}

describe('MemoryCounterStore bounds', () => {
  it('when more distinct keys arrive than it holds, then the oldest windows go and the newest keep counting', async () => {
    const time = clock();
    const store = new MemoryCounterStore(time.now, { maxEntries: 3 });
    for (const key of ['a', 'b', 'c', 'd']) await store.increment(key, 60_000);
    await store.increment('d', 60_000);
    expect(await store.peek('a')).toEqual({ count: 0, ttlMs: 0 });
    expect((await store.peek('b')).count).toBe(1);
    expect((await store.peek('c')).count).toBe(1);
    expect((await store.peek('d')).count).toBe(2);
  });

  it("when a key's window restarts, then it counts as the newest: the key that started longest ago goes first", async () => {
    const time = clock();
    const store = new MemoryCounterStore(time.now, { maxEntries: 3 });
    await store.increment('short', 10);
    await store.increment('b', 60_000);
    await store.increment('c', 60_000);
    time.advance(20);
    await store.increment('short', 60_000); // its first window ended: a new one starts now
    await store.increment('d', 60_000);
    expect(await store.peek('b')).toEqual({ count: 0, ttlMs: 0 });
    expect((await store.peek('short')).count).toBe(1);
    expect((await store.peek('c')).count).toBe(1);
  });

  it('when a flood of distinct keys fills it, then a key held at its limit (a lockout) outlives them, and goes only when nothing else is left', async () => {
    // Found by an attacker: 52,000 logins for made-up names from 520 addresses dropped a live
    // lockout, and the locked account's password could be guessed again.
    const time = clock();
    const store = new MemoryCounterStore(time.now, { maxEntries: 10 });
    for (let guess = 0; guess < 5; guess += 1) expect((await store.reserve('locked', 5, 60_000, `g${guess}`)).reserved).toBe(true);
    for (let key = 0; key < 100; key += 1) await store.reserve(`spray${key}`, 5, 60_000, 'r');
    expect((await store.reserve('locked', 5, 60_000, 'g5')).reserved).toBe(false);
    expect((await store.peek('spray0')).count).toBe(0);
    expect((await store.peek('spray99')).count).toBe(1);

    // Held keys alone: the oldest held goes first, as before.
    const full = new MemoryCounterStore(time.now, { maxEntries: 2 });
    for (const key of ['x', 'y', 'z']) await full.reserve(key, 1, 60_000, 'r');
    expect([(await full.peek('x')).count, (await full.peek('y')).count, (await full.peek('z')).count]).toEqual([0, 1, 1]);
    // A held key's window that ends starts afresh as an ordinary key.
    time.advance(60_001);
    expect(await full.reserve('y', 1, 60_000, 'r2')).toMatchObject({ reserved: true, count: 1 });
    expect(await full.deleteByPrefix('')).toBe(2);
  });

  it('when only ended windows are dropped, then nobody is told; when a live one is, then onFull hears it at most once a minute', async () => {
    const time = clock();
    const notices: number[] = [];
    const store = new MemoryCounterStore(time.now, { maxEntries: 2, onFull: (max) => notices.push(max) });
    await store.increment('a', 10);
    await store.increment('b', 10);
    time.advance(10);
    await store.increment('c', 300_000);
    await store.increment('d', 300_000);
    expect(notices).toEqual([]); // a and b had ended
    await store.increment('e', 300_000); // c was live
    await store.increment('f', 300_000); // d was live: within the minute, no second notice
    expect(notices).toEqual([2]);
    time.advance(60_000);
    await store.increment('g', 300_000); // e is live, and a minute has passed
    expect(notices).toEqual([2, 2]);
  });

  it('when an attacker sprays twice the default bound of distinct keys through a rate limiter, then it holds the bound and still limits the key it is asked about', async () => {
    const time = clock();
    const store = new MemoryCounterStore(time.now);
    const limiter = new FixedWindowRateLimiter(store, { windowMs: 60_000, max: 2, prefix: 'api:', onStoreFailure: 'closed' });
    await Promise.all(Array.from({ length: 2 * MEMORY_COUNTERS_MAX }, (_, i) => limiter.consume(`198.51.${i >> 8}.${i & 255}:${i}`)));
    // The first half was dropped, oldest first; the second half is held.
    expect((await store.peek(`api:198.51.0.0:0`)).count).toBe(0);
    const last = 2 * MEMORY_COUNTERS_MAX - 1;
    expect((await store.peek(`api:198.51.${last >> 8}.${last & 255}:${last}`)).count).toBe(1);
    // A client that keeps asking is limited as configured.
    const decisions = [];
    for (let i = 0; i < 3; i++) decisions.push((await limiter.consume('203.0.113.9')).allowed);
    expect(decisions).toEqual([true, true, false]);
  }, 30_000);

  it('refuses a bound that is not a positive whole number', () => {
    expect(() => new MemoryCounterStore(Date.now, { maxEntries: 0 })).toThrow(RangeError);
    expect(() => new MemoryCounterStore(Date.now, { maxEntries: 1.5 })).toThrow(RangeError);
  });
});
