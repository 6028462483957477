import { createContextKey, createContextValues, type ContextValues, type HandlerContext } from '@connectrpc/connect';
import type { IncomingMessage } from 'node:http';
import type { Http2ServerRequest } from 'node:http2';
import type { Actor, ClientInfo } from '../../domain/actor.ts';
import { AppError, AuthenticationError } from '../../domain/errors.ts';
import type { ClientAddressResolver } from '../../infrastructure/client-address.ts';
import type { AuthService } from '../../services/auth-use-cases.ts';
import { remoteAddressOf } from '../../server.ts';
import { bearerToken } from '../rest/auth-middleware.ts';
import { identifyCaller } from '../../communication/call-context.ts';
import { IDEMPOTENT_REPLAYED_HEADER, idempotencyKeyOf, resolveClientInfo } from '../client-edge.ts';

/** The client of an RPC, resolved once as connect-node hands the request over. */
export const clientKey = createContextKey<ClientInfo>({}, { description: 'client address, user agent and device token' });

/** The request id chosen by the request-context interceptor. */
export const requestIdKey = createContextKey<string>('', { description: 'request id' });

/** Set when the call presented an access token that was refused: its error says invalid_token. */
export const tokenRejectedKey = createContextKey<boolean>(false, { description: 'access token refused' });

/**
 * connect-node's `contextValues` hook: records who is calling, for sessions, rate limits and
 * lockouts, by the same rule as the REST facade (TRUST_PROXY and X-Forwarded-For).
 */
export function createContextValuesFor(resolve: ClientAddressResolver): (req: IncomingMessage | Http2ServerRequest) => ContextValues {
  return (req) => {
    const header = (name: string) => {
      const value = req.headers[name];
      return Array.isArray(value) ? value.join(', ') : value;
    };
    return createContextValues().set(clientKey, resolveClientInfo(resolve, remoteAddressOf(req.socket), header));
  };
}

export function clientInfoOf(ctx: HandlerContext): ClientInfo {
  return ctx.values.get(clientKey);
}

/** The call's `idempotency-key` metadata, checked; undefined when it has none. */
export function idempotencyKeyFrom(ctx: HandlerContext): string | undefined {
  return idempotencyKeyOf((name) => ctx.requestHeader.get(name) ?? undefined);
}

/** Marks the answer as the stored answer to an earlier call with the same key. */
export function markReplayedAnswer(ctx: HandlerContext): void {
  ctx.responseHeader.set(IDEMPOTENT_REPLAYED_HEADER, 'true');
}

/** The caller of an RPC that needs authentication, from its `authorization: Bearer` header. */
export async function actorOf(ctx: HandlerContext, auth: AuthService): Promise<Actor> {
  const token = bearerToken(ctx.requestHeader.get('authorization') ?? undefined);
  if (token === undefined) throw new AuthenticationError('Missing or invalid authorization header');
  let actor: Actor;
  try {
    actor = await auth.authenticate(token);
  } catch (error) {
    if (error instanceof AppError && error.code === 'AUTHENTICATION_ERROR') ctx.values.set(tokenRejectedKey, true);
    throw error;
  }
  identifyCaller(actor.userId);
  return { ...actor, client: clientInfoOf(ctx) };
}
