// Clients that share no code with the server: @grpc/grpc-js with @grpc/proto-loader (the reference
// Node gRPC implementation, reading our .proto files itself) and the `buf curl` binary, over every
// protocol and both HTTP versions, against the real server on a real port.
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { Code, ConnectError, createClient } from '@connectrpc/connect';
import { createGrpcTransport } from '@connectrpc/connect-node';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AuthService } from '../../gen/proto/arcana/auth/v1/auth_service_pb.js';
import { ServerReflection as ServerReflectionV1 } from '../../gen/proto/grpc/reflection/v1/reflection_pb.js';
import { ServerReflection as ServerReflectionV1alpha } from '../../gen/proto/grpc/reflection/v1alpha/reflection_pb.js';
import { ADMIN, newUser, startTestServer, TEST_TOPOLOGY, type TestServer } from '../helpers/test-app.ts';

const root = join(import.meta.dirname, '..', '..');
// buf's own binary for this platform, not node_modules/.bin/buf: that is a Node script that
// starts the binary, and a Node start per call was two thirds of each call's CPU (some 130 calls
// per topology, five at a time).
const buf = binaryOfBuf();

function binaryOfBuf(): string {
  const platformBinary = join(root, 'node_modules', '@bufbuild', `buf-${process.platform}-${process.arch}`, 'bin', 'buf');
  // Where the package is named otherwise (linux-aarch64 …), the wrapper finds it.
  return existsSync(platformBinary) ? platformBinary : join(root, 'node_modules', '.bin', 'buf');
}

let t: TestServer;

beforeAll(async () => {
  t = await startTestServer();
});

afterAll(async () => {
  await t.close();
});

// What proto-loader's objects look like with the options below (camelCase fields, enum names).
interface UserObject {
  id: number;
  username: string;
  email: string;
  role: string;
  status: string;
  isActive: boolean;
}
interface TokenPairObject {
  accessToken: string;
  refreshToken: string;
  expiresIn: number;
  tokenType: string;
}
interface AuthResultObject {
  user: UserObject;
  tokens: TokenPairObject;
}
interface UserPageObject {
  users: UserObject[];
  pagination: { page: number; perPage: number; total: number; totalPages: number };
}

describe('server reflection, as clients without the .proto files use it', () => {
  it("when a client resolves the types of an error's details by reflection, v1 and v1alpha, then each is found, google.rpc.Status with them", async () => {
    // Found by an attacker (helper 126): reflection knew the served files only, and no served
    // file imports google/rpc, so a client working from reflection alone could decode no error.
    const transport = createGrpcTransport({ baseUrl: t.baseUrl });
    const failure = await createClient(AuthService, transport)
      .register({})
      .then(() => undefined)
      .catch((error: unknown) => ConnectError.from(error));
    expect(failure?.code).toBe(Code.InvalidArgument);
    const types = [...new Set([...(failure?.details ?? []).map((detail) => ('type' in detail ? detail.type : detail.desc.typeName)), 'google.rpc.Status'])];
    expect(types).toContain('google.rpc.BadRequest');
    const ask = async (reflection: {
      serverReflectionInfo: (
        requests: AsyncIterable<{ messageRequest: { case: 'fileContainingSymbol'; value: string } }>,
      ) => AsyncIterable<{ messageResponse: { case: string | undefined } }>;
    }) => {
      const answers: string[] = [];
      async function* requests() {
        for (const type of types) yield { messageRequest: { case: 'fileContainingSymbol' as const, value: type } };
      }
      for await (const answer of reflection.serverReflectionInfo(requests())) answers.push(answer.messageResponse.case ?? '');
      return answers;
    };
    expect(await ask(createClient(ServerReflectionV1, transport))).toEqual(types.map(() => 'fileDescriptorResponse'));
    expect(await ask(createClient(ServerReflectionV1alpha, transport))).toEqual(types.map(() => 'fileDescriptorResponse'));
  });
});

