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
 * Writes that lock a user's row take turns in this process, one at a time per user, before they
 * take a pooled connection. A write waiting on a row lock holds its connection while it waits:
 * with one user's row locked elsewhere (an operator's transaction, a stuck writer), that user's
 * own 40 revoke-alls (or an administrator's 40 updates) held all ten connections for up to 10 s,
 * and every other user's login and point read waited for the pool or was refused 503 (helper
 * 173). Here the rest of a user's writes wait without a connection: one connection per contested
 * row per process. A write waits for its turn at most `waitMs` (the database's lock timeout,
 * DATABASE_LOCK_TIMEOUT_MS, or what its request has left if less) and is then refused as the
 * database would refuse it (503 / `unavailable`, Retry-After: 1); more than 16 waiting for one
 * row are refused at once. Across processes (replicas, split layers) the database's own lock
 * still orders them.
 */
export class RowTurns {
  readonly #rows = new Map<number, Row>();
  readonly #waitMs: number;

  constructor(waitMs: number) {
    this.#waitMs = waitMs;
  }

  async run<T>(userId: number, write: () => Promise<T>): Promise<T> {
    let row = this.#rows.get(userId);
    if (row === undefined) {
      row = { tail: Promise.resolve(), queued: 0 };
      this.#rows.set(userId, row);
    }
    if (row.queued > MAX_WAITING_PER_ROW) throw busy();
    row.queued += 1;
    const before = row.tail;
    let done!: () => void;
    const mine = new Promise<void>((resolve) => {
      done = resolve;
    });
    // The next write waits for this one and for every one before it, whether this one runs or
    // gives up: a write that gave up does not let the next overtake one still running.
    row.tail = before.then(() => mine);
    try {
      await waitFor(before, this.#waitBound());
      return await write();
    } finally {
      done();
      row.queued -= 1;
      if (row.queued === 0 && this.#rows.get(userId) === row) this.#rows.delete(userId);
    }
  }

  /** Writes running or waiting for a row, over every row (for tests and metrics). */
  get queued(): number {
    let total = 0;
    for (const row of this.#rows.values()) total += row.queued;
    return total;
  }

  #waitBound(): number {
    const { deadline } = currentWorkLimits();
    return deadline === undefined ? this.#waitMs : Math.max(0, Math.min(this.#waitMs, deadline - Date.now()));
  }
}

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
