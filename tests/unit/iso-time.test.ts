import { describe, expect, it } from 'vitest';
import { isoTime } from '../../src/domain/iso-time.ts';

const utc = (text: string) => Date.parse(text);

describe('isoTime', () => {
  it('writes what toISOString writes at the edges of days, months, leap years and the range', () => {
    const edges = [
      0,
      1,
      999,
      utc('1970-12-31T23:59:59.999Z'),
      utc('1972-02-29T12:00:00.000Z'),
      utc('2000-02-29T23:59:59.999Z'), // a 400-year leap day
      utc('2000-03-01T00:00:00.000Z'),
      utc('2100-02-28T23:59:59.999Z'), // 2100 is not a leap year
      utc('2100-03-01T00:00:00.000Z'),
      utc('2026-11-29T00:16:26.192Z'),
      utc('2038-01-19T03:14:08.000Z'), // past 32-bit seconds
      utc('9999-12-31T23:59:59.999Z'),
    ];
    for (const ms of edges) expect(isoTime(ms), String(ms)).toBe(new Date(ms).toISOString());
  });

  it('agrees with toISOString on 200,000 random instants between 1970 and 9999', () => {
    // A fixed seed (xorshift) so a failure names an instant that can be replayed.
    let state = 0x2545f491;
    const next = () => {
      state ^= state << 13;
      state ^= state >>> 17;
      state ^= state << 5;
      return (state >>> 0) / 2 ** 32;
    };
    for (let i = 0; i < 200_000; i++) {
      const ms = Math.floor(next() * 253_402_300_800_000);
      if (isoTime(ms) !== new Date(ms).toISOString()) expect(isoTime(ms), String(ms)).toBe(new Date(ms).toISOString());
    }
  });

  it('leaves times outside 1970–9999, and fractions of a millisecond, to the engine', () => {
    for (const ms of [-1, utc('1969-07-20T20:17:40.000Z'), utc('+010000-01-01T00:00:00.000Z'), 1.5, 8.64e15]) {
      expect(isoTime(ms)).toBe(new Date(ms).toISOString());
    }
    expect(() => isoTime(Number.NaN)).toThrow(RangeError);
  });
});
