// The service layer's internal API, served from the in-process use cases. Each method decodes
// the caller and the public request, calls one use-case method and encodes its result; domain
// errors are left to layerServerErrorInterceptor, which carries them across as they are.
import { create } from '@bufbuild/protobuf';
import { Code, ConnectError, type ServiceImpl } from '@connectrpc/connect';
import { ListAuditEventsRequestSchema } from '../../../gen/proto/arcana/audit/v1/audit_service_pb.js';
import { LoginRequestSchema, RegisterRequestSchema } from '../../../gen/proto/arcana/auth/v1/auth_service_pb.js';
import type { AuditLayerService } from '../../../gen/proto/arcana/internal/service/v1/audit_layer_service_pb.js';
import type { AuthLayerService } from '../../../gen/proto/arcana/internal/service/v1/auth_layer_service_pb.js';
import type { Actor as ActorMessage } from '../../../gen/proto/arcana/internal/service/v1/caller_pb.js';
import type { UserLayerService } from '../../../gen/proto/arcana/internal/service/v1/user_layer_service_pb.js';
import {
  ChangePasswordRequestSchema,
  CreateUserRequestSchema,
  ListUsersRequestSchema,
  UpdateUserRequestSchema,
  UpdateUserRoleRequestSchema,
} from '../../../gen/proto/arcana/user/v1/user_service_pb.js';
import type { Actor } from '../../domain/actor.ts';
import type { AuditService } from '../../services/audit-use-cases.ts';
import type { AuthService } from '../../services/auth-use-cases.ts';
import type { UserService } from '../../services/user-use-cases.ts';
import { actorFromProto, actorToProto, clientInfoFromProto } from './caller-mapping.ts';

// An absent embedded public request is read as the empty message, as proto3 reads any absent
// field as its default: the use case then refuses it (or not) exactly as it would in-process.

/** arcana.internal.service.v1.AuthLayerService over the in-process auth use cases. */
export function createAuthLayerHandler(auth: AuthService): ServiceImpl<typeof AuthLayerService> {
  return {
    async register(req) {
      return auth.register(req.request ?? create(RegisterRequestSchema), clientInfoFromProto(req.client));
    },
    async login(req) {
      return auth.login(req.request ?? create(LoginRequestSchema), clientInfoFromProto(req.client));
    },
    async authenticate(req) {
      return { actor: actorToProto(await auth.authenticate(req.accessToken)) };
    },
    async logout(req) {
      await auth.logout(actorOf(req));
      return {};
    },
    async refresh(req) {
      return { tokens: await auth.refresh(req.refreshToken, clientInfoFromProto(req.client)) };
    },
    async getCurrentUser(req) {
      return { user: await auth.currentUser(actorOf(req)) };
    },
    async listSessions(req) {
      return { sessions: await auth.listSessions(actorOf(req)) };
    },
    async revokeAll(req) {
      return { revokedCount: await auth.revokeAll(actorOf(req)) };
    },
    async listUserSessions(req) {
      return { sessions: await auth.listUserSessions(actorOf(req), req.userId) };
    },
    async endUserSession(req) {
      await auth.endUserSession(actorOf(req), req.userId, req.sessionId);
      return {};
    },
    async endUserSessions(req) {
      return { endedCount: await auth.endUserSessions(actorOf(req), req.userId) };
    },
  };
}

/** arcana.internal.service.v1.UserLayerService over the in-process user use cases. */
export function createUserLayerHandler(users: UserService): ServiceImpl<typeof UserLayerService> {
  return {
    async listUsers(req) {
      return users.list(actorOf(req), req.request ?? create(ListUsersRequestSchema));
    },
    async getUser(req) {
      return { user: await users.get(actorOf(req), req.userId) };
    },
    async createUser(req) {
      return { user: await users.create(actorOf(req), req.request ?? create(CreateUserRequestSchema)) };
    },
    async updateUser(req) {
      return { user: await users.update(actorOf(req), req.request ?? create(UpdateUserRequestSchema)) };
    },
    async deleteUser(req) {
      await users.delete(actorOf(req), req.userId, req.expectedVersion);
      return {};
    },
    async changePassword(req) {
      await users.changePassword(actorOf(req), req.request ?? create(ChangePasswordRequestSchema));
      return {};
    },
    async verifyUser(req) {
      return { user: await users.verify(actorOf(req), req.userId, req.expectedVersion) };
    },
    async updateUserStatus(req) {
      return { user: await users.updateStatus(actorOf(req), req.userId, req.status, req.expectedVersion) };
    },
    async updateUserRole(req) {
      return { user: await users.updateRole(actorOf(req), req.request ?? create(UpdateUserRoleRequestSchema)) };
    },
    async clearLoginFailures(req) {
      return { clearedCount: await users.clearLoginFailures(actorOf(req), req.userId) };
    },
  };
}

/** arcana.internal.service.v1.AuditLayerService over the in-process audit use cases. */
export function createAuditLayerHandler(audit: AuditService): ServiceImpl<typeof AuditLayerService> {
  return {
    async listAuditEvents(req) {
      return audit.list(actorOf(req), req.request ?? create(ListAuditEventsRequestSchema));
    },
  };
}

/**
 * The caller a request names. The service layer trusts the actor the controller layer sends, so
 * one that is missing is a broken caller, not an anonymous one: reading it as the empty actor
 * (user 0, no role) could act on the wrong account. The call is refused as malformed, which the
 * server interceptor passes on as it is rather than logging it as this layer's own fault.
 */
function actorOf(request: { actor?: ActorMessage | undefined }): Actor {
  if (request.actor === undefined) throw new ConnectError('actor is required', Code.InvalidArgument);
  return actorFromProto(request.actor);
}
