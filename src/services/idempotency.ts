// Idempotency keys (Stripe's scheme, as the IETF draft "The Idempotency-Key HTTP Header Field"
// describes it): a client that sends a key with a request may send it again, with the same
// request, and get the first answer instead of a second execution. Operations opt in by running
// their work through IdempotentRequests.run; the client's key reaches them in the call context
// (see runIdempotent), whichever process they run in, so they never handle it themselves.
//
// What is stored, and why a database dump alone reveals nothing usable:
// - the record is found by HMAC-SHA256(lookup key, scope ‖ client key): neither the client's key
//   nor whose it is can be read back;
// - the request is kept as HMAC-SHA256(fingerprint key, scope ‖ canonical request): enough to
//   tell a different request from the same one, and keyed, so a password in it cannot be
//   recovered by hashing guesses offline;
// - the answer (which holds access and refresh tokens) is sealed with AES-256-GCM under a key
//   derived by HKDF from the server's secret and the client's key, with the record's lookup hash
//   as associated data (a sealed answer moved to another record does not open).
// All three keys derive from JWT_SECRET, each with its own HKDF label.
import { create, fromBinary, toBinary, type DescMessage, type MessageInitShape, type MessageShape } from '@bufbuild/protobuf';
import { createCipheriv, createDecipheriv, createHmac, hkdfSync, randomBytes, timingSafeEqual } from 'node:crypto';
import { currentIdempotencyKey, markReplayed, uninterrupted } from '../infrastructure/call-context.ts';
import { ConflictError, IdempotencyKeyReusedError, isDatabaseUnreachable } from '../domain/errors.ts';
import { checkIdempotencyKey } from '../domain/idempotency-key.ts';
import type { ClaimResult, IdempotencyClaim, IdempotencyRepository } from '../repositories/idempotency-repository.ts';

/** How long a stored answer is replayed: the window in which a client may retry. */
export const IDEMPOTENCY_WINDOW_MS = 24 * 60 * 60 * 1000;
/**
 * How long a running request holds its key. Longer than any request may run (the internal
 * deadline is seconds), so only the claim of a request whose process died lapses; then the key
 * may be used again rather than answer "still running" for a whole day.
 */
const CLAIM_LEASE_MS = 5 * 60 * 1000;
const IV_BYTES = 12;
const TAG_BYTES = 16;

/** One operation that honours idempotency keys. */
export interface IdempotentOperation<A> {
  /** Whose keys these are: `register` (anyone), `users:<admin id>` (one administrator's). */
  scope: string;
  /** The request, canonically encoded (protobuf binary): what "the same request" means. */
  request: Uint8Array;
  /** How the answer is stored and read back. */
  answer: AnswerCodec<A>;
  /**
   * Throws when the stored answer may no longer be given out: a registration's answer is a live
   * session, which a replay after the account's password changed would hand to whoever holds the
   * old password and the key.
   */
  replayable?: (answer: A) => Promise<void>;
}

export interface AnswerCodec<A> {
  encode(answer: A): Uint8Array;
  decode(bytes: Uint8Array): A;
}

/** Stores answers as a protobuf message of `schema`. */
export function messageCodec<Desc extends DescMessage>(schema: Desc): AnswerCodec<MessageShape<Desc>> {
  return {
    encode: (answer) => toBinary(schema, answer),
    decode: (bytes) => fromBinary(schema, bytes),
  };
}

/** The canonical encoding of a request, for IdempotentOperation.request. */
export function canonicalRequest<Desc extends DescMessage>(schema: Desc, input: MessageInitShape<Desc>): Uint8Array {
  return toBinary(schema, create(schema, input));
}

/** Runs operations at most once per client key and request; see the module comment. */
export class IdempotentRequests {
  readonly #records: IdempotencyRepository;
  readonly #lookupKey: Buffer;
  readonly #fingerprintKey: Buffer;
  readonly #answerKey: Buffer;
  readonly #now: () => Date;

  constructor(deps: { records: IdempotencyRepository; secret: string; now?: () => Date }) {
    this.#records = deps.records;
    const derive = (label: string) => Buffer.from(hkdfSync('sha256', deps.secret, 'arcana-cloud', label, 32));
    this.#lookupKey = derive('idempotency-key lookup v1');
    this.#fingerprintKey = derive('idempotency-key request fingerprint v1');
    this.#answerKey = derive('idempotency-key answer v1');
    this.#now = deps.now ?? (() => new Date());
  }

