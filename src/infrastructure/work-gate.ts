import { availableParallelism } from 'node:os';
import { UnavailableError } from '../domain/errors.ts';

/** When a piece of gated work is no longer wanted. */
export interface WorkLimits {
  /** Epoch milliseconds after which nobody awaits the result. */
  deadline?: number | undefined;
  /** Aborts when the caller has gone (its connection closed, its call cancelled). */
  signal?: AbortSignal | undefined;
  /**
   * Work of a caller known not to be one of a crowd (a login from a known device): it waits in a
   * lane of its own, with room of its own, so that a crowd from any number of addresses filling
   * the common queue cannot shut it out (helper 98). The two lanes take turns when both wait: a
   * crowd of known devices (an attacker's own registered accounts) cannot starve the common one.
   */
  priority?: boolean | undefined;
  /**
   * Whose work it is (a listing's caller). Waiting work of different keys takes turns, and one key
   * holds at most half of the queue: one administrator's token sending lists from hundreds of
   * addresses made every other administrator's page wait seconds, or be refused (helper 98).
   * Work without a key shares one, first come, first served.
   */
  key?: string | undefined;
}

/** Gated work running now, in every gate of the process: a shutdown lets it finish before the database closes. */
let gatedWorkRunning = 0;
export function gatedWorkInFlight(): number {
  return gatedWorkRunning;
}

interface Waiting {
  start: () => void;
  refuse: (error: UnavailableError) => void;
  limits: WorkLimits;
  /** Its place in its lane's turns (see FairLane). */
  tag: number;
}

/**
 * Admission control for expensive work (bcrypt hashes; listings, which count every match of their
 * filter in the database): at most `concurrency` run at once, at most `maxWaiting` wait, and work
 * that could not finish before its caller's deadline is refused at once, with a Retry-After,
 * rather than accepted and abandoned later. Work whose caller has gone, or whose deadline passed
 * while it waited, is dropped before it starts. Under overload the machine therefore spends its
 * cores only on answers someone will receive (goodput), and the rest learn immediately that they
 * should come back.
 */
export class WorkGate {
  readonly #concurrency: number;
  readonly #maxWaiting: number;
  readonly #now: () => number;
  readonly #queue = new FairLane();
  /** The priority lane (WorkLimits.priority): bounded by maxWaiting too; the lanes take turns. */
  readonly #priority = new FairLane();
  /** Whether the last work started from a lane came from the priority lane (see #next). */
  #priorityServedLast = false;
  #running = 0;
  /** Moving average of how long one piece of work takes, in milliseconds. */
  #averageMs: number;
  /** Epoch milliseconds by which all work must be done (a shutdown's cut), once one has begun. */
  #finishBy: number | undefined;

  constructor(options: { concurrency?: number; maxWaiting: number; estimateMs: number; now?: () => number }) {
    this.#concurrency = Math.max(1, options.concurrency ?? availableParallelism());
    this.#maxWaiting = options.maxWaiting;
    this.#averageMs = options.estimateMs;
    this.#now = options.now ?? Date.now;
  }

  /** Pieces of work running now. */
  get running(): number {
    return this.#running;
  }

  /** Pieces of work waiting for a slot. */
  get waiting(): number {
    return this.#priority.length + this.#queue.length;
  }

  /** How long one piece of work takes, on average, as measured so far. */
  get averageMs(): number {
    return this.#averageMs;
  }

  /**
   * From now on, work that could not be done by `epochMs` (a shutdown's cut, when the connections
   * still open are closed) is refused: what waits now and could not finish in time is refused at
   * once, with a retry delay, and so is such work arriving later. Its clients learn at once that
   * they should try again (on another replica) instead of waiting to be cut off, and each of
   * their requests cleans up (gives back its idempotency claim) while the database is still there
   * and the shutdown has time to spare, not in the last seconds before it closes.
   */
  finishBy(epochMs: number): void {
    this.#finishBy = Math.min(epochMs, this.#finishBy ?? Number.POSITIVE_INFINITY);
    this.#shedLate();
  }

