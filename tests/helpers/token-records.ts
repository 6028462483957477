import { randomBytes, randomUUID } from 'node:crypto';
import type { NewTokenRecord } from '../../src/repositories/token-repository.ts';

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
