import { h, option } from '../dom.ts';

/** The options of a generated enum, UNSPECIFIED left out, by value name. */
export function enumOptions(values: Record<string, string | number>, selected: string | null | undefined): HTMLOptionElement[] {
  return Object.keys(values)
    .filter((name) => Number.isNaN(Number(name)) && name !== 'UNSPECIFIED')
    .map((name) => option(name, name, name === selected));
}

/**
 * The value of a generated enum named in a link (`?role=ADMIN`), or undefined when the link names
 * none. Looked up among the enum's own names only: indexing the enum object also finds what every
 * object inherits (`constructor`, `__proto__`), which the client cannot encode and showed as
 * `[internal]` (helpers 52 and 90). A name that is none goes to the server as UNSPECIFIED (0),
 * whose field violation is shown beside the field, as a user id that is not a number is.
 */
export function enumNamed<E extends Record<string, string | number>>(values: E, name: string | null): Extract<E[keyof E], number> | undefined {
  if (name === null) return undefined;
  const value = Object.hasOwn(values, name) ? values[name] : undefined;
  // 0 is every generated enum's UNSPECIFIED.
  return (typeof value === 'number' ? value : 0) as Extract<E[keyof E], number>;
}

/** The largest page a request can name: page is an int32 (a larger one the client cannot encode). */
const MAX_PAGE = 2 ** 31 - 1;

/** The page a link names (`?page=3`): 1 when it names none or nonsense, at most MAX_PAGE (helper 90: `page=1e400`). */
export function pageNamed(value: string | null): number {
  return Math.min(MAX_PAGE, Math.max(1, Math.floor(Number(value ?? '1')) || 1));
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
