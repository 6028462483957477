// Admission control for bcrypt: bounded work, refusals at once rather than after the deadline,
// and no work started for callers that are gone.
import { describe, expect, it } from 'vitest';
import { WorkGate } from '../../src/infrastructure/work-gate.ts';

/** Work that finishes when told to. */
function pending(): { work: () => Promise<string>; finish: () => void; started: () => boolean } {
  let resolve: (value: string) => void = () => {
    // Replaced by the promise's resolver below.
  };
  let begun = false;
  return {
    work: () => {
      begun = true;
      return new Promise<string>((done) => (resolve = done));
    },
    finish: () => resolve('done'),
    started: () => begun,
  };
}

const tick = () => new Promise((resolve) => setImmediate(resolve));

describe('WorkGate', () => {
  it('when more work arrives than it may run, then the rest waits, and beyond the queue is refused at once with a retry delay', async () => {
    const gate = new WorkGate({ concurrency: 2, maxWaiting: 1, estimateMs: 200 });
    const jobs = [pending(), pending(), pending()];
    const results = jobs.map((job) => gate.run(job.work));
    await tick();
    expect(jobs.map((job) => job.started())).toEqual([true, true, false]);
    await expect(gate.run(pending().work)).rejects.toMatchObject({ code: 'SERVICE_UNAVAILABLE', retryAfterSeconds: 1 });
    jobs[0]?.finish();
    await tick();
    expect(jobs[2]?.started()).toBe(true);
    jobs[1]?.finish();
    jobs[2]?.finish();
    expect(await Promise.all(results)).toEqual(['done', 'done', 'done']);
  });

  it('when the common queue is full, then priority work still waits in its own lane, and starts before the common queue', async () => {
    // A crowd filling the queue shut a known device's login out (helper 98).
    const gate = new WorkGate({ concurrency: 1, maxWaiting: 2, estimateMs: 200 });
    const crowd = [pending(), pending(), pending()];
    const crowdResults = crowd.map((job) => gate.run(job.work));
    await tick();
    await expect(gate.run(pending().work)).rejects.toMatchObject({ code: 'SERVICE_UNAVAILABLE' });
    const owner = pending();
    const ownerResult = gate.run(owner.work, { priority: true });
    expect(gate.waiting).toBe(3);
    crowd[0]?.finish();
    await tick();
    expect([owner.started(), crowd[1]?.started(), crowd[2]?.started()]).toEqual([true, false, false]);
    owner.finish();
    await tick();
    expect(crowd[1]?.started()).toBe(true);
    crowd[1]?.finish();
    await tick();
    crowd[2]?.finish();
    expect(await ownerResult).toBe('done');
    expect(await Promise.all(crowdResults)).toEqual(['done', 'done', 'done']);
    // Its lane is bounded too.
    const busy = [pending(), pending(), pending()];
    const busyResults = busy.map((job, index) => gate.run(job.work, { priority: index > 0 }));
    await tick();
    await expect(gate.run(pending().work, { priority: true })).rejects.toMatchObject({ code: 'SERVICE_UNAVAILABLE' });
    for (const job of busy) {
      job.finish();
      await tick();
    }
    expect(await Promise.all(busyResults)).toEqual(['done', 'done', 'done']);
  });

  it('when two keys hold half of a full queue each, then a third key still gets in, in place of the newest of the heaviest', async () => {
    // Two administrators' tokens shut out every other administrator (helper 99).
    const gate = new WorkGate({ concurrency: 1, maxWaiting: 8, estimateMs: 20 });
    const runs: Promise<unknown>[] = [];
    const jobs: ReturnType<typeof pending>[] = [];
    const add = (key: string, priority = false) => {
      const job = pending();
      jobs.push(job);
      runs.push(gate.run(job.work, { key, priority }).catch((error: unknown) => error));
    };
    add('a');
    for (let i = 0; i < 4; i += 1) add('a');
    for (let i = 0; i < 4; i += 1) add('b');
    expect(gate.waiting).toBe(8);
    add('c');
    expect(gate.waiting).toBe(8);
    await tick();
    // One of the heaviest keys' newest was refused to make room.
    const outcomes = await Promise.all(runs.slice(1, 9).map((run) => Promise.race([run, Promise.resolve('waiting')])));
    expect(outcomes.filter((outcome) => outcome instanceof Error)).toHaveLength(1);
    // In the priority lane likewise: one account's logins cannot keep another's owner out.
    const lane = new WorkGate({ concurrency: 1, maxWaiting: 3, estimateMs: 20 });
    const holder = pending();
    const held = lane.run(holder.work);
    const attackerJobs = [pending(), pending(), pending()];
    const attacker = attackerJobs.map((job) => lane.run(job.work, { priority: true, key: 'user:1' }).catch((error: unknown) => error));
    // One account holds at most half of the lane (2 of 3): its third login is refused.
    expect(await attacker[2]).toMatchObject({ code: 'SERVICE_UNAVAILABLE' });
    const owner = pending();
    const ownerRun = lane.run(owner.work, { priority: true, key: 'user:2' });
    holder.finish();
    await tick();
    expect(attackerJobs[0]?.started()).toBe(true);
    attackerJobs[0]?.finish();
    await tick();
    // The owner's turn comes before the account's second login.
    expect([owner.started(), attackerJobs[1]?.started()]).toEqual([true, false]);
    owner.finish();
    expect(await ownerRun).toBe('done');
    await tick();
    attackerJobs[1]?.finish();
    await held;
    await Promise.all(attacker);
    for (const job of jobs) job.finish();
  });

  it('when both lanes have work waiting, then they take turns: a crowd in the priority lane (an attacker with accounts of its own) cannot starve the common one', async () => {
    const gate = new WorkGate({ concurrency: 1, maxWaiting: 8, estimateMs: 20 });
    const order: string[] = [];
    const jobs = new Map<string, ReturnType<typeof pending>>();
    const run = (name: string, priority: boolean) => {
      const job = pending();
      jobs.set(name, job);
      return gate.run(() => (order.push(name), job.work()), { priority });
    };
    const runs = [run('c0', false), run('c1', false), run('c2', false), run('p1', true), run('p2', true), run('p3', true)];
    for (let finished = 0; finished < 6; finished += 1) {
      await tick();
      jobs.get(order[finished] ?? '')?.finish();
    }
    await Promise.all(runs);
    expect(order).toEqual(['c0', 'p1', 'c1', 'p2', 'c2', 'p3']);
  });

  it("when one key has many pieces waiting, then another key's piece takes the next turn, and one key holds at most half of the queue", async () => {
    // One administrator's token sending lists from hundreds of addresses made every other
    // administrator's page wait seconds, or be refused (helper 98).
    const gate = new WorkGate({ concurrency: 1, maxWaiting: 8, estimateMs: 20 });
    const order: string[] = [];
    const job = (name: string) => {
      const work = pending();
      return { ...work, work: () => (order.push(name), work.work()) };
    };
    const running = job('a0');
    const runs = [gate.run(running.work, { key: 'a' })];
    const flood = Array.from({ length: 4 }, (_, i) => job(`a${i + 1}`));
    runs.push(...flood.map((each) => gate.run(each.work, { key: 'a' })));
    // Half of the queue (4 of 8) is all one key may hold.
    await expect(gate.run(job('a5').work, { key: 'a' })).rejects.toMatchObject({ code: 'SERVICE_UNAVAILABLE' });
    const other = job('b1');
    runs.push(gate.run(other.work, { key: 'b' }));
    const byName = new Map([running, ...flood, other].map((each, i) => [i === 0 ? 'a0' : i === 5 ? 'b1' : `a${i}`, each]));
    // Each in turn finishes as it starts: the order they started in is the gate's.
    for (let finished = 0; finished < 6; finished += 1) {
      await tick();
      byName.get(order[finished] ?? '')?.finish();
    }
    expect(order).toEqual(['a0', 'a1', 'b1', 'a2', 'a3', 'a4']);
    await Promise.all(runs.map((run) => run.catch(() => undefined)));
    // Without keys (or with one), first come, first served.
    const fifo = new WorkGate({ concurrency: 1, maxWaiting: 8, estimateMs: 20 });
    const seen: number[] = [];
    const jobs = Array.from({ length: 5 }, () => pending());
    const all = jobs.map((each, i) => fifo.run(() => (seen.push(i), each.work())));
    for (let finished = 0; finished < 5; finished += 1) {
      await tick();
      jobs[seen[finished] ?? 0]?.finish();
    }
    await Promise.all(all);
    expect(seen).toEqual([0, 1, 2, 3, 4]);
  });

  it('when work could not finish before its deadline, then it is refused before it waits', async () => {
    let now = 0;
    const gate = new WorkGate({ concurrency: 1, maxWaiting: 10, estimateMs: 200, now: () => now });
    const first = pending();
    const running = gate.run(first.work);
    await expect(gate.run(pending().work, { deadline: now + 300 })).rejects.toMatchObject({ code: 'SERVICE_UNAVAILABLE' });
    const second = pending();
    const accepted = gate.run(second.work, { deadline: now + 1_000 });
    first.finish();
    await running;
    await tick();
    expect(second.started()).toBe(true);
    second.finish();
    await accepted;
    now += 1;
  });

  it('when a waiting caller goes away or its deadline passes while it waits, then its work never starts', async () => {
    let now = 0;
    const gate = new WorkGate({ concurrency: 1, maxWaiting: 10, estimateMs: 100, now: () => now });
    const first = pending();
    const running = gate.run(first.work);
    const gone = new AbortController();
    const abandoned = pending();
    const late = pending();
    const third = gate.run(abandoned.work, { signal: gone.signal });
    const fourth = gate.run(late.work, { deadline: 350 });
    const kept = pending();
    const fifth = gate.run(kept.work);
    gone.abort();
    now = 300;
    first.finish();
    await running;
    await expect(third).rejects.toMatchObject({ code: 'SERVICE_UNAVAILABLE' });
    await expect(fourth).rejects.toMatchObject({ code: 'SERVICE_UNAVAILABLE' });
    await tick();
    expect([abandoned.started(), late.started(), kept.started()]).toEqual([false, false, true]);
    kept.finish();
    await fifth;
  });
});

