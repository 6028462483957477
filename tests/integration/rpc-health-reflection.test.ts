// Discovery over gRPC: the standard health-checking and server-reflection services, exercised by
// the stock client `buf curl` (a separate process that knows none of our protos) and by Connect
// clients. The Auth and User services are stubs: only their descriptors matter here.
import { fromBinary, type DescService, type MessageInitShape } from '@bufbuild/protobuf';
import { FileDescriptorProtoSchema, file_google_protobuf_timestamp } from '@bufbuild/protobuf/wkt';
import { Code, ConnectError, createClient, type ConnectRouter } from '@connectrpc/connect';
import { connectNodeAdapter, createConnectTransport, createGrpcTransport, Http2SessionManager } from '@connectrpc/connect-node';
import { execFile } from 'node:child_process';
import http2 from 'node:http2';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AuthService, file_arcana_auth_v1_auth_service } from '../../gen/proto/arcana/auth/v1/auth_service_pb.js';
import { file_arcana_user_v1_user_service, UserService } from '../../gen/proto/arcana/user/v1/user_service_pb.js';
import { file_grpc_health_v1_health, Health, HealthCheckResponse_ServingStatus as ServingStatus } from '../../gen/proto/grpc/health/v1/health_pb.js';
import { ServerReflection as ServerReflectionV1, type ServerReflectionRequestSchema, type ServerReflectionResponse } from '../../gen/proto/grpc/reflection/v1/reflection_pb.js';
import {
  ServerReflection as ServerReflectionV1alpha,
  type ServerReflectionRequestSchema as ServerReflectionRequestV1alphaSchema,
  type ServerReflectionResponse as ServerReflectionResponseV1alpha,
} from '../../gen/proto/grpc/reflection/v1alpha/reflection_pb.js';
import { createHealthService } from '../../src/rpc/health-service.ts';
import { createReflectionServices } from '../../src/rpc/reflection-service.ts';

const root = join(import.meta.dirname, '..', '..');
const buf = join(root, 'node_modules', '.bin', 'buf');

// The one dependency check; tests flip it to see the status follow.
let databaseUp = true;
const checks = { database: async () => (databaseUp ? undefined : Promise.reject(new Error('database down'))) };

let server: http2.Http2Server;
let baseUrl: string;
let sessions: Http2SessionManager;

// Every method of the Auth and User services fails: the test is about discovery, not behaviour.
function stub(service: DescService): Record<string, () => never> {
  const unimplemented = (): never => {
    throw new ConnectError('x', Code.Unimplemented);
  };
  return Object.fromEntries(service.methods.map((method) => [method.localName, unimplemented]));
}

function routes(router: ConnectRouter): void {
  const reflection = createReflectionServices([file_arcana_auth_v1_auth_service, file_arcana_user_v1_user_service, file_grpc_health_v1_health]);
  router.service(AuthService, stub(AuthService));
  router.service(UserService, stub(UserService));
  // A short interval keeps the Watch test quick.
  router.service(Health, createHealthService(checks, [AuthService.typeName, UserService.typeName], { watchIntervalMs: 50, maxWatches: 100 }));
  router.service(ServerReflectionV1, reflection.v1);
  router.service(ServerReflectionV1alpha, reflection.v1alpha);
}

beforeAll(async () => {
  server = http2.createServer(connectNodeAdapter({ routes }));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  sessions = new Http2SessionManager(baseUrl);
});

afterAll(async () => {
  sessions.abort();
  await new Promise<void>((resolve) => server.close(() => resolve()));
});

// Asynchronous on purpose: the server runs in this process, so a synchronous child would block it.
function bufCurl(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(buf, ['curl', '--http2-prior-knowledge', '--protocol', 'grpc', ...args], { cwd: root, timeout: 60_000 }, (error, stdout, stderr) => {
      resolve({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : -1, stdout, stderr });
    });
  });
}

