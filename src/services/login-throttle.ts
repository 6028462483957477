import { createHash, randomBytes } from 'node:crypto';
import { UnavailableError } from '../domain/errors.ts';
import { foldCase } from '../domain/user-mapping.ts';
import type { CounterStore } from '../infrastructure/rate-limiter.ts';

const FAILURES = 'login-fail:';
const ATTEMPTS = 'login-account:';

/** Who is guessing: the name typed, the account it names, the client's address key, and the known device, if any. */
export interface LoginAttempt {
  /** The login as typed (see `loginKey`). */
  name: string;
  /** The account the name belongs to, when one does. */
  userId?: number | undefined;
  /** The client address as throttling counts it (IPv4, or an IPv6 /64: see addressKey). */
  address: string;
  /** The device id of a valid known-device token for this account (see DeviceTokens). */
  device?: string | undefined;
}

/** An attempt that may go on to compare a password; tell the throttle how it ended. */
export interface AdmittedAttempt {
  admitted: true;
  /**
   * The password matched: the attempt's own slot goes back. The failures before it keep theirs
   * until the window ends; were they cleared, a guesser sharing the owner's address (a NAT, a
   * proxy) or holding a copy of the owner's device token would get LOGIN_MAX_FAILURES fresh
   * guesses each time the owner logs in.
   */
  succeeded(): Promise<void>;
  /**
   * No password was compared after all (the server was too busy to, or the caller left): the
   * slot goes back, so overload never counts as guessing against the account.
   */
  abandoned(): Promise<void>;
}

/** An attempt refused before any password was compared. */
export interface RefusedAttempt {
  admitted: false;
  /** Seconds until the counter that refused it expires. */
  retryAfterSeconds: number;
  /**
   * Refused by the account's counters, which the name's did not: a login answers it only after a
   * comparison (a decoy), as it answers a wrong password, so that the refusal does not tell that
   * the name belongs to an account whose other name was guessed at.
   */
  byAccount: boolean;
  /**
   * The decoy could not be compared after all (the hash gate refused it, or the caller left):
   * the name's slot goes back, as an admitted attempt's does, or the counters would end up
   * otherwise than for an unknown name after the same 503 (helper 74).
   */
  abandoned(): Promise<void>;
}

/**
 * Brute-force protection for password checks (login, and a password change's old password), on
 * shared counters. An attempt is admitted only after it has atomically reserved a failure slot,
 * before any password is compared, so guesses sent in parallel cannot all pass a check made
 * before any of them counted: at most `maxFailures` comparisons per lockout window.
 *
 * - Every attempt is counted twice, under the name typed and under the account it belongs to
 *   (for a name no account has, a stand-in of its own): a username and an e-mail of one account
 *   share the account's counters but not their names'. Counted only by the account, the two shared a counter where an
 *   unknown pair had two, and a refusal without a comparison linked a username to its e-mail
 *   (helper 68); counted only by the name, a changed e-mail was a fresh allowance (helper 73).
 *   A refusal by the name's counters is immediate, for known and unknown names alike; one by the
 *   account's alone is `byAccount`, for the caller to answer after a decoy comparison.
 * - A stranger (no known-device token for the account) is limited per name (and account) and
 *   address (`maxFailures` per `lockoutMs`), and strangers together by an attempt budget per name
 *   (and account).
 *   An attempt refused because its address is locked is not charged to the account, so one
 *   address cannot spend the budget that every other client shares.
 * - A known device (a valid device token for this account) is limited per device instead, and
 *   does not draw on the strangers' budget: exhausting it from elsewhere does not lock out a
 *   client the account owner has logged in from before.
 * - A success frees the slots it reserved (its failure slot, and a stranger's of the budget); a
 *   failure keeps them until their windows end.
 *
 * Callers answer a refused login exactly like a wrong password. If the counters are unreachable
 * (Redis down), attempts fail closed with UnavailableError rather than opening a window for
 * unthrottled guessing.
 */
