import { UserRole, UserStatus, type User } from '../../../gen/proto/arcana/user/v1/user_pb.js';
import { timestampDate } from '@bufbuild/protobuf/wkt';
import { field, formatDate, h, option, replace } from '../dom.ts';
import { errorBanner, showError } from '../errors.ts';
import type { View } from '../main.ts';
import { enumNamed, enumOptions, pageNamed, pager } from './common.ts';

const SORTS: [string, string][] = [
  ['id', 'Id'],
  ['-createdAt', 'Newest first'],
  ['createdAt', 'Oldest first'],
  ['-lastLoginAt', 'Last login, latest first'],
  ['lastLoginAt', 'Last login, never first'],
];

export async function renderUsers(view: View): Promise<void> {
  const { query } = view;
  const q = h('input', { type: 'search', value: query.get('q') ?? '', placeholder: 'name or e-mail starts with…' });
  const role = h('select', {}, option('', 'any'), ...enumOptions(UserRole, query.get('role')));
  const status = h('select', {}, option('', 'any'), ...enumOptions(UserStatus, query.get('status')));
  const sort = h('select', {}, ...SORTS.map(([value, label]) => option(value, label, value === (query.get('sort') ?? 'id'))));
  const form = h(
    'form',
    { className: 'filters' },
    field('Search', q, 'q'),
    field('Role', role, 'role'),
    field('Status', status, 'status'),
    field('Sort', sort, 'sort'),
    h('button', { type: 'submit' }, 'Search'),
  );
  const results = h('section', { 'aria-live': 'polite' });
  const page = pageNamed(query.get('page'));
  const routeFor = (toPage: number) => {
    const next = new URLSearchParams();
    if (q.value !== '') next.set('q', q.value);
    if (role.value !== '') next.set('role', role.value);
    if (status.value !== '') next.set('status', status.value);
    if (sort.value !== 'id') next.set('sort', sort.value);
    if (toPage > 1) next.set('page', String(toPage));
    return `/users?${next.toString()}`;
  };
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    view.go(routeFor(1));
  });
  const banner = errorBanner();
  replace(view.main, h('h1', {}, 'Users'), form, banner, results);

  try {
    const response = await view.session.api.users.listUsers({
      page,
      perPage: 20,
      q: query.get('q') ?? undefined,
      role: enumNamed(UserRole, query.get('role')),
      status: enumNamed(UserStatus, query.get('status')),
      sort: query.get('sort') ?? '',
    });
    const rows = response.users.map((user: User) =>
      h(
        'tr',
        { 'data-user-id': user.id },
        // Only the e-mail and the name wrap (see console.css, td.nowrap).
        h('td', { className: 'nowrap' }, user.id),
        h('td', { className: 'nowrap' }, h('a', { href: `#/users/${user.id}` }, user.username)),
        h('td', {}, user.email),
        h('td', {}, [user.firstName, user.lastName].filter((part) => part !== undefined).join(' ')),
        h('td', { className: 'nowrap' }, UserRole[user.role]),
        h('td', { className: 'nowrap' }, UserStatus[user.status]),
        h('td', { className: 'nowrap' }, user.isVerified ? 'yes' : 'no'),
        h('td', { className: 'nowrap' }, formatDate(user.lastLoginAt === undefined ? undefined : timestampDate(user.lastLoginAt))),
      ),
    );
    const total = response.pagination?.total ?? 0;
    replace(
      results,
      rows.length === 0
        ? h('p', { className: 'empty' }, 'No users match.')
        : h(
            'table',
            { className: 'users' },
            h('thead', {}, h('tr', {}, ...['Id', 'Username', 'E-mail', 'Name', 'Role', 'Status', 'Verified', 'Last login'].map((title) => h('th', {}, title)))),
            h('tbody', {}, ...rows),
          ),
      pager(page, response.pagination?.totalPages ?? 1, `${total} user${total === 1 ? '' : 's'}`, (to) => view.go(routeFor(to))),
    );
  } catch (error) {
    showError(view.main, error);
  }
}
