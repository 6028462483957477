import bcrypt from 'bcrypt';
import { randomBytes } from 'node:crypto';
import { ValidationError } from '../../domain/errors.ts';

const MAX_PASSWORD_BYTES = 72;

/** bcrypt hashing, plus a comparison that costs the same when there is no user to compare with. */
export class PasswordHasher {
  readonly #rounds: number;
  #dummyHash: Promise<string> | undefined;

  constructor(rounds: number) {
    this.#rounds = rounds;
  }

  /** Hashes a new password; bcrypt ignores bytes past the 72nd, so longer ones are refused. */
  hash(password: string, field = 'password'): Promise<string> {
    if (Buffer.byteLength(password, 'utf8') > MAX_PASSWORD_BYTES) {
      return Promise.reject(new ValidationError('Validation failed', { [field]: `must be at most ${MAX_PASSWORD_BYTES} bytes` }));
    }
    return bcrypt.hash(password, this.#rounds);
  }

  /**
   * Computes the throwaway hash ahead of time; otherwise the first login for an unknown user
   * would take two bcrypt rounds and stand out.
   */
  async warmUp(): Promise<void> {
    await this.#dummy();
  }

  /**
   * Compares against the stored hash, or against a throwaway hash of the same cost when there is
   * none, so that a login for an unknown user takes as long as one with a wrong password.
   */
  async verify(password: string, hash: string | undefined): Promise<boolean> {
    if (hash === undefined) {
      await bcrypt.compare(password, await this.#dummy());
      return false;
    }
    return bcrypt.compare(password, hash);
  }

  #dummy(): Promise<string> {
    this.#dummyHash ??= bcrypt.hash(randomBytes(16).toString('hex'), this.#rounds);
    return this.#dummyHash;
  }
}
