import type { ServiceImpl } from '@connectrpc/connect';
import type { UserService as UserServiceDescriptor } from '../../../gen/proto/arcana/user/v1/user_service_pb.js';
import type { UserUseCases } from '../user-use-cases.ts';
import { runIdempotent } from '../../infrastructure/call-context.ts';
import { authenticatedActor, type Authenticator, idempotencyKeyFrom, markReplayedAnswer } from './call.ts';

/** arcana.user.v1.UserService: role and ownership rules are the use cases', shared with REST. */
export function createUserApi(users: UserUseCases, auth: Authenticator): ServiceImpl<typeof UserServiceDescriptor> {
  return {
    async listUsers(req, ctx) {
      return users.list(await authenticatedActor(ctx, auth), req);
    },
    async getUser(req, ctx) {
      return { user: await users.get(await authenticatedActor(ctx, auth), req.userId) };
    },
    async createUser(req, ctx) {
      const actor = await authenticatedActor(ctx, auth);
      const { result, replayed } = await runIdempotent(idempotencyKeyFrom(ctx), () => users.create(actor, req));
      if (replayed) markReplayedAnswer(ctx);
      return { user: result };
    },
    async updateUser(req, ctx) {
      return { user: await users.update(await authenticatedActor(ctx, auth), req) };
    },
    async deleteUser(req, ctx) {
      await users.delete(await authenticatedActor(ctx, auth), req.userId, req.expectedVersion);
      return {};
    },
    async changePassword(req, ctx) {
      await users.changePassword(await authenticatedActor(ctx, auth), req);
      return {};
    },
    async verifyUser(req, ctx) {
      return { user: await users.verify(await authenticatedActor(ctx, auth), req.userId, req.expectedVersion) };
    },
    async updateUserStatus(req, ctx) {
      return { user: await users.updateStatus(await authenticatedActor(ctx, auth), req.userId, req.status, req.expectedVersion) };
    },
    async updateUserRole(req, ctx) {
      return { user: await users.updateRole(await authenticatedActor(ctx, auth), req) };
    },
    async clearLoginFailures(req, ctx) {
      return { clearedCount: await users.clearLoginFailures(await authenticatedActor(ctx, auth), req.userId) };
    },
  };
}
