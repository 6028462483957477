// Who may call what: the role rules of spec §5, checked before any lookup so that a caller
// without the right cannot probe which ids exist. One place for the three services.
import { UserRole } from '../../gen/proto/arcana/user/v1/user_pb.js';
import type { Actor } from '../domain/actor.ts';
import { AuthorizationError } from '../domain/errors.ts';
import type { ActingAs } from '../repositories/write-options.ts';

export function requireAdmin(actor: Actor): void {
  if (actor.role !== UserRole.ADMIN) throw new AuthorizationError('Insufficient permissions');
}

export function requireSelfOrAdmin(actor: Actor, userId: number, message: string): void {
  if (actor.role !== UserRole.ADMIN && actor.userId !== userId) throw new AuthorizationError(message);
}

/**
 * A write made for `actor`, to be authorized again in its own transaction (see ActingAs): as an
 * administrator, or (`administrator` false) only as a signed-in user acting on its own account.
 */
export function actingAs(actor: Actor, administrator: boolean): { actingAs: ActingAs } {
  return { actingAs: { userId: actor.userId, familyId: actor.familyId, administrator } };
}
