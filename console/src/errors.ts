// Errors as the API gives them: the Connect code and message, and each google.rpc.BadRequest
// field violation beside the form field it names.
import { Code, ConnectError } from '@connectrpc/connect';
import { BadRequestSchema } from '../../gen/proto/google/rpc/error_details_pb.js';
import { h, replace } from './dom.ts';

/** Connect's code names as they travel on the wire (e.g. `invalid_argument`). */
export function codeName(code: Code): string {
  return Code[code].replace(/([a-z])([A-Z])/g, '$1_$2').toLowerCase();
}

export function fieldViolations(error: ConnectError): [string, string][] {
  return error.findDetails(BadRequestSchema).flatMap((detail) => detail.fieldViolations.map((v): [string, string] => [v.field, v.description]));
}

/** Clears a form's error banner and field violations. */
export function clearErrors(scope: Element): void {
  for (const slot of scope.querySelectorAll('[data-violation], .error')) slot.replaceChildren();
  for (const banner of scope.querySelectorAll('.error')) banner.setAttribute('hidden', '');
}

/**
 * Shows an error in `scope`'s `.error` banner (`[code] message`) and each field violation in the
 * slot of the field it names; violations without such a slot are listed in the banner.
 */
export function showError(scope: Element, reason: unknown): void {
  const error = ConnectError.from(reason);
  const banner = scope.querySelector('.error');
  const unplaced: [string, string][] = [];
  for (const [name, description] of fieldViolations(error)) {
    const slot = scope.querySelector(`[data-violation="${CSS.escape(name)}"]`);
    if (slot === null) unplaced.push([name, description]);
    else slot.textContent = description;
  }
  if (banner === null) return;
  replace(
    banner,
    h('strong', { className: 'code' }, `[${codeName(error.code)}]`),
    ' ',
    error.rawMessage,
    unplaced.length === 0 ? null : h('ul', {}, ...unplaced.map(([name, description]) => h('li', {}, `${name}: ${description}`))),
  );
  banner.removeAttribute('hidden');
}

/** The error banner a view puts at its top. */
export function errorBanner(): HTMLElement {
  return h('div', { className: 'error', role: 'alert', hidden: true });
}
