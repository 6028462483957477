import { UnavailableError } from '../domain/errors.ts';
import { foldCase } from '../domain/user-mapping.ts';
import { FixedWindowRateLimiter, type CounterStore } from '../infrastructure/rate-limiter.ts';

const FAILURES = 'login-fail:';
const ATTEMPTS = 'login-account:';

/** Who is guessing: the account, the client's address key, and the known device, if any. */
export interface LoginAttempt {
  /** See `accountKey`. */
  account: string;
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
}

/**
 * Brute-force protection for password checks (login, and a password change's old password), on
 * shared counters. An attempt is admitted only after it has atomically reserved a failure slot,
 * before any password is compared, so guesses sent in parallel cannot all pass a check made
 * before any of them counted: at most `maxFailures` comparisons per lockout window.
 *
 * - A stranger (no known-device token for the account) is limited per account and address
 *   (`maxFailures` per `lockoutMs`), and strangers together by a per-account attempt budget.
 *   An attempt refused because its address is locked is not charged to the account, so one
 *   address cannot spend the budget that every other client shares.
 * - A known device (a valid device token for this account) is limited per device instead, and
 *   does not draw on the strangers' budget: exhausting it from elsewhere does not lock out a
 *   client the account owner has logged in from before.
 * - A success frees the slot it reserved; a failure keeps it until the window ends.
 *
 * Callers answer a refused login exactly like a wrong password. If the counters are unreachable
 * (Redis down), attempts fail closed with UnavailableError rather than opening a window for
 * unthrottled guessing.
 */
export class LoginThrottle {
  readonly #counters: CounterStore;
  readonly #accountLimiter: FixedWindowRateLimiter;
  readonly #maxFailures: number;
  readonly #lockoutMs: number;
  readonly #now: () => number;

  constructor(options: { counters: CounterStore; maxFailures: number; lockoutMs: number; accountMaxAttempts: number; accountWindowMs: number; now?: () => number }) {
    this.#counters = options.counters;
    this.#now = options.now ?? Date.now;
    this.#maxFailures = options.maxFailures;
    this.#lockoutMs = options.lockoutMs;
    this.#accountLimiter = new FixedWindowRateLimiter(options.counters, {
      windowMs: options.accountWindowMs,
      max: options.accountMaxAttempts,
      prefix: ATTEMPTS,
      onStoreFailure: 'closed',
    });
  }

  /** Reserves a failure slot for this attempt, or says why it may not proceed. */
  admit(attempt: LoginAttempt): Promise<AdmittedAttempt | RefusedAttempt> {
    return this.#closedOnFailure(async () => {
      const key = failureKey(attempt);
      const slot = await this.#counters.reserve(key, this.#maxFailures, this.#lockoutMs);
      if (!slot.reserved) return refused(slot.ttlMs);
      if (attempt.device === undefined) {
        const budget = await this.#accountLimiter.consume(attempt.account);
        if (!budget.allowed) {
          // Not compared, so not a failure of this address: the slot goes back.
          await this.#counters.release(key);
          return refused(budget.resetSeconds * 1000);
        }
      }
      // A slot belongs to its window: an attempt that ends after the window has closed (a login
      // held up that long) gives nothing back, where it would take a slot of the next window,
      // which may be a guesser's, and hand that guesser one more comparison.
      const windowEnds = this.#now() + slot.ttlMs;
      // Giving back never fails the attempt: it comes after the work it was for (a session stored,
      // say), and a slot the counters' store could not take back stays counted, the safe side.
      const giveBack = async () => {
        if (this.#now() < windowEnds) await this.#counters.release(key).catch(() => undefined);
      };
      return { admitted: true, succeeded: giveBack, abandoned: giveBack };
    });
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
      // The counters' store (Redis) is out of reach; its client tries to reconnect every 2 s.
      throw new UnavailableError('Login is temporarily unavailable, please try again shortly', error, 2);
    }
  }
}

/** The throttle's name for a login: the user's id when known, else the login as typed. */
export function accountKey(userId: number | undefined, login: string): string {
  return userId === undefined ? `login:${foldCase(login)}` : `user:${userId}`;
}

function failureKey(attempt: LoginAttempt): string {
  const client = attempt.device === undefined ? `ip:${attempt.address}` : `device:${attempt.device}`;
  return `${FAILURES}${attempt.account}|${client}`;
}

function refused(ttlMs: number): RefusedAttempt {
  return { admitted: false, retryAfterSeconds: Math.max(1, Math.ceil(ttlMs / 1000)) };
}