describe('buf curl with server reflection', () => {
  it('when listing methods, then every method of our services is listed without any proto files', async () => {
    const result = await bufCurl('--list-methods', baseUrl);
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    const methods = result.stdout.trim().split('\n');
    expect(methods).toContain('arcana.auth.v1.AuthService/Login');
    expect(methods).toContain('arcana.auth.v1.AuthService/ListTokens');
    expect(methods).toContain('arcana.user.v1.UserService/ListUsers');
    expect(methods).toContain('grpc.health.v1.Health/Check');
    expect(methods).toContain('grpc.reflection.v1.ServerReflection/ServerReflectionInfo');
  });

  it('when asked for the v1alpha reflection protocol, then listing services works too', async () => {
    const result = await bufCurl('--reflect-protocol', 'grpc-v1alpha', '--list-services', baseUrl);
    expect(result.code).toBe(0);
    expect(result.stdout.trim().split('\n').sort()).toEqual([
      'arcana.auth.v1.AuthService',
      'arcana.user.v1.UserService',
      'grpc.health.v1.Health',
      'grpc.reflection.v1.ServerReflection',
      'grpc.reflection.v1alpha.ServerReflection',
    ]);
  });

  it('when calling a method whose messages use imported types, then the request is encoded and reaches the server', async () => {
    const result = await bufCurl('-d', '{"usernameOrEmail": "a", "password": "b"}', `${baseUrl}/arcana.auth.v1.AuthService/Login`);
    // buf curl exits with the gRPC code shifted left by three bits: 12 (unimplemented) → 96.
    expect(result.code).toBe(Code.Unimplemented << 3);
    expect(result.stderr).toContain('unimplemented');
  });
});

describe('buf curl grpc.health.v1.Health/Check', () => {
  it('when every check passes, then the server is SERVING', async () => {
    const result = await bufCurl(`${baseUrl}/grpc.health.v1.Health/Check`);
    expect(result.code).toBe(0);
    expect(result.stdout).toContain('"status": "SERVING"');
  });

  it('when a known service is named and a check fails, then it is NOT_SERVING', async () => {
    databaseUp = false;
    try {
      const result = await bufCurl('-d', '{"service": "arcana.auth.v1.AuthService"}', `${baseUrl}/grpc.health.v1.Health/Check`);
      expect(result.code).toBe(0);
      expect(result.stdout).toContain('"status": "NOT_SERVING"');
    } finally {
      databaseUp = true;
    }
  });

  it('when an unknown service is named, then the call fails with not_found', async () => {
    const result = await bufCurl('-d', '{"service": "no.such.Service"}', `${baseUrl}/grpc.health.v1.Health/Check`);
    expect(result.code).toBe(Code.NotFound << 3);
    expect(result.stderr).toContain('not_found');
  });
});

