// The public API as an attacker meets it: the same operations over each of the five public
// protocols (REST, Connect JSON, Connect binary, gRPC-Web, gRPC), with one outcome shape, so a
// security test can fire the same attack over every protocol and assert the same result.
// Outcomes are normalised to Connect code names (`ok`, `unauthenticated`, …; REST error codes are
// mapped through the server's own table) and successful data to openapi.yaml's REST shapes.
import { Code, ConnectError, createClient, type CallOptions, type Client, type Transport } from '@connectrpc/connect';
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport, Http2SessionManager } from '@connectrpc/connect-node';
import http from 'node:http';
import type { components } from '../../gen/openapi/schema.d.ts';
import { AuthService } from '../../gen/proto/arcana/auth/v1/auth_service_pb.js';
import { UserService } from '../../gen/proto/arcana/user/v1/user_service_pb.js';
import { UserRole, UserStatus } from '../../gen/proto/arcana/user/v1/user_pb.js';
import { BadRequestSchema } from '../../gen/proto/google/rpc/error_details_pb.js';
import { CONNECT_CODE } from '../../src/controllers/rpc/interceptors.ts';
import { toRestPagination, toRestSession, toRestTokenPair, toRestUser } from '../../src/controllers/rest/rest-mapping.ts';

type Schemas = components['schemas'];

/** Every public protocol the server speaks. */
export const PROTOCOLS = ['rest', 'connect-json', 'connect-binary', 'grpc-web', 'grpc'] as const;
export type ProtocolName = (typeof PROTOCOLS)[number];

/** What a client saw. `code` is `ok` or a Connect code name (`unauthenticated`, `already_exists`…). */
export interface Outcome<T> {
  code: string;
  /** The answer in openapi.yaml's REST shape, when the call succeeded. */
  data?: T;
  /** Response headers (RPC: headers and trailers, or the error's metadata). */
  headers: Headers;
  /** Error message and field problems (REST `details`, RPC google.rpc.BadRequest), on failure. */
  error?: { message: string; details: Record<string, string> };
  /** REST: the HTTP status. */
  status?: number;
}

/** Extra request headers: a forwarded-for address, If-Match, an idempotency key, a device token… */
export interface CallExtras {
  headers?: Record<string, string>;
  /** Gives up on the call: the client goes away (REST closes its socket, RPC cancels its stream). */
  signal?: AbortSignal;
  /** RPC only: the deadline the call carries to the server (grpc-timeout, connect-timeout-ms). */
  timeoutMs?: number;
  /**
   * The user's version the write expects: REST sends it as `If-Match: "<version>"`, RPC as the
   * request's `expected_version`.
   */
  expectedVersion?: number;
}

export interface AuthResultData {
  user: Schemas['User'];
  tokens: Schemas['TokenPair'];
}

/** The operations attacks need, the same over every protocol. */
export interface ApiClient {
  readonly protocol: ProtocolName;
  register(body: Schemas['RegisterRequest'], extras?: CallExtras): Promise<Outcome<AuthResultData>>;
  login(body: Schemas['LoginRequest'], extras?: CallExtras): Promise<Outcome<AuthResultData>>;
  refresh(refreshToken: string, extras?: CallExtras): Promise<Outcome<Schemas['TokenPair']>>;
  logout(token: string, extras?: CallExtras): Promise<Outcome<null>>;
  me(token: string, extras?: CallExtras): Promise<Outcome<Schemas['User']>>;
  changePassword(token: string, userId: number, body: Schemas['ChangePasswordRequest'], extras?: CallExtras): Promise<Outcome<null>>;
  getUser(token: string, userId: number, extras?: CallExtras): Promise<Outcome<Schemas['User']>>;
  createUser(token: string, body: Schemas['CreateUserRequest'], extras?: CallExtras): Promise<Outcome<Schemas['User']>>;
  updateUser(token: string, userId: number, body: Schemas['UpdateUserRequest'], extras?: CallExtras): Promise<Outcome<Schemas['User']>>;
  verifyUser(token: string, userId: number, extras?: CallExtras): Promise<Outcome<Schemas['User']>>;
  updateStatus(token: string, userId: number, status: Schemas['UserStatus'], extras?: CallExtras): Promise<Outcome<Schemas['User']>>;
  updateRole(token: string, userId: number, role: Schemas['UserRole'], extras?: CallExtras): Promise<Outcome<Schemas['User']>>;
  deleteUser(token: string, userId: number, extras?: CallExtras): Promise<Outcome<null>>;
  listUsers(
    token: string,
    query: { page?: number; perPage?: number; role?: Schemas['UserRole']; status?: Schemas['UserStatus']; q?: string; sort?: string },
    extras?: CallExtras,
  ): Promise<Outcome<{ items: Schemas['User'][]; pagination: Schemas['Pagination'] }>>;
  /** An administrator's view of a user's live sessions. */
  listUserSessions(token: string, userId: number, extras?: CallExtras): Promise<Outcome<Schemas['Session'][]>>;
  endUserSession(token: string, userId: number, sessionId: number, extras?: CallExtras): Promise<Outcome<null>>;
  endUserSessions(token: string, userId: number, extras?: CallExtras): Promise<Outcome<{ endedCount: number }>>;
  /** Releases the client's connections. */
  close(): void;
}

