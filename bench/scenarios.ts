// The measured operations, each described once as protocol-neutral calls and then rendered as
// REST requests, Connect JSON requests, gRPC frames, or requests to the bare server, so every
// protocol sends the same work.
import { create, toBinary, toJsonString, type DescMessage, type DescMethodUnary, type MessageInitShape } from '@bufbuild/protobuf';
import type { Transport } from '@connectrpc/connect';
import { AuthService } from '../gen/proto/arcana/auth/v1/auth_service_pb.js';
import { UserService } from '../gen/proto/arcana/user/v1/user_service_pb.js';
import type { Fixtures } from './seed.ts';
import type { Protocol, ScenarioName } from './settings.ts';

export const SCENARIO_TITLES: Record<ScenarioName, string> = {
  'get-user': 'GET user by id',
  me: 'GET current user (me)',
  'list-users': 'list users (20/page)',
  health: 'GET /health',
  login: 'login (bcrypt 12)',
};

/**
 * The bare ceiling each scenario is compared with: the bare server's route that answers the same
 * question with the least work (see bench/bare-server.ts). `me` reads one user like `get-user`.
 */
export const BARE_CEILING: Record<ScenarioName, ScenarioName> = {
  'get-user': 'get-user',
  me: 'get-user',
  'list-users': 'list-users',
  health: 'health',
  login: 'login',
};

/** The scenarios the bare server has a route for. */
export const BARE_SCENARIOS: readonly ScenarioName[] = ['get-user', 'list-users', 'health', 'login'];

/** Whether `scenario` is measured over `protocol`: /health is an HTTP probe, not an RPC. */
export function applies(protocol: Protocol, scenario: ScenarioName): boolean {
  return scenario !== 'health' || protocol === 'rest';
}

/** One API operation with everything needed to send it, whatever protocol carries it. */
export type Call =
  | { rpc: 'getUser'; token: string; userId: number }
  | { rpc: 'getCurrentUser'; token: string }
  | { rpc: 'listUsers'; token: string; page: number; perPage: number }
  | { rpc: 'login'; usernameOrEmail: string; password: string }
  | { rpc: 'health' };

/** A fully rendered HTTP/1.1 request. */
export interface HttpRequestSpec {
  method: 'GET' | 'POST';
  /** Path and query, e.g. /api/v1/users/7. */
  path: string;
  headers: Record<string, string>;
  body?: string;
}

/** A unary RPC rendered for the wire, and a way to make it with a real client. */
export interface RpcRequest {
  /** /package.Service/Method */
  path: string;
  token: string | undefined;
  /** The request message in protobuf binary (gRPC) and in JSON (Connect). */
  binary: Uint8Array;
  json: string;
  /** Makes the call through `transport` and resolves to the size of the answer as gRPC frames it. */
  invoke(transport: Transport, timeoutMs: number): Promise<number>;
}

/** How a scenario is loaded: a request list for wrk, or one RPC that h2load repeats. */
export type LoadPlan = { generator: 'wrk'; requests: HttpRequestSpec[] } | { generator: 'h2load'; rpc: RpcRequest; format: 'grpc' | 'connect' };

/**
 * The calls of a scenario, used round-robin: one per seeded user where the scenario allows. The
 * last seeded user only logs in, and logs in first: h2load repeats a scenario's first call, so
 * that user takes every HTTP/2 login of the run (hundreds a topology), and SESSIONS_PER_USER_MAX
 * ends its oldest sessions, its registration's among them. Were its token read, the next
 * topology's reads were refused 401 (a full run of every scenario: every split read row).
 */
export function callsOf(scenario: ScenarioName, fixtures: Fixtures): Call[] {
  const readers = fixtures.users.slice(0, -1);
  switch (scenario) {
    case 'get-user':
      // Each user reads its own record, which the self-or-admin rule allows.
      return readers.map((user) => ({ rpc: 'getUser', token: user.accessToken, userId: user.id }));
    case 'me':
      return readers.map((user) => ({ rpc: 'getCurrentUser', token: user.accessToken }));
    case 'list-users':
      return [{ rpc: 'listUsers', token: fixtures.adminToken, page: 1, perPage: 20 }];
    case 'health':
      return [{ rpc: 'health' }];
    case 'login':
      return [...fixtures.users.slice(-1), ...readers].map((user) => ({ rpc: 'login', usernameOrEmail: user.username, password: user.password }));
  }
}

/** How `scenario` is loaded over `protocol`. h2load sends one body, so HTTP/2 rows repeat the first call. */
export function planFor(protocol: Protocol, scenario: ScenarioName, fixtures: Fixtures): LoadPlan {
  const calls = callsOf(scenario, fixtures);
  switch (protocol) {
    case 'rest':
      return { generator: 'wrk', requests: calls.map(toRestRequest) };
    case 'connect':
      return { generator: 'wrk', requests: calls.map((call) => toConnectRequest(toRpcRequest(call))) };
    case 'grpc':
    case 'connect-h2c':
      return { generator: 'h2load', rpc: toRpcRequest(first(calls)), format: protocol === 'grpc' ? 'grpc' : 'connect' };
  }
}