describe('Connect clients', () => {
  it('when Health/Check is called over the gRPC and Connect protocols, then both report SERVING', async () => {
    for (const transport of [createGrpcTransport({ baseUrl, sessionManager: sessions }), createConnectTransport({ baseUrl, httpVersion: '2', sessionManager: sessions })]) {
      const health = createClient(Health, transport);
      expect((await health.check({ service: '' })).status).toBe(ServingStatus.SERVING);
      expect((await health.check({ service: UserService.typeName })).status).toBe(ServingStatus.SERVING);
    }
  });

  it('when watching and the check starts failing, then the status is sent again only on change', async () => {
    const health = createClient(Health, createGrpcTransport({ baseUrl, sessionManager: sessions }));
    const controller = new AbortController();
    const seen: ServingStatus[] = [];
    try {
      for await (const response of health.watch({ service: '' }, { signal: controller.signal })) {
        seen.push(response.status);
        // Several intervals pass between flips, so repeated statuses would show up here.
        if (seen.length === 1) setTimeout(() => (databaseUp = false), 200);
        if (seen.length === 2) setTimeout(() => (databaseUp = true), 200);
        if (seen.length === 3) controller.abort();
      }
    } catch (error) {
      expect(ConnectError.from(error).code).toBe(Code.Canceled);
    } finally {
      databaseUp = true;
    }
    expect(seen).toEqual([ServingStatus.SERVING, ServingStatus.NOT_SERVING, ServingStatus.SERVING]);
  });

  it('when watching an unknown service, then SERVICE_UNKNOWN is sent and the stream stays open', async () => {
    const health = createClient(Health, createGrpcTransport({ baseUrl, sessionManager: sessions }));
    const stream = health.watch({ service: 'no.such.Service' }, { timeoutMs: 300 });
    const seen: ServingStatus[] = [];
    await expect(
      (async () => {
        for await (const response of stream) seen.push(response.status);
      })(),
    ).rejects.toMatchObject({ code: Code.DeadlineExceeded });
    expect(seen).toEqual([ServingStatus.SERVICE_UNKNOWN]);
  });

  it('when reflection v1 is asked for symbols and files, then each request gets one answer, in order', async () => {
    const reflection = createClient(ServerReflectionV1, createGrpcTransport({ baseUrl, sessionManager: sessions }));
    const requests: MessageInitShape<typeof ServerReflectionRequestSchema>[] = [
      { host: 'h1', messageRequest: { case: 'fileContainingSymbol', value: 'arcana.auth.v1.AuthService.Login' } },
      { host: 'h2', messageRequest: { case: 'fileContainingSymbol', value: 'arcana.auth.v1.Session' } },
      { host: 'h3', messageRequest: { case: 'fileByFilename', value: 'arcana/user/v1/user_service.proto' } },
      { host: 'h4', messageRequest: { case: 'fileContainingSymbol', value: 'no.such.Symbol' } },
      { host: 'h5', messageRequest: { case: 'fileByFilename', value: 'no/such/file.proto' } },
      { host: 'h6', messageRequest: { case: 'allExtensionNumbersOfType', value: 'arcana.auth.v1.Session' } },
    ];
    const responses: ServerReflectionResponse[] = [];
    for await (const response of reflection.serverReflectionInfo(toStream(requests))) responses.push(response);

    expect(responses.map((response) => response.validHost)).toEqual(['h1', 'h2', 'h3', 'h4', 'h5', 'h6']);
    expect(responses.map((response) => response.originalRequest?.messageRequest.value)).toEqual(requests.map((request) => request.messageRequest?.value));
    // The file asked for comes first, then everything it needs, imports of imports included.
    expect(fileNames(responses[0]?.messageResponse)).toEqual(['arcana/auth/v1/auth_service.proto', 'arcana/user/v1/user.proto', file_google_protobuf_timestamp.proto.name]);
    expect(fileNames(responses[1]?.messageResponse)[0]).toBe('arcana/auth/v1/auth_service.proto');
    expect(fileNames(responses[2]?.messageResponse)).toContain('arcana/user/v1/user.proto');
    for (const response of responses.slice(3, 5)) {
      expect(response.messageResponse).toMatchObject({ case: 'errorResponse', value: { errorCode: Code.NotFound } });
    }
    expect(responses[5]?.messageResponse).toMatchObject({
      case: 'allExtensionNumbersResponse',
      value: { baseTypeName: 'arcana.auth.v1.Session', extensionNumber: [] },
    });
  });

  it('when reflection v1alpha is asked for a symbol, then it answers like v1', async () => {
    const reflection = createClient(ServerReflectionV1alpha, createGrpcTransport({ baseUrl, sessionManager: sessions }));
    const responses: ServerReflectionResponseV1alpha[] = [];
    const requests = toStream<MessageInitShape<typeof ServerReflectionRequestV1alphaSchema>>([
      { host: 'h1', messageRequest: { case: 'fileContainingSymbol', value: 'grpc.health.v1.Health' } },
      { host: 'h2', messageRequest: { case: 'fileContainingSymbol', value: 'no.such.Symbol' } },
    ]);
    for await (const response of reflection.serverReflectionInfo(requests)) responses.push(response);

    expect(responses.map((response) => response.$typeName)).toEqual(['grpc.reflection.v1alpha.ServerReflectionResponse', 'grpc.reflection.v1alpha.ServerReflectionResponse']);
    expect(responses.map((response) => response.originalRequest?.host)).toEqual(['h1', 'h2']);
    expect(fileNames(responses[0]?.messageResponse)).toEqual(['grpc/health/v1/health.proto']);
    expect(responses[1]?.messageResponse).toMatchObject({ case: 'errorResponse', value: { errorCode: Code.NotFound } });
  });
});

async function* toStream<T>(items: T[]): AsyncIterable<T> {
  yield* items;
}

// The names of the files in a file_descriptor_response, failing on any other answer.
function fileNames(answer: ServerReflectionResponse['messageResponse'] | ServerReflectionResponseV1alpha['messageResponse'] | undefined): string[] {
  if (answer?.case !== 'fileDescriptorResponse') throw new Error(`expected files, got ${answer?.case ?? 'nothing'}`);
  return answer.value.fileDescriptorProto.map((bytes) => fromBinary(FileDescriptorProtoSchema, bytes).name);
}