describe('@grpc/grpc-js with @grpc/proto-loader', () => {
  let client: grpc.Client;
  let auth: grpc.ServiceDefinition;
  let users: grpc.ServiceDefinition;

  beforeAll(() => {
    const definition = protoLoader.loadSync(['arcana/auth/v1/auth_service.proto', 'arcana/user/v1/user_service.proto'], {
      includeDirs: [join(root, 'proto')],
      keepCase: false,
      enums: String,
      longs: Number,
      defaults: true,
      oneofs: true,
    });
    const service = (name: string): grpc.ServiceDefinition => {
      const found = definition[name];
      if (found === undefined || 'format' in found) throw new Error(`${name} is not a service in the loaded protos`);
      return found;
    };
    auth = service('arcana.auth.v1.AuthService');
    users = service('arcana.user.v1.UserService');
    client = new grpc.Client(`127.0.0.1:${t.port}`, grpc.credentials.createInsecure());
  });

  afterAll(() => {
    client.close();
  });

  /** One unary call through grpc-js's generic client, by method name. */
  function call<Response>(service: grpc.ServiceDefinition, method: string, request: object, token?: string): Promise<Response> {
    const definition = service[method];
    if (definition === undefined) throw new Error(`no method ${method}`);
    const metadata = new grpc.Metadata();
    if (token !== undefined) metadata.set('authorization', `Bearer ${token}`);
    return new Promise<Response>((resolve, reject) => {
      client.makeUnaryRequest<object, Response>(
        definition.path,
        (value) => definition.requestSerialize(value),
        (bytes) => definition.responseDeserialize(bytes) as Response,
        request,
        metadata,
        { deadline: Date.now() + 10_000 },
        (error, response) => (error !== null || response === undefined ? reject(error ?? new Error('no response')) : resolve(response)),
      );
    });
  }

  async function grpcFailure(promise: Promise<unknown>): Promise<grpc.ServiceError> {
    const error = await promise.then(
      () => undefined,
      (reason: unknown) => reason as grpc.ServiceError,
    );
    if (error === undefined) throw new Error('expected the call to fail');
    return error;
  }

  it('when a user registers, logs in, reads itself and lists users, then each call answers as specified', async () => {
    const body = newUser('grpcjs');
    const registered = await call<AuthResultObject>(auth, 'Register', body);
    expect(registered.user).toMatchObject({ username: body.username, email: body.email, role: 'USER_ROLE_USER', status: 'USER_STATUS_ACTIVE', isActive: true });
    expect(registered.tokens).toMatchObject({ tokenType: 'Bearer', expiresIn: 3600 });

    const login = await call<AuthResultObject>(auth, 'Login', { usernameOrEmail: body.username, password: body.password });
    expect(login.user.id).toBe(registered.user.id);
    const token = login.tokens.accessToken;

    const me = await call<{ user: UserObject }>(auth, 'GetCurrentUser', {}, token);
    expect(me.user).toMatchObject({ id: registered.user.id, username: body.username });

    const denied = await grpcFailure(call(users, 'ListUsers', {}, token));
    expect(denied.code).toBe(grpc.status.PERMISSION_DENIED);
    expect(denied.code).toBe(7);
    expect(denied.details).toBe('Insufficient permissions');

    const admin = await call<AuthResultObject>(auth, 'Login', { usernameOrEmail: ADMIN.username, password: ADMIN.password });
    const page = await call<UserPageObject>(users, 'ListUsers', { perPage: 100 }, admin.tokens.accessToken);
    expect(page.users.map((u) => u.username)).toEqual(expect.arrayContaining([ADMIN.username, body.username]));
    expect(page.pagination).toMatchObject({ page: 1, perPage: 100 });
    expect(page.pagination.total).toBeGreaterThanOrEqual(2);
  });

  it('when there is no token, bad input or wrong credentials, then the gRPC status codes are the standard ones', async () => {
    const anonymous = await grpcFailure(call(auth, 'GetCurrentUser', {}));
    expect({ code: anonymous.code, details: anonymous.details }).toEqual({ code: grpc.status.UNAUTHENTICATED, details: 'Missing or invalid authorization header' });

    const invalid = await grpcFailure(call(auth, 'Register', { username: 'a!', email: 'x', password: 'y' }));
    expect({ code: invalid.code, details: invalid.details }).toEqual({ code: grpc.status.INVALID_ARGUMENT, details: 'Validation failed' });
    // The google.rpc.Status with its BadRequest detail travels in the standard trailer.
    expect(invalid.metadata.get('grpc-status-details-bin')).toHaveLength(1);

    const wrong = await grpcFailure(call(auth, 'Login', { usernameOrEmail: ADMIN.username, password: 'Wrong0ne!' }));
    expect({ code: wrong.code, details: wrong.details }).toEqual({ code: grpc.status.UNAUTHENTICATED, details: 'Invalid credentials' });
  });
});

// Asynchronous on purpose: the server runs in this process, so a synchronous child would block it.
function bufCurl(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(buf, ['curl', ...args], { cwd: root, timeout: 60_000 }, (error, stdout, stderr) => {
      resolve({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : -1, stdout, stderr });
    });
  });
}

interface BufCurlMode {
  name: string;
  flags: string[];
}

const allModes: BufCurlMode[] = [
  { name: 'gRPC over h2c, schema by reflection', flags: ['--http2-prior-knowledge', '--protocol', 'grpc'] },
  // Reflection is a bidi stream, which HTTP/1.1 cannot carry: these two read the .proto files.
  { name: 'gRPC-Web over HTTP/1.1, schema from proto/', flags: ['--protocol', 'grpcweb', '--schema', 'proto'] },
  { name: 'Connect over HTTP/1.1, schema from proto/', flags: ['--protocol', 'connect', '--schema', 'proto'] },
  { name: 'gRPC-Web over h2c, schema by reflection', flags: ['--http2-prior-knowledge', '--protocol', 'grpcweb'] },
  { name: 'Connect over h2c, schema by reflection', flags: ['--http2-prior-knowledge', '--protocol', 'connect'] },
];

