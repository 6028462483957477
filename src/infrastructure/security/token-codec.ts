import { createHash, createHmac, createSecretKey, randomUUID, timingSafeEqual, type KeyObject } from 'node:crypto';
import jwt from 'jsonwebtoken';
import { AuthenticationError } from '../../domain/errors.ts';

export type TokenType = 'access' | 'refresh';

export interface TokenClaims {
  userId: number;
  tokenType: TokenType;
  jti: string;
  expiresAt: Date;
  /** SHA-256 (hex) of the token: what the database stores and looks it up by (see hashToken). */
  hash: string;
  /** A refresh token's login chain (`fam`), when it was issued with one. */
  familyId?: string | undefined;
}

/** A token whose signature, header, issuer and audience passed, with its claims and hash. */
interface VerifiedToken {
  payload: Readonly<Record<string, unknown>>;
  hash: string;
}

/**
 * How many verified tokens TokenCodec remembers (about 0.7 KB each). Enough for every client of a
 * busy process to present the same token many times between two verifications of it.
 */
const VERIFIED_TOKENS_KEPT = 4096;

export interface TokenCodecOptions {
  secret: string;
  issuer: string;
  audience: string;
  accessTtlSeconds: number;
  refreshTtlSeconds: number;
}

export interface IssuedPair {
  accessToken: string;
  refreshToken: string;
  accessTokenHash: string;
  refreshTokenHash: string;
  accessExpiresAt: Date;
  refreshExpiresAt: Date;
  /** The access token's lifetime in seconds, as capped. */
  accessTtlSeconds: number;
}

