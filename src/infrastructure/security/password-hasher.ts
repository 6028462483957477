import bcrypt from 'bcrypt';
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ValidationError } from '../../domain/errors.ts';

const MAX_PASSWORD_BYTES = 72;
const COMMON_PASSWORDS_PATH = join(import.meta.dirname, 'common-passwords.txt');

/** The breached-password list shipped with the code (see scripts/common-passwords.ts). */
export async function loadCommonPasswords(path = COMMON_PASSWORDS_PATH): Promise<ReadonlySet<string>> {
  const lines = (await readFile(path, 'utf8')).split('\n');
  return new Set(lines.filter((line) => line !== '' && !line.startsWith('#')));
}

/**
 * bcrypt hashing, plus a comparison that costs the same when there is no user to compare with.
 * Passwords are compared and stored in Unicode NFC, so the same password typed on keyboards that
 * compose accents differently (é as one code point or as e + ◌́) is the same password.
 */
export class PasswordHasher {
  readonly #rounds: number;
  readonly #common: ReadonlySet<string>;
  #dummyHash: Promise<string> | undefined;

  constructor(rounds: number, commonPasswords: ReadonlySet<string> = new Set()) {
    this.#rounds = rounds;
    this.#common = commonPasswords;
  }

  /**
   * Hashes a new password. bcrypt ignores bytes past the 72nd, so longer ones are refused, and so
   * are passwords on the breached-password list (compared without regard to case).
   */
  hash(password: string, field = 'password'): Promise<string> {
    const normalized = password.normalize('NFC');
    if (Buffer.byteLength(normalized, 'utf8') > MAX_PASSWORD_BYTES) {
      return Promise.reject(new ValidationError('Validation failed', { [field]: `must be at most ${MAX_PASSWORD_BYTES} bytes` }));
    }
    if (this.#common.has(normalized.toLowerCase())) {
      return Promise.reject(new ValidationError('Validation failed', { [field]: 'is too common: it appears in lists of breached passwords' }));
    }
    return bcrypt.hash(normalized, this.#rounds);
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
   * none, so that a login for an unknown user takes as long as one with a wrong password. A
   * password longer than bcrypt reads can never be one that was set (hash() refuses them), and
   * bcrypt would compare only its first 72 bytes: it is refused, after the same work.
   */
  async verify(password: string, hash: string | undefined): Promise<boolean> {
    const normalized = password.normalize('NFC');
    if (hash === undefined || Buffer.byteLength(normalized, 'utf8') > MAX_PASSWORD_BYTES) {
      await bcrypt.compare(normalized, await this.#dummy());
      return false;
    }
    return bcrypt.compare(normalized, hash);
  }

  #dummy(): Promise<string> {
    this.#dummyHash ??= bcrypt.hash(randomBytes(16).toString('hex'), this.#rounds);
    return this.#dummyHash;
  }
}
