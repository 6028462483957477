import bcrypt from 'bcrypt';
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { currentCallContext, currentWorkLimits } from '../call-context.ts';
import { ValidationError } from '../../domain/errors.ts';
import type { WorkGate, WorkLimits } from '../work-gate.ts';

/** Which of the gate's lanes a comparison waits in, and whose turn it is there. */
type GateLane = Pick<WorkLimits, 'priority' | 'key'>;

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
  readonly #gate: WorkGate | undefined;
  /** Throwaway hashes by cost: the unknown name's, and verify's padding. */
  readonly #dummies = new Map<number, Promise<string>>();
  /**
   * The cost every comparison is made up to: BCRYPT_ROUNDS, or the highest cost of a stored hash
   * this process has compared since, when BCRYPT_ROUNDS was lowered after it was made.
   */
  #comparedCost: number;

  /**
   * With a gate, every hash and comparison done for a request waits for a slot in it, and is
   * refused (503 with Retry-After) when the gate is full, when the request's deadline would pass
   * before its turn, or when its caller has gone: bcrypt is the costliest thing the platform
   * does, and under overload it should only be spent on answers someone will receive.
   */
  constructor(rounds: number, commonPasswords: ReadonlySet<string> = new Set(), gate?: WorkGate) {
    this.#rounds = rounds;
    this.#comparedCost = rounds;
    this.#common = commonPasswords;
    this.#gate = gate;
  }

  /** bcrypt work, through the gate when it runs for a request. */
  #gated<T>(work: () => Promise<T>, lane: GateLane = {}): Promise<T> {
    if (this.#gate === undefined || currentCallContext() === undefined) return work();
    return this.#gate.run(work, { ...currentWorkLimits(), ...lane });
  }

  /**
   * Throws, as a comparison in the common lane would, when the gate would refuse one now (full,
   * or the request's deadline would pass before its turn): checked before anything else is spent
   * on the request.
   */
  precheck(): void {
    if (this.#gate !== undefined && currentCallContext() !== undefined) this.#gate.precheck(currentWorkLimits());
  }

  /**
   * Hashes a new password. bcrypt ignores bytes past the 72nd, so longer ones are refused, and so
   * are passwords on the breached-password list (compared without regard to case).
   */
  async hash(password: string, field = 'password'): Promise<string> {
    const normalized = this.acceptable(password, field);
    return this.#gated(() => bcrypt.hash(normalized, this.#rounds));
  }

  /**
   * The password as it would be hashed (NFC), or a ValidationError naming `field` when no hash of
   * it would be made: for checks that must come before anything else is looked up.
   */
  acceptable(password: string, field = 'password'): string {
    const normalized = password.normalize('NFC');
    if (Buffer.byteLength(normalized, 'utf8') > MAX_PASSWORD_BYTES) {
      throw new ValidationError('Validation failed', { [field]: `must be at most ${MAX_PASSWORD_BYTES} bytes` });
    }
    if (this.#common.has(normalized.toLowerCase())) {
      throw new ValidationError('Validation failed', { [field]: 'is too common: it appears in lists of breached passwords' });
    }
    return normalized;
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
   * bcrypt would compare only its first 72 bytes: it is refused, after the same work. `lane`: the
   * gate's priority lane, and whose turn it is there (see WorkLimits).
   *
   * Every comparison costs the same: that of the costliest hash this process has compared. A
   * hash made before BCRYPT_ROUNDS was raised costs less to compare than the throwaway hash of an
   * unknown name (helper 111: 59 against 212 ms at cost 12 for an account made at 10), and one
   * made before it was lowered costs more (helper 172: 432 against 75 ms at cost 10 for an
   * account made at 12): either way one request told a known account from an unknown one. A
   * cheaper comparison is made up to that cost, in the same slot, with throwaway hashes of each
   * cost from its own up (2^c − 2^s is 2^s + … + 2^(c−1)); a costlier stored hash raises it for
   * every later comparison, until each such account's next login makes its hash again at the
   * current cost (see rehash) and the process restarts.
   */
  async verify(password: string, hash: string | undefined, lane: GateLane = {}): Promise<boolean> {
    const normalized = password.normalize('NFC');
    const stored = hash === undefined || Buffer.byteLength(normalized, 'utf8') > MAX_PASSWORD_BYTES ? undefined : hash;
    const cost = stored === undefined ? undefined : costOf(stored);
    if (cost !== undefined && cost > this.#comparedCost && cost <= MAX_COST) this.#comparedCost = cost;
    const target = this.#comparedCost;
    if (stored === undefined) {
      const dummy = await this.#dummy(target);
      await this.#gated(() => bcrypt.compare(normalized, dummy), lane);
      return false;
    }
    if (cost === undefined || cost >= target) return this.#gated(() => bcrypt.compare(normalized, stored), lane);
    return this.#gated(async () => {
      const matches = await bcrypt.compare(normalized, stored);
      for (let padding = cost; padding < target; padding += 1) await bcrypt.compare(normalized, await this.#dummy(padding));
      return matches;
    }, lane);
  }

  /**
   * Whether `hash` was made at another cost than the current one: BCRYPT_ROUNDS was raised since
   * (the hash is cheaper to crack than the deployment asks) or lowered (every comparison costs
   * what the old hash does until it is gone, see verify).
   */
  notAtCurrentCost(hash: string): boolean {
    const cost = costOf(hash);
    return cost !== undefined && cost !== this.#rounds;
  }

  /**
   * A hash at the current cost of a password that has just matched its hash of another cost: not
   * held to the rules for new passwords (the account's password is not being chosen), through the gate.
   */
  rehash(password: string): Promise<string> {
    return this.#gated(() => bcrypt.hash(password.normalize('NFC'), this.#rounds));
  }

  /** A throwaway hash of cost `rounds` (the current cost when not given), made once. */
  #dummy(rounds = this.#rounds): Promise<string> {
    let dummy = this.#dummies.get(rounds);
    if (dummy === undefined) {
      dummy = bcrypt.hash(randomBytes(16).toString('hex'), rounds);
      this.#dummies.set(rounds, dummy);
    }
    return dummy;
  }
}

/**
 * The highest cost BCRYPT_ROUNDS takes: a stored hash of a higher one (written by hand, or by
 * another system) is compared as it is, but does not make every other comparison that slow.
 */
const MAX_COST = 15;

/** The cost a bcrypt hash was made with, or undefined when it is no bcrypt hash. */
function costOf(hash: string): number | undefined {
  const match = /^\$2[abxy]?\$(\d{2})\$/.exec(hash);
  return match === null ? undefined : Number(match[1]);
}
