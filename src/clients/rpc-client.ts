// Typed Connect clients for the public RPC API, over whichever protocol suits the caller.
import { createClient, type Client, type Interceptor, type Transport } from '@connectrpc/connect';
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from '@connectrpc/connect-node';
import { AuthService } from '../../gen/proto/arcana/auth/v1/auth_service_pb.js';
import { UserService } from '../../gen/proto/arcana/user/v1/user_service_pb.js';

export type RpcProtocol = 'connect' | 'grpc' | 'grpc-web';

export interface ArcanaRpcClients {
  auth: Client<typeof AuthService>;
  users: Client<typeof UserService>;
}

/**
 * Clients for `baseUrl` (e.g. http://localhost:3000) over Connect (HTTP/1.1), gRPC (h2c) or
 * gRPC-Web (HTTP/1.1). `getAccessToken`, when given, supplies the bearer token for each call.
 */
export function createRpcClients(baseUrl: string, protocol: RpcProtocol = 'connect', getAccessToken?: () => string | undefined): ArcanaRpcClients {
  const interceptors: Interceptor[] = [];
  if (getAccessToken !== undefined) {
    interceptors.push((next) => async (req) => {
      const token = getAccessToken();
      if (token !== undefined) req.header.set('authorization', `Bearer ${token}`);
      return next(req);
    });
  }
  const transport: Transport =
    protocol === 'grpc'
      ? createGrpcTransport({ baseUrl, interceptors })
      : protocol === 'grpc-web'
        ? createGrpcWebTransport({ baseUrl, httpVersion: '1.1', interceptors })
        : createConnectTransport({ baseUrl, httpVersion: '1.1', interceptors });
  return { auth: createClient(AuthService, transport), users: createClient(UserService, transport) };
}
