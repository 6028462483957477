// The service layer's interfaces, answered by a service-layer process through its internal API.
// The controller layer holds these in place of the in-process use cases and cannot tell the
// difference: the results are the same messages, and the client's transport (see
// createLayerTransport) turns the errors that come back into the same AppErrors.
import { create, type MessageInitShape } from '@bufbuild/protobuf';
import type { Client } from '@connectrpc/connect';
import { ListAuditEventsRequestSchema } from '../../../gen/proto/arcana/audit/v1/audit_service_pb.js';
import { LoginRequestSchema, RegisterRequestSchema, type Session, type TokenPair } from '../../../gen/proto/arcana/auth/v1/auth_service_pb.js';
import type { AuditLayerService } from '../../../gen/proto/arcana/internal/service/v1/audit_layer_service_pb.js';
import type { AuthLayerService } from '../../../gen/proto/arcana/internal/service/v1/auth_layer_service_pb.js';
import type { UserLayerService } from '../../../gen/proto/arcana/internal/service/v1/user_layer_service_pb.js';
import type { User, UserStatus } from '../../../gen/proto/arcana/user/v1/user_pb.js';
import {
  ChangePasswordRequestSchema,
  CreateUserRequestSchema,
  ListUsersRequestSchema,
  UpdateUserRequestSchema,
  UpdateUserRoleRequestSchema,
} from '../../../gen/proto/arcana/user/v1/user_service_pb.js';
import type { Actor, ClientInfo } from '../../domain/actor.ts';
import type { AuditEventPage, AuditService } from '../../services/audit-use-cases.ts';
import type { AuthResult, AuthService } from '../../services/auth-use-cases.ts';
import type { UserPage, UserService } from '../../services/user-use-cases.ts';
import { actorFromProto, actorToProto, clientInfoToProto } from './caller-mapping.ts';

/** AuthService over a client of the service layer's AuthLayerService. */
export class RemoteAuthService implements AuthService {
  readonly #client: Client<typeof AuthLayerService>;

  constructor(client: Client<typeof AuthLayerService>) {
    this.#client = client;
  }

  async register(input: MessageInitShape<typeof RegisterRequestSchema>, client: ClientInfo): Promise<AuthResult> {
    const res = await this.#client.register({ request: create(RegisterRequestSchema, input), client: clientInfoToProto(client) });
    return { user: required(res.user, 'RegisterResponse.user'), tokens: required(res.tokens, 'RegisterResponse.tokens'), deviceToken: res.deviceToken };
  }

  async login(input: MessageInitShape<typeof LoginRequestSchema>, client: ClientInfo): Promise<AuthResult> {
    const res = await this.#client.login({ request: create(LoginRequestSchema, input), client: clientInfoToProto(client) });
    return { user: required(res.user, 'LoginResponse.user'), tokens: required(res.tokens, 'LoginResponse.tokens'), deviceToken: res.deviceToken };
  }

  async authenticate(accessToken: string): Promise<Actor> {
    const res = await this.#client.authenticate({ accessToken });
    return actorFromProto(required(res.actor, 'AuthenticateResponse.actor'));
  }

  async logout(actor: Actor): Promise<void> {
    await this.#client.logout({ actor: actorToProto(actor) });
  }

  async refresh(refreshToken: string, client: ClientInfo): Promise<TokenPair> {
    const res = await this.#client.refresh({ refreshToken, client: clientInfoToProto(client) });
    return required(res.tokens, 'RefreshResponse.tokens');
  }

  async currentUser(actor: Actor): Promise<User> {
    const res = await this.#client.getCurrentUser({ actor: actorToProto(actor) });
    return required(res.user, 'GetCurrentUserResponse.user');
  }

