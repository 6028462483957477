// Who may call what: the role rules of spec §5, checked before any lookup so that a caller
// without the right cannot probe which ids exist. One place for the three services.
import { UserRole } from '../../gen/proto/arcana/user/v1/user_pb.js';
import type { Actor } from '../domain/actor.ts';
import { AuthorizationError } from '../domain/errors.ts';

export function requireAdmin(actor: Actor): void {
  if (actor.role !== UserRole.ADMIN) throw new AuthorizationError('Insufficient permissions');
}

export function requireSelfOrAdmin(actor: Actor, userId: number, message: string): void {
  if (actor.role !== UserRole.ADMIN && actor.userId !== userId) throw new AuthorizationError(message);
}
