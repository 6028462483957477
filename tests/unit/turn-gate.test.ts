// The turn gate in src/server.ts: requests that arrive together start in groups, one group per
// turn of the event loop, in arrival order, so that the calls each group makes leave this process
// before the next group is handled. Whether that pays is the benchmark's question (README,
// Performance); here, that the gate starts everything, in order, and no more per turn.
import { setImmediate as nextTurn } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { turnGate } from '../../src/server.ts';

describe('turnGate', () => {
  it('when 40 tasks arrive in one turn, then 16 start in it and the rest in the next turns, in order', async () => {
    const admit = turnGate(16);
    const started: number[] = [];
    for (let task = 0; task < 40; task += 1) admit(() => started.push(task));
    expect(started).toEqual(Array.from({ length: 16 }, (_, index) => index));
    await nextTurn();
    expect(started).toHaveLength(32);
    await nextTurn();
    expect(started).toEqual(Array.from({ length: 40 }, (_, index) => index));
  });

  it('when tasks keep arriving while earlier ones wait, then the waiting ones start first', async () => {
    const admit = turnGate(2);
    const started: string[] = [];
    for (const name of ['a', 'b', 'c', 'd']) admit(() => started.push(name));
    await nextTurn();
    admit(() => started.push('e'));
    await nextTurn();
    await nextTurn();
    expect(started).toEqual(['a', 'b', 'c', 'd', 'e']);
  });

  it('when a task throws, then the tasks due with it still start, and the error is thrown on its own', async () => {
    const admit = turnGate(4);
    const started: string[] = [];
    const thrown = new Promise<unknown>((resolve) => process.once('uncaughtException', resolve));
    admit(() => {
      throw new Error('handler failed');
    });
    admit(() => started.push('next'));
    expect(started).toEqual(['next']);
    expect(await thrown).toMatchObject({ message: 'handler failed' });
  });
});
