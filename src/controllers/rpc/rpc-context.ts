import { createContextKey, createContextValues, type ContextValues, type HandlerContext } from '@connectrpc/connect';
import type { IncomingMessage } from 'node:http';
import type { Http2ServerRequest } from 'node:http2';
import type { Actor, ClientInfo } from '../../domain/actor.ts';
import { AuthenticationError } from '../../domain/errors.ts';
import type { AuthService } from '../../services/auth-use-cases.ts';
import { remoteAddressOf } from '../../server.ts';
import { bearerToken } from '../rest/auth-middleware.ts';
import { identifyCaller } from '../../communication/call-context.ts';

/** The peer of an RPC, taken from the socket as connect-node hands the request over. */
export const clientKey = createContextKey<ClientInfo>({}, { description: 'client address and user agent' });

/** The request id chosen by the request-context interceptor. */
export const requestIdKey = createContextKey<string>('', { description: 'request id' });

/** connect-node's `contextValues` hook: records who is calling, for sessions and rate limits. */
export function contextValuesFor(req: IncomingMessage | Http2ServerRequest): ContextValues {
  const userAgent = req.headers['user-agent'];
  return createContextValues().set(clientKey, {
    ipAddress: remoteAddressOf(req.socket),
    userAgent: typeof userAgent === 'string' ? userAgent : undefined,
  });
}

export function clientInfoOf(ctx: HandlerContext): ClientInfo {
  return ctx.values.get(clientKey);
}

/** The caller of an RPC that needs authentication, from its `authorization: Bearer` header. */
export async function actorOf(ctx: HandlerContext, auth: AuthService): Promise<Actor> {
  const token = bearerToken(ctx.requestHeader.get('authorization') ?? undefined);
  if (token === undefined) throw new AuthenticationError('Missing or invalid authorization header');
  const actor = await auth.authenticate(token);
  identifyCaller(actor.userId);
  return actor;
}
