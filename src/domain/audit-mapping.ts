// Audit events between stored rows (Prisma) and the API's messages (protobuf-es), by the one rule
// of message-mapping.ts, as for users (see user-mapping.ts).
import type * as db from '../../gen/prisma/client.ts';
import { AuditEventSchema, AuditEventTypeSchema, type AuditEvent, type AuditEventType } from '../../gen/proto/arcana/audit/v1/audit_service_pb.js';
import { enumToRow, rowMapping } from './message-mapping.ts';

/**
 * Proto maps hold strings, so detail values that are not become their text. The event's key is
 * the writers' business (see NewAuditEvent), not the API's.
 */
const events = rowMapping<typeof AuditEventSchema, Omit<db.AuditEvent, 'eventKey'>>(AuditEventSchema);

/** The stored type for a proto type; UNSPECIFIED (or an unknown number) is a validation error. */
export function auditTypeFromProto(type: AuditEventType, field = 'type'): db.AuditEventType {
  return enumToRow(AuditEventTypeSchema, type, field) as db.AuditEventType;
}

/** An audit row as the API's message. */
export function toAuditEventMessage(row: db.AuditEvent): AuditEvent {
  return events.toMessage(row);
}
