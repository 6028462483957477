import { create, type MessageInitShape } from '@bufbuild/protobuf';
import { timestampFromDate } from '@bufbuild/protobuf/wkt';
import type * as db from '../../gen/prisma/client.ts';
import { AuditEventSchema, AuditEventType, type AuditEvent, type ListAuditEventsRequestSchema } from '../../gen/proto/arcana/audit/v1/audit_service_pb.js';
import type { Pagination } from '../../gen/proto/arcana/user/v1/user_pb.js';
import type { Actor, ClientInfo } from '../domain/actor.ts';
import { requireAdmin } from './access.ts';
import { auditTypeFromProto } from '../domain/audit-mapping.ts';
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
    ...(client.userAgent === undefined ? {} : { userAgent: client.userAgent.slice(0, 500) }),
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
    const { events, total } = await this.#events.list({
      ...request,
      userId: query.userId,
      type: query.type === undefined ? undefined : auditTypeFromProto(query.type),
    });
    return {
      events: events.map(toAuditEventMessage),
      pagination: paginationOf(request, total),
    };
  }
}

/** An audit row as the API's message. Proto maps hold strings, so other detail values become text. */
export function toAuditEventMessage(row: db.AuditEvent): AuditEvent {
  return create(AuditEventSchema, {
    id: row.id,
    // The enum names agree by construction, as they do for roles and statuses.
    type: AuditEventType[row.type],
    ...(row.userId === null ? {} : { userId: row.userId }),
    ...(row.actorId === null ? {} : { actorId: row.actorId }),
    ...(row.ipAddress === null ? {} : { ipAddress: row.ipAddress }),
    ...(row.userAgent === null ? {} : { userAgent: row.userAgent }),
    details: detailsAsText(row.details),
    createdAt: timestampFromDate(row.createdAt),
  });
}

function detailsAsText(details: db.Prisma.JsonValue): Record<string, string> {
  if (details === null || typeof details !== 'object' || Array.isArray(details)) return {};
  const text: Record<string, string> = {};
  for (const [key, value] of Object.entries(details)) {
    // Rows are written flat, but the column is plain JSON: anything nested is passed on as JSON.
    text[key] = typeof value === 'string' ? value : typeof value === 'number' || typeof value === 'boolean' ? String(value) : JSON.stringify(value);
  }
  return text;
}