describe('WorkGate when idle', () => {
  it('when the gate is idle, then work starts even if the average says it would miss the deadline', async () => {
    const gate = new WorkGate({ concurrency: 1, maxWaiting: 10, estimateMs: 60_000 });
    const job = pending();
    const result = gate.run(job.work, { deadline: Date.now() + 1_000 });
    await tick();
    expect(job.started()).toBe(true);
    job.finish();
    await result;
  });
});

describe('WorkGate when a shutdown will cut what is open', () => {
  it('when the process starts to drain, then waiting work that could not be done before the cut is refused at once, and so is such new work', async () => {
    const now = 0;
    const gate = new WorkGate({ concurrency: 1, maxWaiting: 10, estimateMs: 100, now: () => now });
    const first = pending();
    const running = gate.run(first.work);
    const queued = Array.from({ length: 4 }, () => pending());
    const outcomes = queued.map((job) =>
      gate.run(job.work).then(
        () => 'done',
        (error: unknown) => error,
      ),
    );
    // One more hash behind the running one takes ~200 ms; a second one behind it, ~300 ms.
    gate.finishBy(now + 250);
    await tick();
    const refusal = { code: 'SERVICE_UNAVAILABLE', retryAfterSeconds: 1, message: expect.stringContaining('shutting down') };
    const stillWaiting = new Promise((resolve) => setTimeout(resolve, 50, ['still waiting']));
    expect(await Promise.race([Promise.all(outcomes.slice(1)), stillWaiting])).toMatchObject([refusal, refusal, refusal]);
    await expect(gate.run(pending().work)).rejects.toMatchObject(refusal);
    expect(gate.waiting).toBe(1);
    first.finish();
    await running;
    await tick();
    expect(queued.map((job) => job.started())).toEqual([true, false, false, false]);
    queued[0]?.finish();
    expect(await outcomes[0]).toBe('done');
  });
});

