import type { HandlerContext, ServiceImpl } from '@connectrpc/connect';
import type { AuthService as AuthServiceDescriptor } from '../../../gen/proto/arcana/auth/v1/auth_service_pb.js';
import type { AuthUseCases } from '../auth-use-cases.ts';
import { deviceTokenHeaders, hostOf, NO_STORE_HEADERS } from '../../rpc/client-edge.ts';
import { accessTokenOf, authenticatedActor, clientInfoOf, idempotencyKeyFrom, markReplayedAnswer } from './call.ts';
import { identifyCaller, runIdempotent } from '../../infrastructure/call-context.ts';

/** arcana.auth.v1.AuthService over Connect, gRPC and gRPC-Web: the same use cases as REST. */
export function createAuthApi(auth: AuthUseCases): ServiceImpl<typeof AuthServiceDescriptor> {
  return {
    async register(req, ctx) {
      const { result, replayed } = await runIdempotent(idempotencyKeyFrom(ctx), () => auth.register(req, clientInfoOf(ctx)));
      if (replayed) markReplayedAnswer(ctx);
      const { user, tokens, deviceToken } = result;
      tokenAnswerHeaders(ctx, deviceToken);
      return { user, tokens };
    },
    async login(req, ctx) {
      const { user, tokens, deviceToken } = await auth.login(req, clientInfoOf(ctx));
      tokenAnswerHeaders(ctx, deviceToken);
      return { user, tokens };
    },
    async logout(_req, ctx) {
      identifyCaller((await auth.logoutWith(accessTokenOf(ctx))).userId);
      return {};
    },
    async refreshToken(req, ctx) {
      const tokens = await auth.refresh(req.refreshToken, clientInfoOf(ctx));
      tokenAnswerHeaders(ctx, undefined);
      return { tokens };
    },
    async getCurrentUser(_req, ctx) {
      return { user: await auth.currentUser(await authenticatedActor(ctx, auth)) };
    },
    async listTokens(_req, ctx) {
      return { sessions: await auth.listSessions(await authenticatedActor(ctx, auth)) };
    },
    async revokeAllTokens(_req, ctx) {
      return { revokedCount: await auth.revokeAll(await authenticatedActor(ctx, auth)) };
    },
    async listUserSessions(req, ctx) {
      return { sessions: await auth.listUserSessions(await authenticatedActor(ctx, auth), req.userId) };
    },
    async endUserSession(req, ctx) {
      await auth.endUserSession(await authenticatedActor(ctx, auth), req.userId, req.sessionId);
      return {};
    },
    async endUserSessions(req, ctx) {
      return { endedCount: await auth.endUserSessions(await authenticatedActor(ctx, auth), req.userId) };
    },
  };
}

/**
 * As on REST: token answers are never cached, and a login hands out the known-device token (to a
 * browser, one whose call has an Origin, as its cookie only: see relayAnswerHeaders).
 */
function tokenAnswerHeaders(ctx: HandlerContext, deviceToken: string | undefined): void {
  for (const [name, value] of NO_STORE_HEADERS) ctx.responseHeader.set(name, value);
  if (deviceToken === undefined) return;
  for (const [name, value] of deviceTokenHeaders(deviceToken, { origin: ctx.requestHeader.get('origin'), host: hostOf(ctx.url) })) ctx.responseHeader.append(name, value);
}
