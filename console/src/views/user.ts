import { timestampDate } from '@bufbuild/protobuf/wkt';
import { UserRole, UserStatus, type User } from '../../../gen/proto/arcana/user/v1/user_pb.js';
import type { Session } from '../../../gen/proto/arcana/auth/v1/auth_service_pb.js';
import { field, formatDate, h, replace } from '../dom.ts';
import { clearErrors, errorBanner, showError } from '../errors.ts';
import type { View } from '../main.ts';
import { enumOptions, notice } from './common.ts';

/** Runs an action for a section: its errors and its confirmation are shown in that section. */
async function act(section: HTMLElement, run: () => Promise<string | undefined>): Promise<boolean> {
  clearErrors(section);
  section.querySelector('.notice')?.remove();
  for (const button of section.querySelectorAll('button')) button.disabled = true;
  try {
    const done = await run();
    if (done !== undefined) section.append(notice(done));
    return true;
  } catch (error) {
    showError(section, error);
    return false;
  } finally {
    for (const button of section.querySelectorAll('button')) button.disabled = false;
  }
}

export async function renderUser(view: View, userId: number): Promise<void> {
  const { users, auth } = view.session.api;
  const top = h('section', {}, h('h1', {}, `User #${userId}`), errorBanner());
  replace(view.main, top);
  let user: User;
  try {
    const response = await users.getUser({ userId });
    if (response.user === undefined) throw new Error('no user in the response');
    user = response.user;
  } catch (error) {
    showError(top, error);
    return;
  }
  const redraw = (next: User | undefined, message: string) => {
    if (next !== undefined) user = next;
    // An administrator editing its own account: the header shows the change too.
    if (next !== undefined && next.id === view.session.user?.id) view.session.updateUser(next);
    draw(message);
  };

  function draw(message?: string): void {
    const name = [user.firstName, user.lastName].filter((part) => part !== undefined).join(' ');
    const heading = h(
      'section',
      {},
      h('h1', {}, user.username),
      h('p', {}, h('a', { href: `#/audit?userId=${user.id}` }, 'Audit events of this user')),
      message === undefined ? null : notice(message),
    );
    const facts = h(
      'dl',
      { className: 'facts' },
      ...(
        [
          ['Id', String(user.id)],
          ['E-mail', user.email],
          ['Name', name === '' ? '—' : name],
          ['Phone', user.phone ?? '—'],
          ['Role', UserRole[user.role]],
          ['Status', UserStatus[user.status]],
          ['Verified', user.isVerified ? 'yes' : 'no'],
          ['Created', formatDate(user.createdAt && timestampDate(user.createdAt))],
          ['Last login', formatDate(user.lastLoginAt && timestampDate(user.lastLoginAt))],
          ['Version', String(user.version)],
        ] as const
      ).flatMap(([term, value]) => [h('dt', {}, term), h('dd', { 'data-fact': term }, value)]),
    );

    // Profile fields, sent only when changed; a stale version is refused (aborted).
    const email = h('input', { type: 'email', value: user.email });
    const firstName = h('input', { type: 'text', value: user.firstName ?? '' });
    const lastName = h('input', { type: 'text', value: user.lastName ?? '' });
    const phone = h('input', { type: 'text', value: user.phone ?? '' });
    const profile = h(
      'form',
      // The server validates, and says why in the API's words: an address the API took (a domain
      // label of 64 characters, say) that the browser's e-mail input refuses blocked every save of
      // the other fields (helper 112).
      { className: 'card', 'data-section': 'profile', noValidate: true },
      h('h2', {}, 'Profile'),
      errorBanner(),
      field('E-mail', email, 'email'),
      field('First name', firstName, 'first_name'),
      field('Last name', lastName, 'last_name'),
      field('Phone', phone, 'phone'),
      h('button', { type: 'submit' }, 'Save profile'),
    );
    profile.addEventListener('submit', (event) => {
      event.preventDefault();
      const changed = <T extends string>(value: T, old: T | undefined) => (value === (old ?? '') ? undefined : value);
      void act(profile, async () => {
        const response = await users.updateUser({
          userId: user.id,
          expectedVersion: user.version,
          email: changed(email.value, user.email),
          firstName: changed(firstName.value, user.firstName),
          lastName: changed(lastName.value, user.lastName),
          phone: changed(phone.value, user.phone),
        });
        redraw(response.user, 'Profile saved.');
        return undefined;
      });
    });

    const role = h('select', {}, ...enumOptions(UserRole, UserRole[user.role]));
    const status = h('select', {}, ...enumOptions(UserStatus, UserStatus[user.status]).filter((o) => o.value !== 'DELETED'));
    const access = h(
      'section',
      { className: 'card', 'data-section': 'access' },
      h('h2', {}, 'Access'),
      errorBanner(),
      h(
        'div',
        { className: 'row' },
        field('Role', role, 'role'),
        h(
          'button',
          {
            type: 'button',
            onclick: () =>
              void act(access, async () => {
                const response = await users.updateUserRole({ userId: user.id, role: UserRole[role.value as keyof typeof UserRole], expectedVersion: user.version });
                redraw(response.user, `Role set to ${role.value}.`);
                return undefined;
              }),
          },
          'Set role',
        ),
      ),
      h(
        'div',
        { className: 'row' },
        field('Status', status, 'status'),
        h(
          'button',
          {
            type: 'button',
            onclick: () =>
              void act(access, async () => {
                const response = await users.updateUserStatus({ userId: user.id, status: UserStatus[status.value as keyof typeof UserStatus], expectedVersion: user.version });
                redraw(response.user, `Status set to ${status.value}.`);
                return undefined;
              }),
          },
          'Set status',
        ),
      ),
      h(
        'div',
        { className: 'row' },
        user.isVerified
          ? null
          : h(
              'button',
              {
                type: 'button',
                onclick: () =>
                  void act(access, async () => {
                    const response = await users.verifyUser({ userId: user.id, expectedVersion: user.version });
                    redraw(response.user, 'User verified.');
                    return undefined;
                  }),
              },
              'Verify',
            ),
        h(
          'button',
          {
            type: 'button',
            onclick: () =>
              void act(access, async () => {
                const { clearedCount } = await users.clearLoginFailures({ userId: user.id });
                return `Login lockouts cleared (${clearedCount} address${clearedCount === 1 ? '' : 'es'}).`;
              }),
          },
          'Clear login lockouts',
        ),
      ),
    );

    const sessionList = h('div', {});
    const sessions = h(
      'section',
      { className: 'card', 'data-section': 'sessions' },
      h('h2', {}, 'Sessions'),
      errorBanner(),
      sessionList,
      h(
        'button',
        {
          type: 'button',
          onclick: () =>
            void act(sessions, async () => {
              const { endedCount } = await auth.endUserSessions({ userId: user.id });
              await loadSessions();
              return `Ended ${endedCount} session${endedCount === 1 ? '' : 's'}.`;
            }),
        },
        'End all sessions',
      ),
    );
    async function loadSessions(): Promise<void> {
      const response = await auth.listUserSessions({ userId: user.id });
      replace(
        sessionList,
        sessionTable(
          response.sessions,
          (session) =>
            void act(sessions, async () => {
              await auth.endUserSession({ userId: user.id, sessionId: session.id });
              await loadSessions();
              return `Ended session #${session.id}.`;
            }),
        ),
      );
    }
    void act(sessions, async () => {
      await loadSessions();
      return undefined;
    });

    const confirmBox = h('div', { className: 'confirm', hidden: true });
    const danger = h(
      'section',
      { className: 'card danger', 'data-section': 'delete' },
      h('h2', {}, 'Delete'),
      errorBanner(),
      h('button', { type: 'button', onclick: () => confirmBox.removeAttribute('hidden') }, 'Delete user…'),
      confirmBox,
    );
    replace(
      confirmBox,
      h('p', {}, `Delete ${user.username} and end all of its sessions? This cannot be undone.`),
      h(
        'button',
        {
          type: 'button',
          className: 'destructive',
          onclick: () =>
            void act(danger, async () => {
              await users.deleteUser({ userId: user.id, expectedVersion: user.version });
              view.go('/users');
              return undefined;
            }),
        },
        `Yes, delete ${user.username}`,
      ),
      h('button', { type: 'button', onclick: () => confirmBox.setAttribute('hidden', '') }, 'Cancel'),
    );

    replace(view.main, heading, facts, access, sessions, profile, danger);
  }
  draw();
}

/** A table of sessions, with an End button per session when `end` is given. */
export function sessionTable(list: Session[], end?: (session: Session) => void): HTMLElement {
  if (list.length === 0) return h('p', { className: 'empty' }, 'No live sessions.');
  return h(
    'table',
    { className: 'sessions' },
    h('thead', {}, h('tr', {}, ...['Id', 'Client', 'Address', 'User agent', 'Issued', 'Expires', ''].map((title) => h('th', {}, title)))),
    h(
      'tbody',
      {},
      ...list.map((session) =>
        h(
          'tr',
          { 'data-session-id': session.id },
          h('td', {}, session.id, session.current ? ' (this one)' : ''),
          h('td', {}, session.clientName ?? '—'),
          h('td', {}, session.ipAddress ?? '—'),
          h('td', { className: 'agent' }, session.userAgent ?? '—'),
          h('td', {}, formatDate(session.createdAt && timestampDate(session.createdAt))),
          h('td', {}, formatDate(session.expiresAt && timestampDate(session.expiresAt))),
          h('td', {}, end === undefined ? null : h('button', { type: 'button', onclick: () => end(session) }, 'End')),
        ),
      ),
    ),
  );
}