describe('WorkGate when work slows down during a shutdown', () => {
  it('when work takes longer than the gate thought as the drain began, then what could no longer be done before the cut is refused as each piece ends, and none starts too late', async () => {
    let now = 0;
    const gate = new WorkGate({ concurrency: 1, maxWaiting: 100, estimateMs: 10, now: () => now });
    const jobs = Array.from({ length: 8 }, () => pending());
    const outcomes = jobs.map((job) =>
      gate.run(job.work).then(
        () => 'done',
        (error: unknown) => (error instanceof Error ? error.message : String(error)),
      ),
    );
    await tick();
    // At 10 ms each, all eight would be done by 100 ms.
    gate.finishBy(100);
    const startedAt: number[] = [];
    // Each piece takes 50 ms; after each, the gate knows more.
    for (const job of jobs) {
      if (!job.started()) break;
      startedAt.push(now);
      now += 50;
      job.finish();
      await tick();
      await tick();
    }
    expect(startedAt.every((at) => at < 100)).toBe(true);
    const settled = await Promise.all(outcomes);
    expect(settled.slice(0, startedAt.length)).toEqual(startedAt.map(() => 'done'));
    expect(settled.slice(startedAt.length).every((outcome) => outcome.includes('shutting down'))).toBe(true);
    expect(startedAt.length).toBeGreaterThan(0);
  });
});
