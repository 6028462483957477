import type { ServiceImpl } from '@connectrpc/connect';
import type { AuthService as AuthServiceDescriptor } from '../../../gen/proto/arcana/auth/v1/auth_service_pb.js';
import type { AuthService } from '../../services/auth-use-cases.ts';
import { actorOf, clientInfoOf } from './rpc-context.ts';

/** arcana.auth.v1.AuthService over Connect, gRPC and gRPC-Web: the same use cases as REST. */
export function createAuthHandler(auth: AuthService): ServiceImpl<typeof AuthServiceDescriptor> {
  return {
    async register(req, ctx) {
      return auth.register(req, clientInfoOf(ctx));
    },
    async login(req, ctx) {
      return auth.login(req, clientInfoOf(ctx));
    },
    async logout(_req, ctx) {
      await auth.logout(await actorOf(ctx, auth));
      return {};
    },
    async refreshToken(req, ctx) {
      return { tokens: await auth.refresh(req.refreshToken, clientInfoOf(ctx)) };
    },
    async getCurrentUser(_req, ctx) {
      return { user: await auth.currentUser(await actorOf(ctx, auth)) };
    },
    async listTokens(_req, ctx) {
      return { sessions: await auth.listSessions(await actorOf(ctx, auth)) };
    },
    async revokeAllTokens(_req, ctx) {
      return { revokedCount: await auth.revokeAll(await actorOf(ctx, auth)) };
    },
  };
}
