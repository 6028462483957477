import { UnavailableError } from '../domain/errors.ts';
import { currentWorkLimits } from '../infrastructure/call-context.ts';

/** More writes than this waiting for one user's row are refused at once. */
const MAX_WAITING_PER_ROW = 16;

interface Row {
  /** Settles when the last write queued for the row is done (or has given up waiting). */
  tail: Promise<void>;
  /** Writes running or waiting for the row. */
  queued: number;
}

/**
 * Writes that lock a user's row take turns in this process, one at a time per row, before they
 * take a pooled connection. A write waiting on a row lock holds its connection while it waits:
 * with one user's row locked elsewhere (an operator's transaction, a stuck writer), that user's
 * own 40 revoke-alls (or an administrator's 40 updates) held all ten connections for up to 10 s,
 * and every other user's login and point read waited for the pool or was refused 503 (helper
 * 173). Here the rest of a row's writes wait without a connection: one connection per contested
 * row per process. A write takes the turns of every row it locks (the target, the caller it
 * acts for, and for a write that may remove an administrator, every administrator's: ALL_ADMINS),
 * in ascending order so that two writes never each hold a turn the other waits for: keyed by its
 * target alone, an administrator's 40 updates of 40 users while the administrator's own row was
 * held took 40 connections again (helper 174). A write waits for its turns at most `waitMs` in
 * all (the database's lock timeout, DATABASE_LOCK_TIMEOUT_MS, or what its request has left if
 * less) and is then refused as the database would refuse it (503 / `unavailable`, Retry-After:
 * 1); more than 16 waiting for one row are refused at once. Across processes (replicas, split
 * layers) the database's own lock still orders them.
 */
export class RowTurns {
  readonly #rows = new Map<number, Row>();
  readonly #waitMs: number;

  constructor(waitMs: number) {
    this.#waitMs = waitMs;
  }

  /** Runs `write` holding the turns of the rows `ids` (user ids, or ALL_ADMINS). */
  async run<T>(ids: number | readonly number[], write: () => Promise<T>): Promise<T> {
    const keys = [...new Set(typeof ids === 'number' ? [ids] : ids)].sort((a, b) => a - b);
    const giveUpAt = Date.now() + this.#waitBound();
    const held: (() => void)[] = [];
    try {
      for (const key of keys) held.push(await this.#take(key, giveUpAt));
      return await write();
    } finally {
      for (const release of held.reverse()) release();
    }
  }

  /** Writes running or waiting for a row, over every row (for tests and metrics). */
  get queued(): number {
    let total = 0;
    for (const row of this.#rows.values()) total += row.queued;
    return total;
  }

  /** Waits for the row's turn until `giveUpAt`; returns what gives it to the next write. */
  async #take(key: number, giveUpAt: number): Promise<() => void> {
    let row = this.#rows.get(key);
    if (row === undefined) {
      row = { tail: Promise.resolve(), queued: 0 };
      this.#rows.set(key, row);
    }
    if (row.queued > MAX_WAITING_PER_ROW) throw busy();
    const entry = row;
    entry.queued += 1;
    const before = entry.tail;
    let done!: () => void;
    const mine = new Promise<void>((resolve) => {
      done = resolve;
    });
    // The next write waits for this one and for every one before it, whether this one runs or
    // gives up: a write that gave up does not let the next overtake one still running.
    entry.tail = before.then(() => mine);
    const release = () => {
      done();
      entry.queued -= 1;
      if (entry.queued === 0 && this.#rows.get(key) === entry) this.#rows.delete(key);
    };
    try {
      await waitFor(before, Math.max(0, giveUpAt - Date.now()));
    } catch (error) {
      release();
      throw error;
    }
    return release;
  }

  #waitBound(): number {
    const { deadline } = currentWorkLimits();
    return deadline === undefined ? this.#waitMs : Math.max(0, Math.min(this.#waitMs, deadline - Date.now()));
  }
}

/** The turn of every active administrator's row, for writes that may remove one (see guardWrite). */
export const ALL_ADMINS = 0;

function busy(): UnavailableError {
  return new UnavailableError('The database is busy; try again', undefined, 1);
}

async function waitFor(turn: Promise<void>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<'late'>((resolve) => {
    timer = setTimeout(resolve, ms, 'late');
  });
  try {
    if ((await Promise.race([turn, late])) === 'late') throw busy();
  } finally {
    clearTimeout(timer);
  }
}
