import type { MessageInitShape } from '@bufbuild/protobuf';
import type * as db from '../../gen/prisma/client.ts';
import type { AuditEvent, ListAuditEventsRequestSchema } from '../../gen/proto/arcana/audit/v1/audit_service_pb.js';
import type { Pagination } from '../../gen/proto/arcana/user/v1/user_pb.js';
import { USER_AGENT_MAX_LENGTH, type Actor, type ClientInfo } from '../domain/actor.ts';
import { actingAs, requireAdmin } from './access.ts';
import { auditTypeFromProto, toAuditEventMessage } from '../domain/audit-mapping.ts';
import type { AuditDetails, AuditRepository } from '../repositories/audit-repository.ts';
import { pageRequest, paginationOf } from './pagination.ts';

/** A security event as the services report it; the audit log adds the time. */
export interface AuditEventInput {
  type: db.AuditEventType;
  /** The user the event is about. */
  userId?: number;
  /** Who caused it, when that is not the subject itself (an administrator, say). */
  actorId?: number;
  ipAddress?: string;
  userAgent?: string;
  details?: AuditDetails;
}

/** The client fields of an audit event, cut to what the columns hold. */
export function clientFields(client: ClientInfo): { ipAddress?: string; userAgent?: string } {
  return {
    ...(client.ipAddress === undefined ? {} : { ipAddress: client.ipAddress.slice(0, 45) }),
    ...(client.userAgent === undefined ? {} : { userAgent: client.userAgent.slice(0, USER_AGENT_MAX_LENGTH) }),
  };
}

/**
 * Where services report security events. Fire-and-forget: `record` returns at once, never throws
 * and never makes the request wait; failures to store an event are logged, not raised.
 */
export interface AuditLog {
  record(event: AuditEventInput): void;
}

/** A page of the audit log, shaped like ListAuditEventsResponse. */
export interface AuditEventPage {
  events: AuditEvent[];
  pagination: Pagination;
}

/** Reading the audit log: administrators only. */
export class AuditUseCases {
  readonly #events: AuditRepository;

  constructor(deps: { events: AuditRepository }) {
    this.#events = deps.events;
  }

  /** A page of events, newest first, optionally about one user and of one type. ADMIN only. */
  async list(actor: Actor, query: MessageInitShape<typeof ListAuditEventsRequestSchema>): Promise<AuditEventPage> {
    requireAdmin(actor);
    const request = pageRequest(query);
    const { events, total } = await this.#events.list(
      {
        ...request,
        userId: query.userId,
        type: query.type === undefined ? undefined : auditTypeFromProto(query.type),
      },
      actingAs(actor, true),
    );
    return {
      events: events.map(toAuditEventMessage),
      pagination: paginationOf(request, total),
    };
  }
}
