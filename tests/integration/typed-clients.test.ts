// The clients shipped for platform users, used as the README shows.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRestClient } from '../../src/clients/rest-client.ts';
import { createRpcClients, type RpcProtocol } from '../../src/clients/rpc-client.ts';
import { newUser, startTestServer, type TestServer } from '../helpers/test-app.ts';

let server: TestServer;

beforeAll(async () => {
  server = await startTestServer();
});

afterAll(async () => {
  await server.close();
});

describe('typed clients', () => {
  it('when the openapi-fetch client registers and logs in, then /auth/me answers with typed data', async () => {
    let token: string | undefined;
    const api = createRestClient(server.baseUrl, () => token);
    const body = newUser('rest_client');
    const registered = await api.POST('/api/v1/auth/register', { body });
    expect(registered.response.status).toBe(201);

    const login = await api.POST('/api/v1/auth/login', { body: { usernameOrEmail: body.username, password: body.password } });
    token = login.data?.data.tokens.accessToken;
    const me = await api.GET('/api/v1/auth/me');
    expect(me.data?.data.username).toBe(body.username);

    const forbidden = await api.GET('/api/v1/users/{userId}', { params: { path: { userId: 999_999 } } });
    expect(forbidden.response.status).toBe(403);
    expect(forbidden.error?.error.code).toBe('AUTHORIZATION_ERROR');
  });

  it.each<RpcProtocol>(['connect', 'grpc', 'grpc-web'])('when the %s client logs in, then GetCurrentUser answers', async (protocol) => {
    let token: string | undefined;
    const rpc = createRpcClients(server.baseUrl, protocol, () => token);
    const body = newUser(`rpc_${protocol.replace('-', '')}`);
    await rpc.auth.register(body);
    const login = await rpc.auth.login({ usernameOrEmail: body.username, password: body.password });
    token = login.tokens?.accessToken;
    const { user } = await rpc.auth.getCurrentUser({});
    expect(user?.username).toBe(body.username);
  });
});