/** A client of the server at `baseUrl` (e.g. http://127.0.0.1:54321) over `protocol`. */
export function apiClient(protocol: ProtocolName, baseUrl: string): ApiClient {
  return protocol === 'rest' ? restClient(baseUrl) : rpcClient(protocol, baseUrl);
}

/** One client per protocol; close them with `closeAll`. */
export function apiClients(baseUrl: string): ApiClient[] {
  return PROTOCOLS.map((protocol) => apiClient(protocol, baseUrl));
}

export function closeAll(clients: ApiClient[]): void {
  for (const client of clients) client.close();
}

/** REST error codes as the Connect codes the RPC facade answers with, by name. */
function connectCodeOfRest(code: string): string {
  const connectCode = CONNECT_CODE[code as keyof typeof CONNECT_CODE] as Code | undefined;
  return connectCode === undefined ? `rest:${code}` : codeName(connectCode);
}

function codeName(code: Code): string {
  return Code[code].replace(/([a-z])([A-Z])/g, '$1_$2').toLowerCase();
}

/** A REST response body: one of the envelopes of openapi.yaml. */
interface RestBody {
  data?: unknown;
  items?: unknown;
  pagination?: unknown;
  error?: { code?: string; message?: string; details?: Record<string, string> };
}

function restClient(baseUrl: string): ApiClient {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
  const call = async <T>(
    method: string,
    path: string,
    token: string | undefined,
    body: unknown,
    extras: CallExtras | undefined,
    pick: (json: RestBody) => T,
  ): Promise<Outcome<T>> => {
    const headers: Record<string, string> = { ...extras?.headers };
    if (token !== undefined) headers.authorization = `Bearer ${token}`;
    if (extras?.expectedVersion !== undefined) headers['if-match'] = `"${extras.expectedVersion}"`;
    const payload = body === undefined ? undefined : JSON.stringify(body);
    if (payload !== undefined) headers['content-type'] = 'application/json';
    const { status, responseHeaders, text } = await new Promise<{ status: number; responseHeaders: Headers; text: string }>((resolve, reject) => {
      const req = http.request(new URL(path, baseUrl), { method, headers, agent, ...(extras?.signal === undefined ? {} : { signal: extras.signal }) }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('end', () => {
          const responseHeaders = new Headers();
          for (const [name, value] of Object.entries(res.headers)) {
            if (Array.isArray(value)) for (const one of value) responseHeaders.append(name, one);
            else if (value !== undefined) responseHeaders.set(name, value);
          }
          resolve({ status: res.statusCode ?? 0, responseHeaders, text: Buffer.concat(chunks).toString('utf8') });
        });
        res.on('error', reject);
      });
      req.on('error', reject);
      req.end(payload);
    }).catch((error: unknown) => {
      if (extras?.signal?.aborted === true) return { status: 0, responseHeaders: new Headers(), text: '' };
      // A connection refused or reset is an outcome, as the RPC clients make it (ConnectError.from:
      // `unavailable`), not a rejection: a test holding the call across a sleep would leave that
      // unhandled, reported against no test (helper 182).
      return { status: -1, responseHeaders: new Headers(), text: error instanceof Error ? error.message : String(error) };
    });
    if (status === 0) return { code: 'canceled', headers: responseHeaders };
    if (status === -1) return { code: 'unavailable', headers: responseHeaders, error: { message: text, details: {} } };
    let json: RestBody;
    try {
      json = (text === '' ? {} : JSON.parse(text)) as RestBody;
    } catch {
      // Every answer of the API is JSON: one that is not is a failure the test reports, with the text.
      return { code: 'internal', status, headers: responseHeaders, error: { message: `not JSON (HTTP ${status}): ${text.slice(0, 200)}`, details: {} } };
    }
    if (status >= 200 && status < 300) return { code: 'ok', status, headers: responseHeaders, data: pick(json) };
    const error = json.error;
    return {
      code: connectCodeOfRest(error?.code ?? `HTTP_${status}`),
      status,
      headers: responseHeaders,
      error: { message: error?.message ?? text, details: error?.details ?? {} },
    };
  };
  // The type argument names the body's shape for each call, which the tests then assert.
  // eslint-disable-next-line @typescript-eslint/no-unnecessary-type-parameters -- a typed reader passed as a callback (data<AuthResultData>)
  const data = <T>(json: RestBody) => json.data as T;
  const id = (userId: number) => `/api/v1/users/${userId}`;
  return {
    protocol: 'rest',
    register: (body, extras) => call('POST', '/api/v1/auth/register', undefined, body, extras, data<AuthResultData>),
    login: (body, extras) => call('POST', '/api/v1/auth/login', undefined, body, extras, data<AuthResultData>),
    refresh: (refreshToken, extras) => call('POST', '/api/v1/auth/refresh', undefined, { refreshToken }, extras, data<Schemas['TokenPair']>),
    logout: (token, extras) => call('POST', '/api/v1/auth/logout', token, undefined, extras, () => null),
    me: (token, extras) => call('GET', '/api/v1/auth/me', token, undefined, extras, data<Schemas['User']>),
    changePassword: (token, userId, body, extras) => call('PUT', `${id(userId)}/password`, token, body, extras, () => null),
    getUser: (token, userId, extras) => call('GET', id(userId), token, undefined, extras, data<Schemas['User']>),
    createUser: (token, body, extras) => call('POST', '/api/v1/users', token, body, extras, data<Schemas['User']>),
    updateUser: (token, userId, body, extras) => call('PUT', id(userId), token, body, extras, data<Schemas['User']>),
    verifyUser: (token, userId, extras) => call('POST', `${id(userId)}/verify`, token, undefined, extras, data<Schemas['User']>),
    updateStatus: (token, userId, status, extras) => call('PUT', `${id(userId)}/status`, token, { status }, extras, data<Schemas['User']>),
    updateRole: (token, userId, role, extras) => call('PUT', `${id(userId)}/role`, token, { role }, extras, data<Schemas['User']>),
    deleteUser: (token, userId, extras) => call('DELETE', id(userId), token, undefined, extras, () => null),
    listUsers: (token, query, extras) => {
      const search = new URLSearchParams(
        Object.entries(query as Record<string, unknown>)
          .filter(([, value]) => value !== undefined)
          .map(([key, value]): [string, string] => [key, String(value)]),
      );
      return call('GET', `/api/v1/users?${search.toString()}`, token, undefined, extras, (json) => ({
        items: json.items as Schemas['User'][],
        pagination: json.pagination as Schemas['Pagination'],
      }));
    },
    listUserSessions: (token, userId, extras) => call('GET', `${id(userId)}/sessions`, token, undefined, extras, data<Schemas['Session'][]>),
    endUserSession: (token, userId, sessionId, extras) => call('DELETE', `${id(userId)}/sessions/${sessionId}`, token, undefined, extras, () => null),
    endUserSessions: (token, userId, extras) => call('DELETE', `${id(userId)}/sessions`, token, undefined, extras, data<{ endedCount: number }>),
    close: () => agent.destroy(),
  };
}

