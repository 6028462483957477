import { ConflictError } from '../domain/errors.ts';
import type { PasswordHasher } from '../infrastructure/security/password-hasher.ts';
import type { NewUser, UserRepository } from '../repositories/user-repository.ts';
import type { UserRole } from '../../gen/prisma/client.ts';

/** What registration and admin creation both know about a new account. */
export interface NewAccount {
  username?: string;
  email?: string;
  password?: string;
  firstName?: string;
  lastName?: string;
  phone?: string;
  role: UserRole;
}

/** An e-mail as it is stored and compared: lower-cased. */
export function storedEmail(email: string | undefined): string {
  return (email ?? '').toLowerCase();
}

/**
 * The row of a new account: e-mail stored lower-cased, taken names refused before any hashing
 * work, the password hashed. Shared by self-registration and admin creation, which store it past
 * their point of no return (see `uninterrupted`): all of this may still be abandoned.
 */
export async function newAccountRow(deps: { users: UserRepository; passwords: PasswordHasher }, account: NewAccount): Promise<NewUser> {
  const username = account.username ?? '';
  const email = storedEmail(account.email);
  // The password first: were a refused one answered only for free names, a registration that
  // can never succeed would tell whether a name or e-mail is taken without creating anything.
  deps.passwords.acceptable(account.password ?? '');
  await assertAvailable(deps.users, username, email);
  return {
    username,
    email,
    passwordHash: await deps.passwords.hash(account.password ?? ''),
    firstName: account.firstName ?? null,
    lastName: account.lastName ?? null,
    phone: account.phone ?? null,
    role: account.role,
  };
}

/** Fails with a conflict naming every taken field, before any hashing work is spent. */
export async function assertAvailable(users: UserRepository, username: string | undefined, email: string | undefined, exceptId?: number): Promise<void> {
  const taken = await users.findTaken(username, email, exceptId);
  if (!taken.username && !taken.email) return;
  const details: Record<string, string> = {};
  if (taken.username) details.username = 'already exists';
  if (taken.email) details.email = 'already exists';
  throw new ConflictError(taken.username ? 'Username already exists' : 'Email already exists', { details });
}
