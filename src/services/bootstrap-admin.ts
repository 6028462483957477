import { ConflictError, PreconditionFailedError } from '../domain/errors.ts';
import type { Logger } from '../infrastructure/logger.ts';
import type { PasswordHasher } from '../infrastructure/security/password-hasher.ts';
import type { TokenRepository } from '../repositories/token-repository.ts';
import type { UserRepository } from '../repositories/user-repository.ts';
import type { AuditLog } from './audit-use-cases.ts';

interface BootstrapDeps {
  users: UserRepository;
  tokens: TokenRepository;
  passwords: PasswordHasher;
  audit: AuditLog;
  logger: Logger;
  /**
   * Refuses variables registration would refuse, before they make or restore an account (the
   * start then stops, naming them). Not asked when they are left alone: a deployment passes them
   * on every start, and values from before the check must not stop one (helper 96).
   */
  acceptable?: (() => Promise<void>) | undefined;
}

export interface BootstrapAdmin {
  username: string;
  email: string;
  password: string;
  /**
   * When no active administrator exists, restore the configured account as an ACTIVE ADMIN
   * with the configured password (ADMIN_BOOTSTRAP_RECOVER).
   */
  recover?: boolean | undefined;
}

/**
 * Creates the configured administrator when no user has its username or e-mail and no active
 * administrator exists, so that a fresh install has a way in. An existing account is left alone
 * (its password may have changed), unless no active administrator is left: then the platform
 * cannot be managed, which is said loudly, and with `recover` the account is restored as an
 * active admin. A missing account while other administrators are active was deleted (or
 * renamed) on purpose, and is not created again: the deployment files pass the variables on
 * every start, so it used to come back, with ADMIN_PASSWORD and unaudited, at each restart.
 */
export async function ensureBootstrapAdmin(admin: BootstrapAdmin, deps: BootstrapDeps): Promise<void> {
  const email = admin.email.toLowerCase();
  const taken = await deps.users.findTaken(admin.username, email);
  if (taken.username || taken.email) {
    await checkAdministratorsLeft(admin, deps);
    return;
  }
  if ((await activeAdministrators(deps.users)) > 0) {
    deps.logger.warn(
      { username: admin.username },
      'no account has the bootstrap username or e-mail, but active administrators exist, so it is not created again ' +
        '(it was deleted or renamed); unset ADMIN_USERNAME, ADMIN_EMAIL and ADMIN_PASSWORD',
    );
    return;
  }
  await deps.acceptable?.();
  let created;
  try {
    created = await deps.users.create({
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
  // A role granted without an actor, as an administrator's creation of a user is audited.
  deps.audit.record({ type: 'ROLE_CHANGED', userId: created.id, details: { to: created.role, reason: 'bootstrap' } });
  deps.logger.info({ username: admin.username }, 'created bootstrap administrator');
}

async function activeAdministrators(users: UserRepository): Promise<number> {
  return (await users.list({ page: 1, perPage: 1, role: 'ADMIN', status: 'ACTIVE' })).total;
}

async function checkAdministratorsLeft(admin: BootstrapAdmin, deps: BootstrapDeps): Promise<void> {
  if ((await activeAdministrators(deps.users)) > 0) return;
  const account = (await deps.users.findByLogin(admin.username)) ?? (await deps.users.findByLogin(admin.email.toLowerCase()));
  if (account === null) return;
  if (admin.recover !== true) {
    deps.logger.error(
      { username: admin.username, accountId: account.id, role: account.role, status: account.status },
      'no active administrator exists, and the bootstrap account exists but is not an active ADMIN, so the bootstrap ' +
        'variables cannot restore access; set ADMIN_BOOTSTRAP_RECOVER=true for one start to make it an ACTIVE ADMIN again ' +
        'with ADMIN_PASSWORD (its sessions are ended), then unset it',
    );
    return;
  }
  await deps.acceptable?.();
  // The restored account and the end of its sessions are one transaction: restored without it, a
  // failure in between left the old sessions alive, and the next start, finding an active
  // administrator, would not come back to end them.
  // It is written only over the account as read: of several instances starting together with
  // the variable set, one restores it and the others find it changed (they used to write it
  // again, and audit changes from a state it was no longer in).
  const changes = { role: 'ADMIN', status: 'ACTIVE', isActive: true, passwordHash: await deps.passwords.hash(admin.password) } as const;
  const expected = { version: account.version };
  let written;
  try {
    written = await deps.tokens.revokeAllWithUserWrite(account.id, undefined, { changes, expected });
  } catch (error) {
    if (!(error instanceof PreconditionFailedError)) throw error;
    deps.logger.info(
      { username: account.username, accountId: account.id },
      'the bootstrap account changed while it was being restored (another instance restored it); left as it is',
    );
    return;
  }
  const { user: updated, revoked: ended } = written;
  const reason = 'bootstrap_recover';
  if (account.role !== updated.role) deps.audit.record({ type: 'ROLE_CHANGED', userId: account.id, details: { from: account.role, to: updated.role, reason } });
  if (account.status !== updated.status) deps.audit.record({ type: 'STATUS_CHANGED', userId: account.id, details: { from: account.status, to: updated.status, reason } });
  deps.audit.record({ type: 'PASSWORD_CHANGED', userId: account.id, details: { reason, otherSessionsEnded: ended.length } });
  deps.logger.warn(
    { username: account.username, accountId: account.id, sessionsEnded: ended.length },
    'no active administrator existed: restored the bootstrap account as an ACTIVE ADMIN with ADMIN_PASSWORD (ADMIN_BOOTSTRAP_RECOVER); unset ADMIN_BOOTSTRAP_RECOVER',
  );
}
