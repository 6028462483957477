import { h, option } from '../dom.ts';

/** The options of a generated enum, UNSPECIFIED left out, by value name. */
export function enumOptions(values: Record<string, string | number>, selected: string | null | undefined): HTMLOptionElement[] {
  return Object.keys(values)
    .filter((name) => Number.isNaN(Number(name)) && name !== 'UNSPECIFIED')
    .map((name) => option(name, name, name === selected));
}

/** "Page 2 of 5 (93 users)" with previous/next buttons. */
export function pager(page: number, totalPages: number, summary: string, goTo: (page: number) => void): HTMLElement {
  const last = Math.max(1, totalPages);
  return h(
    'div',
    { className: 'pager' },
    h('button', { type: 'button', disabled: page <= 1, onclick: () => goTo(page - 1) }, '← Previous'),
    h('span', { className: 'page' }, `Page ${page} of ${last} (${summary})`),
    h('button', { type: 'button', disabled: page >= last, onclick: () => goTo(page + 1) }, 'Next →'),
  );
}

/** A short-lived confirmation under an action. */
export function notice(text: string): HTMLElement {
  return h('p', { className: 'notice', role: 'status' }, text);
}
