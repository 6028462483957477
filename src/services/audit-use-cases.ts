import { randomUUID } from 'node:crypto';
import type { MessageInitShape } from '@bufbuild/protobuf';
import type * as db from '../../gen/prisma/client.ts';
import type { AuditEvent, ListAuditEventsRequestSchema } from '../../gen/proto/arcana/audit/v1/audit_service_pb.js';
import type { Pagination } from '../../gen/proto/arcana/user/v1/user_pb.js';
import { USER_AGENT_MAX_LENGTH, type Actor, type ClientInfo } from '../domain/actor.ts';
import { actingAs, requireAdmin } from './access.ts';
import { auditTypeFromProto, toAuditEventMessage } from '../domain/audit-mapping.ts';
import type { AuditDetails, AuditRepository, NewAuditEvent } from '../repositories/audit-repository.ts';
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
  /**
   * Runs `write` with the event as it is to be stored in the write's own transaction
   * (WriteOptions.audit), so that the change and its event commit together or not at all: an
   * administrator's change whose answer was lost had no event, since `record` comes after the
   * answer. Without an event, `write` runs with none.
   */
  withWrite<T>(event: AuditEventInput | undefined, write: (event: NewAuditEvent | undefined) => Promise<T>): Promise<T>;
}

/** What is stored for an input, stamped with the time it was recorded and a key of its own, and cut to the column sizes. */
export function toNewAuditEvent(input: AuditEventInput, at: Date): NewAuditEvent {
  return {
    type: input.type,
    userId: input.userId ?? null,
    actorId: input.actorId ?? null,
    ipAddress: input.ipAddress === undefined ? null : input.ipAddress.slice(0, 45),
    userAgent: input.userAgent === undefined ? null : input.userAgent.slice(0, USER_AGENT_MAX_LENGTH),
    // A copy, so that the caller changing its object afterwards cannot change the record.
    details: input.details === undefined ? null : { ...input.details },
    createdAt: at,
    eventKey: randomUUID(),
  };
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
