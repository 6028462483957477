import type { Protocol } from '../api.ts';
import { field, h, option } from '../dom.ts';
import { clearErrors, errorBanner, showError } from '../errors.ts';

export interface SignInOptions {
  protocol: Protocol;
  protocols: readonly Protocol[];
  notice: string | undefined;
  signIn(login: string, password: string, protocol: Protocol): Promise<void>;
}

const LABELS: Record<Protocol, string> = { 'grpc-web': 'gRPC-Web', connect: 'Connect' };

export function renderSignIn(options: SignInOptions): HTMLElement {
  const login = h('input', { type: 'text', autocomplete: 'username', required: true });
  const password = h('input', { type: 'password', autocomplete: 'current-password', required: true });
  const protocol = h('select', {}, ...options.protocols.map((p) => option(p, LABELS[p], p === options.protocol)));
  const submit = h('button', { type: 'submit' }, 'Sign in');
  const form = h(
    'form',
    { className: 'card sign-in' },
    h('h1', {}, 'Arcana Cloud console'),
    options.notice === undefined ? null : h('p', { className: 'notice' }, options.notice),
    errorBanner(),
    field('Username or e-mail', login, 'username_or_email'),
    field('Password', password, 'password'),
    field('Protocol', protocol, 'protocol'),
    submit,
  );
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    clearErrors(form);
    submit.disabled = true;
    options
      .signIn(login.value, password.value, protocol.value as Protocol)
      .catch((error: unknown) => showError(form, error))
      .finally(() => (submit.disabled = false));
  });
  return form;
}
