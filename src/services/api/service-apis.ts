// The service layer's API: the public services (arcana.auth.v1, arcana.user.v1, arcana.audit.v1)
// implemented over the use cases this process holds. Every facade calls these implementations and
// nothing else: the public RPC router registers them, and the REST facade and a controller process
// in another topology call them through a generated client (in-process or network transport).
import { AuditService as AuditServiceDescriptor } from '../../../gen/proto/arcana/audit/v1/audit_service_pb.js';
import { AuthService as AuthServiceDescriptor } from '../../../gen/proto/arcana/auth/v1/auth_service_pb.js';
import { UserService as UserServiceDescriptor } from '../../../gen/proto/arcana/user/v1/user_service_pb.js';
import { inProcessService, type InProcessService } from '../../rpc/in-process-transport.ts';
import type { AuditUseCases } from '../audit-use-cases.ts';
import type { AuthUseCases } from '../auth-use-cases.ts';
import type { UserUseCases } from '../user-use-cases.ts';
import { createAuditApi } from './audit-api.ts';
import { createAuthApi } from './auth-api.ts';
import type { Authenticator } from './call.ts';
import { createUserApi } from './user-api.ts';

/** The implementations of the services whose use cases are given; `authenticator` checks callers' tokens. */
export function createServiceApis(deps: {
  auth?: AuthUseCases | undefined;
  users?: UserUseCases | undefined;
  audit?: AuditUseCases | undefined;
  authenticator: Authenticator;
}): InProcessService[] {
  const apis: InProcessService[] = [];
  if (deps.auth !== undefined) apis.push(inProcessService(AuthServiceDescriptor, createAuthApi(deps.auth)));
  if (deps.users !== undefined) apis.push(inProcessService(UserServiceDescriptor, createUserApi(deps.users, deps.authenticator)));
  if (deps.audit !== undefined) apis.push(inProcessService(AuditServiceDescriptor, createAuditApi(deps.audit, deps.authenticator)));
  return apis;
}
