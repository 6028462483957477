// Conversions between stored audit event types (Prisma) and the API's enum (protobuf-es). The
// enum names agree by construction, as they do for roles and statuses (see user-mapping.ts).
import * as db from '../../gen/prisma/client.ts';
import { AuditEventType } from '../../gen/proto/arcana/audit/v1/audit_service_pb.js';
import { ValidationError } from './errors.ts';

/** The stored type for a proto type; UNSPECIFIED (or an unknown number) is a validation error. */
// An enum's reverse mapping is typed string, but an unknown number from the wire has no name.
export function auditTypeFromProto(type: AuditEventType, field = 'type'): db.AuditEventType {
  const name = AuditEventType[type] as string | undefined;
  if (name !== undefined && Object.hasOwn(db.AuditEventType, name)) return name as db.AuditEventType;
  throw new ValidationError('Validation failed', { [field]: `must be one of ${Object.keys(db.AuditEventType).join(', ')}` });
}
