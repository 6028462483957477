// The measured operations, each described once as protocol-neutral calls and then rendered as
// REST requests, Connect JSON requests or gRPC calls, so every protocol sends the same work.
import { create, toJsonString, type DescMessage, type MessageInitShape } from '@bufbuild/protobuf';
import {
  AuthService,
  GetCurrentUserRequestSchema,
  LoginRequestSchema,
} from '../gen/proto/arcana/auth/v1/auth_service_pb.js';
import { GetUserRequestSchema, ListUsersRequestSchema, UserService } from '../gen/proto/arcana/user/v1/user_service_pb.js';
import type { Call, HttpRequestSpec, LoadJob } from './load-job.ts';
import type { Fixtures } from './seed.ts';
import type { BenchSettings, Protocol, ScenarioName } from './settings.ts';

export const SCENARIO_TITLES: Record<ScenarioName, string> = {
  'get-user': 'GET user by id',
  me: 'GET current user (me)',
  'list-users': 'list users (20/page)',
  login: 'login (bcrypt 12)',
};

/** The calls of a scenario, used round-robin: one per seeded user where the scenario allows. */
export function callsOf(scenario: ScenarioName, fixtures: Fixtures): Call[] {
  switch (scenario) {
    case 'get-user':
      // Each user reads its own record, which the self-or-admin rule allows.
      return fixtures.users.map((user) => ({ rpc: 'getUser', token: user.accessToken, userId: user.id }));
    case 'me':
      return fixtures.users.map((user) => ({ rpc: 'getCurrentUser', token: user.accessToken }));
    case 'list-users':
      return [{ rpc: 'listUsers', token: fixtures.adminToken, page: 1, perPage: 20 }];
    case 'login':
      return fixtures.users.map((user) => ({ rpc: 'login', usernameOrEmail: user.username, password: user.password }));
  }
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
    case 'login':
      return {
        method: 'POST',
        path: '/api/v1/auth/login',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ usernameOrEmail: call.usernameOrEmail, password: call.password }),
      };
  }
}

/** The Connect protocol request (unary, JSON over HTTP/1.1) for a call, rendered from the protos. */
export function toConnectRequest(call: Call): HttpRequestSpec {
  switch (call.rpc) {
    case 'getUser':
      return connect(`${UserService.typeName}/${UserService.method.getUser.name}`, GetUserRequestSchema, { userId: call.userId }, call.token);
    case 'getCurrentUser':
      return connect(`${AuthService.typeName}/${AuthService.method.getCurrentUser.name}`, GetCurrentUserRequestSchema, {}, call.token);
    case 'listUsers':
      return connect(`${UserService.typeName}/${UserService.method.listUsers.name}`, ListUsersRequestSchema, { page: call.page, perPage: call.perPage }, call.token);
    case 'login':
      return connect(`${AuthService.typeName}/${AuthService.method.login.name}`, LoginRequestSchema, {
        usernameOrEmail: call.usernameOrEmail,
        password: call.password,
      });
  }
}

/** The bare baseline server's route for reading one user row. */
export function toBaselineRequest(call: Call): HttpRequestSpec {
  if (call.rpc !== 'getUser') throw new Error(`the baseline server only serves getUser, not ${call.rpc}`);
  return { method: 'GET', path: `/users/${call.userId}`, headers: {} };
}

/** The load job that measures `scenario` over `protocol` against `baseUrl`. */
export function jobFor(protocol: Protocol, scenario: ScenarioName, baseUrl: string, fixtures: Fixtures, settings: BenchSettings): LoadJob {
  const calls = callsOf(scenario, fixtures);
  const shape = {
    baseUrl,
    concurrency: scenario === 'login' ? settings.loginConnections : settings.connections,
    warmupSeconds: settings.warmupSeconds,
    durationSeconds: scenario === 'login' ? settings.loginDurationSeconds : settings.durationSeconds,
    timeoutSeconds: settings.timeoutSeconds,
    maxRequests: settings.maxRequests,
  };
  switch (protocol) {
    case 'rest':
      return { kind: 'http', ...shape, requests: calls.map(toRestRequest) };
    case 'connect':
      return { kind: 'http', ...shape, requests: calls.map(toConnectRequest) };
    case 'grpc':
      return { kind: 'grpc', ...shape, calls };
  }
}

/** The baseline's job: the same users and settings as REST get-user. */
export function baselineJob(baseUrl: string, fixtures: Fixtures, settings: BenchSettings): LoadJob {
  return { ...jobFor('rest', 'get-user', baseUrl, fixtures, settings), kind: 'http', requests: callsOf('get-user', fixtures).map(toBaselineRequest) };
}

function bearer(token: string): Record<string, string> {
  return { authorization: `Bearer ${token}` };
}

function connect<Desc extends DescMessage>(path: string, schema: Desc, init: MessageInitShape<Desc>, token?: string): HttpRequestSpec {
  return {
    method: 'POST',
    path: `/${path}`,
    headers: { 'content-type': 'application/json', ...(token === undefined ? {} : bearer(token)) },
    body: toJsonString(schema, create(schema, init)),
  };
}
