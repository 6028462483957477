import { Prisma, type PrismaClient } from '../../gen/prisma/client.ts';
import { withDatabaseErrors } from './prisma-errors.ts';
import { UnavailableError } from '../domain/errors.ts';

/** A record that holds an idempotency key: opaque HMACs and a sealed answer (see services/idempotency.ts). */
export interface IdempotencyRecordView {
  id: number;
  fingerprint: string;
  /** The sealed answer; null while the request that claimed the key is still running. */
  answer: Uint8Array | null;
  expiresAt: Date;
}

/** A claim to take: the key's HMAC, the request's fingerprint and when the claim lapses. */
export interface IdempotencyClaim {
  keyHash: string;
  fingerprint: string;
  expiresAt: Date;
}

/** The outcome of a claim: this request's to run, or the live record that already holds the key. */
export type ClaimResult = { claimed: true; id: number } | { claimed: false; existing: IdempotencyRecordView };

/** Persistence of requests sent with an Idempotency-Key. */
export interface IdempotencyRepository {
  /**
   * Claims `claim.keyHash` atomically (an insert on its unique column): of parallel claims of one
   * key exactly one wins. A key held by a record that has not expired at `now` is not claimed and
   * that record is returned; an expired one is replaced.
   */
  claim(claim: IdempotencyClaim, now: Date): Promise<ClaimResult>;
  /** Stores the sealed answer of claim `id`; false when the claim is gone (lapsed and replaced). */
  complete(id: number, answer: Uint8Array, expiresAt: Date): Promise<boolean>;
  /** Deletes claim `id` if its request is still unanswered, so that the client may try again. */
  release(id: number): Promise<void>;
  /** Deletes every record expired at `now`; returns how many. */
  purgeExpired(now: Date): Promise<number>;
}

/**
 * Claims that keep meeting a record which vanishes before it can be read (released, or purged as
 * expired, by other requests) give up after this many inserts: the key is in heavy contention.
 */
const CLAIM_ATTEMPTS = 3;

export class PrismaIdempotencyRepository implements IdempotencyRepository {
  readonly #db: PrismaClient;

  constructor(db: PrismaClient) {
    this.#db = db;
  }

  async claim(claim: IdempotencyClaim, now: Date): Promise<ClaimResult> {
    return withDatabaseErrors(async () => {
      for (let attempt = 1; ; attempt += 1) {
        try {
          const row = await this.#db.idempotencyRecord.create({ data: claim, select: { id: true } });
          return { claimed: true, id: row.id };
        } catch (error) {
          if (!(error instanceof Prisma.PrismaClientKnownRequestError && error.code === 'P2002')) throw error;
        }
        const existing = await this.#db.idempotencyRecord.findUnique({
          where: { keyHash: claim.keyHash },
          select: { id: true, fingerprint: true, answer: true, expiresAt: true },
        });
        if (existing !== null && existing.expiresAt > now) return { claimed: false, existing };
        if (attempt >= CLAIM_ATTEMPTS) {
          // Unreachable in practice; answered as if another request held the key, which is true.
          if (existing !== null) return { claimed: false, existing };
          // The key's record went as fast as it came, three times (others' failed requests giving
          // it back): the client is told to try again, never a 500 (helper 119, from the code).
          throw new UnavailableError('This Idempotency-Key is being claimed by other requests; try again', undefined, 1);
        }
        // Expired: make room, conditionally, so that a record a parallel claim has just put in
        // its place is not deleted; then insert again.
        if (existing !== null) await this.#db.idempotencyRecord.deleteMany({ where: { id: existing.id, expiresAt: { lte: now } } });
      }
    });
  }

  async complete(id: number, answer: Uint8Array, expiresAt: Date): Promise<boolean> {
    const { count } = await withDatabaseErrors(() =>
      // Prisma wants its Bytes as a Uint8Array over a plain ArrayBuffer.
      this.#db.idempotencyRecord.updateMany({ where: { id, answer: null }, data: { answer: new Uint8Array(answer), expiresAt } }),
    );
    return count === 1;
  }

  async release(id: number): Promise<void> {
    await withDatabaseErrors(() => this.#db.idempotencyRecord.deleteMany({ where: { id, answer: null } }));
  }

  async purgeExpired(now: Date): Promise<number> {
    const { count } = await withDatabaseErrors(() => this.#db.idempotencyRecord.deleteMany({ where: { expiresAt: { lte: now } } }));
    return count;
  }
}
