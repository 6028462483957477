import { UnavailableError } from '../domain/errors.ts';
import { currentWorkLimits } from '../infrastructure/call-context.ts';

/** More writes than this waiting for their target's row are refused at once. */
const MAX_WAITING_PER_ROW = 64;
/** Writes that may lock at once a row they do not target (a caller's, ALL_ADMINS). */
const SHARED_PER_ROW = 4;

interface Row {
  /** Whether a write holds the row's turn. */
  busy: boolean;
  /** Writes running or waiting for the row. */
  queued: number;
  /** Writes by another user (an administrator's on this user), handed the turn first. */
  others: (() => void)[];
  /** The row's own user's writes (and those with no caller: logins, refreshes), in order. */
  own: (() => void)[];
}

interface Shared {
  /** Writes holding one of the row's SHARED_PER_ROW places. */
  running: number;
  /** Writes waiting for a place, first come first served; each is handed its place. */
  waiting: (() => void)[];
}

/**
 * Writes that lock a user's row take turns in this process, before they take a pooled connection.
 * A write waiting on a row lock holds its connection while it waits: with one user's row locked
 * elsewhere (an operator's transaction, a stuck writer), that user's own 40 revoke-alls (or an
 * administrator's 40 updates) held all ten connections for up to 10 s, and every other user's
 * login and point read waited for the pool or was refused 503 (helper 173).
 *
 * - A write's target row: one write at a time per row; the rest wait without a connection, and
 *   more than 64 waiting for one row are refused at once (with 16, twenty verifications of one
 *   user sent together, which the database had ordered, lost three to it). Writes by another user
 *   (an administrator's) go before the row's own user's waiting writes (see #take).
 * - The rows it locks besides (the caller it acts for; for a write that may remove an
 *   administrator, every administrator's: ALL_ADMINS): at most SHARED_PER_ROW writes at once
 *   per row. Not taken at all, an administrator's 40 updates of 40 users while its own row was
 *   held elsewhere took 40 connections (helper 174); taken as a turn, one at a time and under the
 *   bound of 16, an administrator's 40 verifications with nothing locked anywhere had 23 refused
 *   (helper 181), and a write waiting in the database for its target held the caller's turn, so
 *   a demotion of that caller waited behind it where the database would have let it through.
 *
 * The target's turn comes first, then the other places in ascending order, and a write holding
 * any of them waits only for places (never for a turn), so no two writes wait for each other. A
 * write waits at most half of `waitMs` in all (the database's lock timeout,
 * DATABASE_LOCK_TIMEOUT_MS, or what its request has left if less; see #waitBound) and is then refused as the database would refuse it (503 /
 * `unavailable`, Retry-After: 1). Across processes (replicas, split layers) the database's own
 * locks still order them.
 */
export class RowTurns {
  readonly #rows = new Map<number, Row>();
  readonly #shared = new Map<number, Shared>();
  readonly #waitMs: number;

  constructor(waitMs: number) {
    this.#waitMs = waitMs;
  }

  /**
   * Runs `write` holding the turn of its target's row and places at the rows `also` (the
   * caller's, or ALL_ADMINS), which it locks too.
   */
  async run<T>(target: number | undefined, also: readonly number[], write: () => Promise<T>): Promise<T> {
    const giveUpAt = Date.now() + this.#waitBound();
    const held: (() => void)[] = [];
    try {
      if (target !== undefined)
        held.push(
          await this.#take(
            target,
            giveUpAt,
            also.some((key) => key !== target && key !== ALL_ADMINS),
          ),
        );
      for (const key of [...new Set(also)].filter((key) => key !== target).sort((a, b) => a - b)) held.push(await this.#place(key, giveUpAt));
      return await write();
    } finally {
      for (const release of held.reverse()) release();
    }
  }