  /**
   * Refuses the waiting work that could not be done by #finishBy, at the average as it stands:
   * when the drain begins, and again as each piece of work ends (a machine that slows down after
   * SIGTERM makes the estimate longer).
   */
  #shedLate(): void {
    const by = this.#finishBy;
    if (by === undefined) return;
    const now = this.#now();
    const ahead = Math.max(0, this.#running - this.#concurrency + 1);
    // Each lane runs in order, the priority lane first, so what cannot finish in time is a tail.
    let offset = ahead;
    for (const lane of [this.#priority, this.#queue]) {
      const late = lane.entries.findIndex((_, index) => now + this.#finishMs(offset + index) > by);
      offset += lane.length;
      if (late !== -1) for (const entry of lane.entries.splice(late)) entry.refuse(shuttingDown());
    }
  }

  /**
   * Throws what run() would throw for work without a key admitted now, without queueing it: a
   * caller can refuse a request before spending anything else on it (a login's lookups) when its
   * gated work would be refused anyway. Keyed work is left to run(), whose admission may make
   * room by refusing another key's work.
   */
  precheck(limits: WorkLimits): void {
    if (limits.key === undefined) this.#admit(limits);
  }

  /** Runs `work` when a slot is free and it can still be useful; refuses it otherwise. */
  async run<T>(work: () => Promise<T>, limits: WorkLimits = {}): Promise<T> {
    this.#admit(limits);
    if (this.#running >= this.#concurrency) {
      const lane = limits.priority === true ? this.#priority : this.#queue;
      await new Promise<void>((start, refuse) => {
        const entry: Waiting = {
          start: () => {
            lane.left(entry, true);
            start();
          },
          refuse: (error) => {
            lane.left(entry, false);
            refuse(error);
          },
          limits,
          tag: 0,
        };
        lane.push(entry);
        // A caller that leaves gives up its place at once (and its request can clean up, say
        // release its idempotency claim, now rather than when a slot frees).
        const signal = limits.signal;
        if (signal === undefined) return;
        const leave = () => {
          if (!lane.remove(entry)) return;
          entry.refuse(new UnavailableError('The request was abandoned while it waited'));
        };
        signal.addEventListener('abort', leave, { once: true });
        const started = entry.start;
        entry.start = () => {
          signal.removeEventListener('abort', leave);
          started();
        };
      });
    } else {
      this.#running += 1;
    }
    const started = this.#now();
    gatedWorkRunning += 1;
    try {
      return await work();
    } finally {
      gatedWorkRunning -= 1;
      // An exponential moving average: recent load decides, one outlier does not.
      this.#averageMs = 0.8 * this.#averageMs + 0.2 * Math.max(1, this.#now() - started);
      this.#release();
    }
  }

  /**
   * The next waiting work: the lanes take turns while both have some, the priority lane first. A
   * known device waits behind at most one piece of the crowd per piece of its own lane.
   */
  #next(): Waiting | undefined {
    const fromPriority = this.#priority.length > 0 && (this.#queue.length === 0 || !this.#priorityServedLast);
    this.#priorityServedLast = fromPriority;
    return fromPriority ? this.#priority.entries.shift() : this.#queue.entries.shift();
  }

  #admit(limits: WorkLimits): void {
    if (limits.signal?.aborted === true) throw new UnavailableError('The request was abandoned before its work began');
    const lane = limits.priority === true ? this.#priority : this.#queue;
    // Priority work waits behind its own lane and, as the lanes take turns, as much of the other;
    // the rest behind both.
    const before = limits.priority === true ? this.#priority.length + Math.min(this.#queue.length, this.#priority.length + 1) : this.#priority.length + this.#queue.length;
    const finishMs = this.#finishMs(before + Math.max(0, this.#running - this.#concurrency + 1));
    const retryAfterSeconds = Math.max(1, Math.ceil(finishMs / 1000));
    if (this.#finishBy !== undefined && this.#now() + finishMs > this.#finishBy) throw shuttingDown();
    const busy = () => new UnavailableError('The server is busy, please retry shortly', undefined, retryAfterSeconds);
    if (this.#running >= this.#concurrency && limits.key !== undefined) {
      // A key of its own holds at most half of its lane, so that it cannot fill it alone.
      if (lane.waitingOf(limits.key) >= Math.max(1, Math.ceil(this.#maxWaiting / 2))) {
        throw new UnavailableError('Too many of your requests are waiting, please retry shortly', undefined, retryAfterSeconds);
      }
      // A full lane makes room for a key that holds less than another by refusing that other's
      // newest: two keys at half each no longer shut out a third (helper 99), nor an attacker's
      // accounts a known device's owner.
      if (lane.length >= this.#maxWaiting) {
        const evicted = lane.evictForKey(limits.key);
        if (evicted === undefined) throw busy();
        evicted.refuse(busy());
      }
    }
    if (this.#running >= this.#concurrency && lane.length >= this.#maxWaiting) throw busy();
    // Only work that would have to wait is judged by its deadline: a free slot starts it now, and
    // the average alone (which only moves when work completes) must never shut an idle gate.
    if (this.#running >= this.#concurrency && limits.deadline !== undefined && this.#now() + finishMs > limits.deadline) {
      throw new UnavailableError('The server is too busy to answer within the deadline, please retry shortly', undefined, retryAfterSeconds);
    }
  }

  /** How long until work with `ahead` pieces before it is done, at the average so far. */
  #finishMs(ahead: number): number {
    return (Math.ceil(ahead / this.#concurrency) + 1) * this.#averageMs;
  }

  #release(): void {
    for (;;) {
      const next = this.#next();
      if (next === undefined) {
        this.#running -= 1;
        return;
      }
      // The slot passes straight to the next piece of work that is still wanted.
      if (next.limits.signal?.aborted === true) {
        next.refuse(new UnavailableError('The request was abandoned while it waited'));
      } else if (next.limits.deadline !== undefined && this.#now() + this.#averageMs > next.limits.deadline) {
        next.refuse(new UnavailableError('The request could no longer be answered within its deadline', undefined, 1));
      } else if (this.#finishBy !== undefined && this.#now() + this.#averageMs > this.#finishBy) {
        next.refuse(shuttingDown());
      } else {
        next.start();
        this.#shedLate();
        return;
      }
    }
  }
}

/**
 * A queue in which keys take turns (start-time fair queuing). Each key's next piece takes the tag
 * after its last one, or after the present turn when it has none waiting, and the entries are
 * kept in tag order: one key alone is first come, first served; a key that arrives behind another's
 * hundred waits one turn, not a hundred. Work without a key shares one.
 */
class FairLane {
  /** In the order they will start. */
  readonly entries: Waiting[] = [];
  /** The tag of the last work started: the turns' present. */
  #turn = 0;
  /** Per key with work waiting: the tag of its last, and how many wait. */
  readonly #keys = new Map<string, { lastTag: number; waiting: number }>();

  get length(): number {
    return this.entries.length;
  }

  waitingOf(key: string): number {
    return this.#keys.get(key)?.waiting ?? 0;
  }

  push(entry: Waiting): void {
    const key = entry.limits.key ?? '';
    const state = this.#keys.get(key);
    entry.tag = Math.max(this.#turn, state?.lastTag ?? 0) + 1;
    this.#keys.set(key, { lastTag: entry.tag, waiting: (state?.waiting ?? 0) + 1 });
    let index = this.entries.length;
    while (index > 0 && (this.entries[index - 1]?.tag ?? 0) > entry.tag) index -= 1;
    this.entries.splice(index, 0, entry);
  }

  /** Takes `entry` out of the order (its key's count goes when it is refused: see `left`). */
  remove(entry: Waiting): boolean {
    const index = this.entries.indexOf(entry);
    if (index === -1) return false;
    this.entries.splice(index, 1);
    return true;
  }

  /** Work that started or was refused leaves its key's count; started, it moves the present. */
  left(entry: Waiting, started: boolean): void {
    if (started) this.#turn = Math.max(this.#turn, entry.tag);
    const key = entry.limits.key ?? '';
    const state = this.#keys.get(key);
    if (state === undefined) return;
    if (state.waiting <= 1) this.#keys.delete(key);
    else state.waiting -= 1;
  }

  /**
   * For a full lane: the newest entry of the key holding the most, taken out, when that is at
   * least two more than `key` holds; undefined otherwise (the newcomer is the heaviest, or near).
   */
  evictForKey(key: string): Waiting | undefined {
    let heaviest: string | undefined;
    let most = 0;
    for (const [candidate, state] of this.#keys) {
      if (candidate !== key && state.waiting > most) {
        heaviest = candidate;
        most = state.waiting;
      }
    }
    if (heaviest === undefined || most < this.waitingOf(key) + 2) return undefined;
    for (let index = this.entries.length - 1; index >= 0; index -= 1) {
      const entry = this.entries[index];
      if (entry !== undefined && (entry.limits.key ?? '') === heaviest) {
        this.entries.splice(index, 1);
        return entry;
      }
    }
    return undefined;
  }
}

/** The refusal of work that a shutdown would cut off: try again, elsewhere or after the restart. */
function shuttingDown(): UnavailableError {
  return new UnavailableError('The server is shutting down, please retry shortly', undefined, 1);
}
