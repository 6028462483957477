import type { Prisma } from '../../gen/prisma/client.ts';
import { AuthenticationError, AuthorizationError } from '../domain/errors.ts';
import { currentCallContext } from '../infrastructure/call-context.ts';
import type { NewAuditEvent } from './audit-repository.ts';

/** How a write is asked for. */
export interface WriteOptions {
  /**
   * The call may repeat one already carried out whose answer was lost (a retry between layers,
   * REPEAT_HEADER in communication/layer-transport.ts). A write that finds its own result in place
   * answers as the first attempt would have: RFC 9110 (13.1.1) allows the same of HTTP, "the
   * change requested by the user agent has already succeeded". When absent, the call context of
   * the layer serving the call says.
   */
  repeat?: boolean | undefined;
  /** Who the write is made for, checked again inside the write's own transaction (see ActingAs). */
  actingAs?: ActingAs | undefined;
  /**
   * The audit event of the write, stored in its transaction when the write changes something:
   * an administrator's change and its event commit together or not at all. Recorded after the
   * answer, through the job queue, the event of a change whose answer was lost was never written.
   */
  audit?: NewAuditEvent | undefined;
}

/**
 * The details of audit events that say how many sessions (pairs) their write ended: a write that
 * ends sessions sets the one its event has to what the write's own transaction revoked. A password
 * change's other sessions; a TOKENS_REVOKED event's `count`.
 */
export const SESSIONS_ENDED_DETAIL = 'otherSessionsEnded';
export const SESSIONS_REVOKED_DETAIL = 'count';

/** `event` with its SESSIONS_ENDED_DETAIL or SESSIONS_REVOKED_DETAIL, if it has one, set to `count`. */
export function withSessionsEnded(event: NewAuditEvent, count: number): NewAuditEvent {
  const key = [SESSIONS_ENDED_DETAIL, SESSIONS_REVOKED_DETAIL].find((name) => event.details !== null && name in event.details);
  return key === undefined ? event : { ...event, details: { ...event.details, [key]: count } };
}

/**
 * The signed-in caller a write is made for. A request is authorized when it arrives, but its
 * write may then wait (for a row another transaction holds, for bcrypt): helper 76's
 * administrator, demoted while its writes waited on a locked row, went on promoting, verifying
 * and editing users after the demotion had answered. The write's transaction locks the caller's
 * row with the rows it writes, as every change to an administrator, every logout and every session
 * end locks it, and goes ahead only if the caller's account is still active, the login chain of
 * its session still live and, for an administrator's write, its role still ADMIN. Whichever of
 * the two commits first, the other sees it.
 */
export interface ActingAs {
  userId: number;
  /** The login chain of the caller's session (a refresh meanwhile keeps it). */
  familyId: string;
  /** The write needs the ADMIN role, not only a live session. */
  administrator: boolean;
}

/** How a listing is asked for. */
export interface ListOptions {
  /**
   * Who the listing is made for. A listing is authorized when it arrives, then may wait its turn
   * (LIST_QUERY_CONCURRENCY): helper 88's administrator, demoted, suspended or deleted while 150
   * of its lists waited, was answered pages of users up to 1.8 s after the change had answered.
   * Each is authorized again as it is read: a page of users in its own statement, audit events as they start.
   */
  actingAs?: ActingAs | undefined;
}

/**
 * Refuses the caller of ActingAs unless its account is still active, its login chain still live
 * and, for an administrator's work, its role still ADMIN: the rule a write's guard applies to the
 * caller's locked row, and a listing to the caller's row as it starts.
 */
export function assertStillActing(actingAs: ActingAs, caller: { role: string; status: string } | null | undefined, chainLive: boolean): void {
  if (caller?.status !== 'ACTIVE' || !chainLive) throw new AuthenticationError('Session has ended; please log in again');
  if (actingAs.administrator && caller.role !== 'ADMIN') throw new AuthorizationError('Insufficient permissions');
}

/** Whether the write may repeat an earlier attempt of itself (see WriteOptions). */
export function isRepeat(options: WriteOptions): boolean {
  return options.repeat ?? currentCallContext()?.repeat === true;
}

/** ActingAs as a header value between layers: `<user id> <admin|self> <family id>`. */
export function actingAsToHeader(actingAs: ActingAs): string {
  return `${actingAs.userId} ${actingAs.administrator ? 'admin' : 'self'} ${actingAs.familyId}`;
}

/**
 * The header's ActingAs, or undefined when it is malformed: an id outside the users' INT column,
 * a family id that is no UUID. Only our own layers, holding the internal secret, send it; a value
 * the database would refuse is refused before it is asked (helper 79 had it answer `internal`).
 */
export function actingAsFromHeader(value: string): ActingAs | undefined {
  const match = /^([1-9]\d{0,9}) (admin|self) ([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$/i.exec(value);
  const userId = Number(match?.[1]);
  if (match === null || userId > 2_147_483_647) return undefined;
  return { userId, administrator: match[2] === 'admin', familyId: match[3] ?? '' };
}

/** An event as its row. A nullable Json column takes Prisma.DbNull rather than null, so absent details are left out (NULL). */
export function auditRow({ details, ...event }: NewAuditEvent): Prisma.AuditEventCreateManyInput {
  return { ...event, ...(details === null ? {} : { details }) };
}

/**
 * Stores the event in the transaction `tx` of the write it records, so that it commits with the
 * write or not at all (an administrator's change whose answer was lost had none), and once
 * however often the write is repeated (the key's conflict is skipped, not raised: on PostgreSQL a
 * raised one would end the transaction).
 */
export async function storeAuditEventWith(tx: Prisma.TransactionClient, event: NewAuditEvent | undefined): Promise<void> {
  if (event !== undefined) await tx.auditEvent.createMany({ data: [auditRow(event)], skipDuplicates: true });
}