/** The bare server's plan for `scenario` (one of BARE_SCENARIOS), with the same users as REST. */
export function barePlan(scenario: ScenarioName, fixtures: Fixtures): LoadPlan {
  return { generator: 'wrk', requests: callsOf(scenario, fixtures).map(toBareRequest) };
}

/** The REST request for a call, as openapi.yaml defines it. */
export function toRestRequest(call: Call): HttpRequestSpec {
  switch (call.rpc) {
    case 'getUser':
      return { method: 'GET', path: `/api/v1/users/${call.userId}`, headers: bearer(call.token) };
    case 'getCurrentUser':
      return { method: 'GET', path: '/api/v1/auth/me', headers: bearer(call.token) };
    case 'listUsers':
      return { method: 'GET', path: `/api/v1/users?page=${call.page}&perPage=${call.perPage}`, headers: bearer(call.token) };
    case 'health':
      return { method: 'GET', path: '/health', headers: {} };
    case 'login':
      return {
        method: 'POST',
        path: '/api/v1/auth/login',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ usernameOrEmail: call.usernameOrEmail, password: call.password }),
      };
  }
}

/** The bare server's request for a call. */
export function toBareRequest(call: Call): HttpRequestSpec {
  switch (call.rpc) {
    case 'getUser':
      return { method: 'GET', path: `/users/${call.userId}`, headers: {} };
    case 'listUsers':
      return { method: 'GET', path: `/users?page=${call.page}&perPage=${call.perPage}`, headers: {} };
    case 'health':
      return { method: 'GET', path: '/health', headers: {} };
    case 'login':
      return { ...toRestRequest(call), path: '/auth/login' };
    case 'getCurrentUser':
      throw new Error('the bare server has no current user: me is compared with its point read');
  }
}

/** The Connect protocol request (unary, JSON, HTTP/1.1) for an RPC. */
export function toConnectRequest(rpc: RpcRequest): HttpRequestSpec {
  return { method: 'POST', path: rpc.path, headers: { ...connectHeaders(), ...(rpc.token === undefined ? {} : bearer(rpc.token)) }, body: rpc.json };
}

/** Headers h2load sends for an RPC in the given format. */
export function h2Headers(rpc: RpcRequest, format: 'grpc' | 'connect'): Record<string, string> {
  const auth = rpc.token === undefined ? {} : bearer(rpc.token);
  return format === 'grpc' ? { 'content-type': 'application/grpc', te: 'trailers', ...auth } : { ...connectHeaders(), ...auth };
}

/** The body h2load sends: one length-prefixed gRPC message, or the JSON of a Connect unary call. */
export function h2Body(rpc: RpcRequest, format: 'grpc' | 'connect'): Uint8Array {
  return format === 'grpc' ? grpcFrame(rpc.binary) : Buffer.from(rpc.json);
}

/** The RPC for a call, rendered from the protos. */
export function toRpcRequest(call: Call): RpcRequest {
  switch (call.rpc) {
    case 'getUser':
      return rpcRequest(UserService.method.getUser, { userId: call.userId }, call.token);
    case 'getCurrentUser':
      return rpcRequest(AuthService.method.getCurrentUser, {}, call.token);
    case 'listUsers':
      return rpcRequest(UserService.method.listUsers, { page: call.page, perPage: call.perPage }, call.token);
    case 'login':
      return rpcRequest(AuthService.method.login, { usernameOrEmail: call.usernameOrEmail, password: call.password }, undefined);
    case 'health':
      throw new Error('/health is not an RPC of the public API');
  }
}

function rpcRequest<I extends DescMessage, O extends DescMessage>(method: DescMethodUnary<I, O>, init: MessageInitShape<I>, token: string | undefined): RpcRequest {
  const message = create(method.input, init);
  return {
    path: `/${method.parent.typeName}/${method.name}`,
    token,
    binary: toBinary(method.input, message),
    json: toJsonString(method.input, message),
    async invoke(transport, timeoutMs) {
      const response = await transport.unary(method, undefined, timeoutMs, token === undefined ? undefined : bearer(token), message);
      return grpcFrame(toBinary(method.output, response.message)).length;
    },
  };
}

/** A gRPC length-prefixed message: an uncompressed flag byte, the length (big-endian), the message. */
function grpcFrame(message: Uint8Array): Uint8Array {
  const frame = Buffer.alloc(5 + message.length);
  frame.writeUInt32BE(message.length, 1);
  frame.set(message, 5);
  return frame;
}

function connectHeaders(): Record<string, string> {
  return { 'content-type': 'application/json', 'connect-protocol-version': '1' };
}

function bearer(token: string): Record<string, string> {
  return { authorization: `Bearer ${token}` };
}

function first<T>(items: T[]): T {
  const item = items[0];
  if (item === undefined) throw new Error('the scenario has no calls');
  return item;
}
