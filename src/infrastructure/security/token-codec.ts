import { createHash, createSecretKey, randomUUID, type KeyObject } from 'node:crypto';
import jwt from 'jsonwebtoken';
import { AuthenticationError } from '../../domain/errors.ts';

export type TokenType = 'access' | 'refresh';

export interface TokenClaims {
  userId: number;
  tokenType: TokenType;
  jti: string;
  expiresAt: Date;
}

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

  constructor(options: TokenCodecOptions) {
    this.#key = createSecretKey(Buffer.from(options.secret, 'utf8'));
    this.#options = options;
  }

  get accessTtlSeconds(): number {
    return this.#options.accessTtlSeconds;
  }

  /**
   * Signs an access and a refresh token. `notAfter` caps both lifetimes: a session's absolute end,
   * which no refresh may extend.
   */
  issuePair(userId: number, now = new Date(), notAfter?: Date): IssuedPair {
    const seconds = Math.floor(now.getTime() / 1000);
    const limit = notAfter === undefined ? Number.POSITIVE_INFINITY : Math.floor(notAfter.getTime() / 1000) - seconds;
    const accessTtl = Math.max(1, Math.min(this.#options.accessTtlSeconds, limit));
    const refreshTtl = Math.max(1, Math.min(this.#options.refreshTtlSeconds, limit));
    const accessToken = this.#sign(userId, 'access', accessTtl);
    const refreshToken = this.#sign(userId, 'refresh', refreshTtl);
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

  /** Verifies signature, algorithm, issuer, audience, expiry and the expected token type. */
  verify(token: string, expected: TokenType): TokenClaims {
    let payload: string | jwt.JwtPayload;
    try {
      payload = jwt.verify(token, this.#key, {
        algorithms: ['HS256'],
        issuer: this.#options.issuer,
        audience: this.#options.audience,
      });
    } catch {
      throw new AuthenticationError(expected === 'access' ? 'Invalid or expired access token' : 'Invalid or expired refresh token');
    }
    if (
      typeof payload === 'string' ||
      payload.tokenType !== expected ||
      typeof payload.sub !== 'string' ||
      !/^\d+$/.test(payload.sub) ||
      typeof payload.jti !== 'string' ||
      typeof payload.exp !== 'number'
    ) {
      throw new AuthenticationError('Invalid token type');
    }
    return { userId: Number(payload.sub), tokenType: expected, jti: payload.jti, expiresAt: new Date(payload.exp * 1000) };
  }

  #sign(userId: number, tokenType: TokenType, ttlSeconds: number): string {
    // A fresh jti per token makes every token, and so every stored hash, unique even when two
    // pairs are issued to one user within the same second.
    return jwt.sign({ tokenType }, this.#key, {
      algorithm: 'HS256',
      subject: String(userId),
      issuer: this.#options.issuer,
      audience: this.#options.audience,
      expiresIn: ttlSeconds,
      jwtid: randomUUID(),
    });
  }
}