export class LoginThrottle {
  readonly #counters: CounterStore;
  /** The strangers' attempt budget of a name (and account): its size and window. */
  readonly #budget: { max: number; windowMs: number };
  readonly #maxFailures: number;
  readonly #lockoutMs: number;
  readonly #now: () => number;

  constructor(options: { counters: CounterStore; maxFailures: number; lockoutMs: number; accountMaxAttempts: number; accountWindowMs: number; now?: () => number }) {
    this.#counters = options.counters;
    this.#now = options.now ?? Date.now;
    this.#maxFailures = options.maxFailures;
    this.#lockoutMs = options.lockoutMs;
    this.#budget = { max: options.accountMaxAttempts, windowMs: options.accountWindowMs };
  }

  /** Reserves failure slots for this attempt, or says why it may not proceed. */
  async admit(attempt: LoginAttempt): Promise<AdmittedAttempt | RefusedAttempt> {
    const taken: Slot[] = [];
    try {
      const name = await this.#reserve(loginKey(attempt.name), attempt, taken);
      if (!name.reserved) return refused(name.retryAfterMs, false);
      const nameSlots = [...taken];
      // A name no account has is counted a second time as well, under a key of its own that moves
      // in step with the name's: the same counter operations as a known account's, so the time an
      // answer takes (two more Redis round trips, ~0.3 ms) does not tell whether the name exists.
      const account = await this.#reserve(attempt.userId === undefined ? unknownAccountKey(attempt.name) : accountKey(attempt.userId), attempt, taken);
      // The name's slot stays taken: the decoy the caller answers with counts as the failed guess
      // it looks like. So a refusal by the account's budget (strangers spent it) charges the name
      // typed from this client as a failure, the owner's own retries included; giving it back
      // would let one client try an account's other name without end where an unknown name
      // allows LOGIN_MAX_FAILURES, which links the two again (helper 74).
      if (!account.reserved) return { ...refused(account.retryAfterMs, true), abandoned: () => this.#giveBack(nameSlots) };
      // Giving back never fails the attempt: it comes after the work it was for (a session stored,
      // say). A slot the counters' store could not take back is taken back later (#giveBack).
      const giveBack = () => this.#giveBack(taken);
      return { admitted: true, succeeded: giveBack, abandoned: giveBack };
    } catch (error) {
      // The store failed halfway: what this attempt reserved, and the reservation whose answer
      // was lost, go back, since no password was compared. Kept, they locked owners out with the
      // right password for a whole window after Redis flapped (helper 103).
      void this.#giveBack(taken);
      throw closed(error);
    }
  }

  /**
   * A failure slot under `key` for this client, and for a stranger one of the key's attempt
   * budget; each slot is listed in `taken` before it is asked for (a reservation whose answer is
   * lost may have been made) and taken off again when it was refused.
   */
  async #reserve(key: string, attempt: LoginAttempt, taken: Slot[]): Promise<{ reserved: false; retryAfterMs: number } | { reserved: true }> {
    const failures = newSlot(failureKey(key, attempt), this.#now() + this.#lockoutMs);
    taken.push(failures);
    const slot = await this.#counters.reserve(failures.key, this.#maxFailures, this.#lockoutMs, failures.id);
    if (!slot.reserved) {
      taken.pop();
      return { reserved: false, retryAfterMs: slot.ttlMs };
    }
    // A slot belongs to its window: an attempt that ends after the window has closed (a login
    // held up that long) gives nothing back, where it would take a slot of the next window,
    // which may be a guesser's, and hand that guesser one more comparison.
    failures.windowEnds = this.#now() + slot.ttlMs;
    // A stranger's attempt also takes a slot of the budget all strangers share. Like the failure
    // slot it goes back when the attempt succeeds (or the server could not finish it): only
    // guesses spend it. Kept by successes too, an owner's script that logged in 30 times in
    // 15 minutes without keeping its device token was refused with the right password (helper 98).
    if (attempt.device === undefined) {
      const budget = newSlot(ATTEMPTS + key, this.#now() + this.#budget.windowMs);
      taken.push(budget);
      const reserved = await this.#counters.reserve(budget.key, this.#budget.max, this.#budget.windowMs, budget.id);
      if (!reserved.reserved) {
        taken.pop();
        // Not compared, so not a failure of this client: the slot goes back.
        taken.pop();
        await this.#giveBack([failures]);
        return { reserved: false, retryAfterMs: reserved.ttlMs };
      }
      budget.windowEnds = this.#now() + reserved.ttlMs;
    }
    return { reserved: true };
  }

  /**
   * Gives slots back while their windows last. One the store cannot take back now (Redis away) is
   * tried again, a few times, until its window ends: the slot of an attempt the server could not
   * finish is not a guess.
   */
  async #giveBack(slots: readonly Slot[]): Promise<void> {
    for (const slot of slots) {
      if (this.#now() >= slot.windowEnds) continue;
      try {
        await this.#counters.release(slot.key, slot.id);
      } catch {
        this.#releaseLater(slot, 0);
      }
    }
  }

  #releaseLater(slot: Slot, attempt: number): void {
    const pauseMs = RELEASE_RETRY_PAUSES_MS[attempt];
    if (pauseMs === undefined) return;
    setTimeout(() => {
      if (this.#now() >= slot.windowEnds) return;
      this.#counters.release(slot.key, slot.id).catch(() => this.#releaseLater(slot, attempt + 1));
    }, pauseMs).unref();
  }

  /** Lifts every lockout of the account and resets its attempt budget (an administrator's action). */
  clear(account: string): Promise<number> {
    return this.#closedOnFailure(async () => {
      await this.#counters.delete(ATTEMPTS + account);
      return this.#counters.deleteByPrefix(`${FAILURES}${account}|`);
    });
  }

