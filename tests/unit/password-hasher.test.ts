import bcrypt from 'bcrypt';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { PasswordHasher } from '../../src/infrastructure/security/password-hasher.ts';

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
