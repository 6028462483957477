// The repositories of the process that holds the database start no call for a request out of
// time or abandoned (src/repositories/request-time.ts); the database-stall suite shows the effect
// on a real database, this the rule's edges: what counts as out of time, and what is exempt.
import { describe, expect, it } from 'vitest';
import { UnavailableError } from '../../src/domain/errors.ts';
import { detachedFromRequest, runWithCallContext, uninterrupted } from '../../src/infrastructure/call-context.ts';
import { withinRequestTime } from '../../src/repositories/request-time.ts';

/** A repository that counts the calls it starts, with an inherited method as a subclass has. */
class Counting {
  started = 0;
  async read(id: number): Promise<number> {
    this.started += 1;
    return id;
  }
}
class Derived extends Counting {
  async write(id: number): Promise<number> {
    return (await this.read(id)) + 1;
  }
}

const at = (context: { deadline?: number; signal?: AbortSignal }, work: () => Promise<unknown>) => runWithCallContext({ requestId: 'r', ...context }, work);

describe('repository calls and the request they serve', () => {
  it('when the request has time and a caller, or there is no request (start-up, jobs), then every call runs', async () => {
    const inner = new Derived();
    const repository = withinRequestTime(inner);
    expect(await repository.read(1)).toBe(1);
    expect(await at({ deadline: Date.now() + 10_000, signal: new AbortController().signal }, () => repository.write(2))).toBe(3);
    expect(inner.started).toBe(2);
  });

  it('when the deadline has passed or the caller has gone, then no call starts, and each is refused as unavailable', async () => {
    const inner = new Derived();
    const repository = withinRequestTime(inner);
    const gone = new AbortController();
    gone.abort();
    const refusals = await Promise.all([
      at({ deadline: Date.now() - 1 }, () => repository.read(1)).catch((error: unknown) => error),
      at({ deadline: Date.now() }, () => repository.write(1)).catch((error: unknown) => error),
      at({ signal: gone.signal }, () => repository.read(1)).catch((error: unknown) => error),
    ]);
    for (const refusal of refusals) expect(refusal).toBeInstanceOf(UnavailableError);
    expect(refusals.map((refusal) => (refusal as UnavailableError).retryAfterSeconds)).toEqual([1, 1, 1]);
    expect(inner.started).toBe(0);
  });

  it('when the work is past its point of no return (uninterrupted) or detached from the request (a job), then it runs though the request is out of time', async () => {
    const inner = new Counting();
    const repository = withinRequestTime(inner);
    const gone = new AbortController();
    gone.abort();
    await at({ deadline: Date.now() - 1, signal: gone.signal }, async () => {
      expect(await uninterrupted(() => repository.read(1))).toBe(1);
      expect(await detachedFromRequest(() => repository.read(2))).toBe(2);
    });
    expect(inner.started).toBe(2);
  });

  it('when a call is refused, then the refusal is a rejected promise, so a caller’s .catch takes it', async () => {
    const repository = withinRequestTime(new Counting());
    const caught = await at({ deadline: 0 }, () => repository.read(1).catch(() => 'caught'));
    expect(caught).toBe('caught');
  });
});
