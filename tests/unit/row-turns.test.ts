// The turns writes take at one user's row before they take a pooled connection (helper 173):
// one at a time per row, others in parallel; a wait bounded as the database's lock wait is.
import { describe, expect, it } from 'vitest';
import { UnavailableError } from '../../src/domain/errors.ts';
import { RowTurns } from '../../src/repositories/row-turns.ts';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** A write that records when it ran and finishes when told. */
function gatedWrite(log: string[], name: string) {
  let finish!: () => void;
  const finished = new Promise<void>((resolve) => {
    finish = resolve;
  });
  return {
    finish: () => finish(),
    write: async () => {
      log.push(`${name} start`);
      await finished;
      log.push(`${name} end`);
      return name;
    },
  };
}

describe('row turns', () => {
  it('when two writes are for one row, then the second starts after the first ends; a write for another row does not wait', async () => {
    const turns = new RowTurns(5_000);
    const log: string[] = [];
    const a = gatedWrite(log, 'a');
    const b = gatedWrite(log, 'b');
    const other = gatedWrite(log, 'other');
    const running = [turns.run(1, [], a.write), turns.run(1, [], b.write), turns.run(2, [], other.write)];
    await sleep(20);
    expect(log).toEqual(['a start', 'other start']);
    a.finish();
    other.finish();
    await sleep(20);
    expect(log).toEqual(['a start', 'other start', 'a end', 'other end', 'b start']);
    b.finish();
    expect(await Promise.all(running)).toEqual(['a', 'b', 'other']);
    expect(turns.queued).toBe(0);
  });

  it('when a write waits longer than the bound, then it is refused as busy, and the write after it still waits for the one running', async () => {
    const turns = new RowTurns(100);
    const log: string[] = [];
    const running = gatedWrite(log, 'running');
    const first = turns.run(7, [], running.write);
    // Its refusal comes during the sleep below, so its outcome is taken now (unhandled otherwise).
    const givesUp = turns
      .run(7, [], async () => 'never')
      .then(
        () => 'served',
        (error: unknown) => error,
      );
    await sleep(60);
    const next = gatedWrite(log, 'next');
    const after = turns.run(7, [], next.write);
    expect(await givesUp).toBeInstanceOf(UnavailableError);
    // The one that gave up does not let the next overtake the write still running.
    expect(log).toEqual(['running start']);
    running.finish();
    await first;
    await sleep(10);
    expect(log).toEqual(['running start', 'running end', 'next start']);
    next.finish();
    expect(await after).toBe('next');
  });

  it("when a user's own writes fill its row's queue, then an administrator's write on that row goes next, not after them", async () => {
    // Helper 213: a user flooding its own row held an administrator's suspension of it behind its
    // writes past the wait bound (503), while the user's writes went on.
    const turns = new RowTurns(400);
    const log: string[] = [];
    const running = gatedWrite(log, 'running');
    const first = turns.run(5, [5], running.write);
    const own = Array.from({ length: 10 }, (_, index) => turns.run(5, [5], async () => log.push(`own ${index}`)).catch((error: unknown) => error));
    const admin = gatedWrite(log, 'admin');
    // The administrator (user 1) acts on user 5, holding a place at its own row and at every administrator's.
    const suspension = turns.run(5, [1, 0], admin.write);
    await sleep(10);
    running.finish();
    await first;
    await sleep(10);
    expect(log).toEqual(['running start', 'running end', 'admin start']);
    admin.finish();
    expect(await suspension).toBe('admin');
    await Promise.all(own);
    expect(log.slice(4)).toEqual(Array.from({ length: 10 }, (_, index) => `own ${index}`));
    expect(turns.queued).toBe(0);
  });

  it('when more than sixty-four writes wait for one row, then the next is refused at once', async () => {
    const turns = new RowTurns(5_000);
    const log: string[] = [];
    const running = gatedWrite(log, 'running');
    const waiting = [turns.run(3, [], running.write), ...Array.from({ length: 64 }, () => turns.run(3, [], async () => 'later'))];
    const started = performance.now();
    await expect(turns.run(3, [], async () => 'refused')).rejects.toBeInstanceOf(UnavailableError);
    expect(performance.now() - started).toBeLessThan(50);
    running.finish();
    expect((await Promise.all(waiting)).length).toBe(65);
  });

  it("when forty writes lock a row they do not target (a caller's, ALL_ADMINS), then none is refused for it, four run at once, and a write targeting that row does not wait for them (helpers 174, 181)", async () => {
    const turns = new RowTurns(5_000);
    const log: string[] = [];
    const gated = Array.from({ length: 40 }, (_, i) => gatedWrite(log, `w${i}`));
    // Forty writes of one caller (row 9) to forty targets: four at once hold places at row 9.
    const bulk = gated.map((write, i) => turns.run(100 + i, [9], write.write));
    await sleep(20);
    expect(log).toEqual(['w0 start', 'w1 start', 'w2 start', 'w3 start']);
    // A write targeting row 9 (its demotion, its refresh) takes the row's turn, not a place.
    expect(await turns.run(9, [], async () => 'own')).toBe('own');
    for (const write of gated) write.finish();
    expect((await Promise.all(bulk)).length).toBe(40);
    expect(turns.queued).toBe(0);
  });
});
