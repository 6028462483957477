import { describe, expect, it } from 'vitest';
import { sharedCheck } from '../../src/rpc/readiness.ts';

describe('sharedCheck', () => {
  it('when callers ask while a check runs, then they share its outcome; once it has ended, the next caller runs it again', async () => {
    let runs = 0;
    let fail = true;
    const check = sharedCheck(async () => {
      runs += 1;
      await new Promise((resolve) => setTimeout(resolve, 20));
      if (fail) throw new Error('database down');
    });
    const first = await Promise.allSettled([check(), check(), check()]);
    expect(runs).toBe(1);
    expect(first.map((outcome) => outcome.status)).toEqual(['rejected', 'rejected', 'rejected']);

    // The failure is not remembered: the dependency came back, and the next probe says so.
    fail = false;
    await expect(Promise.all([check(), check()])).resolves.toEqual([undefined, undefined]);
    expect(runs).toBe(2);
  });

  it('when the check throws before it returns a promise, then callers get a rejection, not an exception', async () => {
    const check = sharedCheck(() => {
      throw new Error('not configured');
    });
    await expect(check()).rejects.toThrow('not configured');
  });

  it('when the check hangs, then every probe fails at the deadline, and no second run starts until the first ends', async () => {
    let runs = 0;
    let finish: (() => void) | undefined;
    const check = sharedCheck(async () => {
      runs += 1;
      await new Promise<void>((resolve) => (finish = resolve));
    }, 50);
    const first = await Promise.allSettled([check(), check()]);
    expect(first.map((outcome) => outcome.status)).toEqual(['rejected', 'rejected']);
    await expect(check()).rejects.toThrow(/within 50 ms/);
    expect(runs).toBe(1);
    finish?.();
    await new Promise((resolve) => setTimeout(resolve, 10));
    const again = check();
    await new Promise((resolve) => setTimeout(resolve, 5));
    finish?.();
    await expect(again).resolves.toBeUndefined();
    expect(runs).toBe(2);
  });
});