/** A compact JWS as jws accepts it: header.payload.signature in base64url, the signature present. */
const JWS_SHAPE = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/;
/** A login chain's id as `randomUUID` writes it. */
const CHAIN_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** A base64url part decoded as a JSON object, or undefined when it is not one. */
function parseJsonObject(part: string): Record<string, unknown> | undefined {
  try {
    const value: unknown = JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
    return typeof value === 'object' && value !== null && !Array.isArray(value) ? (value as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

/** jsonwebtoken's time checks at `now` (seconds): not before `nbf`, and before `exp`. */
function inTime(payload: Readonly<Record<string, unknown>>, now: number): boolean {
  if (typeof payload.nbf === 'number' && payload.nbf > now) return false;
  if (typeof payload.exp === 'number' && now >= payload.exp) return false;
  return true;
}

/** SHA-256 (hex) of a token: what the database stores and looks tokens up by. */
export function hashToken(token: string): string {
  return createHash('sha256').update(token).digest('hex');
}

/**
 * Signs and verifies the HS256 JWTs. The secret is a KeyObject because jsonwebtoken re-imports a
 * string secret on every call, which costs ~400 µs instead of ~5 µs.
 */
export class TokenCodec {
  readonly #key: KeyObject;
  readonly #options: TokenCodecOptions;
  /**
   * Tokens that passed every check but the time-dependent ones, oldest first. A client presents
   * the same access token on every request until it expires, and its HMAC, two base64url + JSON
   * decodes and SHA-256 were 6-7 % of a warm authenticated GET's CPU. Only a token that verified
   * gets here, keyed by its exact text, so an entry cannot vouch for any other string; `nbf` and
   * `exp` are still checked on every use, and revocation is the caller's check, as before.
   */
  readonly #verified = new Map<string, VerifiedToken>();

  constructor(options: TokenCodecOptions) {
    this.#key = createSecretKey(Buffer.from(options.secret, 'utf8'));
    this.#options = options;
  }

  get accessTtlSeconds(): number {
    return this.#options.accessTtlSeconds;
  }

  /**
   * Signs an access and a refresh token. `notAfter` caps both lifetimes: a session's absolute end,
   * which no refresh may extend. The refresh token names its login chain (`familyId`, as the `fam`
   * claim), so that one whose row the purge has removed still says which chain it was stolen from.
   */
  issuePair(userId: number, now = new Date(), notAfter?: Date, familyId?: string): IssuedPair {
    const seconds = Math.floor(now.getTime() / 1000);
    const limit = notAfter === undefined ? Number.POSITIVE_INFINITY : Math.floor(notAfter.getTime() / 1000) - seconds;
    const refreshTtl = Math.max(1, Math.min(this.#options.refreshTtlSeconds, limit));
    // Never past its session's end (the refresh token's), whatever the options say (see config.ts).
    const accessTtl = Math.max(1, Math.min(this.#options.accessTtlSeconds, refreshTtl));
    const accessToken = this.#sign(userId, 'access', accessTtl);
    const refreshToken = this.#sign(userId, 'refresh', refreshTtl, familyId);
    return {
      accessToken,
      refreshToken,
      accessTokenHash: hashToken(accessToken),
      refreshTokenHash: hashToken(refreshToken),
      accessExpiresAt: new Date((seconds + accessTtl) * 1000),
      refreshExpiresAt: new Date((seconds + refreshTtl) * 1000),
      accessTtlSeconds: accessTtl,
    };
  }

  /**
   * Verifies signature, algorithm, issuer, audience, expiry and the expected token type. The
   * checks are jsonwebtoken's `verify(token, key, { algorithms: ['HS256'], issuer, audience })`,
   * made directly with node:crypto: that call took about 13-30 µs of every authenticated request
   * (9% of a Connect GetUser's CPU), mostly in its option handling and stream-based jws layer,
   * against about 8 µs for the same HMAC and JSON work. Tokens are still signed by jsonwebtoken.
   */
  verify(token: string, expected: TokenType): TokenClaims {
    // Refresh tokens are single-use: remembering one would only push an access token out.
    const verified = this.#verifiedToken(token, expected === 'access');
    if (verified === undefined || !inTime(verified.payload, Math.floor(Date.now() / 1000))) {
      throw new AuthenticationError(expected === 'access' ? 'Invalid or expired access token' : 'Invalid or expired refresh token');
    }
    const { payload } = verified;
    // User ids are int32 (the schema's and the protos'): a larger subject names no user, and reading it would fail in the database.
    if (
      payload.tokenType !== expected ||
      typeof payload.sub !== 'string' ||
      !/^\d{1,10}$/.test(payload.sub) ||
      Number(payload.sub) > 2_147_483_647 ||
      typeof payload.jti !== 'string' ||
      typeof payload.exp !== 'number' ||
      // A chain id is a UUID (the column's type on PostgreSQL): any other `fam`, signed with a
      // shared or leaked key, names no chain, and reached the database as a 500 (helper 157).
      (payload.fam !== undefined && (typeof payload.fam !== 'string' || !CHAIN_ID.test(payload.fam)))
    ) {
      throw new AuthenticationError('Invalid token type');
    }
    const familyId = payload.fam;
    return { userId: Number(payload.sub), tokenType: expected, jti: payload.jti, expiresAt: new Date(payload.exp * 1000), hash: verified.hash, familyId };
  }

  /** The token as remembered, or verified now (and remembered if `remember`); undefined when it fails a check that does not depend on time. */
  #verifiedToken(token: string, remember: boolean): VerifiedToken | undefined {
    if (typeof token !== 'string') return undefined;
    const known = this.#verified.get(token);
    if (known !== undefined) return known;
    const payload = this.#verifiedPayload(token);
    if (payload === undefined) return undefined;
    const verified: VerifiedToken = { payload: Object.freeze(payload), hash: hashToken(token) };
    if (!remember) return verified;
    if (this.#verified.size >= VERIFIED_TOKENS_KEPT) this.#verified.delete(this.#verified.keys().next().value as string);
    this.#verified.set(token, verified);
    return verified;
  }

  /**
   * The claims of a token that passes jsonwebtoken's checks for HS256 with this issuer and
   * audience, except `nbf` and `exp` (see inTime; their types are checked here); else undefined.
   */
  #verifiedPayload(token: string): Record<string, unknown> | undefined {
    // jws: three base64url parts, the signature not empty (jsonwebtoken: "jwt signature is required").
    if (!JWS_SHAPE.test(token)) return undefined;
    const firstDot = token.indexOf('.');
    const secondDot = token.indexOf('.', firstDot + 1);
    const header = parseJsonObject(token.slice(0, firstDot));
    // Only HS256 is accepted: no "none", no other algorithm, whatever the header claims.
    if (header?.alg !== 'HS256') return undefined;
    // Extensions the header calls critical must be understood (RFC 7515 §4.1.11), and this codec
    // understands none; jsonwebtoken ignores `crit` (helper 194). The tokens issued here carry none.
    if (header.crit !== undefined) return undefined;
    const signature = Buffer.from(token.slice(secondDot + 1));
    const expectedSignature = Buffer.from(createHmac('sha256', this.#key).update(token.slice(0, secondDot)).digest('base64url'));
    if (signature.length !== expectedSignature.length || !timingSafeEqual(signature, expectedSignature)) return undefined;
    const payload = parseJsonObject(token.slice(firstDot + 1, secondDot));
    if (payload === undefined) return undefined;
    if (payload.nbf !== undefined && typeof payload.nbf !== 'number') return undefined;
    if (payload.exp !== undefined && typeof payload.exp !== 'number') return undefined;
    const audiences = Array.isArray(payload.aud) ? (payload.aud as unknown[]) : [payload.aud];
    if (!audiences.includes(this.#options.audience)) return undefined;
    if (payload.iss !== this.#options.issuer) return undefined;
    return payload;
  }

  #sign(userId: number, tokenType: TokenType, ttlSeconds: number, familyId?: string): string {
    // A fresh jti per token makes every token, and so every stored hash, unique even when two
    // pairs are issued to one user within the same second.
    return jwt.sign(familyId === undefined ? { tokenType } : { tokenType, fam: familyId }, this.#key, {
      algorithm: 'HS256',
      subject: String(userId),
      issuer: this.#options.issuer,
      audience: this.#options.audience,
      expiresIn: ttlSeconds,
      jwtid: randomUUID(),
    });
  }
}
