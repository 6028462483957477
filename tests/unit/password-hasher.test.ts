import bcrypt from 'bcrypt';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { loadCommonPasswords, PasswordHasher } from '../../src/infrastructure/security/password-hasher.ts';

afterEach(() => {
  vi.restoreAllMocks();
});

describe('PasswordHasher', () => {
  it('when there is no stored hash, then it still runs one bcrypt comparison at the configured cost, and fails', async () => {
    const hasher = new PasswordHasher(5);
    const compare = vi.spyOn(bcrypt, 'compare');
    expect(await hasher.verify('Passw0rd!', undefined)).toBe(false);
    expect(compare).toHaveBeenCalledTimes(1);
    const comparedWith = compare.mock.calls[0]?.[1];
    expect(comparedWith).toMatch(/^\$2[aby]\$05\$/);
  });

  it('when the password matches the stored hash, then true; otherwise false', async () => {
    const hasher = new PasswordHasher(4);
    const hash = await hasher.hash('Passw0rd!');
    expect(hash).toMatch(/^\$2[aby]\$04\$/);
    expect(await hasher.verify('Passw0rd!', hash)).toBe(true);
    expect(await hasher.verify('passw0rd!', hash)).toBe(false);
  });

  it('when a new password exceeds 72 bytes, then it is refused rather than silently truncated', async () => {
    const hasher = new PasswordHasher(4);
    await expect(hasher.hash(`Aa1!${'é'.repeat(35)}`)).rejects.toMatchObject({ code: 'VALIDATION_ERROR' });
  });
});

describe('PasswordHasher: what a login compares', () => {
  it('when a login password is longer than 72 bytes, then it is refused even though its first 72 bytes match, after one comparison', async () => {
    const hasher = new PasswordHasher(4);
    const stored = `P${'a'.repeat(61)}1!Bcdefghi`;
    expect(Buffer.byteLength(stored)).toBe(72);
    const hash = await hasher.hash(stored);
    const compare = vi.spyOn(bcrypt, 'compare');
    expect(await hasher.verify(`${stored}anything`, hash)).toBe(false);
    // The same bcrypt work as a wrong password, so timing says nothing.
    expect(compare).toHaveBeenCalledTimes(1);
    expect(await hasher.verify(stored, hash)).toBe(true);
  });

  it('when a password is typed composed or decomposed (é as one code point or e + ◌́), then both are the same password', async () => {
    const hasher = new PasswordHasher(4);
    const composed = 'Caf\u00e9-Latt3!';
    const decomposed = 'Cafe\u0301-Latt3!';
    expect(composed).not.toBe(decomposed);
    const hash = await hasher.hash(decomposed);
    expect(await hasher.verify(composed, hash)).toBe(true);
  });

  it('when a new password is on the breached-password list, in any letter case, then it is refused; others are not', async () => {
    const hasher = new PasswordHasher(4, await loadCommonPasswords());
    for (const common of ['Password1!', 'P@ssw0rd', 'PASSW0RD!']) {
      await expect(hasher.hash(common, 'newPassword')).rejects.toMatchObject({
        code: 'VALIDATION_ERROR',
        details: { newPassword: 'is too common: it appears in lists of breached passwords' },
      });
    }
    await expect(hasher.hash('Sturdy-Passw0rd!')).resolves.toMatch(/^\$2[aby]\$04\$/);
  });
});
