import type { OAuthToken, PrismaClient, User } from '../../gen/prisma/client.ts';
import { withDatabaseErrors } from './prisma-errors.ts';

/** A token pair to record: hashes only, never the tokens. */
export interface NewTokenRecord {
  userId: number;
  familyId: string;
  accessTokenHash: string;
  refreshTokenHash: string;
  accessExpiresAt: Date;
  expiresAt: Date;
  ipAddress: string | null;
  userAgent: string | null;
  clientName: string | null;
}

export type TokenWithUser = OAuthToken & { user: User };

/** Persistence of issued token pairs (sessions). */
export interface TokenRepository {
  create(record: NewTokenRecord): Promise<OAuthToken>;
  /** The pair with this access-token hash and its user, in one round trip: the hot path. */
  findByAccessHash(accessTokenHash: string): Promise<TokenWithUser | null>;
  findByRefreshHash(refreshTokenHash: string): Promise<OAuthToken | null>;
  /**
   * Atomically retires `previousId` and records its successor. Returns null, writing nothing,
   * when `previousId` was already retired: its refresh token is being replayed.
   */
  rotate(previousId: number, next: NewTokenRecord): Promise<OAuthToken | null>;
  revoke(id: number): Promise<void>;
  /** Revokes every pair of a login chain; returns how many were still live. */
  revokeFamily(familyId: string): Promise<number>;
  /** Revokes the user's live (unexpired) pairs, optionally sparing one; returns how many. */
  revokeAllForUser(userId: number, exceptId?: number): Promise<number>;
  /** Live (unrevoked, unexpired) pairs of a user, newest first. */
  listActive(userId: number, now: Date): Promise<OAuthToken[]>;
}

export class PrismaTokenRepository implements TokenRepository {
  readonly #db: PrismaClient;

  constructor(db: PrismaClient) {
    this.#db = db;
  }

  create(record: NewTokenRecord): Promise<OAuthToken> {
    return withDatabaseErrors(() => this.#db.oAuthToken.create({ data: record }));
  }

  findByAccessHash(accessTokenHash: string): Promise<TokenWithUser | null> {
    return withDatabaseErrors(() =>
      this.#db.oAuthToken.findUnique({ where: { accessTokenHash }, include: { user: true } }),
    );
  }

  findByRefreshHash(refreshTokenHash: string): Promise<OAuthToken | null> {
    return withDatabaseErrors(() => this.#db.oAuthToken.findUnique({ where: { refreshTokenHash } }));
  }

  rotate(previousId: number, next: NewTokenRecord): Promise<OAuthToken | null> {
    return withDatabaseErrors(() =>
      this.#db.$transaction(async (tx) => {
        // The conditional update is the lock: of two concurrent refreshes with one token, only
        // one sees count 1; the other is treated as a replay.
        const { count } = await tx.oAuthToken.updateMany({
          where: { id: previousId, isRevoked: false },
          data: { isRevoked: true },
        });
        if (count === 0) return null;
        return tx.oAuthToken.create({ data: next });
      }),
    );
  }

  async revoke(id: number): Promise<void> {
    await withDatabaseErrors(() => this.#db.oAuthToken.updateMany({ where: { id }, data: { isRevoked: true } }));
  }

  async revokeFamily(familyId: string): Promise<number> {
    const { count } = await withDatabaseErrors(() =>
      this.#db.oAuthToken.updateMany({ where: { familyId, isRevoked: false }, data: { isRevoked: true } }),
    );
    return count;
  }

  async revokeAllForUser(userId: number, exceptId?: number): Promise<number> {
    const { count } = await withDatabaseErrors(() =>
      this.#db.oAuthToken.updateMany({
        where: {
          userId,
          isRevoked: false,
          expiresAt: { gt: new Date() },
          ...(exceptId === undefined ? {} : { NOT: { id: exceptId } }),
        },
        data: { isRevoked: true },
      }),
    );
    return count;
  }

  listActive(userId: number, now: Date): Promise<OAuthToken[]> {
    return withDatabaseErrors(() =>
      this.#db.oAuthToken.findMany({
        where: { userId, isRevoked: false, expiresAt: { gt: now } },
        orderBy: [{ createdAt: 'desc' }, { id: 'desc' }],
      }),
    );
  }
}
