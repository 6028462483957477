import { ConflictError } from '../domain/errors.ts';
import type { Logger } from '../infrastructure/logger.ts';
import type { PasswordHasher } from '../infrastructure/security/password-hasher.ts';
import type { UserRepository } from '../repositories/user-repository.ts';

/**
 * Creates the configured administrator when no user has its username or e-mail, so that a
 * fresh install has a way in. An existing account is left alone: its password may have changed.
 */
export async function ensureBootstrapAdmin(
  admin: { username: string; email: string; password: string },
  deps: { users: UserRepository; passwords: PasswordHasher; logger: Logger },
): Promise<void> {
  const email = admin.email.toLowerCase();
  const taken = await deps.users.findTaken(admin.username, email);
  if (taken.username || taken.email) return;
  try {
    await deps.users.create({
      username: admin.username,
      email,
      passwordHash: await deps.passwords.hash(admin.password),
      role: 'ADMIN',
    });
  } catch (error) {
    // Another process starting at the same moment created it first.
    if (error instanceof ConflictError) return;
    throw error;
  }
  deps.logger.info({ username: admin.username }, 'created bootstrap administrator');
}
