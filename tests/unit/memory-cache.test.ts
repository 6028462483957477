import { describe, expect, it } from 'vitest';
import { entryBytes, MemoryCache } from '../../src/infrastructure/cache.ts';

const profile = (id: number) => ({ id, username: `user${id}`, createdAt: new Date(0) });
const bytesOf = (id: number) => entryBytes(`user:${id}`, JSON.stringify(profile(id)));

describe('MemoryCache bounds', () => {
  it('when more entries are written than the entry bound, then the oldest written are dropped and the newest kept', async () => {
    const cache = new MemoryCache(Date.now, { maxEntries: 3, maxBytes: 1e9 });
    for (let id = 1; id <= 5; id += 1) await cache.set(`user:${id}`, profile(id), 60);
    expect(cache.size.entries).toBe(3);
    expect(await cache.get('user:1')).toBeUndefined();
    expect(await cache.get('user:2')).toBeUndefined();
    expect(await cache.get('user:5')).toEqual(profile(5));
  });

  it('when entries would exceed the byte bound, then the oldest are dropped until the new one fits', async () => {
    const cache = new MemoryCache(Date.now, { maxEntries: 1000, maxBytes: bytesOf(1) * 2 + bytesOf(10) - 1 });
    await cache.set('user:1', profile(1), 60);
    await cache.set('user:2', profile(2), 60);
    await cache.set('user:10', profile(10), 60);
    expect(await cache.get('user:1')).toBeUndefined();
    expect(await cache.get('user:2')).toEqual(profile(2));
    expect(await cache.get('user:10')).toEqual(profile(10));
    expect(cache.size.bytes).toBe(bytesOf(2) + bytesOf(10));
  });

  it('when an entry is rewritten or deleted, then its bytes are counted once or not at all', async () => {
    const cache = new MemoryCache(Date.now, { maxEntries: 10, maxBytes: 1e9 });
    await cache.set('user:1', profile(1), 60);
    await cache.set('user:1', profile(1), 60);
    expect(cache.size).toEqual({ entries: 1, bytes: bytesOf(1) });
    await cache.delete('user:1');
    expect(cache.size).toEqual({ entries: 0, bytes: 0 });
  });

  it('when one entry is larger than the whole byte bound, then it is not cached and nothing else is dropped', async () => {
    const cache = new MemoryCache(Date.now, { maxEntries: 10, maxBytes: bytesOf(1) + 10 });
    await cache.set('user:1', profile(1), 60);
    await cache.set('big', { text: 'x'.repeat(1000) }, 60);
    expect(await cache.get('big')).toBeUndefined();
    expect(await cache.get('user:1')).toEqual(profile(1));
  });
});