  /**
   * `work()` when the call carries no key, or a new one. With a key whose request completed: the
   * stored answer, marked as replayed, if the request is the same, IdempotencyKeyReusedError if
   * not; ConflictError while that request is still running. A failed `work` gives the key up,
   * so that the client may try again: failures are not stored.
   */
  async run<A>(operation: IdempotentOperation<A>, work: () => Promise<A>): Promise<A> {
    const sent = currentIdempotencyKey();
    if (sent === undefined) return work();
    const key = checkIdempotencyKey(sent);
    const scoped = Buffer.from(`${operation.scope}\u0000${key}`, 'utf8');
    const keyHash = createHmac('sha256', this.#lookupKey).update(scoped).digest('hex');
    const fingerprint = createHmac('sha256', this.#fingerprintKey).update(`${operation.scope}\u0000`).update(operation.request).digest('hex');
    const now = this.#now();
    // Claimed past the request's deadline and cancellation, as the claim is given back: over a
    // network a claim whose caller stopped waiting could still be stored, with no one holding its
    // id to give it back, and a retry answered "in progress" for the whole lease while nothing
    // ran (helper 85). A caller gone by now is then refused by the work itself, which gives the
    // claim back below.
    const claim = await uninterrupted(() => this.#claim({ keyHash, fingerprint, expiresAt: new Date(now.getTime() + CLAIM_LEASE_MS) }, now));
    if (!claim.claimed) {
      const { existing } = claim;
      if (!timingSafeEqual(Buffer.from(existing.fingerprint), Buffer.from(fingerprint))) throw new IdempotencyKeyReusedError();
      if (existing.answer === null) throw new ConflictError('A request with this Idempotency-Key is still in progress; retry later');
      const answer = operation.answer.decode(this.#open(existing.answer, scoped, keyHash));
      await operation.replayable?.(answer);
      markReplayed();
      return answer;
    }
    let answer: A;
    try {
      answer = await work();
    } catch (error) {
      // Should the release fail too, the claim lapses with its lease; the work's error is the news.
      // Released even when the work failed because the client left: else the key would answer
      // "in progress" for the whole lease.
      await uninterrupted(() => this.#records.release(claim.id)).catch(() => undefined);
      throw error;
    }
    // A claim that lapsed meanwhile (its lease is minutes, so only a stalled process) may have
    // been replaced; then nothing is stored, and this client still gets its answer.
    // Stored whether or not the client is still there: a retry with the key gets this answer.
    const sealed = this.#seal(operation.answer.encode(answer), scoped, keyHash);
    await uninterrupted(() => this.#records.complete(claim.id, sealed, new Date(now.getTime() + IDEMPOTENCY_WINDOW_MS)));
    return answer;
  }

  /**
   * Claims the key, and once more at once when the database did not answer: the claim may have
   * been stored with its reply lost, and then the key answered "still in progress" for the whole
   * lease while nothing ran (helper 107: a client that kept to the key's contract was shut out for
   * five minutes, one that sent no key was not). A record found on the repeat that is unanswered,
   * of the same request and lapsing at this claim's own instant, to the millisecond, is this
   * claim's.
   */
  async #claim(claim: IdempotencyClaim, now: Date): Promise<ClaimResult> {
    try {
      return await this.#records.claim(claim, now);
    } catch (error) {
      if (!isDatabaseUnreachable(error)) throw error;
      let repeated: ClaimResult;
      try {
        repeated = await this.#records.claim(claim, now);
      } catch {
        throw error;
      }
      if (repeated.claimed) return repeated;
      const { existing } = repeated;
      const ours = existing.answer === null && existing.fingerprint === claim.fingerprint && existing.expiresAt.getTime() === claim.expiresAt.getTime();
      return ours ? { claimed: true, id: existing.id } : repeated;
    }
  }

  /** iv ‖ ciphertext ‖ GCM tag, under the key derived for this scope and client key. */
  #seal(plaintext: Uint8Array, scoped: Buffer, keyHash: string): Uint8Array {
    const iv = randomBytes(IV_BYTES);
    const cipher = createCipheriv('aes-256-gcm', this.#sealingKey(scoped), iv).setAAD(Buffer.from(keyHash, 'ascii'));
    return Buffer.concat([iv, cipher.update(plaintext), cipher.final(), cipher.getAuthTag()]);
  }

  #open(sealed: Uint8Array, scoped: Buffer, keyHash: string): Uint8Array {
    const bytes = Buffer.from(sealed);
    const decipher = createDecipheriv('aes-256-gcm', this.#sealingKey(scoped), bytes.subarray(0, IV_BYTES)).setAAD(Buffer.from(keyHash, 'ascii'));
    decipher.setAuthTag(bytes.subarray(bytes.length - TAG_BYTES));
    // A record that does not open was tampered with: final() throws, and the request fails as
    // the fault it is rather than replaying anything.
    return Buffer.concat([decipher.update(bytes.subarray(IV_BYTES, bytes.length - TAG_BYTES)), decipher.final()]);
  }

  /** The answer key of one client key: without the client's key, the server's secret opens nothing. */
  #sealingKey(scoped: Buffer): Buffer {
    return Buffer.from(hkdfSync('sha256', this.#answerKey, scoped, 'idempotency-key answer sealing v1', 32));
  }
}