  async #closedOnFailure<T>(work: () => Promise<T>): Promise<T> {
    try {
      return await work();
    } catch (error) {
      throw closed(error);
    }
  }
}

/** The throttle's name for a login as typed, whether an account has it or not. */
export function loginKey(login: string): string {
  return `login:${nameDigest(login)}`;
}

/**
 * A name as a counter key holds it: a digest of its fold (132 bits), not the text. A login names
 * up to 255 characters of the client's choosing, and each guess made four keys with the name in
 * full (~1.3 KB each for a long one: helper 89, 5.7 KB of Redis per 1.1 KB request); now each key
 * is the same short size whatever was typed.
 */
function nameDigest(login: string): string {
  return createHash('sha256').update(foldCase(login)).digest('base64url').slice(0, 22);
}

/** The throttle's name for an account, whichever of its names was typed. */
export function accountKey(userId: number): string {
  return `user:${userId}`;
}

/** What stands for the account of a name that has none (see LoginThrottle.admit). */
function unknownAccountKey(login: string): string {
  return `nouser:${nameDigest(login)}`;
}

function failureKey(key: string, attempt: LoginAttempt): string {
  const client = attempt.device === undefined ? `ip:${attempt.address}` : `device:${attempt.device}`;
  return `${FAILURES}${key}|${client}`;
}

/**
 * A counter this attempt took, or may have (its answer lost), and when its window ends. The
 * reservation is named: giving back one the counter does not hold (refused, or never sent)
 * gives nothing back (helper 170).
 */
interface Slot {
  key: string;
  id: string;
  windowEnds: number;
}

function newSlot(key: string, windowEnds: number): Slot {
  return { key, id: randomBytes(9).toString('base64url'), windowEnds };
}

/** When a slot the store could not take back is tried again, one after another (about a minute in all). */
const RELEASE_RETRY_PAUSES_MS = [2_000, 5_000, 15_000, 40_000];

/** The counters' store (Redis) is out of reach; its client tries to reconnect every 2 s. */
function closed(error: unknown): UnavailableError {
  return new UnavailableError('Login is temporarily unavailable, please try again shortly', error, 2);
}

function refused(ttlMs: number, byAccount: boolean): RefusedAttempt {
  return { admitted: false, retryAfterSeconds: Math.max(1, Math.ceil(ttlMs / 1000)), byAccount, abandoned: async () => undefined };
}
