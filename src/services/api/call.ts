// What the service layer's API reads from a call besides its message: the caller (authenticated
// here, in the layer that holds the sessions and their cache), its Idempotency-Key, and where the
// answer's own headers go. The same in every topology: the public RPC router, the REST facade and
// a controller process in front of this one all hand over the caller in the call's context values.
import type { HandlerContext } from '@connectrpc/connect';
import type { Actor, ClientInfo } from '../../domain/actor.ts';
import { AuthenticationError } from '../../domain/errors.ts';
import { identifyCaller } from '../../infrastructure/call-context.ts';
import { callerOf } from '../../rpc/caller.ts';
import { IDEMPOTENT_REPLAYED_HEADER, idempotencyKeyOf } from '../../rpc/client-edge.ts';
import type { AuthUseCases } from '../auth-use-cases.ts';

/** What checks an access token: the auth use cases, in whichever service process this is. */
export type Authenticator = Pick<AuthUseCases, 'authenticate'>;

/** The caller of a call that needs authentication, from the access token it presented. */
export async function authenticatedActor(ctx: HandlerContext, auth: Authenticator): Promise<Actor> {
  const actor = await auth.authenticate(accessTokenOf(ctx));
  identifyCaller(actor.userId);
  return { ...actor, client: clientInfoOf(ctx) };
}

/** The call's access token; refused as unauthenticated when it has none. */
export function accessTokenOf(ctx: HandlerContext): string {
  const { accessToken } = callerOf(ctx);
  if (accessToken === undefined) throw new AuthenticationError('Missing or invalid authorization header');
  return accessToken;
}

/** Where the call came from (address, user agent, known-device token). */
export function clientInfoOf(ctx: HandlerContext): ClientInfo {
  return callerOf(ctx).client;
}

/** The call's `idempotency-key` metadata, checked; undefined when it has none. */
export function idempotencyKeyFrom(ctx: HandlerContext): string | undefined {
  return idempotencyKeyOf((name) => ctx.requestHeader.get(name) ?? undefined);
}

/** Marks the answer as the stored answer to an earlier call with the same key. */
export function markReplayedAnswer(ctx: HandlerContext): void {
  ctx.responseHeader.set(IDEMPOTENT_REPLAYED_HEADER, 'true');
}
