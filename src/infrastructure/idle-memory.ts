// Gives memory back once a burst of load is over. Under load V8 lets the old generation grow to
// several times what is live (objects of requests in flight promoted by the scavenger), and
// keeps the freed pages pooled; its memory reducer then waits for an allocation rate it only
// measures at collections, which an idle server no longer makes, so a replica that took a burst
// kept its peak RSS until the next one (README, Performance: 430 MB idle for minutes, 46 MB live).
// When the event loop has been nearly idle for a whole check and the heap has grown well past
// what the last collection left, one full collection is made through the inspector protocol
// (HeapProfiler.collectGarbage: in-process, no flag, no `gc` global for every dependency to call).
import { Session } from 'node:inspector/promises';
import { performance } from 'node:perf_hooks';
import { getHeapStatistics } from 'node:v8';
import type { Logger } from './logger.ts';

export interface IdleMemoryOptions {
  /** How much the heap must have grown since the last collection this made (or since start). */
  growthBytes: number;
  /** How often the event loop's use is checked; a collection needs one whole check nearly idle. */
  checkEveryMs?: number;
  /** The event loop's share of busy time over a check below which the process counts as idle. */
  idleUtilization?: number;
}

/** What the release reads and does, replaceable in tests. */
export interface IdleMemoryProbes {
  /** Event-loop utilization since the previous call (0–1). */
  utilization(): number;
  /** The V8 heap's total size in bytes (what it holds from the system, pooled pages aside). */
  heapBytes(): number;
  /** A full collection. */
  collect(): Promise<void>;
}

export const DEFAULT_CHECK_EVERY_MS = 1_000;
export const DEFAULT_IDLE_UTILIZATION = 0.02;
/**
 * A check at least this busy arms the next idle collection: only a burst of load is given back,
 * not what start-up left (a start's collection paused a process that was about to be served).
 */
export const BUSY_UTILIZATION = 0.25;

/** The decision, apart from timers: call `check()` once a period; it collects when it should. */
export class IdleMemoryRelease {
  readonly #probes: IdleMemoryProbes;
  readonly #growthBytes: number;
  readonly #idleUtilization: number;
  readonly #onCollected: ((before: number, after: number, ms: number) => void) | undefined;
  #floor: number;
  #collecting = false;
  #armed = false;

  constructor(probes: IdleMemoryProbes, options: IdleMemoryOptions, onCollected?: (before: number, after: number, ms: number) => void) {
    this.#probes = probes;
    this.#growthBytes = options.growthBytes;
    this.#idleUtilization = options.idleUtilization ?? DEFAULT_IDLE_UTILIZATION;
    this.#onCollected = onCollected;
    this.#floor = probes.heapBytes();
  }

  /** Collects when the period just ended was idle and the heap has grown past the floor; true when it did. */
  async check(): Promise<boolean> {
    const utilization = this.#probes.utilization();
    const before = this.#probes.heapBytes();
    // V8's own collections under load may leave the heap below the floor: that is the new floor.
    if (before < this.#floor) this.#floor = before;
    if (utilization >= BUSY_UTILIZATION) this.#armed = true;
    if (!this.#armed || this.#collecting || utilization >= this.#idleUtilization || before - this.#floor < this.#growthBytes) return false;
    this.#collecting = true;
    this.#armed = false;
    const started = performance.now();
    try {
      await this.#probes.collect();
    } finally {
      this.#collecting = false;
    }
    this.#floor = this.#probes.heapBytes();
    this.#onCollected?.(before, this.#floor, performance.now() - started);
    return true;
  }
}

/** The probes of this process: its event loop, its V8 heap, a collection through the inspector. */
export function processProbes(): IdleMemoryProbes {
  let last = performance.eventLoopUtilization();
  return {
    utilization: () => {
      const now = performance.eventLoopUtilization();
      const { utilization } = performance.eventLoopUtilization(now, last);
      last = now;
      return utilization;
    },
    heapBytes: () => getHeapStatistics().total_heap_size,
    collect: async () => {
      const session = new Session();
      session.connect();
      try {
        await session.post('HeapProfiler.collectGarbage');
      } finally {
        session.disconnect();
      }
    },
  };
}

/**
 * Starts the release for this process; returns its stop. A process without the inspector (Node
 * built without it) or a collection that fails logs once and stops checking.
 */
export function releaseMemoryWhenIdle(options: IdleMemoryOptions, logger: Logger): () => void {
  const release = new IdleMemoryRelease(processProbes(), options, (before, after, ms) =>
    logger.debug({ heapBeforeMb: Math.round(before / 2 ** 20), heapAfterMb: Math.round(after / 2 ** 20), pauseMs: Math.round(ms) }, 'heap released while idle'),
  );
  const timer = setInterval(() => {
    release.check().catch((error: unknown) => {
      clearInterval(timer);
      logger.warn({ err: String(error) }, 'releasing memory while idle failed; no longer tried');
    });
  }, options.checkEveryMs ?? DEFAULT_CHECK_EVERY_MS);
  // Never what keeps the process alive.
  timer.unref();
  return () => clearInterval(timer);
}
