// The release of a burst's memory once the process is idle: when it collects (decided from the
// event loop's use and the heap's growth), and that the collection it makes in a real process
// gives the heap back.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { IdleMemoryRelease, type IdleMemoryProbes } from '../../src/infrastructure/idle-memory.ts';

const MB = 2 ** 20;

/** Probes whose readings the test sets; a collection brings the heap down to `live`. */
function fakeProbes(start: number) {
  const state = { utilization: 0, heap: start, live: start, collections: 0 };
  const probes: IdleMemoryProbes = {
    utilization: () => state.utilization,
    heapBytes: () => state.heap,
    collect: async () => {
      state.collections += 1;
      state.heap = state.live;
    },
  };
  return { state, probes };
}

describe('releasing memory while idle', () => {
  it('when the heap has grown past the threshold and the loop was idle, then it collects once, and again only after it has grown that much more', async () => {
    const { state, probes } = fakeProbes(60 * MB);
    const release = new IdleMemoryRelease(probes, { growthBytes: 32 * MB });
    // Under load: the heap grows, the loop is busy.
    state.utilization = 0.9;
    state.heap = 300 * MB;
    expect(await release.check()).toBe(false);
    // The load ends.
    state.utilization = 0.001;
    expect(await release.check()).toBe(true);
    expect(state.heap).toBe(60 * MB);
    // Idle on: nothing more to give back.
    for (let i = 0; i < 5; i += 1) expect(await release.check()).toBe(false);
    // A little work, a little growth (under the threshold): left to V8.
    state.heap = 80 * MB;
    expect(await release.check()).toBe(false);
    // A second burst, then idle again.
    state.utilization = 0.8;
    state.heap = 200 * MB;
    expect(await release.check()).toBe(false);
    state.utilization = 0;
    expect(await release.check()).toBe(true);
    expect(state.collections).toBe(2);
  });

  it('when the heap grew without a busy second (start-up), then it does not collect, however idle', async () => {
    const { state, probes } = fakeProbes(60 * MB);
    const release = new IdleMemoryRelease(probes, { growthBytes: 32 * MB });
    state.heap = 200 * MB;
    for (const utilization of [0.2, 0.1, 0, 0]) {
      state.utilization = utilization;
      expect(await release.check()).toBe(false);
    }
    expect(state.collections).toBe(0);
  });

  it('when the loop is busier than the idle share, then it does not collect, however large the heap', async () => {
    const { state, probes } = fakeProbes(60 * MB);
    const release = new IdleMemoryRelease(probes, { growthBytes: 32 * MB, idleUtilization: 0.02 });
    state.heap = 900 * MB;
    for (const utilization of [0.02, 0.05, 0.5, 1]) {
      state.utilization = utilization;
      expect(await release.check()).toBe(false);
    }
    expect(state.collections).toBe(0);
  });

  it("when V8's own collections bring the heap below where it started, then growth is counted from there", async () => {
    const { state, probes } = fakeProbes(100 * MB);
    const release = new IdleMemoryRelease(probes, { growthBytes: 32 * MB });
    state.utilization = 0.5;
    state.heap = 50 * MB;
    expect(await release.check()).toBe(false);
    state.utilization = 0;
    state.heap = 90 * MB;
    state.live = 50 * MB;
    expect(await release.check()).toBe(true);
  });

  it('when a real process has held and dropped a burst of objects and gone idle, then its heap is given back within a few checks', async () => {
    const script = `
      import { getHeapStatistics } from 'node:v8';
      import { IdleMemoryRelease, processProbes } from './src/infrastructure/idle-memory.ts';
      const release = new IdleMemoryRelease(processProbes(), { growthBytes: 32 * 2 ** 20 });
      // A burst, once the event loop runs (its use is what arms the release): objects that live
      // a while (promoted to the old generation), then are dropped.
      await new Promise((resolve) => setTimeout(resolve, 50));
      let held = [];
      for (let round = 0; round < 40; round += 1) {
        held.push(Array.from({ length: 50_000 }, (_, i) => ({ i, text: 'x'.repeat(20) + i })));
        if (held.length > 10) held.shift();
      }
      held = null;
      const peak = getHeapStatistics().total_heap_size;
      let collected = false;
      for (let check = 0; check < 5 && !collected; check += 1) {
        await new Promise((resolve) => setTimeout(resolve, 200));
        collected = await release.check();
      }
      console.log(JSON.stringify({ peak, after: getHeapStatistics().total_heap_size, collected }));
    `;
    const { stdout } = await promisify(execFile)(process.execPath, ['--input-type=module', '-e', script], { cwd: `${import.meta.dirname}/../..` });
    const { peak, after, collected } = JSON.parse(stdout) as { peak: number; after: number; collected: boolean };
    expect(collected).toBe(true);
    expect(peak).toBeGreaterThan(100 * MB);
    // What is left is the process's own (modules, code), not the burst's garbage.
    expect(after).toBeLessThan(peak / 2);
  });
});
