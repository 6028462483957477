import { createHmac, hkdfSync, randomBytes, timingSafeEqual } from 'node:crypto';

/** Longer than any token this class issues; longer input is not even parsed, nor carried between layers. */
export const DEVICE_TOKEN_MAX_LENGTH = 200;

/** How many spent tokens a process remembers (about 2 MB at most). */
const SPENT_TOKENS_KEPT = 10_000;

/**
 * Known-device tokens (OWASP's "device cookie"): a client that has logged in to an account before
 * holds a signed token naming that account and a random device id. Login attempts that present
 * one are throttled per device instead of sharing the account-wide budget that strangers draw
 * on, so an attacker who exhausts that budget cannot lock the real owner out.
 *
 * The token is `<userId>.<deviceId>.<expiresAtSeconds>.<HMAC-SHA256>.<HMAC-SHA256>`, signed with a key derived
 * from the JWT secret (HKDF, its own label, so it can never be confused with a JWT signature). It
 * authenticates nothing: it only chooses which lockout counter an attempt is charged to.
 *
 * The signature also covers the account's password hash (not in the token), so a password change
 * retires every token issued before it: each one used to keep its own five guesses per window
 * for its 90 days, and someone who once knew the password could collect as many as it liked.
 *
 * A fifth part, `.<HMAC-SHA256>` under a key of its own, signs the first three alone: it tells
 * whether this server issued the token before the account is looked up (`vouches`), so that a
 * login presenting one is not refused with strangers' before its lookup. Without it, any
 * string in the header bought a database lookup and the throttle's round trips under overload,
 * where a stranger's login is refused for free. Tokens of four parts, issued before, still verify.
 */
export class DeviceTokens {
  readonly #key: Buffer;
  readonly #issuerKey: Buffer;
  readonly #ttlSeconds: number;
  readonly #now: () => number;
  /** Tokens that vouched for a login they did not hold for (see settle), oldest first. */
  readonly #spent = new Set<string>();
  /** Tokens vouching for a login now: one at a time each. */
  readonly #vouching = new Set<string>();

  constructor(options: { secret: string; ttlSeconds: number; now?: () => number }) {
    this.#key = Buffer.from(hkdfSync('sha256', options.secret, 'arcana-cloud', 'known-device-token v1', 32));
    this.#issuerKey = Buffer.from(hkdfSync('sha256', options.secret, 'arcana-cloud', 'known-device-token issuer v1', 32));
    this.#ttlSeconds = options.ttlSeconds;
    this.#now = options.now ?? Date.now;
  }

  get ttlSeconds(): number {
    return this.#ttlSeconds;
  }

  /**
   * A token for `userId` while its password hash is `passwordHash`, keeping `deviceId` when the
   * client already had one for this account.
   */
  issue(userId: number, passwordHash: string, deviceId: string = randomBytes(12).toString('base64url')): string {
    const expiresAt = Math.floor(this.#now() / 1000) + this.#ttlSeconds;
    const payload = `${userId}.${deviceId}.${expiresAt}`;
    return `${payload}.${this.#sign(payload, passwordHash)}.${this.#issued(payload)}`;
  }

  /**
   * Whether `token` is one this server issued, unexpired, for some account: its fifth part checked,
   * without the account (so not whether it still holds for it: see verify).
   */
  vouches(token: string | undefined): boolean {
    if (token === undefined || token.length > DEVICE_TOKEN_MAX_LENGTH) return false;
    const parts = token.split('.');
    if (parts.length !== 5) return false;
    const [user, deviceId, expiresAt, , issued] = parts as [string, string, string, string, string];
    const payload = `${user}.${deviceId}.${expiresAt}`;
    return matches(issued, this.#issued(payload)) && /^\d+$/.test(expiresAt) && Number(expiresAt) * 1000 > this.#now();
  }

  /**
   * Whether `token` vouches for the login it came with until that login's account is known: it
   * must vouch (see vouches), not have been spent, and not vouch for another login at this moment.
   * Every claim is settled. A token of one's own account, sent with logins to any name, otherwise
   * bought a lookup for each while strangers were refused for free (helper 105): now a token
   * buys one lookup, and each token costs a login of its own, hashed.
   */
  claim(token: string | undefined): token is string {
    if (token === undefined || this.#spent.has(token) || this.#vouching.has(token) || !this.vouches(token)) return false;
    this.#vouching.add(token);
    return true;
  }

  /**
   * Ends `token`'s claim: `held` when it verified for the login's account. One that did not (another
   * account's, or retired by a password change) vouches no more in this process.
   */
  settle(token: string, held: boolean): void {
    this.#vouching.delete(token);
    if (held) return;
    if (this.#spent.size >= SPENT_TOKENS_KEPT) {
      const oldest = this.#spent.values().next();
      if (oldest.done !== true) this.#spent.delete(oldest.value);
    }
    this.#spent.add(token);
  }

  /**
   * The device id of a valid, unexpired token issued for `userId` while its password hash was
   * `passwordHash`; undefined for anything else.
   */
  verify(token: string | undefined, userId: number, passwordHash: string): string | undefined {
    if (token === undefined || token.length > DEVICE_TOKEN_MAX_LENGTH) return undefined;
    const parts = token.split('.');
    if (parts.length !== 4 && parts.length !== 5) return undefined;
    const [user, deviceId, expiresAt, signature, issued] = parts as [string, string, string, string, string | undefined];
    const payload = `${user}.${deviceId}.${expiresAt}`;
    if (!matches(signature, this.#sign(payload, passwordHash))) return undefined;
    if (issued !== undefined && !matches(issued, this.#issued(payload))) return undefined;
    if (user !== String(userId) || !/^\d+$/.test(expiresAt) || Number(expiresAt) * 1000 <= this.#now()) return undefined;
    return deviceId;
  }

  #sign(payload: string, passwordHash: string): string {
    return createHmac('sha256', this.#key).update(payload).update('\n').update(passwordHash).digest('base64url');
  }

  #issued(payload: string): string {
    return createHmac('sha256', this.#issuerKey).update(payload).digest('base64url');
  }
}

function matches(presented: string, expected: string): boolean {
  const a = Buffer.from(presented);
  const b = Buffer.from(expected);
  return a.length === b.length && timingSafeEqual(a, b);
}

/** When a token says it expires (seconds since the epoch), unverified: for a cookie's Max-Age. */
export function deviceTokenExpiry(token: string): number | undefined {
  const expiresAt = token.split('.')[2];
  return expiresAt !== undefined && /^\d{1,12}$/.test(expiresAt) ? Number(expiresAt) : undefined;
}
