import { randomBytes, randomUUID } from 'node:crypto';
import type { OAuthToken } from '../../gen/prisma/client.ts';
import type { NewTokenRecord, TokenRepository } from '../../src/repositories/token-repository.ts';

const DAY = 24 * 3600 * 1000;

/** A new token pair of `userId` with random hashes, live for a day, in a chain of its own. */
export function newTokenRecord(userId: number, overrides: Partial<NewTokenRecord> = {}): NewTokenRecord {
  const now = Date.now();
  return {
    userId,
    familyId: randomUUID(),
    accessTokenHash: randomBytes(32).toString('hex'),
    refreshTokenHash: randomBytes(32).toString('hex'),
    accessExpiresAt: new Date(now + 15 * 60 * 1000),
    expiresAt: new Date(now + 7 * DAY),
    familyExpiresAt: new Date(now + 30 * DAY),
    ipAddress: null,
    userAgent: null,
    clientName: null,
    ...overrides,
  };
}

/** The password hash test users are stored with, so that a pair can be stored as a login stores it. */
export const TEST_PASSWORD_HASH = `$2b$04$${'a'.repeat(53)}`;

/**
 * Stores `record` as a login stores its pair (see TokenRepository.create), for a user stored with
 * TEST_PASSWORD_HASH and active; fails the test when the repository refuses it.
 */
export async function storePair(tokens: Pick<TokenRepository, 'create'>, record: NewTokenRecord): Promise<OAuthToken> {
  const row = await tokens.create(record, TEST_PASSWORD_HASH);
  if (row === null) throw new Error(`the pair of user ${record.userId} was refused`);
  return row;
}