/**
 * Every mode against the monolith (on PostgreSQL and on MariaDB); in the split cells, whose public
 * edge is the same code in front of other layers, one mode, which the other API suites back up
 * over every protocol. Each call is a buf process; the other four modes' 40 calls per cell were
 * minutes of CI's 15.
 */
const modes = TEST_TOPOLOGY === 'monolithic' ? allModes : allModes.slice(0, 1);

// buf curl exits with the gRPC code shifted left by three bits.
const UNAUTHENTICATED_EXIT = grpc.status.UNAUTHENTICATED << 3;
const PERMISSION_DENIED_EXIT = grpc.status.PERMISSION_DENIED << 3;

// The modes run side by side (each test's users are its own, and a listing looks only for its
// own user); a mode's tests one after another. Each call is a buf process that mostly waits.
// The administrator logs in once, over the first mode to get there, for all of them. A login
// holds a failure slot of its name and address until it succeeds, and the wrong password above
// keeps one for the lockout window: five admin logins in flight at once (a slow machine lines
// them up behind bcrypt) were one more than LOGIN_MAX_FAILURES lets in, and the last was refused
// as a guesser's would be, "Invalid credentials" (a CI run, layered-http).
let adminLogin: Promise<AuthResultObject> | undefined;

describe.each(modes)('buf curl, $name', { concurrent: true }, ({ flags }) => {
  const curl = (procedure: string, data: object, token?: string) =>
    bufCurl([...flags, ...(token === undefined ? [] : ['-H', `Authorization: Bearer ${token}`]), '-d', JSON.stringify(data), `${t.baseUrl}/${procedure}`]);

  /** The JSON printed for a successful call, failing the test with buf's output otherwise. */
  async function ok<T>(procedure: string, data: object, token?: string): Promise<T> {
    const result = await curl(procedure, data, token);
    expect({ code: result.code, stderr: result.stderr }).toEqual({ code: 0, stderr: '' });
    return JSON.parse(result.stdout) as T;
  }

  it('when a user registers, logs in, reads itself and an admin lists users, then every call succeeds', { concurrent: false }, async () => {
    const body = newUser('bufcurl');
    const registered = await ok<AuthResultObject>('arcana.auth.v1.AuthService/Register', body);
    expect(registered.user).toMatchObject({ username: body.username, role: 'USER_ROLE_USER' });

    const login = await ok<AuthResultObject>('arcana.auth.v1.AuthService/Login', { usernameOrEmail: body.username, password: body.password });
    expect(login.tokens.tokenType).toBe('Bearer');

    const me = await ok<{ user: UserObject }>('arcana.auth.v1.AuthService/GetCurrentUser', {}, login.tokens.accessToken);
    expect(me.user).toMatchObject({ id: registered.user.id, username: body.username });

    adminLogin ??= ok<AuthResultObject>('arcana.auth.v1.AuthService/Login', { usernameOrEmail: ADMIN.username, password: ADMIN.password });
    const admin = await adminLogin;
    const page = await ok<UserPageObject>('arcana.user.v1.UserService/ListUsers', { perPage: 100, role: 'USER_ROLE_USER' }, admin.tokens.accessToken);
    expect(page.users.map((u) => u.username)).toContain(body.username);
    expect(page.users.every((u) => u.role === 'USER_ROLE_USER')).toBe(true);
  });

  it('when GetCurrentUser has no token, then buf curl fails with unauthenticated (exit code 16 << 3)', { concurrent: false }, async () => {
    const result = await curl('arcana.auth.v1.AuthService/GetCurrentUser', {});
    expect(result.code).toBe(UNAUTHENTICATED_EXIT);
    expect(`${result.stderr}${result.stdout}`).toContain('"code": "unauthenticated"');
    expect(`${result.stderr}${result.stdout}`).toContain('Missing or invalid authorization header');
  });

  it('when a USER lists users, then buf curl fails with permission_denied (exit code 7 << 3)', { concurrent: false }, async () => {
    const body = newUser('bufcurl');
    const registered = await ok<AuthResultObject>('arcana.auth.v1.AuthService/Register', body);
    const result = await curl('arcana.user.v1.UserService/ListUsers', {}, registered.tokens.accessToken);
    expect(result.code).toBe(PERMISSION_DENIED_EXIT);
    expect(`${result.stderr}${result.stdout}`).toContain('"code": "permission_denied"');
  });

  it('when Health/Check is called, then the server is SERVING', { concurrent: false }, async () => {
    const health = await ok<{ status: string }>('grpc.health.v1.Health/Check', {});
    expect(health).toEqual({ status: 'SERVING' });
  });
});
