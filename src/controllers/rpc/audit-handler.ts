import type { ServiceImpl } from '@connectrpc/connect';
import type { AuditService as AuditServiceDescriptor } from '../../../gen/proto/arcana/audit/v1/audit_service_pb.js';
import type { AuditService } from '../../services/audit-use-cases.ts';
import type { AuthService } from '../../services/auth-use-cases.ts';
import { actorOf } from './rpc-context.ts';

/** arcana.audit.v1.AuditService: the ADMIN rule is the use cases', shared with REST. */
export function createAuditHandler(audit: AuditService, auth: AuthService): ServiceImpl<typeof AuditServiceDescriptor> {
  return {
    async listAuditEvents(req, ctx) {
      return audit.list(await actorOf(ctx, auth), req);
    },
  };
}
