import { timestampDate } from '@bufbuild/protobuf/wkt';
import { AuditEventType, type AuditEvent } from '../../../gen/proto/arcana/audit/v1/audit_service_pb.js';
import { field, formatDate, h, option, replace } from '../dom.ts';
import { errorBanner, showError } from '../errors.ts';
import type { View } from '../main.ts';
import { enumNamed, enumOptions, pageNamed, pager } from './common.ts';

export async function renderAudit(view: View): Promise<void> {
  const { query } = view;
  const userId = h('input', { type: 'text', inputMode: 'numeric', value: query.get('userId') ?? '' });
  const type = h('select', {}, option('', 'any'), ...enumOptions(AuditEventType, query.get('type')));
  const form = h('form', { className: 'filters' }, field('User id', userId, 'user_id'), field('Type', type, 'type'), h('button', { type: 'submit' }, 'Filter'));
  const page = pageNamed(query.get('page'));
  const routeFor = (toPage: number) => {
    const next = new URLSearchParams();
    if (userId.value.trim() !== '') next.set('userId', userId.value.trim());
    if (type.value !== '') next.set('type', type.value);
    if (toPage > 1) next.set('page', String(toPage));
    return `/audit?${next.toString()}`;
  };
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    view.go(routeFor(1));
  });
  const results = h('section', { 'aria-live': 'polite' });
  const section = h('section', {}, h('h1', {}, 'Audit log'), form, errorBanner(), results);
  replace(view.main, section);

  try {
    // A user id that is not a whole number goes to the server as is: the field violation it
    // answers with is shown beside the field.
    const asked = query.get('userId');
    const response = await view.session.api.audit.listAuditEvents({
      page,
      perPage: 20,
      userId: asked === null ? undefined : Number.isSafeInteger(Number(asked)) ? Number(asked) : -1,
      type: enumNamed(AuditEventType, query.get('type')),
    });
    const total = response.pagination?.total ?? 0;
    replace(
      results,
      response.events.length === 0
        ? h('p', { className: 'empty' }, 'No audit events match.')
        : h(
            'table',
            { className: 'audit' },
            h('thead', {}, h('tr', {}, ...['Time', 'Type', 'User', 'Actor', 'Address', 'Details'].map((title) => h('th', {}, title)))),
            h('tbody', {}, ...response.events.map(eventRow)),
          ),
      pager(page, response.pagination?.totalPages ?? 1, `${total} event${total === 1 ? '' : 's'}`, (to) => view.go(routeFor(to))),
    );
  } catch (error) {
    showError(section, error);
  }
}

function userLink(id: number | undefined): Node | string {
  return id === undefined ? '—' : h('a', { href: `#/users/${id}` }, `#${id}`);
}

function eventRow(event: AuditEvent): HTMLElement {
  const details = Object.entries(event.details)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([name, value]) => `${name}=${value}`)
    .join(', ');
  return h(
    'tr',
    { 'data-event-id': event.id },
    h('td', {}, formatDate(event.createdAt && timestampDate(event.createdAt))),
    h('td', { className: 'type' }, AuditEventType[event.type]),
    h('td', {}, userLink(event.userId)),
    h('td', {}, userLink(event.actorId)),
    h('td', {}, event.ipAddress ?? '—'),
    h('td', { className: 'details' }, details),
  );
}
