import { UnavailableError } from '../domain/errors.ts';
import { FixedWindowRateLimiter, type CounterStore } from '../infrastructure/rate-limiter.ts';

const FAILURES = 'login-fail:';
const ATTEMPTS = 'login-account:';

/**
 * Brute-force protection for login, on shared counters:
 * - a per-account attempt budget across all clients (the account rate limit), and
 * - a lockout per account and client address after `maxFailures` failed logins: that client is
 *   refused until the window that began with its first failure ends. Refused attempts are not
 *   counted, so retrying cannot extend a lockout, and a lockout from one address leaves the user
 *   free to log in from another: an attacker cannot lock a user out for good.
 * Callers answer a refusal exactly like a wrong password. If the counters are unreachable
 * (Redis down), login fails closed with UnavailableError rather than opening a window for
 * unthrottled guessing.
 */
export class LoginThrottle {
  readonly #counters: CounterStore;
  readonly #accountLimiter: FixedWindowRateLimiter;
  readonly #maxFailures: number;
  readonly #lockoutMs: number;

  constructor(options: {
    counters: CounterStore;
    maxFailures: number;
    lockoutMs: number;
    accountMaxAttempts: number;
    accountWindowMs: number;
  }) {
    this.#counters = options.counters;
    this.#maxFailures = options.maxFailures;
    this.#lockoutMs = options.lockoutMs;
    this.#accountLimiter = new FixedWindowRateLimiter(options.counters, {
      windowMs: options.accountWindowMs,
      max: options.accountMaxAttempts,
      prefix: ATTEMPTS,
      onStoreFailure: 'closed',
    });
  }

  /** Counts this attempt against the account and says whether it may proceed. */
  async admit(account: string, ipAddress: string | undefined): Promise<boolean> {
    return this.#closedOnFailure(async () => {
      const [budget, failures] = await Promise.all([
        this.#accountLimiter.consume(account),
        this.#counters.peek(failureKey(account, ipAddress)),
      ]);
      return budget.allowed && failures.count < this.#maxFailures;
    });
  }

  async recordFailure(account: string, ipAddress: string | undefined): Promise<void> {
    await this.#closedOnFailure(() => this.#counters.increment(failureKey(account, ipAddress), this.#lockoutMs));
  }

  async recordSuccess(account: string, ipAddress: string | undefined): Promise<void> {
    await this.#closedOnFailure(() => this.#counters.delete(failureKey(account, ipAddress)));
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
      throw new UnavailableError('Login is temporarily unavailable, please try again shortly', error);
    }
  }
}

/** The throttle's name for a login: the user's id when known, else the login as typed. */
export function accountKey(userId: number | undefined, login: string): string {
  return userId === undefined ? `login:${login.toLowerCase()}` : `user:${userId}`;
}

function failureKey(account: string, ipAddress: string | undefined): string {
  return `${FAILURES}${account}|${ipAddress ?? 'unknown'}`;
}
