import type { ServiceImpl } from '@connectrpc/connect';
import type { AuditService as AuditServiceDescriptor } from '../../../gen/proto/arcana/audit/v1/audit_service_pb.js';
import type { AuditUseCases } from '../audit-use-cases.ts';
import { authenticatedActor, type Authenticator } from './call.ts';

/** arcana.audit.v1.AuditService: the ADMIN rule is the use cases', shared with REST. */
export function createAuditApi(audit: AuditUseCases, auth: Authenticator): ServiceImpl<typeof AuditServiceDescriptor> {
  return {
    async listAuditEvents(req, ctx) {
      return audit.list(await authenticatedActor(ctx, auth), req);
    },
  };
}