function rpcClient(protocol: Exclude<ProtocolName, 'rest'>, baseUrl: string): ApiClient {
  const sessions = new Http2SessionManager(baseUrl);
  const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
  let transport: Transport;
  switch (protocol) {
    case 'connect-json':
      transport = createConnectTransport({ baseUrl, httpVersion: '1.1', useBinaryFormat: false, nodeOptions: { agent } });
      break;
    case 'connect-binary':
      transport = createConnectTransport({ baseUrl, httpVersion: '2', useBinaryFormat: true, sessionManager: sessions });
      break;
    case 'grpc-web':
      transport = createGrpcWebTransport({ baseUrl, httpVersion: '1.1', useBinaryFormat: true, nodeOptions: { agent } });
      break;
    case 'grpc':
      transport = createGrpcTransport({ baseUrl, sessionManager: sessions });
      break;
  }
  const auth: Client<typeof AuthService> = createClient(AuthService, transport);
  const users: Client<typeof UserService> = createClient(UserService, transport);

  const call = async <R, T>(
    token: string | undefined,
    extras: CallExtras | undefined,
    run: (options: CallOptions) => Promise<R>,
    pick: (response: R) => T,
  ): Promise<Outcome<T>> => {
    const headers = new Headers(extras?.headers);
    if (token !== undefined) headers.set('authorization', `Bearer ${token}`);
    const seen = new Headers();
    const copy = (from: Headers) => from.forEach((value, name) => seen.append(name, value));
    try {
      const response = await run({ headers, onHeader: copy, onTrailer: copy, signal: extras?.signal, timeoutMs: extras?.timeoutMs });
      return { code: 'ok', headers: seen, data: pick(response) };
    } catch (reason) {
      const error = ConnectError.from(reason);
      copy(error.metadata);
      const details = Object.fromEntries(
        error.findDetails(BadRequestSchema).flatMap((detail) => detail.fieldViolations.map((violation) => [violation.field, violation.description])),
      );
      return { code: codeName(error.code), headers: seen, error: { message: error.rawMessage, details } };
    }
  };
  const user = (response: { user?: Parameters<typeof toRestUser>[0] | undefined }) => toRestUser(required(response.user));
  return {
    protocol,
    register: (body, extras) =>
      call(
        undefined,
        extras,
        (options) => auth.register(body, options),
        (r) => ({ user: user(r), tokens: toRestTokenPair(r.tokens) }),
      ),
    login: (body, extras) =>
      call(
        undefined,
        extras,
        (options) => auth.login(body, options),
        (r) => ({ user: user(r), tokens: toRestTokenPair(r.tokens) }),
      ),
    refresh: (refreshToken, extras) =>
      call(
        undefined,
        extras,
        (options) => auth.refreshToken({ refreshToken }, options),
        (r) => toRestTokenPair(r.tokens),
      ),
    logout: (token, extras) =>
      call(
        token,
        extras,
        (options) => auth.logout({}, options),
        () => null,
      ),
    me: (token, extras) => call(token, extras, (options) => auth.getCurrentUser({}, options), user),
    changePassword: (token, userId, body, extras) =>
      call(
        token,
        extras,
        (options) => users.changePassword({ userId, ...body, expectedVersion: extras?.expectedVersion }, options),
        () => null,
      ),
    getUser: (token, userId, extras) => call(token, extras, (options) => users.getUser({ userId }, options), user),
    createUser: (token, { role, ...body }, extras) =>
      call(token, extras, (options) => users.createUser({ ...body, ...(role === undefined ? {} : { role: UserRole[role] }) }, options), user),
    updateUser: (token, userId, body, extras) =>
      call(token, extras, (options) => users.updateUser({ userId, ...withoutNulls(body), expectedVersion: extras?.expectedVersion }, options), user),
    verifyUser: (token, userId, extras) => call(token, extras, (options) => users.verifyUser({ userId, expectedVersion: extras?.expectedVersion }, options), user),
    updateStatus: (token, userId, status, extras) =>
      call(token, extras, (options) => users.updateUserStatus({ userId, status: UserStatus[status], expectedVersion: extras?.expectedVersion }, options), user),
    updateRole: (token, userId, role, extras) =>
      call(token, extras, (options) => users.updateUserRole({ userId, role: UserRole[role], expectedVersion: extras?.expectedVersion }, options), user),
    deleteUser: (token, userId, extras) =>
      call(
        token,
        extras,
        (options) => users.deleteUser({ userId, expectedVersion: extras?.expectedVersion }, options),
        () => null,
      ),
    listUsers: (token, query, extras) =>
      call(
        token,
        extras,
        (options) =>
          users.listUsers(
            {
              page: query.page ?? 1,
              perPage: query.perPage ?? 20,
              ...(query.role === undefined ? {} : { role: UserRole[query.role] }),
              ...(query.status === undefined ? {} : { status: UserStatus[query.status] }),
              ...(query.q === undefined ? {} : { q: query.q }),
              sort: query.sort ?? '',
            },
            options,
          ),
        (r) => ({ items: r.users.map(toRestUser), pagination: toRestPagination(required(r.pagination)) }),
      ),
    listUserSessions: (token, userId, extras) =>
      call(
        token,
        extras,
        (options) => auth.listUserSessions({ userId }, options),
        (r) => r.sessions.map(toRestSession),
      ),
    endUserSession: (token, userId, sessionId, extras) =>
      call(
        token,
        extras,
        (options) => auth.endUserSession({ userId, sessionId }, options),
        () => null,
      ),
    endUserSessions: (token, userId, extras) =>
      call(
        token,
        extras,
        (options) => auth.endUserSessions({ userId }, options),
        (r) => ({ endedCount: r.endedCount }),
      ),
    close: () => {
      sessions.abort();
      agent.destroy();
    },
  };
}

function required<T>(value: T | undefined): T {
  if (value === undefined) throw new Error('the response lacks a field the API promises');
  return value;
}

/** REST sends null to clear a field; the RPC request has optional fields instead. */
function withoutNulls<T extends object>(body: T): { [K in keyof T]: Exclude<T[K], null> } {
  return Object.fromEntries(Object.entries(body).filter(([, value]) => value !== null)) as { [K in keyof T]: Exclude<T[K], null> };
}
