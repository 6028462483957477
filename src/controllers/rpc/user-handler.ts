import type { ServiceImpl } from '@connectrpc/connect';
import type { UserService as UserServiceDescriptor } from '../../../gen/proto/arcana/user/v1/user_service_pb.js';
import type { AuthService } from '../../services/auth-use-cases.ts';
import type { UserService } from '../../services/user-use-cases.ts';
import { runIdempotent } from '../../communication/call-context.ts';
import { actorOf, idempotencyKeyFrom, markReplayedAnswer } from './rpc-context.ts';

/** arcana.user.v1.UserService: role and ownership rules are the use cases', shared with REST. */
export function createUserHandler(users: UserService, auth: AuthService): ServiceImpl<typeof UserServiceDescriptor> {
  return {
    async listUsers(req, ctx) {
      return users.list(await actorOf(ctx, auth), req);
    },
    async getUser(req, ctx) {
      return { user: await users.get(await actorOf(ctx, auth), req.userId) };
    },
    async createUser(req, ctx) {
      const actor = await actorOf(ctx, auth);
      const { result, replayed } = await runIdempotent(idempotencyKeyFrom(ctx), () => users.create(actor, req));
      if (replayed) markReplayedAnswer(ctx);
      return { user: result };
    },
    async updateUser(req, ctx) {
      return { user: await users.update(await actorOf(ctx, auth), req) };
    },
    async deleteUser(req, ctx) {
      await users.delete(await actorOf(ctx, auth), req.userId, req.expectedVersion);
      return {};
    },
    async changePassword(req, ctx) {
      await users.changePassword(await actorOf(ctx, auth), req);
      return {};
    },
    async verifyUser(req, ctx) {
      return { user: await users.verify(await actorOf(ctx, auth), req.userId, req.expectedVersion) };
    },
    async updateUserStatus(req, ctx) {
      return { user: await users.updateStatus(await actorOf(ctx, auth), req.userId, req.status, req.expectedVersion) };
    },
    async updateUserRole(req, ctx) {
      return { user: await users.updateRole(await actorOf(ctx, auth), req) };
    },
    async clearLoginFailures(req, ctx) {
      return { clearedCount: await users.clearLoginFailures(await actorOf(ctx, auth), req.userId) };
    },
  };
}
