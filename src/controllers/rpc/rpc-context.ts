import { createContextKey, createContextValues, type ContextValues } from '@connectrpc/connect';
import type { IncomingMessage } from 'node:http';
import type { Http2ServerRequest } from 'node:http2';
import type { ClientAddressResolver } from '../../infrastructure/client-address.ts';
import { remoteAddressOf } from '../../infrastructure/client-address.ts';
import { bearerToken, callerKey } from '../../rpc/caller.ts';
import { resolveClientInfo } from '../../rpc/client-edge.ts';

/** The request id chosen by the request-context interceptor. */
export const requestIdKey = createContextKey<string>('', { description: 'request id' });

/** Whether the socket peer is a proxy TRACE_TRUSTED_PROXIES names, whose trace context is continued. */
export const peerTrustedKey = createContextKey<boolean>(false, { description: 'peer is a trusted proxy' });

/**
 * connect-node's `contextValues` hook: records who is calling, for sessions, rate limits and
 * lockouts, by the same rule as the REST facade (TRUST_PROXY and X-Forwarded-For), and the access
 * token the service layer will check.
 */
export function createContextValuesFor(
  resolve: ClientAddressResolver,
  peerTrusted: (socketAddress: string | undefined) => boolean,
): (req: IncomingMessage | Http2ServerRequest) => ContextValues {
  return (req) => {
    const header = (name: string) => {
      const value = req.headers[name];
      return Array.isArray(value) ? value.join(', ') : value;
    };
    const peer = remoteAddressOf(req.socket);
    const client = resolveClientInfo(resolve, peer, header);
    return createContextValues()
      .set(callerKey, { accessToken: bearerToken(header('authorization')), client })
      .set(peerTrustedKey, peerTrusted(peer));
  };
}