  /** Writes running or waiting for a row, over every row (for tests and metrics). */
  get queued(): number {
    let total = 0;
    for (const row of this.#rows.values()) total += row.queued;
    for (const shared of this.#shared.values()) total += shared.running + shared.waiting.length;
    return total;
  }

  /**
   * Waits for the row's turn until `giveUpAt`; returns what gives it to the next write. A write by
   * another user (`byOther`: an administrator suspending, demoting or ending the sessions of this
   * one) is handed the turn before the row's own user's waiting writes: first come first served,
   * a user flooding its own row with profile writes held an administrator's suspension of it
   * behind up to 64 of them, past the wait bound, and it failed 503 while the user's writes went
   * on (helper 213: 4 of 22 suspensions). A write that gives up leaves the queue; the next waits
   * for the write still running all the same.
   */
  async #take(key: number, giveUpAt: number, byOther: boolean): Promise<() => void> {
    let row = this.#rows.get(key);
    if (row === undefined) {
      row = { busy: false, queued: 0, others: [], own: [] };
      this.#rows.set(key, row);
    }
    if (row.queued > MAX_WAITING_PER_ROW) throw busy();
    const entry = row;
    entry.queued += 1;
    const release = () => {
      entry.queued -= 1;
      const next = entry.others.shift() ?? entry.own.shift();
      if (next !== undefined) next();
      else {
        entry.busy = false;
        if (entry.queued === 0 && this.#rows.get(key) === entry) this.#rows.delete(key);
      }
    };
    if (!entry.busy) {
      entry.busy = true;
      return release;
    }
    await waitInQueue(byOther ? entry.others : entry.own, giveUpAt, () => {
      entry.queued -= 1;
      if (entry.queued === 0 && this.#rows.get(key) === entry) this.#rows.delete(key);
    });
    return release;
  }

  /** Waits for one of the row's SHARED_PER_ROW places until `giveUpAt`; returns what gives it back. */
  async #place(key: number, giveUpAt: number): Promise<() => void> {
    let shared = this.#shared.get(key);
    if (shared === undefined) {
      shared = { running: 0, waiting: [] };
      this.#shared.set(key, shared);
    }
    const entry = shared;
    const release = () => {
      const next = entry.waiting.shift();
      if (next !== undefined) {
        next();
        return;
      }
      entry.running -= 1;
      if (entry.running === 0 && this.#shared.get(key) === entry) this.#shared.delete(key);
    };
    if (entry.running < SHARED_PER_ROW) {
      entry.running += 1;
      return release;
    }
    await waitInQueue(entry.waiting, giveUpAt);
    return release;
  }

  /**
   * Half the lock timeout (or what the request has left, if less): the write ahead, when the row
   * is locked elsewhere, waits the whole lock timeout and fails, and a write that got its turn
   * just after would then wait as long again, and succeed once the lock was gone, where the
   * database alone had refused them all together (five suspensions at once while the sessions'
   * rows were held: one went through; test `admin-sessions`, layered-http).
   */
  #waitBound(): number {
    const bound = this.#waitMs / 2;
    const { deadline } = currentWorkLimits();
    return deadline === undefined ? bound : Math.max(0, Math.min(bound, deadline - Date.now()));
  }
}

/** The places of every active administrator's row, for writes that may remove one (see guardWrite). */
export const ALL_ADMINS = 0;

function busy(): UnavailableError {
  return new UnavailableError('The database is busy; try again', undefined, 1);
}

/**
 * Waits in `queue` until handed its turn (the function it queued is called), or until `giveUpAt`:
 * then it leaves the queue, `onGiveUp` runs, and it is refused as busy.
 */
function waitInQueue(queue: (() => void)[], giveUpAt: number, onGiveUp?: () => void): Promise<void> {
  return new Promise((resolve, reject) => {
    const handed = () => {
      clearTimeout(timer);
      resolve();
    };
    const timer = setTimeout(
      () => {
        const at = queue.indexOf(handed);
        if (at >= 0) queue.splice(at, 1);
        onGiveUp?.();
        reject(busy());
      },
      Math.max(0, giveUpAt - Date.now()),
    );
    queue.push(handed);
  });
}