  async listSessions(actor: Actor): Promise<Session[]> {
    return (await this.#client.listSessions({ actor: actorToProto(actor) })).sessions;
  }

  async revokeAll(actor: Actor): Promise<number> {
    return (await this.#client.revokeAll({ actor: actorToProto(actor) })).revokedCount;
  }

  async listUserSessions(actor: Actor, userId: number): Promise<Session[]> {
    return (await this.#client.listUserSessions({ actor: actorToProto(actor), userId })).sessions;
  }

  async endUserSession(actor: Actor, userId: number, sessionId: number): Promise<void> {
    await this.#client.endUserSession({ actor: actorToProto(actor), userId, sessionId });
  }

  async endUserSessions(actor: Actor, userId: number): Promise<number> {
    return (await this.#client.endUserSessions({ actor: actorToProto(actor), userId })).endedCount;
  }
}

/** UserService over a client of the service layer's UserLayerService. */
export class RemoteUserService implements UserService {
  readonly #client: Client<typeof UserLayerService>;

  constructor(client: Client<typeof UserLayerService>) {
    this.#client = client;
  }

  async list(actor: Actor, query: MessageInitShape<typeof ListUsersRequestSchema>): Promise<UserPage> {
    const res = await this.#client.listUsers({ actor: actorToProto(actor), request: create(ListUsersRequestSchema, query) });
    return { users: res.users, pagination: required(res.pagination, 'ListUsersResponse.pagination') };
  }

  async get(actor: Actor, userId: number): Promise<User> {
    const res = await this.#client.getUser({ actor: actorToProto(actor), userId });
    return required(res.user, 'GetUserResponse.user');
  }

  async create(actor: Actor, input: MessageInitShape<typeof CreateUserRequestSchema>): Promise<User> {
    const res = await this.#client.createUser({ actor: actorToProto(actor), request: create(CreateUserRequestSchema, input) });
    return required(res.user, 'CreateUserResponse.user');
  }

  async update(actor: Actor, input: MessageInitShape<typeof UpdateUserRequestSchema>): Promise<User> {
    const res = await this.#client.updateUser({ actor: actorToProto(actor), request: create(UpdateUserRequestSchema, input) });
    return required(res.user, 'UpdateUserResponse.user');
  }

  async delete(actor: Actor, userId: number, expectedVersion?: number): Promise<void> {
    await this.#client.deleteUser({ actor: actorToProto(actor), userId, expectedVersion });
  }

  async changePassword(actor: Actor, input: MessageInitShape<typeof ChangePasswordRequestSchema>): Promise<void> {
    await this.#client.changePassword({ actor: actorToProto(actor), request: create(ChangePasswordRequestSchema, input) });
  }

  async verify(actor: Actor, userId: number, expectedVersion?: number): Promise<User> {
    const res = await this.#client.verifyUser({ actor: actorToProto(actor), userId, expectedVersion });
    return required(res.user, 'VerifyUserResponse.user');
  }

  async updateStatus(actor: Actor, userId: number, status: UserStatus, expectedVersion?: number): Promise<User> {
    const res = await this.#client.updateUserStatus({ actor: actorToProto(actor), userId, status, expectedVersion });
    return required(res.user, 'UpdateUserStatusResponse.user');
  }

  async updateRole(actor: Actor, input: MessageInitShape<typeof UpdateUserRoleRequestSchema>): Promise<User> {
    const res = await this.#client.updateUserRole({ actor: actorToProto(actor), request: create(UpdateUserRoleRequestSchema, input) });
    return required(res.user, 'UpdateUserRoleResponse.user');
  }

  async clearLoginFailures(actor: Actor, userId: number): Promise<number> {
    return (await this.#client.clearLoginFailures({ actor: actorToProto(actor), userId })).clearedCount;
  }
}

/** AuditService over a client of the service layer's AuditLayerService. */
export class RemoteAuditService implements AuditService {
  readonly #client: Client<typeof AuditLayerService>;

  constructor(client: Client<typeof AuditLayerService>) {
    this.#client = client;
  }

  async list(actor: Actor, query: MessageInitShape<typeof ListAuditEventsRequestSchema>): Promise<AuditEventPage> {
    const res = await this.#client.listAuditEvents({ actor: actorToProto(actor), request: create(ListAuditEventsRequestSchema, query) });
    return { events: res.events, pagination: required(res.pagination, 'ListAuditEventsResponse.pagination') };
  }
}

/**
 * A message field the service layer always sets. proto3 cannot mark it required, so an answer
 * without it comes from a broken or mismatched server: a fault to log and answer with `internal`,
 * never something the caller did (an authentication failure, say).
 */
function required<T>(value: T | undefined, field: string): T {
  if (value === undefined) throw new Error(`the service layer answered without ${field}`);
  return value;
}
