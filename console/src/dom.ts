// A few DOM helpers: elements are built with properties and text nodes, never from HTML strings,
// so nothing the API returns can become markup.

type Child = Node | string | number | false | null | undefined;
type Props = Record<string, string | number | boolean | ((event: Event) => void) | undefined>;

/** Creates an element; `on…` props become listeners, `data-…`/`aria-…` attributes, others properties. */
export function h<K extends keyof HTMLElementTagNameMap>(tag: K, props: Props = {}, ...children: Child[]): HTMLElementTagNameMap[K] {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === false) continue;
    if (typeof value === 'function') element.addEventListener(name.slice(2).toLowerCase(), value);
    else if (name.startsWith('data-') || name.startsWith('aria-') || name === 'for' || name === 'role') element.setAttribute(name, String(value));
    else (element as unknown as Record<string, unknown>)[name] = value;
  }
  append(element, children);
  return element;
}

export function append(parent: Node, children: Child[]): void {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    parent.appendChild(typeof child === 'string' || typeof child === 'number' ? document.createTextNode(String(child)) : child);
  }
}

/** Replaces an element's content. */
export function replace(parent: Element, ...children: Child[]): void {
  parent.replaceChildren();
  append(parent, children);
}

/** A labelled form control; its field name is where the API's field violations go. */
export function field(label: string, control: HTMLInputElement | HTMLSelectElement, name: string): HTMLElement {
  control.name = name;
  control.id = `f-${name}-${Math.random().toString(36).slice(2, 8)}`;
  return h('div', { className: 'field' }, h('label', { for: control.id }, label), control, h('span', { className: 'violation', 'data-violation': name, role: 'alert' }));
}

export function option(value: string, label: string, selected = false): HTMLOptionElement {
  return h('option', { value, selected }, label);
}

export function formatDate(date: Date | undefined): string {
  if (date === undefined) return '—';
  return date
    .toISOString()
    .replace('T', ' ')
    .replace(/\.\d+Z$/, ' UTC');
}
