// Arcana Cloud admin console: a single page served at /console, talking to the public RPC API
// with gRPC-Web or Connect (see api.ts). Routes live in the URL fragment (#/users, #/users/7,
// #/audit, #/account), so the server serves one page for all of them.
import { ConsoleSession, initialProtocol, PROTOCOLS, type Protocol } from './api.ts';
import { h, replace } from './dom.ts';
import { UserRole } from '../../gen/proto/arcana/user/v1/user_pb.js';
import { renderAccount } from './views/account.ts';
import { renderAudit } from './views/audit.ts';
import { renderSignIn } from './views/sign-in.ts';
import { renderUser } from './views/user.ts';
import { renderUsers } from './views/users.ts';

export interface View {
  session: ConsoleSession;
  /** Where the view draws itself. */
  main: HTMLElement;
  /** The route's query (after `?` in the fragment). */
  query: URLSearchParams;
  /** Moves to another route. */
  go(route: string): void;
  /** Draws the current route again (after a change). */
  reload(): void;
}

const root = document.getElementById('app');
if (root === null) throw new Error('no #app element');
const session = new ConsoleSession(initialProtocol());
let signedOutReason: string | undefined;
session.onSignedOut = (reason) => {
  signedOutReason = reason;
  render();
};

window.addEventListener('hashchange', () => render());
// Leaving the page signs out, as closing the tab does (see ConsoleSession.leave); drawn before the
// page goes, so that a page brought back by Back shows the sign-in form, not the last screen.
window.addEventListener('pagehide', () => {
  if (session.user === undefined) return;
  session.leave();
  signedOutReason = 'You left the console. Sign in again.';
  render();
});

function go(route: string): void {
  if (location.hash === `#${route}`) render();
  else location.hash = route;
}

function route(): { path: string[]; query: URLSearchParams } {
  const fragment = location.hash.replace(/^#\/?/, '');
  const [path = '', query = ''] = fragment.split('?', 2);
  return { path: path.split('/').filter((part) => part !== ''), query: new URLSearchParams(query) };
}

function header(): HTMLElement {
  const user = session.user;
  const admin = user?.role === UserRole.ADMIN;
  const signOut = h(
    'button',
    {
      type: 'button',
      className: 'link',
      onclick: () =>
        void session.signOut().then(() => {
          signedOutReason = 'Signed out.';
          render();
        }),
    },
    'Sign out',
  );
  return h(
    'header',
    {},
    h('span', { className: 'brand' }, 'Arcana Cloud console'),
    h('nav', {}, admin && h('a', { href: '#/users' }, 'Users'), admin && h('a', { href: '#/audit' }, 'Audit log'), h('a', { href: '#/account' }, 'My account')),
    h('span', { className: 'who', 'data-testid': 'who' }, `${user?.username ?? ''} · ${session.protocol}`),
    signOut,
  );
}

function render(): void {
  if (root === null) return;
  if (session.user === undefined) {
    replace(
      root,
      renderSignIn({
        protocol: session.protocol,
        protocols: PROTOCOLS,
        notice: signedOutReason,
        signIn: async (login: string, password: string, protocol: Protocol) => {
          if (protocol !== session.protocol) session.setProtocol(protocol);
          await session.signIn(login, password);
          signedOutReason = undefined;
          if (location.hash === '' || location.hash === '#/' || location.hash === '#') go(session.user?.role === UserRole.ADMIN ? '/users' : '/account');
          else render();
        },
      }),
    );
    return;
  }
  const { path, query } = route();
  const main = h('main', {});
  replace(root, header(), main);
  const view: View = { session, main, query, go, reload: render };
  const [section, id] = path;
  // Users and the audit log are administrators' pages: a user's own is its account. Drawn for a
  // USER, a user's page offered role, status, verify and delete controls the API then refused
  // (helper 90).
  if (session.user.role !== UserRole.ADMIN && section !== 'account') go('/account');
  // A user id is a positive int32; anything else in its place (typed or pasted) is no user's page.
  else if (section === 'users' && id !== undefined && /^[1-9]\d{0,9}$/.test(id) && Number(id) <= 2_147_483_647) void renderUser(view, Number(id));
  else if (section === 'users' && id !== undefined) go('/users');
  else if (section === 'users') void renderUsers(view);
  else if (section === 'audit') void renderAudit(view);
  else if (section === 'account') void renderAccount(view);
  else go(session.user.role === UserRole.ADMIN ? '/users' : '/account');
}

render();
