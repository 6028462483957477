import type { IRouter } from 'express';
import type { components, operations } from '../../../gen/openapi/schema.d.ts';
import { AuditEventType } from '../../../gen/proto/arcana/audit/v1/audit_service_pb.js';
import { sendPage } from './envelope.ts';
import { requireField } from '../../domain/message-mapping.ts';
import { callOptions, requireBearer, type ServiceClients } from './service-call.ts';
import { toRestAuditEvent, toRestPagination } from './rest-mapping.ts';

type Schemas = components['schemas'];
type ListQuery = NonNullable<operations['listAuditEvents']['parameters']['query']>;

/** `/api/v1/audit-events`, on the application's own router (see addUserRoutes): the ADMIN rule lives in AuditUseCases, shared with RPC. */
export function addAuditRoutes(router: IRouter, { audit }: ServiceClients): void {
  router.get('/api/v1/audit-events', requireBearer, async (req, res) => {
    const query = req.query as unknown as Partial<Record<keyof ListQuery, string>>;
    const page = await audit.listAuditEvents(
      {
        page: Number(query.page ?? 1),
        perPage: Number(query.perPage ?? 20),
        ...(query.userId === undefined ? {} : { userId: Number(query.userId) }),
        ...(query.type === undefined ? {} : { type: AuditEventType[query.type as Schemas['AuditEventType']] }),
      },
      callOptions(req, res),
    );
    sendPage(res, page.events.map(toRestAuditEvent), toRestPagination(requireField(page.pagination, 'pagination')));
  });
}
