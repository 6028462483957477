import { UserRole } from '../../../gen/proto/arcana/user/v1/user_pb.js';
import { field, h, replace } from '../dom.ts';
import { clearErrors, errorBanner, showError } from '../errors.ts';
import type { View } from '../main.ts';
import { notice } from './common.ts';
import { sessionTable } from './user.ts';

export async function renderAccount(view: View): Promise<void> {
  const { session } = view;
  const { auth, users } = session.api;
  const me = session.user;
  if (me === undefined) return;

  const oldPassword = h('input', { type: 'password', autocomplete: 'current-password' });
  const newPassword = h('input', { type: 'password', autocomplete: 'new-password' });
  const password = h(
    'form',
    { className: 'card', 'data-section': 'password' },
    h('h2', {}, 'Change password'),
    errorBanner(),
    field('Current password', oldPassword, 'old_password'),
    field('New password', newPassword, 'new_password'),
    h('button', { type: 'submit' }, 'Change password'),
  );
  password.addEventListener('submit', (event) => {
    event.preventDefault();
    clearErrors(password);
    password.querySelector('.notice')?.remove();
    session
      .exclusive(() => users.changePassword({ userId: me.id, oldPassword: oldPassword.value, newPassword: newPassword.value }))
      .then(async () => {
        oldPassword.value = '';
        newPassword.value = '';
        password.append(notice('Password changed. Your other sessions have ended.'));
        await loadSessions();
      })
      .catch((error: unknown) => showError(password, error));
  });

  const sessionList = h('div', {});
  const sessions = h(
    'section',
    { className: 'card', 'data-section': 'my-sessions' },
    h('h2', {}, 'My sessions'),
    errorBanner(),
    sessionList,
    h('p', { className: 'hint' }, `Token pair rotated ${session.refreshCount} time${session.refreshCount === 1 ? '' : 's'} in this tab.`),
    h(
      'button',
      {
        type: 'button',
        className: 'destructive',
        onclick: () => {
          clearErrors(sessions);
          auth
            .revokeAllTokens({})
            .then(({ revokedCount }) => session.forget(`Revoked ${revokedCount} session${revokedCount === 1 ? '' : 's'}, this one included. Sign in again.`))
            .catch((error: unknown) => showError(sessions, error));
        },
      },
      'Revoke all my sessions',
    ),
  );
  async function loadSessions(): Promise<void> {
    try {
      const { sessions: list } = await auth.listTokens({});
      replace(sessionList, sessionTable(list));
    } catch (error) {
      showError(sessions, error);
    }
  }

  replace(view.main, h('h1', {}, 'My account'), h('p', {}, `${me.username} (${me.email}), ${UserRole[me.role]}`), password, sessions);
  await loadSessions();
}
